"""What a task gives the rest of heldout: train / val / test splits and their input spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from heldout.core.inputs import InputSpec

__all__ = ["InputSpec", "Split", "Splits", "Task"]


@dataclass(frozen=True)
class Split:
    """One split: inputs ``x``, training targets ``y`` and, where labels were corrupted,
    the ``clean_y`` they were corrupted from (``None`` when ``y`` is clean); ``groups`` gives
    each example's group for group metrics (worst-group accuracy)."""

    x: Tensor
    y: Tensor
    clean_y: Tensor | None = None
    groups: Tensor | None = None  # an integer group (or domain) id per example, if known

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.groups is not None and len(self.groups) != len(self.y):
            raise ValueError(f"groups has {len(self.groups)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def corrupted(self) -> Tensor:
        """Boolean mask of the examples whose label was corrupted."""
        if self.clean_y is None:
            return torch.zeros(len(self.y), dtype=torch.bool)
        return self.clean_y != self.y


@dataclass(frozen=True)
class Splits:
    """The splits of a task plus what a model needs to know to consume them.

    Classification tasks have integer targets and ``num_classes`` classes; regression tasks
    have float targets of shape ``(N, num_classes)`` (``num_classes`` outputs).
    """

    train: Split
    val: Split
    test: Split
    input: InputSpec
    num_classes: int
    # Further evaluation splits, e.g. per domain of a multi-domain task: "val@rot30" is the
    # validation part of domain "rot30". Names use "@" (never "/", which separates metrics).
    extra: Mapping[str, Split] = field(default_factory=dict)

    names = ("train", "val", "test")

    def __post_init__(self) -> None:
        for name in self.extra:
            if "/" in name or name in self.names:
                raise ValueError(f"extra split {name!r}: must not contain '/' or reuse "
                                 f"{', '.join(self.names)}")

    def __getitem__(self, name: str) -> Split:
        if name in self.names:
            return getattr(self, name)
        if name in self.extra:
            return self.extra[name]
        valid = [*self.names, *self.extra]
        raise KeyError(f"unknown split {name!r}; valid splits: {', '.join(valid)}")

    @property
    def regression(self) -> bool:
        return self.train.y.is_floating_point()

    def items(self) -> list[tuple[str, Split]]:
        """The non-empty splits: train, val, test, then the extra ones in their order."""
        named = [(n, getattr(self, n)) for n in self.names]
        return [(n, s) for n, s in [*named, *self.extra.items()] if len(s)]


class Task:
    """Base of the registered tasks. A task is a frozen dataclass of its parameters."""

    registry_name: str

    def __post_init__(self) -> None:
        """Subclasses (dataclasses) check their parameters here; bounds declared on the
        fields (:mod:`heldout.core.bounds`) are checked before, by the registry."""

    @property
    def input(self) -> InputSpec:
        """The input spec, known without generating the data."""
        raise NotImplementedError

    def splits(self, seed: int) -> Splits:
        """Build the splits deterministically from ``seed`` without touching global RNGs."""
        raise NotImplementedError
