"""Graph density-aware losses (#44): the density-normalized edge loss of scene-graph generation.

In scene-graph generation every object pair of an image is an edge: foreground (FG) edges
carry an annotated predicate, background (BG) edges the label 0. The standard edge loss
averages the cross-entropy over all M = M_FG + M_BG edges of an image, which equals
d·L_FG + (1 − d)·L_BG with d = M_FG / M the graph's density and L_FG, L_BG the mean FG and
BG losses: the FG edges of large sparse graphs get little weight. The density-normalized
loss divides by M_FG instead: L = (α Σ_FG CE + β Σ_BG CE) / M_FG, i.e. the standard loss of
the graph divided by d (α = β = 1 in the paper's hyper-parameter-free form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.bounds import Annotated, Ge
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = ["DensityNormalizedLoss", "density_normalized_edge_loss", "graph_density"]

REFERENCE = ("Knyazev, de Vries, Cangea, Taylor, Courville, Belilovsky. Graph Density-Aware "
             "Losses for Novel Compositions in Scene Graph Generation. arXiv:2005.08230.")


def graph_density(labels: Tensor, graphs: Tensor) -> Tensor:
    """Each edge's graph density d = M_FG / M: its graph's foreground edges (label > 0) over
    all its edges. A graph without foreground edges counts one (M_FG clamped to 1, so its
    background edges are normalized as in the official code).

    Example:
        >>> graph_density(torch.tensor([1, 0, 0, 2, 0]), torch.tensor([0, 0, 0, 1, 1])).tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 0.5, 0.5]
    """
    if labels.shape != graphs.shape or labels.dim() != 1:
        raise ValueError(f"graph_density: labels and graphs must be matching vectors, got "
                         f"{tuple(labels.shape)} and {tuple(graphs.shape)}")
    _, index = torch.unique(graphs, return_inverse=True)
    edges = torch.bincount(index).double()
    foreground = torch.bincount(index, weights=(labels > 0).double(), minlength=len(edges))
    return (foreground.clamp_min(1) / edges)[index]


def density_normalized_edge_loss(logits: Tensor, labels: Tensor, density: Tensor | float = 1.0,
                                 background_weight: float = 1.0) -> Tensor:
    """Mean over edges of w_e · CE_e / d_e, with w = 1 for FG edges (label > 0), β =
    ``background_weight`` for BG edges (label 0) and d_e the density of the edge's graph
    (:func:`graph_density`).

    For the edges of one graph this is the paper's (α Σ_FG CE + β Σ_BG CE) / M_FG; with
    ``density=1`` and β = 1 it is the standard edge cross-entropy (``F.cross_entropy``).

    Example:
        >>> logits, labels = torch.zeros(4, 3), torch.tensor([1, 0, 0, 0])
        >>> round(float(density_normalized_edge_loss(logits, labels, 0.25)), 4)  # 4 · ln 3
        4.3944

    References:
        Graph Density-Aware Losses for Novel Compositions in Scene Graph Generation
        (arXiv:2005.08230), the density-normalized edge loss.
    """
    if logits.dim() != 2 or len(logits) != len(labels):
        raise ValueError(f"density_normalized_edge_loss: logits must be (M, K) for M labels, "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if background_weight < 0:
        raise ValueError(f"density_normalized_edge_loss: background_weight must be >= 0, got "
                         f"{background_weight}")
    density = torch.as_tensor(density, dtype=torch.float64, device=logits.device)
    if not bool(((density > 0) & (density <= 1)).all()):
        raise ValueError("density_normalized_edge_loss: density must be in (0, 1]")
    per_edge = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    weight = torch.where(labels > 0, 1.0, background_weight).to(per_edge.dtype)
    return (weight * per_edge / density.to(per_edge.dtype)).mean()


@TECHNIQUES.register(
    "density_normalized",
    summary="Density-normalized edge loss for scene graphs: each graph's edge loss divided by "
    "its density M_FG / M.",
    papers=(44,),
    search_space={"background_weight": ("log_uniform", 0.1, 2.0)},
    references=(REFERENCE,),
)
@dataclass
class DensityNormalizedLoss(Technique):
    """Replace the loss by :func:`density_normalized_edge_loss`, each edge divided by the
    density of its whole training graph (``State.train_groups``: the edge's graph id, as
    the ``scene_graph`` task gives in ``Split.groups``; ``State.train_data``: the labels).

    The Trainer draws random edges, not whole images, so the density comes from the whole
    graph rather than from the batch: the loss is an unbiased estimate of the edge-average
    of each graph's standard loss divided by its density (the paper's loss, per graph).

    References:
        Graph Density-Aware Losses for Novel Compositions in Scene Graph Generation
        (arXiv:2005.08230).
    """

    # β: weight of background edges (1: the paper's hyper-parameter-free loss)
    background_weight: Annotated[float, Ge(0)] = 1.0
    _density: Tensor | None = field(default=None, init=False, repr=False)

    touches = frozenset({"loss"})

    def _edge_density(self, state: State) -> Tensor:
        if self._density is None:
            if state.train_groups is None or state.train_data is None:
                raise ValueError("density_normalized needs each training edge's graph id "
                                 "(Split.groups, e.g. task=scene_graph) and the training "
                                 "tensors")
            labels = state.train_data[1].to(state.train_groups.device)
            self._density = graph_density(labels, state.train_groups)
        return self._density

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        index = state.batch[2] if state.batch is not None else None
        if index is None:
            raise ValueError("density_normalized needs the batch's example indices (train on "
                             "tensors or a Split)")
        density = self._edge_density(state)
        return density_normalized_edge_loss(
            logits, targets, density[index.to(density.device)].to(logits.device),
            self.background_weight)
