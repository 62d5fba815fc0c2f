"""Modular arithmetic, the grokking testbed: learn ``a ∘ b mod p`` from a fraction of all pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import (
    noisy_split,
    random_partition,
    resolve_seed,
    split_counts,
)

__all__ = ["ModularArithmetic", "Operation", "is_prime", "modular_table"]

Operation = Literal["+", "-", "*", "/", "x2+y2"]


def is_prime(number: int) -> bool:
    """Whether ``number`` is prime (trial division; the moduli here are small)."""
    if number < 2:
        return False
    divisor = 2
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 1
    return True


def modular_table(p: int, operation: Operation) -> tuple[Tensor, Tensor]:
    """Every example of ``a ∘ b mod p``: token pairs of shape ``(N, 2)`` and labels ``(N,)``.

    The pairs are all ordered ``(a, b)`` with ``0 <= a, b < p`` in row-major order, except that
    division leaves out ``b = 0`` and computes ``a * b^{-1} mod p`` (``p`` must be prime).
    """
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if operation == "/":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([0] + [pow(value, -1, p) for value in range(1, p)])
        labels = a * inverse[b] % p
    elif operation == "+":
        labels = (a + b) % p
    elif operation == "-":
        labels = (a - b) % p  # torch's % takes the sign of the divisor, so this is in [0, p)
    elif operation == "*":
        labels = a * b % p
    elif operation == "x2+y2":
        labels = (a * a + b * b) % p
    else:
        raise ValueError(
            f"unknown operation {operation!r}; valid: {', '.join(get_args(Operation))}"
        )
    return torch.stack([a, b], dim=1), labels


@TASKS.register(
    "modular",
    summary="Modular arithmetic a∘b mod p on all pairs, random train/val/test split, label noise.",
    papers=(9, 68),
)
@dataclass(frozen=True)
class ModularArithmetic(Task):
    """Modular arithmetic: predict ``a ∘ b mod p`` from the token pair ``(a, b)``.

    Every ordered pair ``(a, b)`` with ``0 <= a, b < p`` is one example (``b != 0`` for
    division, which computes ``a * b^{-1} mod p``; ``x2+y2`` is ``(a² + b²) mod p``). A random
    permutation from the seed assigns ``round(train_fraction * N)`` pairs to train,
    ``round(val_fraction * N)`` of the rest to val and the remainder to test. Then
    ``round(label_corruption * n_train)`` random train labels are replaced by a uniformly random
    different class (``clean_y`` keeps the true ones); val and test labels are clean. The split
    and the corruption draw from separate random streams, so changing the corruption rate leaves
    the split unchanged.

    References:
        Prieto, Barsbey, Mediano, Birdal. Grokking at the Edge of Numerical Stability.
        arXiv:2501.04697 (p=113, addition, train fraction 0.4).
        Doshi, Das, He, Gromov. To Grok or not to Grok: Disentangling Generalization and
        Memorization on Corrupted Algorithmic Datasets. arXiv:2310.13061.

    Example:
        >>> splits = ModularArithmetic(p=5, train_fraction=0.6).splits(seed=0)
        >>> len(splits.train), len(splits.test), splits.num_classes
        (15, 10, 5)
    """

    # the modulus; also the vocabulary size and the number of classes
    p: Annotated[int, Ge(2)] = 113
    operation: Operation = "+"  # a∘b: "+", "-", "*", "/" (a * b^-1, p prime) or "x2+y2"
    # fraction of all pairs used for training
    train_fraction: Annotated[float, Interval(0, 1, closed="right")] = 0.4
    # fraction of all pairs held out as val (from the non-train pairs)
    val_fraction: Annotated[float, Interval(0, 1)] = 0.0
    # fraction of train labels replaced by a different class
    label_corruption: Annotated[float, Interval(0, 1)] = 0.0
    # if set, builds the data instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    def __post_init__(self) -> None:
        if self.operation not in get_args(Operation):
            raise ValueError(
                f"operation must be one of {', '.join(get_args(Operation))}, got {self.operation!r}"
            )
        if self.operation == "/" and not is_prime(self.p):
            raise ValueError(f"p must be prime for division (b must be invertible), got {self.p}")
        if self.train_fraction + self.val_fraction > 1:
            raise ValueError(
                f"train_fraction + val_fraction must be <= 1, got "
                f"{self.train_fraction} + {self.val_fraction}"
            )

    @property
    def input(self) -> InputSpec:
        return InputSpec("tokens", (2,), vocab=self.p)

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        x, y = modular_table(self.p, self.operation)
        counts = split_counts(len(y), (self.train_fraction, self.val_fraction))
        train, val, test = random_partition(len(y), counts, stream_generator(seed, "split"))
        noise = stream_generator(seed, "label_corruption")
        return Splits(
            train=noisy_split(x[train], y[train], self.label_corruption, self.p, noise),
            val=Split(x[val], y[val]),
            test=Split(x[test], y[test]),
            input=self.input,
            num_classes=self.p,
        )
