"""Exponential moving average of the weights, updated after each step: θ̄ ← d·θ̄ + (1 − d)·θ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from heldout.core.bounds import Annotated, Interval
from heldout.core.checks import check_same_shape, check_unit_interval
from heldout.core.stacked import Stack, StackedRule, per_copy
from heldout.core.stacked import cast as stacked_cast
from heldout.methods.averaging.average import (
    AveragingRule,
    AveragingTechnique,
    WeightAverage,
    average_into,
)
from heldout.registry import TECHNIQUES

__all__ = ["EMA", "ExponentialMovingAverage", "ema_rule", "ema_update"]

_REFERENCE = ("Acceleration of Stochastic Approximation by Averaging (Polyak & Juditsky, "
              "SIAM J. Control Optim. 1992; no arXiv)")


def _check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")


def ema_rule(decay: float) -> AveragingRule:
    """The EMA rule θ̄ ← θ̄ + (1 − d)(θ − θ̄) = d·θ̄ + (1 − d)·θ, whatever the count: one
    ``torch._foreach_lerp_`` (it is ``torch.optim.swa_utils.get_ema_multi_avg_fn``)."""
    _check_decay(decay)
    return get_ema_multi_avg_fn(decay)


def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """θ̄ ← decay · θ̄ + (1 - decay) · θ for every parameter; buffers (BatchNorm statistics)
    are copied from ``model``, as they are not trained by the optimizer. ``decay`` is in
    [0, 1) and the two models have parameters of the same shapes."""
    decay = check_unit_interval("ema_update", "decay", decay)
    for a, p in zip(average.parameters(), model.parameters(), strict=True):
        check_same_shape("ema_update", ("average parameter", a), ("model parameter", p))
    average_into(average, model, ema_rule(decay), 0)


class ExponentialMovingAverage(WeightAverage):
    """A copy of ``model`` that tracks the exponential moving average of its weights: the
    :class:`~heldout.methods.averaging.average.WeightAverage` with the EMA rule. The average
    starts from the model's weights at construction; buffers follow the model.

    Example:
        >>> import torch
        >>> model = nn.Linear(2, 2)
        >>> ema = ExponentialMovingAverage(model, decay=0.9)
        >>> ema.update(model)  # call after each optimizer step
        >>> ema.module(torch.ones(1, 2)).shape
        torch.Size([1, 2])

    References:
        Acceleration of Stochastic Approximation by Averaging (Polyak & Juditsky, 1992).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__(model, ema_rule(decay))
        self.decay = decay


@TECHNIQUES.register(
    "ema",
    summary="Exponential moving average of the weights after each step; evaluate the average.",
    search_space={"decay": ("choice", [0.99, 0.999, 0.9999])},
    references=(_REFERENCE,),
)
@dataclass
class EMA(AveragingTechnique):
    """Keep an :class:`ExponentialMovingAverage`; measures see the averaged weights."""

    # weight of the running average at each step
    decay: Annotated[float, Interval(0, 1, closed="left")] = 0.999
    evaluate_average: bool = True  # measures use the average (else the raw weights)

    vectorizable = frozenset({"decay"})

    def _average_of(self, state: Any) -> WeightAverage:
        return ExponentialMovingAverage(state.model, self.decay)

    def average(self, model: nn.Module) -> ExponentialMovingAverage:
        """The running average of ``model``: created (a copy of it) at first use, with the
        state a checkpoint restored, if any."""
        average = self._average
        if average is None:
            average = self._adopt(ExponentialMovingAverage(model, self.decay))
        return cast(ExponentialMovingAverage, average)

    def on_after_step(self, state: Any) -> None:
        self.average(state.model).update(state.model)

    def eval_model(self, state: Any) -> nn.Module | None:
        return self.average(state.model).module if self.evaluate_average else None

    @classmethod
    def stacked_rule(cls, copies: Sequence[EMA], stack: Stack) -> StackedRule:
        return _StackedEMA(copies, stack)


class _StackedEMA(StackedRule):
    """The copies' averages as a second (K, P) tensor, from the initial weights, updated after
    each step by the EMA rule's op (``lerp`` with weight 1 − decay, per copy) and evaluated in
    place of the weights when the technique evaluates its average."""

    def __init__(self, copies: Sequence[EMA], stack: Stack) -> None:
        self.average = stack.flat.clone()
        self.weight = per_copy([1.0 - c.decay for c in copies], stack.flat)
        self.evaluate_average = copies[0].evaluate_average
        self.updates = 0
        self.stack = stack

    @torch.no_grad()
    def after_step(self, flat: Tensor) -> None:
        self.average.lerp_(flat, stacked_cast(self.weight, flat))
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
