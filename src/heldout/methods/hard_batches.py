"""Data selection: training on the hardest fixed batches under the same update budget (#74)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Interval
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = ["HardBatches", "select_hard_batches"]

Order = Literal["dataset", "hardest_first"]


def select_hard_batches(batch_losses: Tensor, fraction: float, order: Order = "dataset") -> Tensor:
    """Indices of the ⌊δ·b⌋ batches with the highest recorded loss (ties keep index order), at
    least one; listed in dataset order (ascending index, as the authors' code trains them) or
    ``order="hardest_first"``.

    Example:
        >>> losses = torch.tensor([0.5, 2.0, 1.0, 3.0])
        >>> select_hard_batches(losses, 0.5), select_hard_batches(losses, 0.5, "hardest_first")
        (tensor([1, 3]), tensor([3, 1]))
    """
    if order not in get_args(Order):
        raise ValueError(f"select_hard_batches: unknown order {order!r}; valid: "
                         f"{', '.join(get_args(Order))}")
    if not 0 < fraction <= 1:
        raise ValueError(f"select_hard_batches: fraction must be in (0, 1], got {fraction}")
    count = max(1, math.floor(fraction * len(batch_losses)))
    hardest = torch.sort(batch_losses, descending=True, stable=True).indices[:count]
    return hardest.sort().values if order == "dataset" else hardest


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
    round trains on the ⌊δ·b⌋ batches with the highest recorded loss and updates their
    losses. The number of updates is the run's ``steps``, as for plain training. δ = 1 is
    plain training on fixed batches. Needs tensor training data.

    Against the authors' code (imjohnzakkam/DyBAT, ``run.py``, ``turbo_train``):

    * order: a round trains its selected batches in dataset order (ascending batch index), as
      the authors' loop over the loader does; ``order="hardest_first"`` trains them by
      decreasing recorded loss instead (heldout's earlier default), which changes the
      trajectory from the first round on.
    * the last partial batch: dropped, as the authors' loader does (``drop_last=True``), so
      b = ⌊n / batch size⌋ and the examples past b·batch size (of the seeded permutation) are
      never trained on; ``drop_last=False`` keeps it as a smaller batch. With a batch as large
      as the training set (full batch) there is one batch and nothing is dropped.
    * δ·b < 1: the authors' code selects ⌊δ·b⌋ = 0 batches and trains nothing after the first
      pass (the run ends early at b updates); heldout keeps the single hardest batch each
      round, so the update budget is still spent.

    References:
        Can we learn better with hard samples? (arXiv:2304.03486).
    """

    # δ, the share of batches kept in each round
    fraction: Annotated[float, Interval(0, 1, closed="right")] = 0.5
    seed: int = 0  # seeds the fixed partition into batches
    order: Order = "dataset"  # train a round's batches in dataset order (authors) or hardest_first
    drop_last: bool = True  # drop the last partial batch, as the authors' loader does
    _batch_losses: Tensor | None = field(default=None, init=False, repr=False)
    _queue: list[int] = field(default_factory=list, init=False, repr=False)
    _current: int = field(default=-1, init=False, repr=False)

    touches = frozenset({"batch", "after_step"})

    def __post_init__(self) -> None:
        if self.order not in get_args(Order):
            raise ValueError(f"unknown order {self.order!r}; valid: {', '.join(get_args(Order))}")

    def _partition(self, state: Any) -> list[Tensor]:
        data = getattr(state, "train_data", None)
        if data is None:
            raise ValueError("hard_batches needs the training data as tensors")
        n, size = len(data[1]), state.batch_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        if self.drop_last:
            order = order[: n // size * size]
        return list(order.split(size))

    def on_batch_start(self, state: Any) -> None:
        batches = self._partition(state)
        if self._batch_losses is None:
            self._batch_losses = torch.zeros(len(batches))  # all set during the first pass
            self._queue = list(range(len(batches)))  # the first pass: every batch
        if not self._queue:
            self._queue = select_hard_batches(self._batch_losses, self.fraction,
                                              self.order).tolist()
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
