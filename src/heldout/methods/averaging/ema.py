"""Exponential moving average of the weights, updated after each step: θ̄ ← d·θ̄ + (1 − d)·θ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

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
    are copied from ``model``, as they are not trained by the optimizer."""
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

    decay: float = 0.999  # weight of the running average at each step
    evaluate_average: bool = True  # measures use the average (else the raw weights)

    def __post_init__(self) -> None:
        _check_decay(self.decay)

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
