"""Sharpness-aware minimization: SAM as an optimizer wrapper (the base of ASAM, TRAM, UDIM).

SAM minimizes max_{‖ε‖≤ρ} L(w + ε). Its step: compute g = ∇L(w); move to w + e with
e = ρ · T²g / ‖Tg‖ (T = I for SAM; T = diag(|w| + η) for adaptive SAM, on every parameter
or, with ``scale="weights"``, on the weight-like ones only, as ASAM does); compute
g' = ∇L(w + e); move back to w and let the base optimizer step with g'.

BatchNorm pitfall: the second forward pass would update the running statistics a second time
with statistics of the perturbed weights. Pass ``model=`` and the second pass runs with the
BatchNorm layers' running statistics frozen (normalizing by the batch, as in training), so
they move exactly once per step (from the first, unperturbed pass).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Interval
from heldout.core.checks import check_non_negative
from heldout.core.stacked import Layout, Stack, StackedRule, cast, per_copy
from heldout.core.technique import Technique
from heldout.methods._wrapper import OptimizerWrapper, base_optimizer
from heldout.registry import TECHNIQUES

__all__ = [
    "SAM",
    "Scale",
    "SharpnessAware",
    "StackedAscent",
    "is_weight_like",
    "preserve_batchnorm_stats",
]

# what torch's _foreach ops take, and (their stubs say) return: they return lists at run time
_Tensors = list[Tensor] | tuple[Tensor, ...]


Scale = Literal["all", "weights"]
"""Which parameters adaptive mode scales by T = |w| + η: ``"all"`` (davda54's ``adaptive=True``)
or ``"weights"`` (ASAM's official rule: :func:`is_weight_like`; the others keep T = 1)."""


def is_weight_like(name: str) -> bool:
    """ASAM's rule for the parameters its ascent scales: those whose name contains
    ``"weight"`` (so BatchNorm's γ is scaled and biases are not), as the official code does."""
    return "weight" in name


def _batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def preserve_batchnorm_stats(
    model: nn.Module | None, layers: list[nn.modules.batchnorm._BatchNorm] | None = None
) -> Iterator[None]:
    """Run the body with every BatchNorm of ``model`` (or the given ``layers``) normalizing
    by batch statistics but leaving its running statistics and batch counter untouched."""
    if layers is None:
        layers = [] if model is None else _batchnorm_layers(model)
    tracking = [m for m in layers if m.track_running_stats]
    for layer in tracking:
        layer.track_running_stats = False  # in training mode: batch stats, no update
    try:
        yield
    finally:
        for layer in tracking:
            layer.track_running_stats = True


class SAM(OptimizerWrapper):
    """Sharpness-Aware Minimization around any base optimizer.

    Use ``step(closure)`` where ``closure`` zeroes the gradients, computes the loss, calls
    ``backward`` and returns the loss; or call ``first_step()`` / ``second_step()`` around a
    second forward-backward in your own loop. Attach LR schedulers to either optimizer: the
    parameter groups are shared.

    Two ways to build it: around an optimizer instance, ``SAM(torch.optim.SGD(params,
    lr=0.1), rho=0.05)``, or as davda54/sam does, ``SAM(params, torch.optim.SGD, rho=0.05,
    lr=0.1)`` (the keyword arguments SAM does not take go to the optimizer class). Both give
    the same steps. ``rho`` and ``eta`` must be finite numbers >= 0, passed by keyword.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad(); loss = (model(x) - y).pow(2).mean(); loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Sharpness-Aware Minimization for Efficiently Improving Generalization
        (arXiv:2010.01412); ASAM: Adaptive Sharpness-Aware Minimization (arXiv:2102.11600).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer | Iterable[Any],
        optimizer_class: type[torch.optim.Optimizer] | None = None,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.0,
        scale: Scale = "all",
        model: nn.Module | None = None,
        preserve_batchnorm: bool = True,
        **optimizer_kwargs: Any,
    ) -> None:
        name = type(self).__name__
        rho = check_non_negative(name, "rho", rho)
        eta = check_non_negative(name, "eta", eta)
        if scale not in ("all", "weights"):
            raise ValueError(f"{name}: scale must be 'all' or 'weights', got {scale!r}")
        base = base_optimizer(name, base, optimizer_class, optimizer_kwargs)
        super().__init__(base, {"rho": rho, "adaptive": bool(adaptive), "eta": eta})
        self.model = model
        self.scale = scale
        self._bn_layers = [] if model is None or not preserve_batchnorm else (
            _batchnorm_layers(model))
        # names are known only through the model; without it every parameter is scaled
        self._unscaled = set() if model is None or scale == "all" else {
            id(p) for n, p in model.named_parameters() if not is_weight_like(n)}
        self._moved: list[tuple[list[Tensor], _Tensors]] = []  # (params, e) per group

    def is_scaled(self, param: Tensor) -> bool:
        """Whether adaptive mode scales ``param``'s ascent by T = |w| + η (see ``scale``)."""
        return id(param) not in self._unscaled

    def _with_grads(self, group: dict) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    @staticmethod
    def _grads(params: list[Tensor]) -> list[Tensor]:
        """The gradients of ``params``, which all have one (see ``_with_grads``)."""
        return [p.grad for p in params if p.grad is not None]

    def _scales(self, group: dict, params: list[Tensor]) -> _Tensors:
        """T = |w| + eta per parameter (adaptive mode); 1 for those ``scale`` leaves out."""
        scales = torch._foreach_abs(params)
        if group["eta"]:
            torch._foreach_add_(scales, group["eta"])
        for scale, p in zip(scales, params, strict=True):
            if id(p) in self._unscaled:
                scale.fill_(1.0)
        return scales

    @torch.no_grad()
    def _scaled_grad_norm(self) -> Tensor:
        norms: list[Tensor] = []
        for group in self.param_groups:
            params = self._with_grads(group)
            if not params:
                continue
            grads: _Tensors = self._grads(params)
            if group["adaptive"]:
                grads = torch._foreach_mul(grads, self._scales(group, params))
            norms.extend(torch._foreach_norm(grads, 2))
        if not norms:
            raise RuntimeError("SAM.first_step: no parameter has a gradient")
        return torch.stack(norms).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, rho: Tensor | float | None = None) -> None:
        """Move to w + e, the (first-order) worst point of the ρ-ball; ``rho`` overrides the
        groups' radius (TRAM sets it from a divergence each step)."""
        grad_norm = self._scaled_grad_norm()
        for group in self.param_groups:
            params = self._with_grads(group)
            if not params:
                continue
            factor = (group["rho"] if rho is None else rho) / (grad_norm + 1e-12)
            e = torch._foreach_mul(self._grads(params), factor)
            if group["adaptive"]:
                squares = self._scales(group, params)
                torch._foreach_mul_(squares, squares)
                torch._foreach_mul_(e, squares)
            torch._foreach_add_(params, e)
            self._moved.append((params, e))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and step the base optimizer with the gradient taken at w + e."""
        for params, e in self._moved:
            torch._foreach_sub_(params, e)
        self._moved = []
        self.base.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss and gradients "
                             "(or call first_step() and second_step() yourself)")
        with torch.enable_grad():
            loss = closure()
        if not self._params():  # like a torch optimizer given no gradient: no update (RM3
            return loss         # withholds the first steps' gradients this way)
        self.first_step()
        with torch.enable_grad(), preserve_batchnorm_stats(None, self._bn_layers):
            closure()
        self.second_step()
        return loss


@TECHNIQUES.register(
    "sam",
    summary="Sharpness-Aware Minimization: step with the gradient taken at the worst point "
    "of a rho-ball.",
    search_space={"rho": ("log_uniform", 0.01, 0.5)},
    references=(
        "Sharpness-Aware Minimization for Efficiently Improving Generalization "
        "(arXiv:2010.01412)",
    ),
)
@dataclass
class SharpnessAware(Technique):
    """Wrap the optimizer in :class:`SAM` (two forward-backward passes per step)."""

    # ball radius (Foret et al.: 0.05 on CIFAR-10)
    rho: Annotated[float, Interval(0, math.inf, closed="left")] = 0.05
    adaptive: bool = False  # scale the ball by |w| + eta (ASAM's invariance to rescaling)
    # added to |w| in adaptive mode
    eta: Annotated[float, Interval(0, math.inf, closed="left")] = 0.0
    preserve_batchnorm: bool = True  # keep BN statistics from the second pass out

    touches = frozenset({"step"})
    vectorizable = frozenset({"rho"})

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        return SAM(optimizer, rho=self.rho, adaptive=self.adaptive, eta=self.eta, model=model,
                   preserve_batchnorm=self.preserve_batchnorm)

    @classmethod
    def stacked_rule(cls, copies: Sequence[SharpnessAware], stack: Stack) -> StackedRule:
        return StackedAscent(per_copy([c.rho for c in copies], stack.flat), stack.layout,
                             eta=copies[0].eta if copies[0].adaptive else None)


class StackedAscent(StackedRule):
    """:meth:`SAM.first_step` for K copies at once: ``e_k = rho_k · g_k / (‖g_k‖ + 1e-12)``,
    the norm over all of copy k's parameters (per-parameter norms, then their norm, as SAM
    computes it). With ``eta`` (adaptive mode) the gradient is scaled by ``T = |w| + eta``
    inside the norm and ``e`` by ``T²``, with ``T = 1`` on the parameters ``scale`` leaves
    out (``"weights"``: ASAM's biases), as :class:`SAM` does."""

    def __init__(self, rho: float | Tensor, layout: Layout, eta: float | None = None,
                 scale: Scale = "all") -> None:
        self.rho, self.layout, self.eta = rho, layout, eta
        self.unscaled = [] if scale == "all" else [
            (start, end) for name, start, end, _ in layout if not is_weight_like(name)]

    @torch.no_grad()
    def ascent(self, flat: Tensor, grad: Tensor) -> Tensor:
        scale = None if self.eta is None else flat.abs() + self.eta
        if scale is not None:
            for start, end in self.unscaled:
                scale[:, start:end] = 1.0
        scaled = grad * scale if scale is not None else grad
        norms = torch.stack([scaled[:, start:end].norm(dim=1)
                             for _, start, end, _ in self.layout], dim=1)
        e = grad * (cast(self.rho, grad) / (norms.norm(dim=1, keepdim=True) + 1e-12))
        return e * (scale * scale) if scale is not None else e
