"""Base/novel class splits for few-shot learning, and the episode sampler.

A backbone is trained with the ordinary trainer on the *base* classes only (the train / val /
test splits hold them, relabelled ``0..n_base-1``); the *novel* classes never reach training,
and their examples (relabelled ``0..n_novel-1``) are ``splits.extra["novel"]``, the pool that
few-shot episodes are drawn from with :func:`sample_episode`.

The trainer evaluates every split with the base head, so the recorded ``novel/...`` metrics
are meaningless by design; the novel labels must stay within the head's range, hence at most
as many novel classes as base ones.

References:
    Wang, Chao, Weinberger, van der Maaten. SimpleShot: Revisiting Nearest-Neighbor
    Classification for Few-Shot Learning. arXiv:1911.04623 (train on base, test on novel).
    Veilleux, Boudiaf, Piantanida, Ben Ayed. Realistic Evaluation of Transductive Few-Shot
    Learning. arXiv:2204.11181 (Dirichlet-imbalanced query sets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.inputs import InputSpec
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.digits import Digits
from heldout.tasks.mnist1d import MNIST1D

__all__ = ["DigitsBaseNovel", "Episode", "EpisodeSpec", "MNIST1DBaseNovel", "base_novel_splits",
           "dirichlet_counts", "sample_episode"]


def _check_base_classes(base_classes: tuple[int, ...], num_classes: int) -> None:
    if len(set(base_classes)) != len(base_classes) or not base_classes:
        raise ValueError(f"base_classes must be distinct class ids, got {base_classes}")
    if min(base_classes) < 0 or max(base_classes) >= num_classes:
        raise ValueError(f"base_classes must lie in 0..{num_classes - 1}, got {base_classes}")
    n_novel = num_classes - len(base_classes)
    if not 1 <= n_novel <= len(base_classes):
        raise ValueError(f"base_classes {base_classes} leave {n_novel} novel classes; need "
                         f"between 1 and {len(base_classes)} (the base head scores every "
                         "split, so novel labels must fit in it)")


def base_novel_splits(parent: Splits, base_classes: tuple[int, ...]) -> Splits:
    """``parent``'s splits restricted to ``base_classes`` (relabelled ``0..n_base-1`` in
    increasing class order), with every example of the other classes, from all three splits
    and relabelled ``0..n_novel-1``, as ``extra["novel"]``. Novel examples are selected by
    their clean label."""
    _check_base_classes(base_classes, parent.num_classes)
    base = sorted(base_classes)
    novel = [c for c in range(parent.num_classes) if c not in base]
    relabel = torch.full((parent.num_classes,), -1, dtype=torch.long)
    relabel[base] = torch.arange(len(base))
    relabel[novel] = torch.arange(len(novel))
    is_base = torch.zeros(parent.num_classes, dtype=torch.bool)
    is_base[base] = True

    def restrict(split: Split) -> Split:
        clean = split.y if split.clean_y is None else split.clean_y
        keep = is_base[clean] & is_base[split.y]
        return Split(split.x[keep], relabel[split.y[keep]],
                     None if split.clean_y is None else relabel[split.clean_y[keep]])

    novel_x, novel_y = [], []
    for split in (parent.train, parent.val, parent.test):
        clean = split.y if split.clean_y is None else split.clean_y
        mask = ~is_base[clean]
        novel_x.append(split.x[mask])
        novel_y.append(relabel[clean[mask]])
    return Splits(
        train=restrict(parent.train), val=restrict(parent.val), test=restrict(parent.test),
        input=parent.input, num_classes=len(base),
        extra={"novel": Split(torch.cat(novel_x), torch.cat(novel_y))},
    )


@TASKS.register(
    "digits_base_novel",
    summary="scikit-learn digits split by class: train on base digits, few-shot on the rest.",
    papers=(52,),
)
@dataclass(frozen=True)
class DigitsBaseNovel(Task):
    """The :class:`~heldout.tasks.Digits` splits restricted to ``base_classes`` (labels
    ``0..n_base-1``); all images of the other digits, relabelled ``0..n_novel-1``, are
    ``extra["novel"]`` for few-shot episodes.

    Example:
        >>> splits = DigitsBaseNovel().splits(seed=0)
        >>> splits.num_classes, len(splits.extra["novel"]), int(splits.train.y.max())
        (5, 896, 4)
    """

    base_classes: tuple[int, ...] = (0, 1, 2, 3, 4)  # digits the backbone trains on
    # fraction of each class held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.15
    # fraction of each class held out as test
    test_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.25
    # if set, splits instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    def __post_init__(self) -> None:
        _check_base_classes(tuple(self.base_classes), 10)
        self._parent()  # checks the fractions

    def _parent(self) -> Digits:
        return Digits(val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                      data_seed=self.data_seed)

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64,))

    def splits(self, seed: int) -> Splits:
        return base_novel_splits(self._parent().splits(seed), tuple(self.base_classes))


@TASKS.register(
    "mnist1d_base_novel",
    summary="MNIST-1D split by class: train on base digits, few-shot on the rest.",
    papers=(52,),
)
@dataclass(frozen=True)
class MNIST1DBaseNovel(Task):
    """The :class:`~heldout.tasks.MNIST1D` splits restricted to ``base_classes`` (labels
    ``0..n_base-1``); all signals of the other classes, relabelled ``0..n_novel-1``, are
    ``extra["novel"]`` for few-shot episodes."""

    base_classes: tuple[int, ...] = (0, 1, 2, 3, 4)  # classes the backbone trains on
    # examples generated (train + test), rounded down to a multiple of 10
    num_samples: Annotated[int, Ge(10)] = 5000
    # seed of the MNIST-1D generator (42 is the published data set)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42
    # fraction of the generator's train part held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.1
    # if set, splits instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    def __post_init__(self) -> None:
        _check_base_classes(tuple(self.base_classes), 10)

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def splits(self, seed: int) -> Splits:
        parent = MNIST1D(num_samples=self.num_samples, dataset_seed=self.dataset_seed,
                         val_fraction=self.val_fraction, data_seed=self.data_seed)
        return base_novel_splits(parent.splits(seed), tuple(self.base_classes))


# ---------------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode: labeled supports and queries, labels ``0..N-1`` (the order
    in which the classes were drawn)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def n_way(self) -> int:
        return int(self.support_y.max()) + 1


def dirichlet_counts(total: int, proportions: Tensor) -> Tensor:
    """Integer counts summing exactly to ``total`` in the given ``proportions``: the floors of
    ``total * p``, plus one for the largest remainders (Hamilton's rule; ties go to the lower
    class index).

    Example:
        >>> dirichlet_counts(10, torch.tensor([0.55, 0.25, 0.2])).tolist()
        [6, 2, 2]
    """
    raw = total * proportions.double()
    counts = raw.floor().long()
    short = total - int(counts.sum())
    order = torch.argsort(-(raw - counts), stable=True)
    counts[order[:short]] += 1
    return counts


def _dirichlet(alpha: float, n: int, generator: torch.Generator) -> Tensor:
    # NumPy draws the Dirichlet (torch's sampler takes no generator), seeded from `generator`
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).dirichlet([alpha] * n))


def sample_episode(
    x: Tensor,
    y: Tensor,
    *,
    n_way: int,
    k_shot: int,
    n_query: int,
    generator: torch.Generator,
    alpha: float | None = None,
) -> Episode:
    """Draw an N-way K-shot episode from the pool ``(x, y)``.

    ``n_way`` classes are drawn uniformly without replacement (episode label ``i`` is the
    ``i``-th drawn class), then ``k_shot`` supports per class and, disjoint from them, the
    queries: ``n_query`` per class when ``alpha`` is None (balanced), else
    ``n_way * n_query`` in all, split across the classes in proportions
    ``p ~ Dirichlet(alpha · 1_N)`` (the realistic transductive setting of Veilleux et al.,
    arXiv:2204.11181; rounded to integers by :func:`dirichlet_counts`, so a class may get no
    query). Queries are ordered by class.

    Example:
        >>> x, y = torch.arange(40.0).unsqueeze(1), torch.arange(40) % 4
        >>> e = sample_episode(x, y, n_way=3, k_shot=2, n_query=5,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> tuple(e.support_x.shape), torch.bincount(e.query_y).tolist()
        ((6, 1), [5, 5, 5])
    """
    for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha (Dirichlet concentration) must be > 0, got {alpha!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    classes = torch.unique(y)
    if n_way > len(classes):
        raise ValueError(f"n_way={n_way} but the pool has only {len(classes)} classes")
    chosen = classes[torch.randperm(len(classes), generator=generator)[:n_way]]
    if alpha is None:
        counts = torch.full((n_way,), n_query, dtype=torch.long)
    else:
        counts = dirichlet_counts(n_way * n_query, _dirichlet(alpha, n_way, generator))
    support, query, support_y, query_y = [], [], [], []
    for label, (cls, count) in enumerate(zip(chosen.tolist(), counts.tolist(), strict=True)):
        members = torch.nonzero(y == cls).flatten()
        if k_shot + count > len(members):
            raise ValueError(f"class {cls} has {len(members)} examples, too few for "
                             f"k_shot={k_shot} supports plus {count} queries (lower k_shot "
                             "or n_query)")
        members = members[torch.randperm(len(members), generator=generator)]
        support.append(members[:k_shot])
        query.append(members[k_shot:k_shot + count])
        support_y.append(torch.full((k_shot,), label, dtype=torch.long))
        query_y.append(torch.full((count,), label, dtype=torch.long))
    s, q = torch.cat(support), torch.cat(query)
    return Episode(x[s], torch.cat(support_y), x[q], torch.cat(query_y))


@dataclass(frozen=True)
class EpisodeSpec:
    """How episodes are drawn: ``n_way``-way ``k_shot``-shot, ``n_query`` queries per class
    on average, balanced (``alpha`` None) or Dirichlet(``alpha``)-imbalanced."""

    n_way: Annotated[int, Ge(1)] = 5
    k_shot: Annotated[int, Ge(1)] = 1
    n_query: Annotated[int, Ge(1)] = 15
    alpha: Annotated[float | None, Gt(0)] = None

    def sample(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Episode:
        return sample_episode(x, y, n_way=self.n_way, k_shot=self.k_shot,
                              n_query=self.n_query, alpha=self.alpha, generator=generator)
