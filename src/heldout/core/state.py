"""What a training run shares with the code that extends or observes it: :class:`State` and the
:class:`Logger` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor, nn

__all__ = ["Batch", "Logger", "State"]

Batch = tuple[Tensor, Tensor, Tensor | None]  # inputs, targets, dataset indices (if known)


class Logger(Protocol):
    """Receives the metrics of each evaluation; ``flush`` runs before every checkpoint. A
    logger may also define ``checkpointed(step, sha256)``: called with each new checkpoint's
    digest before the file replaces the previous one (raising stops the save)."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...


@dataclass
class State:
    """What techniques and callbacks see: the model, optimizer, step and the current batch."""

    model: nn.Module
    optimizer: Any
    max_steps: int
    batch_size: int | None = None  # examples per step (the whole set for full batch)
    train_size: int | None = None  # examples in the training set, when known
    steps_per_epoch: int | None = None  # optimizer steps per pass over the training set
    step: int = 0
    epoch: int = 0  # passes over the training set completed before the current batch
    train_data: tuple[Tensor, Tensor] | None = None  # the training tensors, when given as such
    train_groups: Tensor | None = None  # each training example's domain index, when known
    seed: int = 0  # the run's seed
    batch: Batch | None = None
    loss: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    acted: dict[str, list[str]] = field(default_factory=dict)  # event → techniques that act
