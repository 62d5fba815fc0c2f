"""Gradient-boosted neural networks (GBNN, #35): hidden units fitted one boosting round at a
time on pseudo-residuals and stacked into a single network whose later units can be
switched off at test time."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.technique import Technique
from heldout.methods._wrapper import OptimizerWrapper
from heldout.models.base import ModelSpec
from heldout.registry import MODELS, TECHNIQUES

__all__ = ["GBNN", "BoostedUnits", "BoostingStep", "StackedUnits", "fit_stage",
           "keep_first_units", "newton_step"]


class StackedUnits(nn.Module):
    """f(x) = bias + Σ_{j < active} v_j σ(w_j · x + b_j): a one-hidden-layer network of logistic
    units of which only the first ``active`` are used, so it can grow unit by unit and be
    truncated at test time (``keep_first(k)``)."""

    unit_bias: Tensor  # buffers, registered in __init__
    active: Tensor

    def __init__(self, in_features: int, num_classes: int, max_units: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, max_units)
        self.readout = nn.Linear(max_units, num_classes, bias=False)
        nn.init.zeros_(self.hidden.weight), nn.init.zeros_(self.hidden.bias)
        nn.init.zeros_(self.readout.weight)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("unit_bias", torch.zeros(max_units, num_classes))  # per stage
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self.max_units = max_units

    def forward(self, x: Tensor) -> Tensor:
        k = int(self.active)
        x = x.flatten(1)
        h = torch.sigmoid(F.linear(x, self.hidden.weight[:k], self.hidden.bias[:k]))
        return self.bias + h @ self.readout.weight[:, :k].T + self.unit_bias[:k].sum(0)

    def keep_first(self, units: int) -> StackedUnits:
        """A copy that uses only its first ``units`` units (the rest switched off)."""
        if not 0 <= units <= int(self.active):
            raise ValueError(f"units must be in [0, {int(self.active)}], got {units}")
        out = copy.deepcopy(self)
        out.active.fill_(units)
        return out


def fit_stage(x: Tensor, residuals: Tensor, units: int, iterations: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Least-squares fit of a J-unit logistic network g(x) = A σ(Wx + b) + c to ``residuals``
    with L-BFGS (the official code uses scikit-learn's MLPRegressor with lbfgs). Returns
    W (J, d), b (J,), A (K, J), c (K,)."""
    d, k = x.shape[1], residuals.shape[1]
    bound = 1 / math.sqrt(d)
    w = ((torch.rand(units, d, generator=generator) * 2 - 1) * bound).requires_grad_(True)
    b = ((torch.rand(units, generator=generator) * 2 - 1) * bound).requires_grad_(True)
    a = ((torch.rand(k, units, generator=generator) * 2 - 1) / math.sqrt(units)).requires_grad_(
        True)
    c = torch.zeros(k, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b, a, c], max_iter=iterations, tolerance_grad=0.0,
                                  tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        prediction = torch.sigmoid(x @ w.T + b) @ a.T + c
        loss = 0.5 * (prediction - residuals).pow(2).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach(), a.detach(), c.detach()


def newton_step(stage_output: Tensor, residuals: Tensor, probs: Tensor) -> float:
    """ρ = Σ f·r / Σ f² p(1 − p): one Newton step of the softmax cross-entropy along the new
    stage's output f, one scalar shared by all classes (the official multiclass rule)."""
    denominator = (stage_output.pow(2) * probs * (1 - probs)).sum()
    return float((stage_output * residuals).sum() / denominator.clamp_min(1e-12))


class BoostingStep(OptimizerWrapper):
    """An optimizer "step" that grows a :class:`StackedUnits` model by one boosting round on the
    current batch instead of following gradients: pseudo-residuals r = one_hot(y) − softmax(F),
    a J-unit stage fitted to r on a subsample, a Newton step ρ, then F += η ρ g."""

    def __init__(self, base: torch.optim.Optimizer, model: StackedUnits, units: int,
                 shrinkage: float, subsample: float, iterations: int, seed: int) -> None:
        super().__init__(base, {})
        self.model, self.units, self.shrinkage = model, units, shrinkage
        self.subsample, self.iterations, self.seed = subsample, iterations, seed
        self.inputs: tuple[Tensor, Tensor] | None = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor:  # type: ignore[override]
        if self.inputs is None:
            raise RuntimeError("BoostingStep needs the batch: call set_inputs(x, y) first")
        x, y = self.inputs
        model = self.model
        k = int(model.active)
        if k + self.units > model.max_units:
            raise RuntimeError(f"the network holds {model.max_units} units; no room for "
                               f"{self.units} more (raise model.max_units)")
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        probs = torch.softmax(logits, dim=-1)
        residuals = F.one_hot(y, logits.shape[-1]).to(probs.dtype) - probs
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        chosen = torch.randperm(len(y), generator=generator)[
            : max(1, round(self.subsample * len(y)))]
        flat = x.flatten(1)
        w, b, a, c = fit_stage(flat[chosen], residuals[chosen], self.units, self.iterations,
                               generator)
        stage = torch.sigmoid(flat @ w.T + b) @ a.T + c
        scale = self.shrinkage * newton_step(stage, residuals, probs)
        model.hidden.weight[k:k + self.units] = w
        model.hidden.bias[k:k + self.units] = b
        model.readout.weight[:, k:k + self.units] = scale * a
        model.unit_bias[k] = scale * c
        model.active += self.units
        return loss


@MODELS.register(
    "gbnn_units",
    summary="A one-hidden-layer network of logistic units grown by boosting (use with the "
    "gbnn technique).",
    papers=(35,),
)
@dataclass(frozen=True)
class BoostedUnits(ModelSpec):
    """:class:`StackedUnits` with room for ``max_units`` units (T rounds × J units)."""

    # capacity: total_nn × num_nn_step of the official defaults
    max_units: Annotated[int, Ge(1)] = 200

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        if input.kind != "continuous":
            raise ValueError("gbnn_units takes continuous inputs, not token inputs")
        return StackedUnits(math.prod(input.shape), num_classes, self.max_units)


@TECHNIQUES.register(
    "gbnn",
    summary="Gradient boosting of hidden units: each step fits new units to pseudo-residuals "
    "and stacks them.",
    papers=(35,),
    search_space={"shrinkage": ("uniform", 0.1, 1.0)},
)
@dataclass
class GBNN(Technique):
    """Train a ``gbnn_units`` model by boosting: every optimizer step is one round that adds
    ``units_per_round`` units (steps = rounds). Multiclass formulation for every class count
    (the official code's binary case uses the ±1 logistic loss, which this matches up to the
    parametrization of two logits); F₀ = 0.

    References:
        Sequential Training of Neural Networks with Gradient Boosting (arXiv:1909.12098).
    """

    units_per_round: Annotated[int, Ge(1)] = 1  # J (num_nn_step)
    shrinkage: float = 1.0  # η (the official default; its examples use 0.3)
    # share of the batch each stage is fitted on
    subsample: Annotated[float, Interval(0, 1, closed="right")] = 0.5
    # L-BFGS iterations per stage (scikit-learn's max_iter)
    lbfgs_iterations: Annotated[int, Ge(1)] = 200
    seed: int = 0  # seeds the subsamples and the stage initializations

    touches = frozenset({"step"})

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        if not isinstance(model, StackedUnits):
            raise ValueError(f"gbnn grows a gbnn_units model (model=gbnn_units), not a "
                             f"{type(model).__name__}")
        self._step = BoostingStep(optimizer, model, self.units_per_round, self.shrinkage,
                                  self.subsample, self.lbfgs_iterations, self.seed)
        return self._step

    def on_batch_start(self, state: Any) -> None:
        x, y, _ = state.batch
        self._step.inputs = (x, y)


def keep_first_units(model: nn.Module, units: int) -> nn.Module:
    """A copy of a one-hidden-layer network with only its first ``units`` hidden units: for a
    :class:`StackedUnits`, ``keep_first``; for an MLP with one hidden layer (heldout's ``mlp``
    with ``hidden=[n]``), the head's weights from the other units are zeroed."""
    if isinstance(model, StackedUnits):
        return model.keep_first(units)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 2:
        raise ValueError("keep_first_units needs a network with exactly one hidden layer")
    out = copy.deepcopy(model)
    head = [m for m in out.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight[:, units:] = 0
    return out
