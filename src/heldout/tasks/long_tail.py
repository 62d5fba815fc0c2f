"""Long-tailed, noisily labeled versions of the digits and MNIST-1D tasks (the setting of RCAL,
catalog #42).

The training split keeps, of class c (c = 0..C−1), ``n_c = round(n_max · ρ^(−c/(C−1)))``
examples: an exponential profile from ``n_max`` (class 0, the head) down to ``n_max / ρ``
(class C−1, the tail), ρ the imbalance ratio (the CIFAR-10-LT construction). ``n_max`` is the
size of the smallest class of the base task's training split, so every class can supply its
share. Then ``round(η · n)`` random training labels are replaced by a uniformly random
*different* class (symmetric noise at rate η; ``clean_y`` keeps the true labels). Val and
test stay as the base task makes them: balanced and clean.

References:
    When Noisy Labels Meet Long Tail Dilemmas: A Representation Calibration Method
    (arXiv:2211.10955).
    Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss
    (arXiv:1906.07413), for the exponential profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.digits import Digits
from heldout.tasks.mnist1d import MNIST1D
from heldout.tasks.splitting import noisy_split, resolve_seed

__all__ = ["DigitsLongTail", "MNIST1DLongTail", "long_tail_counts", "long_tailed_noisy"]


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Per-class sizes ``round(n_max · ρ^(−c/(C−1)))`` of an exponential long tail.

    Example:
        >>> long_tail_counts(100, 3, 100.0)
        [100, 10, 1]
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    return [round(n_max * imbalance_ratio ** (-c / (num_classes - 1)))
            for c in range(num_classes)]


def long_tailed_noisy(split: Split, num_classes: int, imbalance_ratio: float,
                      label_noise: float, seed: int) -> Split:
    """``split`` (clean labels) subsampled to the long-tailed profile, then noisily relabeled.

    Which examples of a class are kept is a random subset (stream ``"long_tail"`` of
    ``seed``); which labels are corrupted, and into what, another (stream ``"label_noise"``).
    """
    if split.clean_y is not None and bool((split.clean_y != split.y).any()):
        raise ValueError("the split to make long-tailed must have clean labels")
    labels = split.y
    available = torch.bincount(labels, minlength=num_classes)
    counts = long_tail_counts(int(available.min()), num_classes, imbalance_ratio)
    generator = stream_generator(seed, "long_tail")
    kept = []
    for label, count in enumerate(counts):
        members = torch.nonzero(labels == label).flatten()
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    order = torch.cat(kept)
    order = order[torch.randperm(len(order), generator=generator)]
    return noisy_split(split.x[order], labels[order], label_noise, num_classes,
                       stream_generator(seed, "label_noise"))


def _with_long_tail(splits: Splits, imbalance_ratio: float, label_noise: float,
                    seed: int) -> Splits:
    train = long_tailed_noisy(splits.train, splits.num_classes, imbalance_ratio, label_noise,
                              seed)
    return Splits(train=train, val=splits.val, test=splits.test, input=splits.input,
                  num_classes=splits.num_classes, extra=splits.extra)


@TASKS.register(
    "digits_long_tail",
    summary="8x8 digits with an exponentially long-tailed, noisily labeled training split "
    "(ratio ρ, symmetric noise η); val/test balanced and clean.",
    papers=(42,),
)
@dataclass(frozen=True)
class DigitsLongTail(Task):
    """scikit-learn's digits (:class:`~heldout.tasks.digits.Digits`, its stratified split) with
    the training split made long-tailed (ratio ``imbalance_ratio``) and noisy (rate
    ``label_noise``), as the module docstring describes.

    Example:
        >>> splits = DigitsLongTail(imbalance_ratio=10.0).splits(seed=0)
        >>> torch.bincount(splits.train.clean_y).tolist()
        [104, 81, 62, 48, 37, 29, 22, 17, 13, 10]
    """

    imbalance_ratio: Annotated[float, Ge(1)] = 10.0  # ρ: head class size / tail class size
    label_noise: Annotated[float, Interval(0, 1)] = 0.2  # η: share of train labels corrupted
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.15  # as in digits
    test_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.25  # as in digits
    data_seed: Annotated[int | None, Ge(0)] = None  # if set, builds the data instead of the seed

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        base = Digits(val_fraction=self.val_fraction, test_fraction=self.test_fraction)
        return _with_long_tail(base.splits(seed), self.imbalance_ratio, self.label_noise, seed)


@TASKS.register(
    "mnist1d_long_tail",
    summary="MNIST-1D with an exponentially long-tailed, noisily labeled training split "
    "(ratio ρ, symmetric noise η); val/test balanced and clean.",
    papers=(42,),
)
@dataclass(frozen=True)
class MNIST1DLongTail(Task):
    """MNIST-1D (:class:`~heldout.tasks.mnist1d.MNIST1D`) with the training split made
    long-tailed (ratio ``imbalance_ratio``) and noisy (rate ``label_noise``), as the module
    docstring describes.

    Example:
        >>> splits = MNIST1DLongTail(num_samples=1000).splits(seed=0)
        >>> counts = torch.bincount(splits.train.clean_y).tolist()
        >>> counts[0] // counts[-1], len(splits.test)
        (9, 200)
    """

    imbalance_ratio: Annotated[float, Ge(1)] = 10.0  # ρ: head class size / tail class size
    label_noise: Annotated[float, Interval(0, 1)] = 0.2  # η: share of train labels corrupted
    num_samples: Annotated[int, Ge(10)] = 5000  # examples generated (train + test)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42  # the MNIST-1D generator's seed
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.1  # as in mnist1d
    data_seed: Annotated[int | None, Ge(0)] = None  # if set, builds the data instead of the seed

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        base = MNIST1D(num_samples=self.num_samples, dataset_seed=self.dataset_seed,
                       val_fraction=self.val_fraction)
        return _with_long_tail(base.splits(seed), self.imbalance_ratio, self.label_noise, seed)

