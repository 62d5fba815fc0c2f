"""Weight averaging: an exponential moving average of the weights, updated after each step."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from heldout.core.checks import check_same_shape, check_unit_interval
from heldout.core.stacked import Stack, StackedRule, cast, per_copy
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = ["EMA", "ExponentialMovingAverage", "ema_update"]


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """θ̄ ← decay · θ̄ + (1 - decay) · θ for every parameter; buffers (BatchNorm statistics)
    are copied from ``model``, as they are not trained by the optimizer. ``decay`` is in
    [0, 1] and the two models have parameters of the same shapes."""
    decay = check_unit_interval("ema_update", "decay", decay)
    for a, p in zip(average.parameters(), model.parameters(), strict=True):
        check_same_shape("ema_update", ("average parameter", a), ("model parameter", p))
        a.lerp_(p.detach(), 1.0 - decay)
    for a, b in zip(average.buffers(), model.buffers(), strict=True):
        a.copy_(b)


class ExponentialMovingAverage:
    """A copy of ``model`` that tracks the exponential moving average of its weights.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> ema = ExponentialMovingAverage(model, decay=0.9)
        >>> ema.update(model)  # call after each optimizer step
        >>> ema.module(torch.ones(1, 2)).shape
        torch.Size([1, 2])

    References:
        Acceleration of Stochastic Approximation by Averaging (Polyak & Juditsky, 1992).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def update(self, model: nn.Module) -> None:
        ema_update(self.module, model, self.decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


@TECHNIQUES.register(
    "ema",
    summary="Exponential moving average of the weights after each step; evaluate the average.",
    search_space={"decay": ("choice", [0.99, 0.999, 0.9999])},
    references=("Acceleration of Stochastic Approximation by Averaging (Polyak & Juditsky, "
                "SIAM J. Control Optim. 1992; no arXiv)",),
)
@dataclass
class EMA(Technique):
    """Keep an :class:`ExponentialMovingAverage`; measures see the averaged weights."""

    decay: float = 0.999  # weight of the running average at each step
    evaluate_average: bool = True  # measures use the average (else the raw weights)
    _ema: ExponentialMovingAverage | None = field(default=None, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)

    touches = frozenset({"after_step", "eval_model"})
    vectorizable = frozenset({"decay"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")

    def average(self, model: nn.Module) -> ExponentialMovingAverage:
        """The running average of ``model``: created (a copy of it) at first use, with the
        state a checkpoint restored, if any."""
        if self._ema is None:
            self._ema = ExponentialMovingAverage(model, self.decay)
            if self._pending is not None:
                self._ema.load_state_dict(self._pending)
                self._pending = None
        return self._ema

    def on_fit_start(self, state) -> None:
        self.average(state.model)

    def on_after_step(self, state) -> None:
        self.average(state.model).update(state.model)

    def eval_model(self, state) -> nn.Module | None:
        return self.average(state.model).module if self.evaluate_average else None

    def state_dict(self) -> dict[str, Any]:
        return {} if self._ema is None else self._ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            if self._ema is None:
                self._pending = state
            else:
                self._ema.load_state_dict(state)

    @classmethod
    def stacked_rule(cls, copies: Sequence[EMA], stack: Stack) -> StackedRule:
        return _StackedEMA(copies, stack)


class _StackedEMA(StackedRule):
    """The copies' averages as a second (K, P) tensor, from the initial weights, updated after
    each step by :func:`ema_update`'s op (``lerp`` with weight 1 − decay, per copy) and
    evaluated in place of the weights when the technique evaluates its average."""

    def __init__(self, copies: Sequence[EMA], stack: Stack) -> None:
        self.average = stack.flat.clone()
        self.weight = per_copy([1.0 - c.decay for c in copies], stack.flat)
        self.evaluate_average = copies[0].evaluate_average
        self.updates = 0
        self.stack = stack

    @torch.no_grad()
    def after_step(self, flat: Tensor) -> None:
        self.average.lerp_(flat, cast(self.weight, flat))
        self.updates += 1

    def eval_weights(self, flat: Tensor) -> Tensor | None:
        return self.average if self.evaluate_average else None

    @torch.no_grad()
    def load(self, copies: Sequence[EMA], models: Sequence[nn.Module]) -> None:
        averages = [c.average(m) for c, m in zip(copies, models, strict=True)]
        self.average.copy_(torch.stack([
            torch.cat([p.reshape(-1) for p in a.module.parameters()]) for a in averages]))
        self.updates = averages[0].updates

    @torch.no_grad()
    def export(self, index: int, technique: EMA, model: nn.Module) -> None:
        average = technique.average(model)
        rows = self.stack.params(self.average)
        for name, param in average.module.named_parameters():
            param.copy_(rows[name][index])
        average.updates = self.updates
