"""All n-bit patterns with a thresholded label: the toy task of the information-plane papers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import random_partition, resolve_seed, split_counts

__all__ = ["BitPatterns"]


@TASKS.register(
    "bit_patterns",
    summary="All 2^n binary patterns (±1) labelled by a random linear threshold: the "
    "information-plane toy task.",
    papers=(6,),
)
@dataclass(frozen=True)
class BitPatterns(Task):
    """Every pattern of ``n_bits`` bits (coded ±1) is one example; its label is
    1[w·x > median] for a Gaussian w drawn from the seed, so the classes are balanced. A
    stand-in for the 12-bit dataset of Shwartz-Ziv & Tishby used by Chelombiev et al.
    ("Adaptive Estimators Show Information Compression in Deep Neural Networks",
    arXiv:1902.09037), whose exact labelling function is not available offline."""

    n_bits: Annotated[int, Interval(2, 20)] = 12  # pattern length: 2^n_bits examples
    # share of the patterns used for training
    train_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.8
    val_fraction: Annotated[float, Ge(0)] = 0.0  # share used for validation (the rest is test)
    data_seed: int | None = None  # overrides the run's seed for the labels and the split

    def __post_init__(self) -> None:
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(f"train_fraction + val_fraction must be < 1, got "
                             f"{self.train_fraction} + {self.val_fraction}")

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (self.n_bits,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        codes = torch.arange(2**self.n_bits)
        bits = ((codes[:, None] >> torch.arange(self.n_bits)) & 1).float() * 2 - 1
        w = torch.randn(self.n_bits, generator=stream_generator(seed, "teacher"))
        scores = bits @ w
        labels = (scores > scores.median()).long()
        train, val, test = random_partition(
            len(labels), split_counts(len(labels), (self.train_fraction, self.val_fraction)),
            stream_generator(seed, "split"))
        return Splits(Split(bits[train], labels[train]), Split(bits[val], labels[val]),
                      Split(bits[test], labels[test]), self.input, num_classes=2)
