"""Data selection: training on the hardest fixed batches under the same update budget (#74)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = ["HardBatches", "select_hard_batches"]


def select_hard_batches(batch_losses: Tensor, fraction: float) -> Tensor:
    """Indices of the ⌊δ·b⌋ batches with the highest recorded loss, hardest first (ties keep
    index order); at least one."""
    count = max(1, math.floor(fraction * len(batch_losses)))
    order = torch.sort(batch_losses, descending=True, stable=True).indices
    return order[:count]


@TECHNIQUES.register(
    "hard_batches",
    summary="Train on the highest-loss fraction δ of fixed batches, at the same update "
    "budget.",
    papers=(74,),
    search_space={"fraction": ("choice", [0.2, 0.5, 0.8])},
)
@dataclass
class HardBatches(Technique):
    """The training set is cut once into b fixed batches (a seeded permutation, batch size as
    configured). The first pass visits every batch and records its loss; after that, each
    round trains on the ⌊δ·b⌋ batches with the highest recorded loss, hardest first, and
    updates their losses. The number of updates is the run's ``steps``, as for plain training.
    δ = 1 is plain training on fixed batches. Needs tensor training data.

    References:
        Can we learn better with hard samples? (arXiv:2304.03486).
    """

    fraction: float = 0.5  # δ, the share of batches kept in each round
    seed: int = 0  # seeds the fixed partition into batches
    _batch_losses: Tensor | None = field(default=None, init=False, repr=False)
    _queue: list[int] = field(default_factory=list, init=False, repr=False)
    _current: int = field(default=-1, init=False, repr=False)

    touches = frozenset({"batch", "after_step"})

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def _partition(self, state: Any) -> list[Tensor]:
        data = getattr(state, "train_data", None)
        if data is None:
            raise ValueError("hard_batches needs the training data as tensors")
        n, size = len(data[1]), state.batch_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return list(order.split(size))

    def on_batch_start(self, state: Any) -> None:
        batches = self._partition(state)
        if self._batch_losses is None:
            self._batch_losses = torch.zeros(len(batches))  # all set during the first pass
            self._queue = list(range(len(batches)))  # the first pass: every batch
        if not self._queue:
            self._queue = select_hard_batches(self._batch_losses, self.fraction).tolist()
        self._current = self._queue.pop(0)
        index = batches[self._current].to(state.train_data[1].device)
        x, y = state.train_data
        state.batch = (x[index], y[index], index)

    def on_after_step(self, state: Any) -> None:
        if self._batch_losses is not None and self._current >= 0 and state.loss is not None:
            self._batch_losses[self._current] = float(state.loss)

    def state_dict(self) -> dict[str, Any]:
        if self._batch_losses is None:
            return {}
        return {"batch_losses": self._batch_losses, "queue": list(self._queue),
                "current": self._current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._batch_losses = state["batch_losses"]
            self._queue = list(state["queue"])
            self._current = state["current"]
