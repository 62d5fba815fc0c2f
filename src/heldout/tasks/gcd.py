"""Generalized category discovery splits: labeled examples of the old classes, and an
unlabeled set that mixes the rest of the old classes with every example of the new ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.digits import digits_arrays
from heldout.tasks.mnist1d import mnist1d_arrays
from heldout.tasks.splitting import resolve_seed, split_counts, stratified_partition

__all__ = ["GCDDigits", "GCDMNIST1D", "gcd_partition"]


def gcd_partition(labels: Tensor, num_old: int, labeled_fraction: float,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(labeled, unlabeled)`` example indices for generalized category discovery.

    Classes ``0 .. num_old-1`` are old: within each, ``round(labeled_fraction * n_class)``
    random examples are labeled. The unlabeled set is every other example: the rest of the
    old classes and all of the new classes (``num_old ..``), shuffled.

    Example:
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3])
        >>> labeled, unlabeled = gcd_partition(labels, 2, 0.5, torch.Generator().manual_seed(0))
        >>> sorted(labels[labeled].tolist()), sorted(labels[unlabeled].tolist())
        ([0, 0, 1], [0, 0, 1, 2, 2, 3])
    """
    if not 0 < labeled_fraction < 1:
        raise ValueError(f"labeled_fraction must be in (0, 1), got {labeled_fraction}")
    present = torch.unique(labels)
    if num_old < 1 or num_old >= len(present) or not bool((present[:num_old] ==
                                                            torch.arange(num_old)).all()):
        raise ValueError(f"num_old must leave old classes 0 .. num_old-1 and at least one new "
                         f"class among the labels {present.tolist()}, got {num_old}")
    old = torch.nonzero(labels < num_old).flatten()
    labeled, rest = stratified_partition(labels[old], (labeled_fraction,), generator)
    unlabeled = torch.cat([old[rest], torch.nonzero(labels >= num_old).flatten()])
    return old[labeled], unlabeled[torch.randperm(len(unlabeled), generator=generator)]


@dataclass(frozen=True)
class _GCDTask(Task):
    """Shared by the GCD tasks: a held-out test part of every class, then the GCD partition."""

    # classes 0 .. num_old-1 are old (labeled); the others are new
    num_old: Annotated[int, Ge(1)] = 5
    # fraction of each old class (outside test) that is labeled
    labeled_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.5
    # fraction of the labeled set held out as val (labeled old classes only)
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.15
    # fraction of every class held out as test (old and new: inductive evaluation)
    test_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.2
    # if set, splits with this seed instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    num_classes = 10

    def __post_init__(self) -> None:
        if self.num_old >= self.num_classes:
            raise ValueError(f"num_old must be < {self.num_classes} to leave new classes, got "
                             f"{self.num_old}")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        features, labels = self.arrays()
        x, y = torch.tensor(features), torch.tensor(labels)
        generator = stream_generator(seed, "split")
        test, pool = stratified_partition(y, (self.test_fraction,), generator)
        labeled, unlabeled = gcd_partition(y[pool], self.num_old, self.labeled_fraction,
                                           generator)
        labeled, unlabeled = pool[labeled], pool[unlabeled]
        val, train = torch.split(labeled, split_counts(len(labeled), (self.val_fraction,)))
        return Splits(
            train=Split(x[train], y[train]),
            val=Split(x[val], y[val]),
            test=Split(x[test], y[test]),
            input=self.input,
            num_classes=self.num_classes,
            extra={"unlabeled": Split(x[unlabeled], y[unlabeled])},
        )


@TASKS.register(
    "gcd_digits",
    summary="Generalized category discovery on scikit-learn's digits: labeled old classes "
    "0-4, an unlabeled split of old and new (5-9) classes.",
)
@dataclass(frozen=True)
class GCDDigits(_GCDTask):
    """Scikit-learn's 8x8 digits (as the ``digits`` task) split for generalized category
    discovery.

    ``round(test_fraction * n_class)`` random examples of every class are the test split
    (old and new classes, for inductive evaluation). Of the rest, ``labeled_fraction`` of each
    old class (``0 .. num_old-1``) is labeled: ``val_fraction`` of it is val, the remainder
    train (the backbone's training data). Everything else, the other old examples and every
    new-class example, is the extra split ``unlabeled``, whose labels serve evaluation only.
    The splits declare ten classes, so a model trained on the old ones has an output for
    every class and the usual measures run on every split.

    References:
        Vaze, Han, Vedaldi, Zisserman. Generalized Category Discovery. arXiv:2201.02609.

    Example:
        >>> splits = GCDDigits().splits(seed=0)
        >>> len(splits.train), len(splits.val), len(splits.test), len(splits["unlabeled"])
        (306, 54, 359, 1078)
    """

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64,))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return digits_arrays()


@TASKS.register(
    "gcd_mnist1d",
    summary="Generalized category discovery on MNIST-1D: labeled old classes 0-4, an "
    "unlabeled split of old and new (5-9) classes.",
)
@dataclass(frozen=True)
class GCDMNIST1D(_GCDTask):
    """MNIST-1D (the generator's train and test parts together) split for generalized
    category discovery, as :class:`GCDDigits`.

    References:
        Greydanus, Kobak. Scaling down Deep Learning with MNIST-1D. arXiv:2011.14439.
        Vaze, Han, Vedaldi, Zisserman. Generalized Category Discovery. arXiv:2201.02609.
    """

    # examples generated, rounded down to a multiple of 10
    num_samples: Annotated[int, Ge(10)] = 5000
    # seed of the MNIST-1D generator (42 is the published data set)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        arrays = mnist1d_arrays(self.num_samples, self.dataset_seed)
        return (np.concatenate([arrays["x"], arrays["x_test"]]).astype(np.float32),
                np.concatenate([arrays["y"], arrays["y_test"]]).astype(np.int64))
