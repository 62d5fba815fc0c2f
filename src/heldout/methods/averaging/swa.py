"""Stochastic weight averaging: the equal-weight mean θ̄ = (1/n) Σ θ_t of the points of the late
trajectory, from a start step, every k steps."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_swa_multi_avg_fn

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.methods.averaging.average import (
    AveragingRule,
    AveragingTechnique,
    WeightAverage,
    average_into,
)
from heldout.methods.averaging.batchnorm import has_batchnorm, recompute_batchnorm_stats
from heldout.registry import TECHNIQUES

__all__ = ["SWA", "StochasticWeightAverage", "swa_rule", "swa_update"]

_REFERENCE = ("Averaging Weights Leads to Wider Optima and Better Generalization "
              "(Izmailov et al., UAI 2018; arXiv:1803.05407)")

swa_rule: AveragingRule = get_swa_multi_avg_fn()
"""The SWA rule θ̄ ← θ̄ + (θ − θ̄)/(n + 1) with n points already averaged (n = 0: θ̄ ← θ): one
``torch._foreach_lerp_`` with weight 1/(n + 1) (``torch.optim.swa_utils.get_swa_multi_avg_fn``;
given a Python int n, the weight is a float64 scalar, exact for float64 models)."""


def swa_update(average: nn.Module, model: nn.Module, num_averaged: int) -> None:
    """Add ``model`` to the equal-weight running average held in ``average``:
    θ̄ ← θ̄ + (θ − θ̄) / (n + 1), with n = ``num_averaged`` points already in it (n = 0 copies
    θ). Buffers (BatchNorm statistics) are copied from ``model``; recompute them for the
    average with :func:`~heldout.methods.averaging.batchnorm.recompute_batchnorm_stats`.

    References:
        Averaging Weights Leads to Wider Optima and Better Generalization (Izmailov et al.,
        UAI 2018; arXiv:1803.05407), Algorithm 1.
    """
    if num_averaged < 0:
        raise ValueError(f"num_averaged must be >= 0, got {num_averaged}")
    average_into(average, model, swa_rule, num_averaged)


class StochasticWeightAverage(WeightAverage):
    """A copy of ``model`` holding the equal-weight average of the weights it was given: the
    :class:`~heldout.methods.averaging.average.WeightAverage` with the SWA rule.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> swa = StochasticWeightAverage(model)
        >>> swa.update(model)  # at each averaging point (the paper: once per epoch)
        >>> swa.averaged
        1

    References:
        Izmailov et al., UAI 2018 (arXiv:1803.05407).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, swa_rule)

    @property
    def averaged(self) -> int:
        """The number of points in the average (``updates``)."""
        return self.updates


def _start_step(fraction: float, max_steps: int) -> int:
    return max(1, math.ceil(fraction * max_steps - 1e-9))


def _fork_rng(module: nn.Module) -> Any:
    """Keep the training RNG stream untouched by a BatchNorm pass (dropout draws)."""
    device = next((t.device for t in [*module.parameters(), *module.buffers()]),
                  torch.device("cpu"))
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device], device_type="cuda")
    return torch.random.fork_rng(devices=[])


@TECHNIQUES.register(
    "swa",
    summary="Stochastic weight averaging: equal-weight mean of the late-training weights; "
    "evaluate it.",
    search_space={"start_fraction": ("choice", [0.5, 0.75, 0.9])},
    references=(_REFERENCE,),
)
@dataclass
class SWA(AveragingTechnique):
    """Average the weights at steps s ≥ s₀ = ⌈start_fraction · max_steps⌉ with
    (s − s₀) divisible by ``every``, with equal weights; measures see the average.

    With BatchNorm the average's statistics are recomputed on the training data (one pass,
    :func:`~heldout.methods.averaging.batchnorm.recompute_batchnorm_stats`) before an
    evaluation that follows new points, and at fit end, as the official code does before each
    SWA evaluation. The RNG stream of training is left untouched by that pass. The learning
    rate is not changed: SWA's constant or cyclical schedule during averaging comes from a
    schedule technique or the optimizer.

    Defaults: one point per epoch (the official code's ``swa_c_epochs=1``); averaging over the
    last 25% of the run (``torch.optim.swa_utils``' example convention; the official CIFAR
    recipes start at epoch 161 of 300 or 126 of 225).

    Checkpoint: the holder's format plus ``bn_stale``; a dict of before the holder (the count
    under ``"averaged"``) loads.
    """

    # averaging starts after this fraction of max_steps
    start_fraction: Annotated[float, Interval(0, 1)] = 0.75
    # steps between averaged points; None: once per epoch
    every: Annotated[int | None, Ge(1)] = None
    bn_update: bool = True  # recompute the average's BatchNorm statistics on the training data
    evaluate_average: bool = True  # measures use the average (else the raw weights)
    _bn_stale: bool = field(default=False, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    @property
    def average(self) -> StochasticWeightAverage | None:
        """The running average (None before the fit starts)."""
        return self._average  # type: ignore[return-value]  # _average_of makes one

    def _average_of(self, state: Any) -> WeightAverage:
        return StochasticWeightAverage(state.model)

    def _every(self, state: Any) -> int:
        return self.every or state.steps_per_epoch or 1

    def on_after_step(self, state: Any) -> None:
        start = _start_step(self.start_fraction, state.max_steps)
        if state.step >= start and (state.step - start) % self._every(state) == 0:
            self._holder(state).update(state.model)
            self._bn_stale = True

    def _refresh_batchnorm(self, state: Any) -> None:
        swa = self._average
        if not (self.bn_update and self._bn_stale) or swa is None or swa.updates == 0:
            return
        self._bn_stale = False
        if not has_batchnorm(swa.module):
            return
        if state.train_data is None:
            if not self._warned:
                warnings.warn("swa: the training data are not tensors; the average keeps the "
                              "BatchNorm statistics of the current model", stacklevel=2)
                self._warned = True
            return
        with _fork_rng(swa.module):
            recompute_batchnorm_stats(swa.module, state.train_data[0], state.batch_size)

    def eval_model(self, state: Any) -> nn.Module | None:
        swa = self._average
        if not self.evaluate_average or swa is None or swa.updates == 0:
            return None
        self._refresh_batchnorm(state)
        return swa.module

    def on_fit_end(self, state: Any) -> None:
        self._refresh_batchnorm(state)

    def state_dict(self) -> dict[str, Any]:
        if self._average is None:
            return super().state_dict()
        return {**super().state_dict(), "bn_stale": self._bn_stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._bn_stale = bool(state.get("bn_stale", False))
        super().load_state_dict(state)
