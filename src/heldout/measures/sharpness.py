"""Sharpness of the loss (#67): adaptive worst- and average-case sharpness; Hessian spectrum.

:func:`sharpness` measures how much the loss rises when the weights are perturbed inside a
(possibly weight-scaled) neighbourhood, following Andriushchenko et al. (ICML 2023);
:func:`hessian_top_eigenvalue` and :func:`hessian_trace` estimate the curvature at the weights
from Hessian-vector products. Every function works on any ``nn.Module``, perturbs or
differentiates a private copy of it (so the model's parameters, gradients, buffers and training
mode are left exactly as they were) and draws its randomness from a local generator.

What was checked against the official code (tml-epfl/sharpness-vs-generalization, files
``sharpness.py``, ``eval_sharpness.py``, ``models.py``, ``sh/eval_sharpness_final.sh``):

* adaptive scale T = |w| element-wise, with no η term (ASAM's |w| + η is offered as ``eta``,
  default 0);
* every parameter is perturbed, normalization-layer weights and biases included;
* the model is evaluated in ``eval()`` mode (BatchNorm uses its running statistics);
* average case: δ_j = ρ·T_j·ξ_j with ξ_j ~ N(0, 1) ("l2") or U[−1, 1] ("linf"); ρ is the
  per-coordinate relative standard deviation, with no 1/√d scaling;
* logit normalization: logits minus their mean, divided by max(‖·‖₂, 1e-10), then cross-entropy;
* the maximum is taken for each batch of m = 128 examples independently and averaged; the
  evaluation uses 1,024 training examples, 20 iterations, 1 restart, no random start, first step
  size 2ρ, APGD's α = 0.75 and its step-halving checkpoints (0, 0.22, then
  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) with the 75%-improvement rule;
* the main setting is adaptive worst-case ℓ∞ with logit normalization (the paper's "best"
  definition in its ablations); its CIFAR-10 ρ grids are {1e-3 … 8e-3} (ResNet-18) and
  {5e-4 … 4e-3} (ViT), so the default ρ = 2e-3 lies in both.

Where this module deliberately differs from that code: the ascent runs in the normalized
coordinates u = δ ⊘ T, where the constraint set is a plain ℓ2 ball or ℓ∞ box, so the projection
is exact (the code bisects a Lagrange multiplier to project onto the ellipsoid in δ) and the ℓ2
step follows T ⊙ ∇L, the steepest ascent in u (the code's ℓ2 step is ∇L/‖∇L‖ ⊙ T; the ℓ∞ steps
coincide). The momentum step is APGD's, as the code's own docstring states it,
u_{k+1} = P(u_k + α(z_{k+1} − u_k) + (1 − α)(u_k − u_{k−1})) with u_1 = z_1 (the code mixes
0.75·z_{k+1} with the iterate before last, 0.25·u_{k−1}). After a step-size halving the iterate
really restarts from the best point (in the code only the model, not the perturbation, is
reset). The maximized problem is the same.

The paper's text beyond its abstract was not available here, so the points above are verified
against the official code only (its ``eval_average_sharpness`` draws ρ·|w|·ξ; the ρ/√d helper in
the same file is unused there).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["Hessian", "Sharpness", "hessian_top_eigenvalue", "hessian_trace", "sharpness"]

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``loss_fn(model, inputs, targets)``: the mean loss of one batch, differentiable in the
model's parameters. The default is the mean cross-entropy of ``model(inputs)``."""

_MIN_IMPROVED_FRACTION = 0.75  # APGD: halve the step if fewer ascent steps than this improved
_LOGIT_NORM_FLOOR = 1e-10  # the official code's floor on the logit norm


# --------------------------------------------------------------------------- helpers


def _as_batches(data: Any) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)``, an object with ``.x``/``.y`` or an iterable of ``(x, y, ...)`` batches."""
    if isinstance(data, tuple | list) and len(data) == 2 and all(
        isinstance(t, Tensor) for t in data
    ):
        batches = [(data[0], data[1])]
    elif hasattr(data, "x") and hasattr(data, "y"):
        batches = [(data.x, data.y)]
    else:
        batches = [(batch[0], batch[1]) for batch in data]
    if not batches or sum(len(y) for _, y in batches) == 0:
        raise ValueError("sharpness/Hessian of an empty data set")
    return batches


def _regroup(batches: list[tuple[Tensor, Tensor]], size: int | None) -> list[list]:
    """Groups of batches: all of them (``size=None``) or consecutive runs of ``size`` examples."""
    if size is None:
        return [batches]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return [[(x[i : i + size], y[i : i + size])] for i in range(0, len(y), size)]


def _cross_entropy(normalize_logits: bool) -> LossFn:
    def loss_fn(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        logits = model(inputs)
        if normalize_logits:
            logits = logits - logits.mean(dim=-1, keepdim=True)
            logits = logits / logits.norm(dim=-1, keepdim=True).clamp_min(_LOGIT_NORM_FLOOR)
        return F.cross_entropy(logits, targets)

    return loss_fn


def _working_copy(model: nn.Module) -> tuple[nn.Module, list[Tensor]]:
    """A private copy in eval mode whose floating parameters all require gradients."""
    work = copy.deepcopy(model).eval()
    params: list[Tensor] = [p for p in work.parameters() if p.is_floating_point()]
    for p in params:
        p.grad = None
        p.requires_grad_(True)
    if not params:
        raise ValueError("the model has no floating-point parameters")
    return work, params


def _loss_and_grad(
    model: nn.Module,
    params: list[Tensor],
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    need_grad: bool,
) -> tuple[float, list[Tensor] | None]:
    """Mean loss over ``batches`` (weighted by their sizes) and, if asked, its gradient."""
    total = sum(len(y) for _, y in batches)
    if len(batches) == 1 and need_grad:  # one batch: no accumulation buffers needed
        x, y = batches[0]
        with torch.enable_grad():
            loss = loss_fn(model, x, y)
        if not loss.requires_grad:
            return float(loss), [torch.zeros_like(p) for p in params]
        parts = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss.detach()), [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, parts, strict=True)]
    value = 0.0
    grads = [torch.zeros_like(p) for p in params] if need_grad else None
    for x, y in batches:
        weight = len(y) / total
        with torch.set_grad_enabled(need_grad):
            loss = loss_fn(model, x, y)
        value += weight * float(loss.detach())
        if grads is not None and loss.requires_grad:
            parts = torch.autograd.grad(loss, params, allow_unused=True)
            for g, part in zip(grads, parts, strict=True):
                if part is not None:
                    g.add_(part, alpha=weight)
    return value, grads


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _norm(a: list[Tensor]) -> Tensor:
    return torch.sqrt(sum((x * x).sum() for x in a))  # type: ignore[arg-type]


class _HessianVectorProduct:
    """v ↦ H·v for the mean loss over ``batches``, batch by batch, never forming H.

    Exact, by double backward, unless some operation of the model has no second derivative in
    PyTorch (``F.embedding_bag``, say, which raises NotImplementedError): then, for the rest of
    the call, the central difference (∇L(w + hv) − ∇L(w − hv)) / 2h, with h such that
    rms(hv) = ε^(1/3)·rms(w) (ε: the dtype's machine epsilon), error O(h²) + O(ε/h).
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[Tensor],
        batches: list[tuple[Tensor, Tensor]],
        loss_fn: LossFn,
    ) -> None:
        self.model, self.params, self.batches, self.loss_fn = model, params, batches, loss_fn
        self.exact = True
        self._graph: tuple[Tensor | None, ...] | None = None

    def __call__(self, vector: list[Tensor]) -> list[Tensor]:
        if self.exact:
            try:
                return self._double_backward(vector)
            except NotImplementedError:  # an op without a second derivative
                self.exact = False
        return self._central_difference(vector)

    def _gradient_graph(self, x: Tensor, y: Tensor) -> tuple[Tensor | None, ...]:
        with torch.enable_grad():
            loss = self.loss_fn(self.model, x, y)
            if not loss.requires_grad:
                return (None,) * len(self.params)
            return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)

    def _product(
        self, grads: tuple[Tensor | None, ...], vector: list[Tensor], keep: bool
    ) -> tuple[Tensor | None, ...]:
        with torch.enable_grad():
            dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True) if g is not None)
            if not isinstance(dot, Tensor) or not dot.requires_grad:
                return (None,) * len(self.params)  # the loss is linear in the parameters: H = 0
            return torch.autograd.grad(dot, self.params, retain_graph=keep, allow_unused=True)

    def _double_backward(self, vector: list[Tensor]) -> list[Tensor]:
        if len(self.batches) == 1:  # one batch: build ∇L with its graph once, reuse it
            if self._graph is None:
                self._graph = self._gradient_graph(*self.batches[0])
            parts = self._product(self._graph, vector, keep=True)
            return [torch.zeros_like(p) if h is None else h.detach()
                    for p, h in zip(self.params, parts, strict=True)]
        total = sum(len(y) for _, y in self.batches)
        out = [torch.zeros_like(p) for p in self.params]
        for x, y in self.batches:  # several: one graph at a time, to bound the memory
            parts = self._product(self._gradient_graph(x, y), vector, keep=False)
            for o, part in zip(out, parts, strict=True):
                if part is not None:
                    o.add_(part.detach(), alpha=len(y) / total)
        return out

    def _central_difference(self, vector: list[Tensor]) -> list[Tensor]:
        weights = [p.detach().clone() for p in self.params]
        count = sum(w.numel() for w in weights)
        eps = torch.finfo(weights[0].dtype).eps
        rms_w = float(_norm(weights)) / math.sqrt(count)
        rms_v = float(_norm(vector)) / math.sqrt(count)
        if rms_v == 0:
            return [torch.zeros_like(w) for w in weights]
        h = eps ** (1 / 3) * max(rms_w, eps ** (1 / 3)) / rms_v
        grads = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, w, v in zip(self.params, weights, vector, strict=True):
                    p.copy_(w + sign * h * v)
            grads.append(_loss_and_grad(self.model, self.params, self.batches, self.loss_fn,
                                        need_grad=True)[1])
        with torch.no_grad():
            for p, w in zip(self.params, weights, strict=True):
                p.copy_(w)
        plus, minus = grads
        assert plus is not None and minus is not None
        return [(a - b) / (2 * h) for a, b in zip(plus, minus, strict=True)]


def _generator(params: list[Tensor], seed: int) -> torch.Generator:
    return torch.Generator(device=params[0].device).manual_seed(seed)


def _checkpoints(steps: int) -> set[int]:
    """APGD's checkpoints w_j = ⌈p_j·steps⌉ < steps, p = 0.22, 0.41, 0.57, ... (APGD, like the
    official code, counts iterations from 0, so the check at w_j comes after w_j + 1 updates)."""
    p = [0.0, 0.22]
    points: set[int] = set()
    while True:
        k = math.ceil(round(p[-1] * steps, 9))
        if k >= steps:
            return points
        points.add(k)
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))


# --------------------------------------------------------------------------- sharpness


def _set_weights(
    params: list[Tensor], weights: list[Tensor], scale: list[Tensor], u: list[Tensor]
) -> None:
    with torch.no_grad():
        for p, w, t, ui in zip(params, weights, scale, u, strict=True):
            p.copy_(w).addcmul_(t, ui)


def _project(u: list[Tensor], rho: float, norm: str) -> list[Tensor]:
    if norm == "linf":
        return [ui.clamp(-rho, rho) for ui in u]
    factor = min(1.0, rho / max(float(_norm(u)), 1e-300))
    return [ui * factor for ui in u]


def _ascent_direction(grad: list[Tensor], scale: list[Tensor], norm: str) -> list[Tensor]:
    """Steepest ascent in u = δ ⊘ T: the gradient there is T ⊙ ∇L."""
    scaled = [t * g for t, g in zip(scale, grad, strict=True)]
    if norm == "linf":
        return [s.sign() for s in scaled]
    length = float(_norm(scaled))
    return [s / length if length > 0 else torch.zeros_like(s) for s in scaled]


def _worst_case(
    model: nn.Module,
    params: list[Tensor],
    weights: list[Tensor],
    scale: list[Tensor],
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    *,
    rho: float,
    norm: str,
    steps: int,
    step_size: float,
    momentum: float,
    random_init: bool,
    generator: torch.Generator,
) -> float:
    """max over the constraint set of L(w + T ⊙ u) − L(w) by APGD-style projected ascent."""
    zeros = [torch.zeros_like(w) for w in weights]
    _set_weights(params, weights, scale, zeros)
    init_loss, grad = _loss_and_grad(model, params, batches, loss_fn, need_grad=True)
    best_loss, best_u, best_grad = init_loss, zeros, grad
    u = zeros
    if random_init:
        if norm == "linf":
            u = [(2 * torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
                  - 1) * rho * (t != 0) for w, t in zip(weights, scale, strict=True)]
        else:
            u = [torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
                 * (t != 0) for w, t in zip(weights, scale, strict=True)]
            length = float(_norm(u))
            u = [ui * (rho / length) for ui in u] if length > 0 else zeros
        _set_weights(params, weights, scale, u)
        loss, grad = _loss_and_grad(model, params, batches, loss_fn, need_grad=True)
        if loss > best_loss:
            best_loss, best_u, best_grad = loss, u, grad
    u_prev = u
    checkpoints = _checkpoints(steps)
    improved, last_checkpoint = 0, 0
    step_at_checkpoint, best_at_checkpoint = step_size, best_loss
    for k in range(1, steps + 1):
        assert grad is not None
        direction = _ascent_direction(grad, scale, norm)
        z = _project([ui.add(d, alpha=step_size) for ui, d in zip(u, direction, strict=True)],
                     rho, norm)
        if k == 1:
            new_u = z
        else:  # APGD: u + (1 − momentum)(z − u) + momentum (u − u_prev), in fused form
            new_u = _project(
                [zi.mul(1 - momentum).add_(ui, alpha=2 * momentum).add_(pi, alpha=-momentum)
                 for ui, zi, pi in zip(u, z, u_prev, strict=True)], rho, norm)
        u_prev, u = u, new_u
        _set_weights(params, weights, scale, u)
        loss, grad = _loss_and_grad(model, params, batches, loss_fn, need_grad=k < steps)
        if loss > best_loss:
            best_loss, best_u, best_grad = loss, u, grad
            improved += 1
        if k - 1 in checkpoints:  # iteration w_j, counted from 0 as in APGD
            too_few = improved < _MIN_IMPROVED_FRACTION * (k - 1 - last_checkpoint)
            stalled = step_size == step_at_checkpoint and best_loss == best_at_checkpoint
            step_at_checkpoint, best_at_checkpoint = step_size, best_loss
            improved, last_checkpoint = 0, k - 1
            if too_few or stalled:  # halve the step and restart from the best point so far
                step_size /= 2
                u = u_prev = best_u
                grad = best_grad
    return best_loss - init_loss


def _average_case(
    model: nn.Module,
    params: list[Tensor],
    weights: list[Tensor],
    scale: list[Tensor],
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    *,
    rho: float,
    norm: str,
    n_samples: int,
    generator: torch.Generator,
) -> float:
    """E_δ L(w + δ) − L(w) with δ = ρ T ⊙ ξ, ξ ~ N(0, I) ("l2") or U[−1, 1]^d ("linf")."""
    _set_weights(params, weights, scale, [torch.zeros_like(w) for w in weights])
    init_loss, _ = _loss_and_grad(model, params, batches, loss_fn, need_grad=False)
    total = 0.0
    for _ in range(n_samples):
        if norm == "l2":
            xi = [torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
                  for w in weights]
        else:
            xi = [2 * torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
                  - 1 for w in weights]
        _set_weights(params, weights, scale, [rho * x for x in xi])
        loss, _ = _loss_and_grad(model, params, batches, loss_fn, need_grad=False)
        total += loss
    return total / n_samples - init_loss


def _check_kind_and_norm(kind: str, norm: str) -> None:
    if kind not in ("worst", "average"):
        raise ValueError(f"kind must be 'worst' or 'average', got {kind!r}")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")


def _check_sharpness_args(
    rho: float, kind: str, norm: str, eta: float, n_samples: int, steps: int,
    step_size: float | None, momentum: float, batch_size: int | None,
) -> None:
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    _check_kind_and_norm(kind, norm)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0 or None, got {step_size}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")


def sharpness(
    model: nn.Module,
    data: Any,
    rho: float = 0.002,
    *,
    kind: Literal["worst", "average"] = "worst",
    adaptive: bool = True,
    norm: Literal["l2", "linf"] = "linf",
    eta: float = 0.0,
    normalize_logits: bool = True,
    batch_size: int | None = 128,
    n_samples: int = 20,
    steps: int = 20,
    step_size: float | None = None,
    momentum: float = 0.25,
    random_init: bool = False,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> float:
    """Sharpness S = L(w + δ) − L(w): the loss increase under a weight perturbation δ.

    Let T = |w| + η element-wise when ``adaptive`` (Kwon et al.'s adaptive sharpness; the paper
    and its code use η = 0) and T = 1 otherwise, and L the mean loss of a batch.

    * ``kind="worst"``: S = max_{‖δ ⊘ T‖_p ≤ ρ} L(w + δ) − L(w), p = 2 (an ellipsoid) or ∞ (a
      box), by projected gradient ascent in u = δ ⊘ T from u = 0 (``random_init``: from a
      uniform point of the box, or a uniform point of the sphere ‖u‖₂ = ρ; zero where T = 0):
      APGD with α = 1 − ``momentum``, first step ``step_size`` (default 2ρ) along sign(T ⊙ ∇L)
      (ℓ∞) or T ⊙ ∇L / ‖T ⊙ ∇L‖ (ℓ2), halved at APGD's checkpoints when fewer than 75% of the
      steps since the last one raised the loss (or nothing changed), then restarted from the
      best point. The best loss seen is kept; S is a lower bound on the true maximum.
    * ``kind="average"``: S = E_δ L(w + δ) − L(w), δ = ρ T ⊙ ξ, ξ ~ N(0, I) (``"l2"``) or
      U[−1, 1]^d (``"linf"``), estimated from ``n_samples`` draws: ρ is the relative standard
      deviation per coordinate, not a radius (no 1/√d).

    All floating-point parameters are perturbed (normalization layers included) on a private
    copy of the model in ``eval()`` mode. The data (``(x, y)``, an object with ``.x``/``.y`` or
    an iterable of ``(x, y)`` batches) is cut into consecutive batches of ``batch_size``
    examples (the paper's m = 128; ``None``: one perturbation for all of it, the loss
    accumulated batch by batch); S is computed per batch and averaged, weighted by batch size.
    The loss is the mean cross-entropy, of the centred and ℓ2-normalized logits when
    ``normalize_logits``; a custom ``loss_fn(model, x, y)`` replaces it (then
    ``normalize_logits`` is not used). Noise comes from a generator seeded with ``seed``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> sharpness(net, (x, y), 0.01, steps=5) >= 0  # adaptive worst-case l-inf
        True
        >>> s = sharpness(net, (x, y), 0.1, kind="average", adaptive=False, norm="l2")

    References:
        A Modern Look at the Relationship between Sharpness and Generalization
        (arXiv:2302.07011); ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
        Learning of Deep Neural Networks (arXiv:2102.11600); Reliable Evaluation of
        Adversarial Robustness with an Ensemble of Diverse Parameter-free Attacks (APGD,
        arXiv:2003.01690).
    """
    _check_sharpness_args(rho, kind, norm, eta, n_samples, steps, step_size, momentum,
                          batch_size)
    groups = _regroup(_as_batches(data), batch_size)
    loss = loss_fn if loss_fn is not None else _cross_entropy(normalize_logits)
    work, params = _working_copy(model)
    weights = [p.detach().clone() for p in params]
    scale = [w.abs() + eta if adaptive else torch.ones_like(w) for w in weights]
    generator = _generator(params, seed)
    total = sum(len(y) for group in groups for _, y in group)
    value = 0.0
    for group in groups:
        n = sum(len(y) for _, y in group)
        if kind == "worst":
            s = _worst_case(work, params, weights, scale, group, loss, rho=rho, norm=norm,
                            steps=steps, step_size=2 * rho if step_size is None else step_size,
                            momentum=momentum, random_init=random_init, generator=generator)
        else:
            s = _average_case(work, params, weights, scale, group, loss, rho=rho, norm=norm,
                              n_samples=n_samples, generator=generator)
        value += s * n / total
    return value


# --------------------------------------------------------------------------- Hessian


def hessian_top_eigenvalue(
    model: nn.Module,
    data: Any,
    iterations: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    *,
    loss_fn: LossFn | None = None,
) -> float:
    """Dominant eigenvalue of the Hessian of the mean loss, by power iteration on H·v.

    v₀ ~ N(0, I) from a generator seeded with ``seed``; v_{k+1} = H v_k / ‖H v_k‖ and
    λ_k = v_kᵀ H v_k, stopped after ``iterations`` products or when |λ_k − λ_{k−1}| ≤
    ``tol``·|λ_{k−1}| (PyHessian's rule). H·v comes from double backward, batch by batch, so the
    Hessian is never formed (for a model with an operation that PyTorch cannot differentiate
    twice, such as ``F.embedding_bag``, from a central difference of two gradients). Power
    iteration finds the eigenvalue largest in magnitude: at a minimum (H ⪰ 0) that is λ_max.
    The loss is the mean cross-entropy of ``model`` on ``data``
    (see :func:`sharpness` for the accepted forms) or ``loss_fn(model, x, y)``; the model runs
    in ``eval()`` mode on a private copy.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> lam = hessian_top_eigenvalue(net, (x, y), iterations=20)

    References:
        PyHessian: Neural Networks Through the Lens of the Hessian (arXiv:1912.07145).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    batches = _as_batches(data)
    loss = loss_fn if loss_fn is not None else _cross_entropy(False)
    work, params = _working_copy(model)
    hvp = _HessianVectorProduct(work, params, batches, loss)
    generator = _generator(params, seed)
    v = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
         for p in params]
    length = _norm(v)
    v = [x / length for x in v]
    eigenvalue: float | None = None
    for _ in range(iterations):
        hv = hvp(v)
        new = float(_dot(hv, v))
        length = _norm(hv)
        if float(length) == 0:
            return 0.0
        v = [x / length for x in hv]
        if eigenvalue is not None and abs(new - eigenvalue) <= tol * abs(eigenvalue):
            return new
        eigenvalue = new
    assert eigenvalue is not None
    return eigenvalue


def hessian_trace(
    model: nn.Module,
    data: Any,
    samples: int = 100,
    seed: int = 0,
    *,
    loss_fn: LossFn | None = None,
) -> float:
    """tr(H) of the mean loss by Hutchinson's estimator: the mean of vᵀHv over Rademacher v.

    E[vᵀHv] = tr(H) for v with independent ±1 entries; the variance of one draw is
    2 Σ_{i≠j} H_ij², so the estimate is exact for a diagonal H and its standard error is
    √(2 Σ_{i≠j} H_ij² / ``samples``) otherwise. Vectors come from a generator seeded with
    ``seed``; H·v from double backward as in :func:`hessian_top_eigenvalue`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> trace = hessian_trace(net, (x, y), samples=10)

    References:
        A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
        Splines (Hutchinson, 1989; no arXiv id); PyHessian: Neural Networks Through the Lens of
        the Hessian (arXiv:1912.07145).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    batches = _as_batches(data)
    loss = loss_fn if loss_fn is not None else _cross_entropy(False)
    work, params = _working_copy(model)
    hvp = _HessianVectorProduct(work, params, batches, loss)
    generator = _generator(params, seed)
    total = 0.0
    for _ in range(samples):
        v = [torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype)
             * 2 - 1 for p in params]
        total += float(_dot(hvp(v), v))
    return total / samples


# --------------------------------------------------------------------------- adapters


def _first_examples(ctx: EvalContext, n_examples: int | None) -> list[tuple[Tensor, Tensor]]:
    """The split's first ``n_examples`` examples (all if None), in evaluation-sized batches."""
    out, taken = [], 0
    for x, y in ctx.batches():
        if n_examples is not None:
            x, y = x[: n_examples - taken], y[: n_examples - taken]
        if len(y):
            out.append((x, y))
            taken += len(y)
        if n_examples is not None and taken >= n_examples:
            break
    return out


@MEASURES.register(
    "sharpness",
    summary="Adaptive worst-case l-inf sharpness: loss rise under the worst perturbation "
    "|delta_i| <= rho |w_i| (m=128).",
    papers=(67,),
)
@dataclass
class Sharpness(Measure):
    """:func:`sharpness` on the first ``n_examples`` of the listed splits (by default train).

    The defaults are the paper's best-studied definition: adaptive worst-case ℓ∞ sharpness with
    logit normalization, m = 128, 1,024 training examples, 20 APGD steps.
    """

    # radius (relative to |w| if adaptive); in the paper's CIFAR-10 grids
    rho: Annotated[float, Gt(0)] = 0.002
    kind: Literal["worst", "average"] = "worst"  # max over the set, or mean over random δ
    adaptive: bool = True  # scale the set by T = |w| + eta (True) or T = 1 (False)
    norm: Literal["linf", "l2"] = "linf"  # box / ellipsoid (worst); uniform / Gaussian (average)
    eta: Annotated[float, Ge(0)] = 0.0  # ASAM's offset in T = |w| + eta; the paper's code uses 0
    normalize_logits: bool = True  # centre and l2-normalize the logits before cross-entropy
    # m: examples per independently perturbed batch; None: all
    batch_size: Annotated[int | None, Ge(1)] = 128
    # first examples of the split used; None: the whole split
    n_examples: Annotated[int | None, Ge(1)] = 1024
    steps: Annotated[int, Ge(1)] = 20  # APGD ascent steps per batch (worst case)
    # first ascent step in u = delta / T; None: 2 * rho
    step_size: Annotated[float | None, Gt(0)] = None
    # weight of the previous update (APGD's alpha = 0.75 on the new step)
    momentum: Annotated[float, Interval(0, 1, closed="left")] = 0.25
    n_samples: Annotated[int, Ge(1)] = 20  # noise draws per batch (average case)
    random_init: bool = False  # start at a random point of the box / l2 sphere (code: off)
    seed: int = 0  # seeds the local generator of noise / random starts
    splits: tuple[str, ...] = ("train",)  # where to compute it (expensive)

    def __post_init__(self) -> None:
        _check_kind_and_norm(self.kind, self.norm)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        batches = _first_examples(ctx, self.n_examples)
        value = sharpness(
            ctx.model, batches, self.rho, kind=self.kind, adaptive=self.adaptive,
            norm=self.norm, eta=self.eta, normalize_logits=self.normalize_logits,
            batch_size=self.batch_size, n_samples=self.n_samples, steps=self.steps,
            step_size=self.step_size, momentum=self.momentum, random_init=self.random_init,
            seed=self.seed,
        )
        return {"sharpness": value}


@MEASURES.register(
    "hessian",
    summary="Top Hessian eigenvalue (power iteration) and trace (Hutchinson) of the mean "
    "cross-entropy.",
    references=("PyHessian: Neural Networks Through the Lens of the Hessian (arXiv:1912.07145)",),
)
@dataclass
class Hessian(Measure):
    """:func:`hessian_top_eigenvalue` and :func:`hessian_trace` on the listed splits."""

    iterations: Annotated[int, Ge(1)] = 100  # most power-iteration steps (PyHessian's maxIter)
    # relative change of the eigenvalue that stops it (PyHessian's)
    tol: Annotated[float, Ge(0)] = 1e-3
    samples: Annotated[int, Ge(1)] = 100  # Rademacher vectors for the trace (PyHessian's maxIter)
    # first examples of the split used; None: the whole split
    n_examples: Annotated[int | None, Ge(1)] = None
    seed: int = 0  # seeds the local generator of the start / probe vectors
    splits: tuple[str, ...] = ("train",)  # where to compute it (expensive)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        batches = _first_examples(ctx, self.n_examples)
        return {
            "hessian_top_eigenvalue": hessian_top_eigenvalue(
                ctx.model, batches, self.iterations, self.tol, self.seed),
            "hessian_trace": hessian_trace(ctx.model, batches, self.samples, self.seed),
        }
