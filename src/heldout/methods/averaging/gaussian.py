"""Gaussian trajectory averaging: a Gaussian-weighted mean of the weights along the trajectory,
w_k ∝ exp(−(k − μ)²/2σ²) over the point index k (PromptSRC's Gaussian prompt aggregation, GPA),
over saved checkpoints (:func:`gaussian_average`) or online (:class:`GaussianRule`, the
:class:`GaussianTrajectoryAverage` holder and the ``gaussian_averaging`` technique)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.methods.averaging.average import AveragingTechnique, WeightAverage
from heldout.methods.soups import StateDict, average_state_dicts
from heldout.registry import TECHNIQUES

__all__ = [
    "GaussianAveraging",
    "GaussianRule",
    "GaussianTrajectoryAverage",
    "gaussian_average",
    "gaussian_weights",
]

# PromptSRC's main (base-to-novel) GPA setting: μ = 15, σ = 1 over N = 20 epochs.
GPA_CENTER_FRACTION = 15 / 20
GPA_SIGMA_FRACTION = 1 / 20


def gaussian_weights(num: int, center: float | None = None,
                     sigma: float | None = None) -> Tensor:
    """Normalized Gaussian weights over the indices k = 1..num: w_k ∝ exp(−(k − μ)² / 2σ²).

    Defaults are PromptSRC's base-to-novel setting scaled to ``num`` points: μ = 0.75·num and
    σ = 0.05·num (μ = 15, σ = 1 for its N = 20 epochs). Its other settings: μ = 6, σ = 10 of 20
    epochs (cross-dataset), μ = 30, σ = 30 or μ = 45, σ = 5 of 50 epochs (few-shot). Indices
    start at 1, as in the official code. Returns float64.

    Example:
        >>> gaussian_weights(3, center=2.0, sigma=1.0)  # ∝ (e^-1/2, 1, e^-1/2)
        tensor([0.2741, 0.4519, 0.2741], dtype=torch.float64)

    References:
        Self-regulating Prompts: Foundational Model Adaptation without Forgetting (Khattak et
        al., ICCV 2023; arXiv:2307.06948), Gaussian weighted prompt aggregation.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    center = GPA_CENTER_FRACTION * num if center is None else float(center)
    sigma = GPA_SIGMA_FRACTION * num if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    log_w = _gaussian_log_weight(torch.arange(1, num + 1, dtype=torch.float64), center, sigma)
    w = torch.exp(log_w - log_w.max())  # the 1/(σ√2π) factor cancels in the normalization
    return w / w.sum()


def _gaussian_log_weight(index: Any, center: float, sigma: float) -> Any:
    return -0.5 * ((index - center) / sigma) ** 2


def gaussian_average(
    state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    center: float | None = None,
    sigma: float | None = None,
) -> StateDict:
    """Gaussian-weighted average of checkpoints along a trajectory (in order): checkpoint k
    (1-based) gets weight :func:`gaussian_weights` ``(K, center, sigma)[k-1]``.

    References:
        PromptSRC (Khattak et al., ICCV 2023; arXiv:2307.06948), GPA.
    """
    return average_state_dicts(state_dicts, gaussian_weights(len(state_dicts), center, sigma))


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high if low == -math.inf else high + math.log1p(math.exp(low - high))


class GaussianRule:
    """The online Gaussian rule over ``num_points`` points: point k = n + 1 (n already
    averaged) enters as θ̄ ← θ̄ + (g_k / G_k)(θ_k − θ̄), g_k = exp(−(k−μ)²/2σ²),
    G_k = Σ_{j≤k} g_j, so after point k the average is Σ_{j≤k} g_j θ_j / G_k, and after the
    last it is :func:`gaussian_average` of the whole trajectory. The first point is copied.

    G is kept in log space (``log_total``, the rule's checkpointed state, with μ, σ and the
    number of points), so far-from-centre points (g ≈ 1e-300) neither underflow nor divide by
    zero. It follows the ``multi_avg_fn`` signature but is stateful: call it once per update
    with every averaged tensor (as :class:`~heldout.methods.averaging.average.WeightAverage`
    does); ``AveragedModel`` calls it once per device and dtype group, which would count a
    point twice in a mixed-dtype model.

    References:
        PromptSRC (Khattak et al., ICCV 2023; arXiv:2307.06948), Gaussian prompt aggregation.
    """

    def __init__(self, num_points: int, center: float | None = None,
                 sigma: float | None = None) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.num_points = num_points
        self.center = GPA_CENTER_FRACTION * num_points if center is None else float(center)
        self.sigma = GPA_SIGMA_FRACTION * num_points if sigma is None else float(sigma)
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        self.log_total = -math.inf  # log Σ_{j≤k} g_j over the points averaged so far

    @torch.no_grad()
    def __call__(self, averaged: list[Tensor], current: list[Tensor], num_averaged: int) -> None:
        k = int(num_averaged) + 1
        if k > self.num_points:
            raise RuntimeError(f"all {self.num_points} points of the trajectory are averaged")
        log_g = _gaussian_log_weight(float(k), self.center, self.sigma)
        self.log_total = log_g if k == 1 else _logaddexp(self.log_total, log_g)
        if k == 1:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, math.exp(log_g - self.log_total))

    def state_dict(self) -> dict[str, Any]:
        return {"log_total": self.log_total, "num_points": self.num_points,
                "center": self.center, "sigma": self.sigma}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.log_total, self.num_points = float(state["log_total"]), int(state["num_points"])
        self.center, self.sigma = float(state["center"]), float(state["sigma"])


class GaussianTrajectoryAverage(WeightAverage):
    """Gaussian-weighted average of ``num_points`` successive states of a model, computed
    online: the :class:`~heldout.methods.averaging.average.WeightAverage` with the
    :class:`GaussianRule`. Every floating-point entry of the state dict is averaged
    (parameters and BatchNorm statistics, as PromptSRC averages whole state dicts); integer
    buffers are copied from the model.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> gpa = GaussianTrajectoryAverage(model, num_points=20)  # μ = 15, σ = 1
        >>> gpa.update(model)

    References:
        PromptSRC (Khattak et al., ICCV 2023; arXiv:2307.06948), Gaussian prompt aggregation.
    """

    rule: GaussianRule

    def __init__(self, model: nn.Module, num_points: int, center: float | None = None,
                 sigma: float | None = None) -> None:
        super().__init__(model, GaussianRule(num_points, center, sigma), average_buffers=True)

    @property
    def points(self) -> int:
        """The number of points averaged so far (``updates``)."""
        return self.updates

    @property
    def num_points(self) -> int:
        return self.rule.num_points


@TECHNIQUES.register(
    "gaussian_averaging",
    summary="Gaussian-weighted average of the weights along the trajectory (PromptSRC's "
    "GPA), online.",
    papers=(70,),
    search_space={"center_fraction": ("uniform", 0.5, 0.95),
                  "sigma_fraction": ("log_uniform", 0.02, 0.5)},
)
@dataclass
class GaussianAveraging(AveragingTechnique):
    """Keep the Gaussian-weighted mean of the weights at steps every·k, k = 1..K with
    K = ⌊max_steps / every⌋ and weights ∝ exp(−(k − μ)²/2σ²), μ = center_fraction·K,
    σ = sigma_fraction·K; measures see the average.

    Computed online (:class:`GaussianTrajectoryAverage`): the total K is known from the run
    length, and before the last point evaluation sees the normalized partial mean. PromptSRC
    aggregates once per epoch and applies the result at the end of training; ``every=None``
    gives its per-epoch aggregation. Defaults: its base-to-novel setting, μ = 15 and σ = 1 of
    20 epochs (0.75 and 0.05 of the run).

    Checkpoint: the holder's format (with the rule's ``log_total``, ``num_points``, ``center``,
    ``sigma``); a dict of before the holder (the count under ``"points"``) loads.
    """

    center_fraction: float = GPA_CENTER_FRACTION  # μ as a fraction of the points
    sigma_fraction: Annotated[float, Gt(0)] = GPA_SIGMA_FRACTION  # σ as a fraction of the points
    every: Annotated[int | None, Ge(1)] = 1  # steps between aggregated points; None: once per epoch
    evaluate_average: bool = True  # measures use the average (else the raw weights)

    @property
    def average(self) -> GaussianTrajectoryAverage | None:
        """The running average (None before the fit starts)."""
        return self._average  # type: ignore[return-value]  # _average_of makes one

    def _every(self, state: Any) -> int:
        return self.every or state.steps_per_epoch or 1

    def _average_of(self, state: Any) -> WeightAverage:
        points = max(1, state.max_steps // self._every(state))
        return GaussianTrajectoryAverage(
            state.model, points, self.center_fraction * points, self.sigma_fraction * points)

    def on_after_step(self, state: Any) -> None:
        gpa = cast(GaussianTrajectoryAverage, self._holder(state))
        if state.step % self._every(state) == 0 and gpa.updates < gpa.num_points:
            gpa.update(state.model)

    def eval_model(self, state: Any) -> nn.Module | None:
        gpa = self._average
        if not self.evaluate_average or gpa is None or gpa.updates == 0:
            return None
        return gpa.module
