"""Model soups and weight averaging: uniform, greedy and Gaussian-weighted soups, stochastic
weight averaging, BatchNorm recalibration, and Sparse Model Soups (pruning with averaged
retrains).

A *soup* is a weighted mean of the weights of models that share an initialization (or a
pruned parent): θ = Σ_k w_k θ_k with Σ_k w_k = 1. The functions here work on state dicts (or
modules) and are what a user imports into their own loop; three registered techniques plug
them into the Trainer:

* ``swa``: stochastic weight averaging, θ̄ = (1/n) Σ θ_t over the points of the late trajectory
  (Izmailov et al. 2018).
* ``gaussian_averaging``: a Gaussian-weighted mean over the trajectory, w_k ∝ exp(−(k−μ)²/2σ²)
  over the point index k, computed online (PromptSRC's Gaussian prompt aggregation, GPA).
* ``magnitude_pruning``: a fixed magnitude mask kept through training, to retrain a pruned
  model in a heldout run (one prune–retrain phase of Sparse Model Soups).

Averaging rules for a state dict: floating-point entries are averaged; integer entries (the
BatchNorm batch counter ``num_batches_tracked``) are taken from the first dict, since an
average of counters is meaningless. Averaged BatchNorm statistics do not match averaged
weights: recompute them with :func:`recompute_batchnorm_stats`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune

from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = [
    "SWA",
    "GaussianAveraging",
    "GaussianTrajectoryAverage",
    "GreedySoupResult",
    "MagnitudePruning",
    "SoupPhase",
    "SparseSoupResult",
    "StochasticWeightAverage",
    "apply_mask",
    "average_state_dicts",
    "gaussian_average",
    "gaussian_weights",
    "greedy_soup",
    "has_batchnorm",
    "magnitude_prune_mask",
    "mask_sparsity",
    "recompute_batchnorm_stats",
    "sparse_model_soup",
    "swa_update",
    "uniform_soup",
]

StateDict = dict[str, Tensor]
Mask = dict[str, Tensor]  # parameter name → bool tensor, True where the weight is kept

# PromptSRC's main (base-to-novel) GPA setting: μ = 15, σ = 1 over N = 20 epochs.
GPA_CENTER_FRACTION = 15 / 20
GPA_SIGMA_FRACTION = 1 / 20


# --------------------------------------------------------------------------- soups


def _as_state_dict(source: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return source.state_dict() if isinstance(source, nn.Module) else source


def _is_averaged(value: Any) -> bool:
    return isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex())


def average_state_dicts(
    state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    weights: Sequence[float] | Tensor | None = None,
) -> StateDict:
    """The weighted mean Σ_k w_k θ_k / Σ_k w_k of state dicts (or modules) with the same keys.

    ``weights`` (non-negative, not all zero) default to uniform. Floating-point entries are
    averaged (accumulated in at least float32, returned in their own dtype); integer and bool
    entries, such as BatchNorm's ``num_batches_tracked``, are copied from the first dict.

    Example:
        >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([2.0, 4.0])}
        >>> average_state_dicts([a, b], weights=[3, 1])["w"]
        tensor([0.5000, 2.5000])

    References:
        Model soups: averaging weights of multiple fine-tuned models improves accuracy without
        increasing inference time (Wortsman et al., ICML 2022; arXiv:2203.05482).
    """
    dicts = [_as_state_dict(s) for s in state_dicts]
    if not dicts:
        raise ValueError("need at least one state dict to average")
    first = dicts[0]
    for index, other in enumerate(dicts[1:], start=1):
        if other.keys() != first.keys():
            extra, missing = set(other) - set(first), set(first) - set(other)
            raise ValueError(f"state dict {index} has different keys from state dict 0 "
                             f"(extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]})")
    if weights is None:
        factors = [1.0 / len(dicts)] * len(dicts)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if len(w) != len(dicts):
            raise ValueError(f"got {len(w)} weights for {len(dicts)} state dicts")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero: {w}")
        factors = (w / w.sum()).tolist()
    out: StateDict = {}
    for key, value in first.items():
        if not _is_averaged(value):
            out[key] = value.detach().clone() if isinstance(value, Tensor) else value
            continue
        acc_dtype = torch.promote_types(value.dtype, torch.float32)
        total = torch.zeros(value.shape, dtype=acc_dtype, device=value.device)
        for factor, d in zip(factors, dicts, strict=True):
            total.add_(d[key].detach().to(acc_dtype), alpha=factor)
        out[key] = total.to(value.dtype)
    return out


def uniform_soup(models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]]) -> StateDict:
    """The uniform soup θ = (1/K) Σ_k θ_k of K models (or state dicts) fine-tuned from one
    initialization; load it with ``model.load_state_dict``.

    References:
        Model soups (Wortsman et al., ICML 2022; arXiv:2203.05482).
    """
    return average_state_dicts(models_or_state_dicts)


@dataclass
class GreedySoupResult:
    """What :func:`greedy_soup` found."""

    state_dict: StateDict  # the soup: the uniform mean of the chosen candidates
    chosen: list[int]  # indices into the candidates, in the order they joined the soup
    trajectory: list[float]  # the soup's held-out score after each candidate was considered
    candidate_scores: list[float]  # each candidate's own held-out score
    tried: list[tuple[int, float]]  # (candidate, score of the soup with it added), each trial


def greedy_soup(
    candidates: Sequence[nn.Module | Mapping[str, Tensor]],
    evaluate_fn: Callable[[StateDict], float],
    *,
    scores: Sequence[float] | None = None,
    strict: bool = False,
) -> GreedySoupResult:
    """Greedy soup: add candidates in order of their own held-out score, keeping each only if
    the soup's held-out score does not decrease.

    Rule: sort the candidates by ``evaluate_fn`` (higher is better) on held-out data,
    descending; start the soup with the best; for each next candidate form the uniform mean of
    the soup's ingredients and it, (n·soup + θ)/(n + 1), and keep it if its score is ≥ the
    current soup's (``strict=True``: >, as in the model-soups repository's ``main.py``; the
    paper's Algorithm 1 and the Sparse Model Soups code use ≥). The soup is never worse on the
    selection data than the best single candidate, and the trajectory never decreases.

    ``evaluate_fn`` receives a state dict; when the models have BatchNorm, recompute its
    statistics inside it (:func:`recompute_batchnorm_stats`), as Sparse Model Soups does.
    ``scores`` are the candidates' own scores, if already known.

    Example:
        >>> cands = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}]
        >>> greedy_soup(cands, lambda sd: -abs(float(sd["w"]) - 2.0)).chosen
        [0, 1]

    References:
        Model soups (Wortsman et al., ICML 2022; arXiv:2203.05482), Recipe 1 (GreedySoup).
    """
    dicts = [_as_state_dict(c) for c in candidates]
    if not dicts:
        raise ValueError("greedy_soup needs at least one candidate")
    own = [float(evaluate_fn(dict(d))) for d in dicts] if scores is None else [
        float(s) for s in scores]
    if len(own) != len(dicts):
        raise ValueError(f"got {len(own)} scores for {len(dicts)} candidates")
    # stable sort: ties keep the given order; NaN scores go last
    order = sorted(range(len(dicts)),
                   key=lambda i: -own[i] if not math.isnan(own[i]) else math.inf)
    chosen = [order[0]]
    soup = average_state_dicts([dicts[order[0]]])
    best = own[order[0]]
    trajectory, tried = [best], []
    for index in order[1:]:
        trial = average_state_dicts([soup, dicts[index]], weights=[len(chosen), 1])
        score = float(evaluate_fn(trial))
        tried.append((index, score))
        if score > best or (not strict and score >= best):
            chosen.append(index)
            soup, best = trial, score
        trajectory.append(best)
    return GreedySoupResult(soup, chosen, trajectory, own, tried)


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


# --------------------------------------------------------------------------- BatchNorm


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer that tracks running statistics."""
    return bool(_batchnorms(model))


def _input_batches(data: Any, batch_size: int | None) -> Iterator[Tensor]:
    if isinstance(data, Tensor):
        x = data
    elif hasattr(data, "x"):  # a heldout Split
        x = data.x
    elif isinstance(data, tuple) and len(data) in (2, 3) and isinstance(data[0], Tensor):
        x = data[0]  # (inputs, targets[, indices]); a list is a sequence of batches
    else:  # an iterable of batches, e.g. a DataLoader
        if batch_size is not None:
            raise ValueError("batch_size applies to tensor data; a loader sets its own")
        for item in data:
            yield item[0] if isinstance(item, tuple | list) else item
        return
    yield from ([x] if batch_size is None else x.split(batch_size))


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, data: Any,
                              batch_size: int | None = None) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them over ``data``.

    One pass in training mode under ``no_grad`` with ``momentum=None``, so each running
    statistic is the cumulative mean over batches of that batch's mean and unbiased variance
    (each batch counts equally; a last, smaller batch counts as much as the others). The
    modules' train/eval modes and momenta are restored afterwards. ``data``: an input tensor,
    a tuple ``(x, y)``, a ``Split``, or any other iterable of input batches (a list of
    tensors, a ``DataLoader``; ``batch_size`` must then be None). ``batch_size=None`` on
    tensors uses one batch. Dropout, if any, is active during the pass, as in
    training. A model without BatchNorm is returned unchanged.

    The official SWA code weights each batch by its size instead (momentum b/(n+b)); the two
    agree for batches of equal size.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> _ = recompute_batchnorm_stats(net, torch.randn(64, 3), batch_size=16)
        >>> int(net[1].num_batches_tracked)
        4

    References:
        Averaging Weights Leads to Wider Optima and Better Generalization (Izmailov et al.,
        UAI 2018; arXiv:1803.05407); as ``torch.optim.swa_utils.update_bn``.
    """
    layers = _batchnorms(model)
    if not layers:
        return model
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(layer, layer.momentum) for layer in layers]
    reference = next(iter(layers[0].buffers()))
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    seen = 0
    try:
        for x in _input_batches(data, batch_size):
            model(x.to(reference.device))
            seen += 1
    finally:
        for layer, momentum in momenta:
            layer.momentum = momentum
        for module, mode in modes:
            module.training = mode
    if seen == 0:
        raise ValueError("recompute_batchnorm_stats got no data; the statistics were reset")
    return model


# --------------------------------------------------------------------------- running averages


@torch.no_grad()
def swa_update(average: nn.Module, model: nn.Module, num_averaged: int) -> None:
    """Add ``model`` to the equal-weight running average held in ``average``:
    θ̄ ← θ̄ + (θ − θ̄) / (n + 1), with n = ``num_averaged`` points already in it (n = 0 copies
    θ). Buffers (BatchNorm statistics) are copied from ``model``; recompute them for the
    average with :func:`recompute_batchnorm_stats`.

    References:
        Averaging Weights Leads to Wider Optima and Better Generalization (Izmailov et al.,
        UAI 2018; arXiv:1803.05407), Algorithm 1.
    """
    if num_averaged < 0:
        raise ValueError(f"num_averaged must be >= 0, got {num_averaged}")
    targets = list(average.parameters())
    sources = [p.detach() for p in model.parameters()]
    if len(targets) != len(sources):
        raise ValueError("average and model have different numbers of parameters")
    if num_averaged == 0:
        torch._foreach_copy_(targets, sources)
    elif targets:
        torch._foreach_lerp_(targets, sources, 1.0 / (num_averaged + 1))
    for a, b in zip(average.buffers(), model.buffers(), strict=True):
        a.copy_(b)


class StochasticWeightAverage:
    """A copy of ``model`` holding the equal-weight average of the weights it was given.

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
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.averaged = 0

    def update(self, model: nn.Module) -> None:
        swa_update(self.module, model, self.averaged)
        self.averaged += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "averaged": self.averaged}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.averaged = int(state["averaged"])


class GaussianTrajectoryAverage:
    """Gaussian-weighted average of ``num_points`` successive states of a model, computed
    online: after point k it holds Σ_{j≤k} g_j θ_j / Σ_{j≤k} g_j with g_j = exp(−(j−μ)²/2σ²),
    which after the last point is :func:`gaussian_average` of the whole trajectory.

    The update is θ̄ ← θ̄ + (g_k / G_k)(θ_k − θ̄), G_k = Σ_{j≤k} g_j, with G kept in log space
    so that far-from-centre points (g ≈ 1e-300) neither underflow nor divide by zero. Every
    floating-point entry of the state dict is averaged (parameters and BatchNorm statistics,
    as PromptSRC averages whole state dicts); integer buffers are copied from the model.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> gpa = GaussianTrajectoryAverage(model, num_points=20)  # μ = 15, σ = 1
        >>> gpa.update(model)

    References:
        PromptSRC (Khattak et al., ICCV 2023; arXiv:2307.06948), Gaussian prompt aggregation.
    """

    def __init__(self, model: nn.Module, num_points: int, center: float | None = None,
                 sigma: float | None = None) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_points = num_points
        self.center = GPA_CENTER_FRACTION * num_points if center is None else float(center)
        self.sigma = GPA_SIGMA_FRACTION * num_points if sigma is None else float(sigma)
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        self.points = 0
        self.log_total = -math.inf  # log Σ_{j≤k} g_j

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.points >= self.num_points:
            raise RuntimeError(f"all {self.num_points} points of the trajectory are averaged")
        k = self.points + 1
        log_g = _gaussian_log_weight(float(k), self.center, self.sigma)
        self.log_total = _logaddexp(self.log_total, log_g)
        rate = math.exp(log_g - self.log_total)
        averaged, copied = [], []
        for a, p in zip(_entries(self.module), _entries(model), strict=True):
            (averaged if a.is_floating_point() else copied).append((a, p.detach()))
        if averaged:
            targets, sources = [a for a, _ in averaged], [p for _, p in averaged]
            if k == 1:
                torch._foreach_copy_(targets, sources)
            else:
                torch._foreach_lerp_(targets, sources, rate)
        for a, p in copied:
            a.copy_(p)
        self.points = k

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "points": self.points,
                "log_total": self.log_total, "num_points": self.num_points,
                "center": self.center, "sigma": self.sigma}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.points, self.log_total = int(state["points"]), float(state["log_total"])
        self.num_points = int(state["num_points"])
        self.center, self.sigma = float(state["center"]), float(state["sigma"])


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high if low == -math.inf else high + math.log1p(math.exp(low - high))


def _entries(model: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *model.buffers()]


def _fork_rng(module: nn.Module) -> Any:
    """Keep the training RNG stream untouched by a BatchNorm pass (dropout draws)."""
    device = next((t.device for t in _entries(module)), torch.device("cpu"))
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device], device_type="cuda")
    return torch.random.fork_rng(devices=[])


# --------------------------------------------------------------------------- techniques


def _start_step(fraction: float, max_steps: int) -> int:
    return max(1, math.ceil(fraction * max_steps - 1e-9))


@TECHNIQUES.register(
    "swa",
    summary="Stochastic weight averaging: equal-weight mean of the late-training weights; "
    "evaluate it.",
    search_space={"start_fraction": ("choice", [0.5, 0.75, 0.9])},
    references=("Averaging Weights Leads to Wider Optima and Better Generalization "
                "(Izmailov et al., UAI 2018; arXiv:1803.05407)",),
)
@dataclass
class SWA(Technique):
    """Average the weights at steps s ≥ s₀ = ⌈start_fraction · max_steps⌉ with
    (s − s₀) divisible by ``every``, with equal weights; measures see the average.

    With BatchNorm the average's statistics are recomputed on the training data (one pass,
    :func:`recompute_batchnorm_stats`) before an evaluation that follows new points, and at
    fit end, as the official code does before each SWA evaluation. The RNG stream of training
    is left untouched by that pass. The learning rate is not changed: SWA's constant or
    cyclical schedule during averaging comes from a schedule technique or the optimizer.

    Defaults: one point per epoch (the official code's ``swa_c_epochs=1``); averaging over the
    last 25% of the run (``torch.optim.swa_utils``' example convention; the official CIFAR
    recipes start at epoch 161 of 300 or 126 of 225).
    """

    start_fraction: float = 0.75  # averaging starts after this fraction of max_steps
    every: int | None = None  # steps between averaged points; None: once per epoch
    bn_update: bool = True  # recompute the average's BatchNorm statistics on the training data
    evaluate_average: bool = True  # measures use the average (else the raw weights)
    _swa: StochasticWeightAverage | None = field(default=None, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _bn_stale: bool = field(default=False, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    touches = frozenset({"after_step", "eval_model"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_fraction <= 1.0:
            raise ValueError(f"start_fraction must be in [0, 1], got {self.start_fraction}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be >= 1 or None, got {self.every}")

    @property
    def average(self) -> StochasticWeightAverage | None:
        """The running average (None before the fit starts)."""
        return self._swa

    def _container(self, model: nn.Module) -> StochasticWeightAverage:
        if self._swa is None:
            self._swa = StochasticWeightAverage(model)
            if self._pending is not None:
                self._swa.load_state_dict(self._pending)
                self._pending = None
        return self._swa

    def _every(self, state: Any) -> int:
        return self.every or state.steps_per_epoch or 1

    def on_fit_start(self, state: Any) -> None:
        self._container(state.model)

    def on_after_step(self, state: Any) -> None:
        start = _start_step(self.start_fraction, state.max_steps)
        if state.step >= start and (state.step - start) % self._every(state) == 0:
            self._container(state.model).update(state.model)
            self._bn_stale = True

    def _refresh_batchnorm(self, state: Any) -> None:
        swa = self._swa
        if not (self.bn_update and self._bn_stale) or swa is None or swa.averaged == 0:
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
        swa = self._swa
        if not self.evaluate_average or swa is None or swa.averaged == 0:
            return None
        self._refresh_batchnorm(state)
        return swa.module

    def on_fit_end(self, state: Any) -> None:
        self._refresh_batchnorm(state)

    def state_dict(self) -> dict[str, Any]:
        if self._swa is None:
            return {} if self._pending is None else dict(self._pending)
        return {**self._swa.state_dict(), "bn_stale": self._bn_stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self._bn_stale = bool(state.get("bn_stale", False))
        if self._swa is None:
            self._pending = dict(state)
        else:
            self._swa.load_state_dict(state)


@TECHNIQUES.register(
    "gaussian_averaging",
    summary="Gaussian-weighted average of the weights along the trajectory (PromptSRC's "
    "GPA), online.",
    papers=(70,),
    search_space={"center_fraction": ("uniform", 0.5, 0.95),
                  "sigma_fraction": ("log_uniform", 0.02, 0.5)},
)
@dataclass
class GaussianAveraging(Technique):
    """Keep the Gaussian-weighted mean of the weights at steps every·k, k = 1..K with
    K = ⌊max_steps / every⌋ and weights ∝ exp(−(k − μ)²/2σ²), μ = center_fraction·K,
    σ = sigma_fraction·K; measures see the average.

    Computed online (:class:`GaussianTrajectoryAverage`): the total K is known from the run
    length, and before the last point evaluation sees the normalized partial mean. PromptSRC
    aggregates once per epoch and applies the result at the end of training; ``every=None``
    gives its per-epoch aggregation. Defaults: its base-to-novel setting, μ = 15 and σ = 1 of
    20 epochs (0.75 and 0.05 of the run).
    """

    center_fraction: float = GPA_CENTER_FRACTION  # μ as a fraction of the points
    sigma_fraction: float = GPA_SIGMA_FRACTION  # σ as a fraction of the points
    every: int | None = 1  # steps between aggregated points; None: once per epoch
    evaluate_average: bool = True  # measures use the average (else the raw weights)
    _gpa: GaussianTrajectoryAverage | None = field(default=None, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)

    touches = frozenset({"after_step", "eval_model"})

    def __post_init__(self) -> None:
        if not self.sigma_fraction > 0:
            raise ValueError(f"sigma_fraction must be > 0, got {self.sigma_fraction}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be >= 1 or None, got {self.every}")

    @property
    def average(self) -> GaussianTrajectoryAverage | None:
        """The running average (None before the fit starts)."""
        return self._gpa

    def _every(self, state: Any) -> int:
        return self.every or state.steps_per_epoch or 1

    def _container(self, state: Any) -> GaussianTrajectoryAverage:
        if self._gpa is None:
            points = max(1, state.max_steps // self._every(state))
            self._gpa = GaussianTrajectoryAverage(
                state.model, points, self.center_fraction * points, self.sigma_fraction * points)
            if self._pending is not None:
                self._gpa.load_state_dict(self._pending)
                self._pending = None
        return self._gpa

    def on_fit_start(self, state: Any) -> None:
        self._container(state)

    def on_after_step(self, state: Any) -> None:
        gpa = self._container(state)
        every = self._every(state)
        if state.step % every == 0 and gpa.points < gpa.num_points:
            gpa.update(state.model)

    def eval_model(self, state: Any) -> nn.Module | None:
        gpa = self._gpa
        if not self.evaluate_average or gpa is None or gpa.points == 0:
            return None
        return gpa.module

    def state_dict(self) -> dict[str, Any]:
        if self._gpa is None:
            return {} if self._pending is None else dict(self._pending)
        return self._gpa.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self._gpa is None:
            self._pending = dict(state)
        else:
            self._gpa.load_state_dict(state)


# --------------------------------------------------------------------------- pruning


def _prunable(source: nn.Module | Mapping[str, Tensor],
              include: Iterable[str] | None) -> dict[str, Tensor]:
    entries = dict(source.named_parameters()) if isinstance(source, nn.Module) else dict(source)
    if include is not None:
        names = list(include)
        missing = [n for n in names if n not in entries]
        if missing:
            raise KeyError(f"no entries named {missing[:5]}")
        return {n: entries[n] for n in names}
    # weight matrices and kernels: biases and normalization scales stay dense
    return {n: t for n, t in entries.items()
            if (n == "weight" or n.endswith(".weight")) and t.is_floating_point() and t.dim() >= 2}


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Bool tensor: True at the k smallest scores (ties broken by position)."""
    pruned = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        pruned[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return pruned


def magnitude_prune_mask(
    source: nn.Module | Mapping[str, Tensor],
    sparsity: float,
    scope: Literal["global", "layer"] = "global",
    *,
    previous: Mapping[str, Tensor] | None = None,
    include: Iterable[str] | None = None,
) -> Mask:
    """Magnitude pruning mask: zero the fraction ``sparsity`` of prunable weights with the
    smallest |w|, the rest kept (True).

    ``scope="global"``: one threshold over all prunable tensors together (Sparse Model Soups'
    default, as ``torch.nn.utils.prune.global_unstructured`` with L1); ``"layer"``: each tensor
    to ``sparsity`` on its own. Of n weights, round(sparsity·n) are pruned. Prunable by
    default: the floating ``*.weight`` entries with two or more dimensions (linear and
    convolution weights; biases and normalization scales stay dense), or the names in
    ``include``. Entries pruned in ``previous`` stay pruned (iterative pruning); its sparsity
    must not exceed ``sparsity``.

    Example:
        >>> w = {"fc.weight": torch.tensor([[0.1, -3.0], [2.0, -0.5]])}
        >>> magnitude_prune_mask(w, 0.5)["fc.weight"]
        tensor([[False,  True],
                [ True, False]])

    References:
        Sparse Model Soups: A Recipe for Improved Pruning via Model Averaging (Zimmer et al.,
        ICLR 2024; arXiv:2306.16788).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    tensors = _prunable(source, include)
    if not tensors:
        raise ValueError("nothing to prune: no weight matrices found (pass include=...)")
    scores = {}
    for name, t in tensors.items():
        s = t.detach().abs().to(torch.float64)
        if previous is not None and name in previous:
            s = s.masked_fill(~previous[name].to(device=s.device, dtype=torch.bool), -1.0)
        scores[name] = s
    groups = [list(scores)] if scope == "global" else [[n] for n in scores]
    mask: Mask = {}
    for names in groups:
        flat = torch.cat([scores[n].flatten() for n in names])
        k = round(sparsity * flat.numel())
        already = int((flat < 0).sum())
        if already > k:
            raise ValueError(f"the previous mask prunes {already} of {flat.numel()} weights, "
                             f"more than sparsity {sparsity} allows ({k})")
        keep = ~_smallest(flat, k)
        for name, part in zip(names, keep.split([scores[n].numel() for n in names]),
                              strict=True):
            mask[name] = part.view(scores[name].shape)
    return mask


def mask_sparsity(mask: Mapping[str, Tensor]) -> float:
    """The fraction of masked-out (False) entries over all tensors of ``mask``."""
    total = sum(m.numel() for m in mask.values())
    return 0.0 if total == 0 else sum(int((~m.bool()).sum()) for m in mask.values()) / total


@torch.no_grad()
def apply_mask(target: nn.Module | Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> Any:
    """Zero, in place, the entries of ``target`` (a module's parameters or a state dict) where
    ``mask`` is False; return ``target``."""
    entries = dict(target.named_parameters()) if isinstance(target, nn.Module) else target
    for name, keep in mask.items():
        if name not in entries:
            raise KeyError(f"the mask names {name!r}, which the target does not have")
        tensor = entries[name]
        tensor.masked_fill_(~keep.to(device=tensor.device, dtype=torch.bool), 0)
    return target


@TECHNIQUES.register(
    "magnitude_pruning",
    summary="Fixed magnitude-pruning mask kept through training: retrain a pruned model "
    "(one SMS phase).",
    papers=(60,),
    search_space={"sparsity": ("choice", [0.5, 0.8, 0.9, 0.95])},
)
@dataclass
class MagnitudePruning(Technique):
    """Prune the model once by magnitude before training (or use a given mask, see
    :meth:`from_mask`) and re-apply the mask after every optimizer step, so pruned weights
    stay exactly zero. The mask is checkpointed.

    Pruned weights still receive gradients, and optimizer state builds up for them; it never
    reaches the kept weights with element-wise optimizers (SGD, Adam, AdamW). Sparse Model
    Soups also zeroes the momentum of pruned weights; with the mask re-applied after every
    step the weights are the same either way for SGD.
    """

    sparsity: float = 0.9  # fraction of prunable weights set to zero (SMS: goal sparsity 0.9)
    scope: Literal["global", "layer"] = "global"  # one threshold for all layers, or per layer
    _mask: Mask | None = field(default=None, init=False, repr=False)
    _targets: list[tuple[Tensor, Tensor]] = field(default_factory=list, init=False, repr=False)

    touches = frozenset({"model", "after_step"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {self.sparsity}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")

    @classmethod
    def from_mask(cls, mask: Mapping[str, Tensor]) -> MagnitudePruning:
        """A technique that keeps the given mask (parameter name → bool, True = kept)."""
        technique = cls(sparsity=mask_sparsity(mask))
        technique._mask = {k: v.detach().to(torch.bool).clone() for k, v in mask.items()}
        return technique

    @property
    def mask(self) -> Mask | None:
        return self._mask

    def transform_model(self, model: nn.Module) -> nn.Module:
        if self._mask is None:
            self._mask = magnitude_prune_mask(model, self.sparsity, self.scope)
        apply_mask(model, self._mask)
        return model

    def on_fit_start(self, state: Any) -> None:
        if self._mask is None:
            self._mask = magnitude_prune_mask(state.model, self.sparsity, self.scope)
        params = dict(state.model.named_parameters())
        missing = [n for n in self._mask if n not in params]
        if missing:
            raise KeyError(f"magnitude_pruning: the model has no parameters {missing[:5]}")
        self._targets = [(params[n], ~m.to(params[n].device)) for n, m in self._mask.items()]
        self.on_after_step(state)

    @torch.no_grad()
    def on_after_step(self, state: Any) -> None:
        for param, pruned in self._targets:
            param.masked_fill_(pruned, 0)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._mask is None else {"mask": {k: v.clone() for k, v in
                                                        self._mask.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._mask = {k: v.to(torch.bool).clone() for k, v in state["mask"].items()}
            self._targets = []  # rebuilt at fit start, on the model's device


# --------------------------------------------------------------------------- Sparse Model Soups


@dataclass
class SoupPhase:
    """One prune–retrain–average phase of :func:`sparse_model_soup`."""

    target_sparsity: float  # the sparsity pruned to at the start of the phase
    sparsity: float  # the soup's fraction of zero weights among the prunable ones
    chosen: list[int]  # the retrained copies that went into the soup
    candidate_scores: list[float] | None  # their held-out scores (when evaluate_fn is given)
    soup_score: float | None  # the soup's held-out score (when evaluate_fn is given)


@dataclass
class SparseSoupResult:
    """What :func:`sparse_model_soup` returns: the final soup, its mask and each phase."""

    model: nn.Module
    mask: Mask
    phases: list[SoupPhase]


def _sparsity_schedule(sparsity: float, phases: int) -> list[float]:
    # prune 1 − (1 − S)^(1/P) of the remaining weights each phase: S after P phases
    return [1.0 - (1.0 - sparsity) ** (k / phases) for k in range(1, phases + 1)]


def _reparametrize(model: nn.Module, mask: Mask) -> None:
    for name, keep in mask.items():
        module_name, _, attr = name.rpartition(".")
        prune.custom_from_mask(model.get_submodule(module_name), attr, keep)


def _make_permanent(model: nn.Module, mask: Mask) -> None:
    for name in mask:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if hasattr(module, attr + "_orig"):
            prune.remove(module, attr)


def sparse_model_soup(
    train_fn: Callable[[nn.Module, int], nn.Module | None],
    model: nn.Module,
    *,
    sparsity: float = 0.9,
    phases: int = 3,
    n_retrains: int = 3,
    schedule: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    scope: Literal["global", "layer"] = "global",
    soup: Literal["uniform", "greedy"] = "uniform",
    evaluate_fn: Callable[[StateDict], float] | None = None,
    bn_data: Any = None,
    bn_batch_size: int | None = None,
    include: Iterable[str] | None = None,
) -> SparseSoupResult:
    """Sparse Model Soups: iterative magnitude pruning whose every phase retrains several
    copies and starts the next phase from their average.

    For each phase p = 1..P (``schedule`` gives the sparsities; default S_p = 1 − (1 − S)^{p/P},
    i.e. prune 1 − (1 − S)^{1/P} of the remaining weights each phase):

    1. prune the current model by magnitude to S_p (``scope``; pruned weights stay pruned);
    2. retrain m = ``n_retrains`` copies, ``train_fn(copy, seed)`` for seed in ``seeds``
       (default 0..m−1); ``train_fn`` varies whatever it likes with the seed (batch order,
       weight decay, retrain length) and returns the trained model (or None: trained in
       place). Each copy's masked weights are reparametrized as ``weight_orig * weight_mask``
       (``torch.nn.utils.prune``), so any training loop keeps the mask;
    3. average them: uniform, or greedy with ``evaluate_fn`` (a state dict → held-out score);
       all copies share the mask, so the soup has exactly the same zeros;
    4. recompute BatchNorm statistics on ``bn_data`` if given (the paper: 20% of the training
       data), and start the next phase from the soup.

    ``model`` (the trained dense model) is not modified. Defaults: S = 0.9 (the code's goal
    sparsity); m = 3 as in the paper's sketch of one phase; P = 3 [unverified].

    Example:
        >>> def train(net, seed):  # a stand-in for a real retraining loop
        ...     torch.manual_seed(seed)
        ...     with torch.no_grad():
        ...         net.weight.add_(0.01 * torch.randn_like(net.weight))
        ...     return net
        >>> result = sparse_model_soup(train, nn.Linear(10, 10), sparsity=0.5, phases=2)
        >>> round(mask_sparsity(result.mask), 2)
        0.5

    References:
        Sparse Model Soups: A Recipe for Improved Pruning via Model Averaging (Zimmer et al.,
        ICLR 2024; arXiv:2306.16788).
    """
    targets = list(schedule) if schedule is not None else _sparsity_schedule(sparsity, phases)
    if not targets or any(b < a for a, b in zip(targets, targets[1:], strict=False)):
        raise ValueError(f"the sparsity schedule must be non-empty and non-decreasing: {targets}")
    seed_list = list(seeds) if seeds is not None else list(range(n_retrains))
    if not seed_list:
        raise ValueError("need at least one retrained copy per phase")
    if soup == "greedy" and evaluate_fn is None:
        raise ValueError("a greedy soup needs evaluate_fn")
    if soup not in ("uniform", "greedy"):
        raise ValueError(f"soup must be 'uniform' or 'greedy', got {soup!r}")
    current = copy.deepcopy(model)
    mask: Mask | None = None
    history: list[SoupPhase] = []
    for target in targets:
        mask = magnitude_prune_mask(current, target, scope, previous=mask, include=include)
        apply_mask(current, mask)
        ingredients = []
        for seed in seed_list:
            candidate = copy.deepcopy(current)
            _reparametrize(candidate, mask)
            trained = train_fn(candidate, seed)
            trained = candidate if trained is None else trained
            _make_permanent(trained, mask)
            apply_mask(trained, mask)
            ingredients.append({k: v.detach().clone() for k, v in trained.state_dict().items()})
        scores = None
        if soup == "greedy":
            assert evaluate_fn is not None
            found = greedy_soup(ingredients, evaluate_fn)
            state, chosen, scores = found.state_dict, found.chosen, found.candidate_scores
        else:
            state, chosen = average_state_dicts(ingredients), list(range(len(ingredients)))
            if evaluate_fn is not None:
                scores = [float(evaluate_fn(s)) for s in ingredients]
        current.load_state_dict(state)
        apply_mask(current, mask)
        if bn_data is not None:
            recompute_batchnorm_stats(current, bn_data, bn_batch_size)
        soup_score = None if evaluate_fn is None else float(
            evaluate_fn({k: v.detach().clone() for k, v in current.state_dict().items()}))
        prunable = _prunable(current, list(mask))
        zeros = sum(int((t == 0).sum()) for t in prunable.values())
        history.append(SoupPhase(target, zeros / sum(t.numel() for t in prunable.values()),
                                 chosen, scores, soup_score))
    assert mask is not None
    return SparseSoupResult(current, mask, history)
