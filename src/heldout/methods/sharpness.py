"""Sharpness-aware minimization: SAM as an optimizer wrapper (the sharpness family's base).

SAM minimizes max_{‖ε‖≤ρ} L(w + ε). Its step: compute g = ∇L(w); move to w + e with
e = ρ · T²g / ‖Tg‖ (T = I for SAM; T = diag(|w| + η) for adaptive SAM); compute
g' = ∇L(w + e); move back to w and let the base optimizer step with g'.

BatchNorm pitfall: the second forward pass would update the running statistics a second time
with statistics of the perturbed weights. Pass ``model=`` and the wrapper restores the
BatchNorm buffers after the second pass, so they move exactly once per step (from the first,
unperturbed pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heldout.engine.technique import Technique
from heldout.methods._wrapper import OptimizerWrapper
from heldout.registry import TECHNIQUES

__all__ = ["SAM", "SharpnessAware", "preserve_batchnorm_stats"]


@contextlib.contextmanager
def preserve_batchnorm_stats(model: nn.Module | None) -> Iterator[None]:
    """Run the body without changing any BatchNorm running statistics of ``model``."""
    if model is None:
        yield
        return
    saved = [
        (m, {k: b.clone() for k, b in m.named_buffers(recurse=False)})
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in saved:
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


class SAM(OptimizerWrapper):
    """Sharpness-Aware Minimization around any base optimizer.

    Use ``step(closure)`` where ``closure`` zeroes the gradients, computes the loss, calls
    ``backward`` and returns the loss; or call ``first_step()`` / ``second_step()`` around a
    second forward-backward in your own loop. Attach LR schedulers to either optimizer: the
    parameter groups are shared.

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
        base: torch.optim.Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.0,
        model: nn.Module | None = None,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(base, {"rho": rho, "adaptive": adaptive, "eta": eta})
        self.model = model

    @torch.no_grad()
    def _scaled_grad_norm(self) -> Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                scale = (p.abs() + group["eta"]) if group["adaptive"] else 1.0
                norms.append((scale * p.grad).norm(p=2))
        if not norms:
            raise RuntimeError("SAM.first_step: no parameter has a gradient")
        return torch.stack(norms).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to w + e, the (first-order) worst point of the ρ-ball."""
        grad_norm = self._scaled_grad_norm()
        for group in self.param_groups:
            factor = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad * factor
                if group["adaptive"]:
                    e = e * (p.abs() + group["eta"]).pow(2)
                p.add_(e)
                self.state[p]["e"] = e
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and step the base optimizer with the gradient taken at w + e."""
        for group in self.param_groups:
            for p in group["params"]:
                e = self.state[p].pop("e", None)
                if e is not None:
                    p.sub_(e)
        self.base.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss and gradients "
                             "(or call first_step() and second_step() yourself)")
        with torch.enable_grad():
            loss = closure()
        self.first_step()
        with torch.enable_grad(), preserve_batchnorm_stats(self.model):
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

    rho: float = 0.05  # ball radius (Foret et al.: 0.05 on CIFAR-10)
    adaptive: bool = False  # scale the ball by |w| + eta (ASAM's invariance to rescaling)
    eta: float = 0.0  # added to |w| in adaptive mode
    preserve_batchnorm: bool = True  # keep BN statistics from the second pass out

    touches = frozenset({"step"})

    def __post_init__(self) -> None:
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0, got {self.rho}")

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        return SAM(optimizer, self.rho, self.adaptive, self.eta,
                   model if self.preserve_batchnorm else None)
