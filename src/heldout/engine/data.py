"""Batch streams the Trainer can resume exactly.

:class:`TensorBatches` serves a full batch, or shuffled minibatches whose order is a pure
function of ``(seed, epoch)``, so its position is two integers. :class:`LoaderBatches` wraps any
``DataLoader``: on resume it replays the epoch from the global RNG state captured at the start
of that epoch and skips the batches already consumed, which reproduces the order of every
loader whose shuffling draws from torch's global RNG (the default) with ``num_workers=0`` or
seeded workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from heldout.core.state import Batch

__all__ = ["Batch", "LoaderBatches", "TensorBatches", "make_batches"]



class TensorBatches:
    """Full batch (``batch_size=None``) or seeded shuffled minibatches over tensors."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int | None, seed: int, device: Any = None
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need the same, non-zero number of inputs and targets; "
                             f"got {len(x)} and {len(y)}")
        self.x, self.y = x.to(device), y.to(device)
        self.n = len(y)
        self.batch_size = None if batch_size is None or batch_size >= self.n else batch_size
        self.seed = seed
        self.epoch = 0
        self.index = 0  # batches of the current epoch already served
        self._order: Tensor | None = None
        self._all = torch.arange(self.n, device=self.x.device)

    @property
    def batches_per_epoch(self) -> int:
        return 1 if self.batch_size is None else -(-self.n // self.batch_size)

    def sizes(self) -> dict[str, int]:
        return {"batch_size": self.batch_size or self.n, "train_size": self.n,
                "steps_per_epoch": self.batches_per_epoch}

    @property
    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y

    def _epoch_order(self) -> Tensor:
        if self._order is None:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
            self._order = torch.randperm(self.n, generator=gen).to(self.x.device)
        return self._order

    def __next__(self) -> Batch:
        if self.batch_size is None:
            self.epoch += 1
            return self.x, self.y, self._all
        start = self.index * self.batch_size
        idx = self._epoch_order()[start : start + self.batch_size]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return self.x[idx], self.y[idx], idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._order = state["epoch"], state["index"], None


class LoaderBatches:
    """Batches from a ``DataLoader`` yielding ``(x, y)`` or ``(x, y, index)``, resumable."""

    def __init__(self, loader: DataLoader[Any], device: Any = None) -> None:
        self.loader = loader
        self.device = device
        self.epoch = 0
        self.index = 0
        self._iterator: Iterator[Any] | None = None
        self._epoch_rng: Tensor | None = None

    def sizes(self) -> dict[str, int | None]:
        dataset = getattr(self.loader, "dataset", None)
        try:
            n = len(dataset) if dataset is not None else None
            steps = len(self.loader)
        except TypeError:  # an iterable-style dataset has no length
            n, steps = None, None
        return {"batch_size": self.loader.batch_size, "train_size": n, "steps_per_epoch": steps}

    def _start_epoch(self) -> None:
        self._epoch_rng = torch.get_rng_state()
        self._iterator = iter(self.loader)

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._start_epoch()
        try:
            item = next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch()
            item = next(self._iterator)  # type: ignore[arg-type]
        self.index += 1
        if not isinstance(item, list | tuple) or len(item) not in (2, 3):
            raise TypeError("the training DataLoader must yield (inputs, targets) or "
                            f"(inputs, targets, indices); got {type(item).__name__}")
        x, y, *idx = item
        return x.to(self.device), y.to(self.device), idx[0] if idx else None

    def state_dict(self) -> dict[str, Any]:
        rng = self._epoch_rng if self._epoch_rng is not None else torch.get_rng_state()
        return {"epoch": self.epoch, "index": self.index, "epoch_rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay the current epoch up to the saved position (call before restoring RNGs)."""
        self.epoch, self.index = state["epoch"], 0
        torch.set_rng_state(state["epoch_rng"])
        self._start_epoch()
        for _ in range(state["index"]):
            next(self._iterator)  # type: ignore[arg-type]
            self.index += 1


def make_batches(
    data: Any, batch_size: int | None, seed: int, device: Any = None
) -> TensorBatches | LoaderBatches:
    """A resumable batch stream from ``(x, y)`` tensors, a ``Split`` or a ``DataLoader``."""
    if isinstance(data, DataLoader):
        if batch_size is not None:
            raise ValueError("batch_size is set by the DataLoader; pass batch_size=None")
        return LoaderBatches(data, device)
    x, y = _as_xy(data)
    return TensorBatches(x, y, batch_size, seed, device)


def _as_xy(data: Any) -> tuple[Tensor, Tensor]:
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    if isinstance(data, list | tuple) and len(data) == 2:
        return data[0], data[1]
    raise TypeError(
        f"training data must be (inputs, targets) tensors, a Split or a DataLoader; "
        f"got {type(data).__name__}"
    )
