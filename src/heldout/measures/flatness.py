"""PAC-Bayes flatness and the worst-case sharpness radius of "Fantastic Generalization Measures"
(Jiang et al.): the largest weight noise σ′ (Gaussian, optionally magnitude-aware) and the largest
worst-case perturbation radius α′ that raise the training error by a target deviation, found by
bisection, and the bounds built from them (:mod:`heldout.measures.bounds`).

The conventions (BatchNorm folding, weight matrices, what was checked against the port of the
paper's measures by Dziugaite et al. and where this code differs from it on purpose) are those of
:mod:`heldout.measures.norms`, whose module docstring states them.

References:
    Fantastic Generalization Measures and Where to Find Them (arXiv:1912.02178).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.measure import EvalContext, Measure, check_splits, is_classification
from heldout.measures.bounds import (
    magnitude_aware_pac_bayes_bound,
    pac_bayes_bound,
    sharpness_bound,
)
from heldout.measures.norms import fold_batch_norm, weight_matrices
from heldout.registry import MEASURES

__all__ = ["PacBayesFlatness", "pac_bayes_sigma", "sharpness_radius"]

Criterion = Literal["error", "loss"]

_JIANG = "Fantastic Generalization Measures and Where to Find Them (arXiv:1912.02178)"


def _vector(weights: Sequence[Tensor]) -> Tensor:
    return torch.cat([w.reshape(-1).double().cpu() for w in weights])


def _evaluate(net: nn.Module, inputs: Tensor, targets: Tensor, criterion: Criterion,
              batch_size: int) -> float:
    """Mean 0-1 error or mean cross-entropy of ``net`` (already in eval mode) on the data."""
    total = torch.zeros((), dtype=torch.float64, device=targets.device)
    with torch.no_grad():
        for start in range(0, len(targets), batch_size):
            logits = net(inputs[start:start + batch_size])
            y = targets[start:start + batch_size]
            if criterion == "error":
                total += (logits.argmax(dim=-1) != y).sum()
            else:
                total += F.cross_entropy(logits.double(), y, reduction="sum")
    return float(total) / len(targets)


def _check_search(target_deviation: float, search_depth: int, upper: float, tolerance: float,
                  magnitude_eps: float | None) -> None:
    if not target_deviation > 0:
        raise ValueError(f"target_deviation must be > 0, got {target_deviation}")
    if search_depth < 1:
        raise ValueError(f"search_depth must be >= 1, got {search_depth}")
    if not upper > 0:
        raise ValueError(f"upper must be > 0, got {upper}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if magnitude_eps is not None and not magnitude_eps >= 0:
        raise ValueError(f"magnitude_eps must be >= 0 or None, got {magnitude_eps}")


def _bisect(rise_at, target: float, depth: int, upper: float, tolerance: float) -> float:
    """Largest radius with rise ≈ target: bisection on [0, upper], stopped early once the rise
    is within ``tolerance`` of the target (the search of Jiang et al.'s code)."""
    lower, radius = 0.0, upper
    for _ in range(depth):
        radius = (lower + upper) / 2
        rise = rise_at(radius)
        if abs(rise - target) < tolerance:
            break
        if rise > target:
            upper = radius
        else:
            lower = radius
    return radius


def pac_bayes_sigma(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    target_deviation: float = 0.1,
    magnitude_eps: float | None = None,
    search_depth: int = 15,
    mc_samples: int = 10,
    upper: float = 2.0,
    tolerance: float = 0.01,
    criterion: Criterion = "error",
    seed: int = 0,
    batch_size: int = 8192,
) -> float:
    """σ′: the largest σ such that Gaussian weight noise raises the mean error by the target.

    With u_i ~ N(0, σ²) on every floating-point parameter (or, magnitude-aware with
    ``magnitude_eps`` = ε, u_i ~ N(0, σ²w_i² + ε²)), the rise E_u[L(w + u)] − L(w) of the 0-1
    error (``criterion="error"``, the paper) or of the cross-entropy (``"loss"``) is estimated
    from ``mc_samples`` draws and σ is bisected on [0, ``upper``] for ``search_depth`` steps,
    stopping once the rise is within ``tolerance`` of ``target_deviation``. Defaults are the
    paper's code: [0, 2], 15 steps, 10 draws, 0.1, 0.01 (ε = 1e-3 for the magnitude-aware
    measure). The model is evaluated in eval mode on a private copy; fold BatchNorm first
    (:func:`fold_batch_norm`) to perturb the folded weights as the paper does. If even σ =
    ``upper`` does not reach the target, the result approaches ``upper``.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
        >>> 0 < pac_bayes_sigma(net, x, y, search_depth=3, mc_samples=2) <= 2
        True
    """
    _check_search(target_deviation, search_depth, upper, tolerance, magnitude_eps)
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    net = copy.deepcopy(model).eval()
    params = [p for p in net.parameters() if p.is_floating_point()]
    base = [p.detach().clone() for p in params]
    device = inputs.device
    generator = torch.Generator(device=device).manual_seed(seed)
    base_value = _evaluate(net, inputs, targets, criterion, batch_size)

    squares = [w.square() for w in base] if magnitude_eps is not None else []

    def rise_at(sigma: float) -> float:
        with torch.no_grad():
            if magnitude_eps is None:
                stds: list[Tensor | float] = [sigma] * len(base)
            else:
                stds = [(sigma**2 * w2 + magnitude_eps**2).sqrt() for w2 in squares]
            total = 0.0
            for _ in range(mc_samples):
                for p, w, std in zip(params, base, stds, strict=True):
                    noise = torch.randn(w.shape, generator=generator, device=device,
                                        dtype=w.dtype)
                    p.copy_(noise.to(w.device).mul_(std).add_(w))
                total += _evaluate(net, inputs, targets, criterion, batch_size)
        return total / mc_samples - base_value

    return _bisect(rise_at, target_deviation, search_depth, upper, tolerance)


def sharpness_radius(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    target_deviation: float = 0.1,
    magnitude_eps: float | None = None,
    search_depth: int = 15,
    ascent_steps: int = 20,
    upper: float = 2.0,
    tolerance: float = 0.01,
    seed: int = 0,
    batch_size: int = 8192,
) -> float:
    """α′: the largest α such that the worst perturbation in the box |u_i| ≤ r_i raises the
    0-1 error by the target, with r_i = α (or α|w_i| + ε, magnitude-aware).

    The worst case is approximated by projected sign-gradient ascent on the mean
    cross-entropy over all of ``inputs``: from a uniform random point of the box,
    ``ascent_steps`` steps u ← clip(u + (2.5/steps)·r·sign(∇L), −r, r) (the ℓ∞ steepest
    ascent with the PGD step size of Madry et al.); α is bisected as in
    :func:`pac_bayes_sigma`. Jiang et al.'s definition (largest α with max L ≤ 0.1) is from
    the paper; the optimizer, its step size and start are assumptions [recon].

    Example:
        >>> net = nn.Linear(2, 2)
        >>> x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
        >>> 0 < sharpness_radius(net, x, y, search_depth=3, ascent_steps=2) <= 2
        True
    """
    _check_search(target_deviation, search_depth, upper, tolerance, magnitude_eps)
    if ascent_steps < 1:
        raise ValueError(f"ascent_steps must be >= 1, got {ascent_steps}")
    net = copy.deepcopy(model).eval()
    params = [p for p in net.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    base = [p.detach().clone() for p in params]
    device = inputs.device
    generator = torch.Generator(device=device).manual_seed(seed)
    base_error = _evaluate(net, inputs, targets, "error", batch_size)
    step = 2.5 / ascent_steps

    def rise_at(alpha: float) -> float:
        radii = [alpha * w.abs() + magnitude_eps if magnitude_eps is not None
                 else torch.full_like(w, alpha) for w in base]
        with torch.no_grad():
            shifts = [(2 * torch.rand(w.shape, generator=generator, device=device,
                                      dtype=w.dtype).to(w.device) - 1) * r
                      for w, r in zip(base, radii, strict=True)]
        for _ in range(ascent_steps):
            with torch.no_grad():
                for p, w, u in zip(params, base, shifts, strict=True):
                    p.copy_(w + u)
            grads = _loss_gradient(net, params, inputs, targets, batch_size)
            with torch.no_grad():
                for u, g, r in zip(shifts, grads, radii, strict=True):
                    u.add_(step * r * g.sign())
                    torch.minimum(torch.maximum(u, -r), r, out=u)
        with torch.no_grad():
            for p, w, u in zip(params, base, shifts, strict=True):
                p.copy_(w + u)
        return _evaluate(net, inputs, targets, "error", batch_size) - base_error

    return _bisect(rise_at, target_deviation, search_depth, upper, tolerance)


def _loss_gradient(net: nn.Module, params: Sequence[Tensor], inputs: Tensor, targets: Tensor,
                   batch_size: int) -> list[Tensor]:
    """Gradient of the mean cross-entropy over all the data, summed over chunks."""
    grads = [torch.zeros_like(p) for p in params]
    n = len(targets)
    with torch.enable_grad():
        for start in range(0, n, batch_size):
            logits = net(inputs[start:start + batch_size])
            loss = F.cross_entropy(logits, targets[start:start + batch_size], reduction="sum") / n
            for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True),
                              strict=True):
                if g is not None:
                    acc.add_(g)
    return grads


@MEASURES.register(
    "pac_bayes_flatness",
    summary="PAC-Bayes flatness: largest Gaussian weight-noise sigma' (and magnitude-aware, "
    "worst-case alpha') raising train error by 0.1.",
    references=(_JIANG,),
)
@dataclass
class PacBayesFlatness(Measure):
    """:func:`pac_bayes_sigma` and :func:`sharpness_radius` on the BatchNorm-folded model and
    the bounds built from them, on the listed splits (by default train).

    Keys (m = examples used, w the folded weight matrices as one vector, ω its length):
    ``pacbayes_sigma`` σ′, ``pacbayes_flatness`` (53) = 1/σ′², ``pacbayes_orig`` (49) and,
    with the initial state, ``pacbayes_init`` (48) (:func:`pac_bayes_bound`); with
    ``magnitude_aware``: ``pacbayes_mag_sigma``, ``pacbayes_mag_flatness`` (61),
    ``pacbayes_mag_orig`` (57), ``pacbayes_mag_init`` (56); with ``worst_case``:
    ``sharpness_alpha`` α′, ``sharpness_flatness`` = 1/α′², ``sharpness_orig``,
    ``sharpness_init`` and, with ``magnitude_aware`` too, ``sharpness_mag_alpha``,
    ``sharpness_mag_flatness``. Cost: search_depth × mc_samples forward passes per σ′,
    search_depth × (ascent_steps + 1) forward-backward passes per α′; ``max_examples`` caps m.
    """

    # rise of the train error that defines sigma' (paper: 0.1)
    target_deviation: Annotated[float, Gt(0)] = 0.1
    search_depth: Annotated[int, Ge(1)] = 15  # bisection steps (paper code: 15)
    mc_samples: Annotated[int, Ge(1)] = 10  # noise draws per bisection step (paper code: 10)
    # search range [0, upper] for sigma' and alpha' (paper code: [0, 2])
    upper: Annotated[float, Gt(0)] = 2.0
    # stop once |rise - target| < tolerance (paper code: 0.01)
    tolerance: Annotated[float, Ge(0)] = 0.01
    # epsilon of the magnitude-aware noise sd sqrt(s^2 w^2 + e^2)
    magnitude_eps: Annotated[float, Ge(0)] = 1e-3
    criterion: Literal["error", "loss"] = "error"  # what the noise must raise (paper: error)
    magnitude_aware: bool = True  # also the magnitude-aware sigma' (and alpha')
    worst_case: bool = True  # also the worst-case sharpness radius alpha' ([recon])
    ascent_steps: Annotated[int, Ge(1)] = 20  # projected ascent steps per alpha ([recon])
    fold_batch_norm: bool = True  # perturb the BatchNorm-folded weights (the paper)
    # use a fixed random subset of this many; None: all
    max_examples: Annotated[int | None, Ge(1)] = None
    seed: int = 0  # seeds the noise, the random starts and the subset
    splits: tuple[str, ...] = ("train",)  # where to compute it (expensive)

    def __post_init__(self) -> None:
        if self.criterion not in ("error", "loss"):
            raise ValueError(f"criterion must be 'error' or 'loss', got {self.criterion!r}")
        check_splits(self.splits)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        if not is_classification(y) or len(y) == 0:
            return {}
        if self.max_examples is not None and len(y) > self.max_examples:
            generator = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(len(y), generator=generator)[: self.max_examples]
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        m = len(y)
        model = ctx.model
        net = fold_batch_norm(model) if self.fold_batch_norm else copy.deepcopy(model).eval()
        w = _vector(weight_matrices(net))
        v = None
        init_net = ctx.initial_model()  # None when the initial state is unknown
        if init_net is not None:
            init_net = fold_batch_norm(init_net) if self.fold_batch_norm else init_net
            v = w - _vector(weight_matrices(init_net))
        search: dict[str, Any] = dict(
            target_deviation=self.target_deviation, search_depth=self.search_depth,
            upper=self.upper, tolerance=self.tolerance, seed=self.seed, batch_size=ctx.batch_size)
        out: dict[str, float] = {}
        sigma = pac_bayes_sigma(net, x, y, mc_samples=self.mc_samples,
                                criterion=self.criterion, **search)
        out["pacbayes_sigma"] = sigma
        out["pacbayes_flatness"] = 1 / sigma**2
        out["pacbayes_orig"] = pac_bayes_bound(float(w.square().sum()), sigma, m)
        if v is not None:
            out["pacbayes_init"] = pac_bayes_bound(float(v.square().sum()), sigma, m)
        if self.magnitude_aware:
            mag = pac_bayes_sigma(net, x, y, mc_samples=self.mc_samples,
                                  criterion=self.criterion, magnitude_eps=self.magnitude_eps,
                                  **search)
            out["pacbayes_mag_sigma"] = mag
            out["pacbayes_mag_flatness"] = 1 / mag**2
            out["pacbayes_mag_orig"] = magnitude_aware_pac_bayes_bound(
                w, mag, m, self.magnitude_eps)
            if v is not None:
                out["pacbayes_mag_init"] = magnitude_aware_pac_bayes_bound(
                    v, mag, m, self.magnitude_eps)
        if self.worst_case:
            alpha = sharpness_radius(net, x, y, ascent_steps=self.ascent_steps, **search)
            out["sharpness_alpha"] = alpha
            out["sharpness_flatness"] = 1 / alpha**2
            out["sharpness_orig"] = sharpness_bound(float(w.square().sum()), alpha, m, len(w))
            if v is not None:
                out["sharpness_init"] = sharpness_bound(float(v.square().sum()), alpha, m,
                                                        len(w))
            if self.magnitude_aware:
                mag_alpha = sharpness_radius(net, x, y, ascent_steps=self.ascent_steps,
                                             magnitude_eps=self.magnitude_eps, **search)
                out["sharpness_mag_alpha"] = mag_alpha
                out["sharpness_mag_flatness"] = 1 / mag_alpha**2
        return out
