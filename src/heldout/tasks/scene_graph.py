"""A generated scene-graph task (#44): predicate classification on the edges of small graphs of
objects, with frequent, rare and zero-shot subject–predicate–object compositions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import resolve_seed

__all__ = ["PREDICATES", "SceneGraph", "SceneGraphSplit", "triplet_ids"]

# label 0 is "background": an object pair without an annotated relation
PREDICATES = ("background", "left of", "right of", "below", "above")


@dataclass(frozen=True)
class SceneGraphSplit(Split):
    """A split of edges. ``groups`` holds each edge's graph (image) id; ``triplet_counts``
    how often the edge's (subject class, predicate, object class) triplet is a foreground
    edge of the training split (0: a zero-shot triplet; background edges: 0)."""

    triplet_counts: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.triplet_counts is not None and len(self.triplet_counts) != len(self.y):
            raise ValueError(f"triplet_counts has {len(self.triplet_counts)} rows but y has "
                             f"{len(self.y)}")


def triplet_ids(subjects: Tensor, predicates: Tensor, objects: Tensor,
                num_objects: int) -> Tensor:
    """One integer per (subject class, predicate, object class) triplet."""
    return (subjects * len(PREDICATES) + predicates) * num_objects + objects


def _predicate(displacement: Tensor) -> Tensor:
    """The spatial predicate of subject → object for displacement ``object − subject``: the
    subject is left of / right of / below / above the object along the dominant axis."""
    dx, dy = displacement.unbind(-1)
    horizontal = torch.where(dx > 0, 1, 2)
    vertical = torch.where(dy > 0, 3, 4)
    return torch.where(dx.abs() >= dy.abs(), horizontal, vertical)


@TASKS.register(
    "scene_graph",
    summary="Generated scene graphs: classify each object pair's predicate (or background); "
    "frequent, rare and zero-shot triplets.",
    papers=(44,),
)
@dataclass(frozen=True)
class SceneGraph(Task):
    """Predicate classification ("PredCls": object classes known) on generated scene graphs.

    Each graph (an "image") has ``n`` objects, ``n`` uniform in [min_objects, max_objects];
    an object of class c sits at μ_c + ``position_spread``·N(0, I), with class means μ_c
    uniform in [0.2, 0.8]² (so each class pair has a typical direction: its frequent
    triplets, while the other directions are rare). Every ordered pair (i, j), i ≠ j, is one
    example (an edge); the ``n`` closest pairs are annotated (foreground) with the spatial
    predicate of j − i (left of / right of / below / above, by the dominant axis), the others
    are background (label 0). Graph density ``n / (n (n − 1))`` thus falls from 1 for two
    objects to 1/11 for twelve: small graphs are dense, large ones sparse, as in Visual Genome.

    An edge's features: one-hot subject class, one-hot object class, the displacement and
    distance observed with N(0, ``feature_noise``²) noise, and n / max_objects.

    Graphs go to train / val / test whole. A random ``zero_shot_fraction`` of the triplet types
    is held out of training: their foreground edges are removed from the training graphs, so
    they occur only in val and test (zero-shot). ``SceneGraphSplit.triplet_counts`` gives each
    edge's triplet frequency in training; ``groups`` each edge's graph id.

    References:
        Knyazev, de Vries, Cangea, Taylor, Courville, Belilovsky. Graph Density-Aware Losses
        for Novel Compositions in Scene Graph Generation. arXiv:2005.08230 (the setting; the
        generator is heldout's).

    Example:
        >>> splits = SceneGraph(num_graphs=50).splits(seed=0)
        >>> splits.input.shape, splits.num_classes
        ((20,), 5)
    """

    num_graphs: Annotated[int, Ge(10)] = 600  # graphs ("images") over all splits
    object_classes: Annotated[int, Ge(2)] = 8  # object categories
    min_objects: Annotated[int, Ge(2)] = 2  # fewest objects in a graph
    max_objects: Annotated[int, Ge(2)] = 12  # most objects in a graph
    position_spread: Annotated[float, Gt(0)] = 0.15  # std of an object around its class mean
    feature_noise: Annotated[float, Ge(0)] = 0.05  # std of the noise on observed geometry
    # fraction of triplet types held out of training
    zero_shot_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.2
    # fraction of graphs held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.1
    # fraction of graphs held out as test
    test_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.3
    # if set, generates the graphs instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    def __post_init__(self) -> None:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects must be <= max_objects, got {self.min_objects} > "
                             f"{self.max_objects}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 to leave training "
                             f"graphs, got {self.val_fraction} + {self.test_fraction}")

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (2 * self.object_classes + 4,))

    def _graph(self, index: int, means: Tensor, gen: torch.Generator) -> tuple[Tensor, ...]:
        """The edges of one graph: features, labels, triplet ids."""
        n = int(torch.randint(self.min_objects, self.max_objects + 1, (), generator=gen))
        classes = torch.randint(0, self.object_classes, (n,), generator=gen)
        positions = means[classes] + self.position_spread * torch.randn(n, 2, generator=gen)
        subject, obj = torch.nonzero(~torch.eye(n, dtype=torch.bool), as_tuple=True)
        displacement = positions[obj] - positions[subject]
        distance = displacement.norm(dim=-1)
        foreground = torch.zeros(len(subject), dtype=torch.bool)
        foreground[distance.argsort()[:n]] = True
        labels = torch.where(foreground, _predicate(displacement), 0)
        observed = displacement + self.feature_noise * torch.randn(displacement.shape,
                                                                   generator=gen)
        x = torch.cat([
            F.one_hot(classes[subject], self.object_classes).float(),
            F.one_hot(classes[obj], self.object_classes).float(),
            observed,
            (distance + self.feature_noise * torch.randn(distance.shape, generator=gen))[:, None],
            torch.full((len(subject), 1), n / self.max_objects),
        ], dim=1)
        triplets = triplet_ids(classes[subject], labels, classes[obj], self.object_classes)
        return x, labels, triplets, torch.full((len(subject),), index)

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        gen = stream_generator(seed, "graphs")
        means = 0.2 + 0.6 * torch.rand(self.object_classes, 2, generator=gen)
        x, y, triplets, graphs = (torch.cat(parts) for parts in zip(
            *(self._graph(i, means, gen) for i in range(self.num_graphs)), strict=True))
        order = torch.randperm(self.num_graphs, generator=stream_generator(seed, "split"))
        n_test = max(1, math.floor(self.test_fraction * self.num_graphs))
        n_val = math.floor(self.val_fraction * self.num_graphs)
        test_graphs, val_graphs = order[:n_test], order[n_test:n_test + n_val]
        types = torch.unique(triplets[y > 0])
        held = types[torch.randperm(len(types), generator=stream_generator(seed, "zero_shot"))
                     [:round(self.zero_shot_fraction * len(types))]]
        in_test, in_val = torch.isin(graphs, test_graphs), torch.isin(graphs, val_graphs)
        in_train = ~in_test & ~in_val & ~((y > 0) & torch.isin(triplets, held))
        seen = triplets[in_train & (y > 0)]
        ids, counts = torch.unique(seen, return_counts=True)
        frequency = torch.zeros_like(triplets)
        known = torch.isin(triplets, ids) & (y > 0)
        frequency[known] = counts[torch.searchsorted(ids, triplets[known])]

        def split(mask: Tensor) -> SceneGraphSplit:
            return SceneGraphSplit(x[mask], y[mask], groups=graphs[mask],
                                   triplet_counts=frequency[mask])

        return Splits(train=split(in_train), val=split(in_val), test=split(in_test),
                      input=self.input, num_classes=len(PREDICATES))
