"""Gradient transforms: ⊥Grad, the perpendicular gradient (#9)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heldout.core.checks import check_non_negative, check_same_shape
from heldout.core.technique import Technique
from heldout.methods._wrapper import OptimizerWrapper
from heldout.registry import TECHNIQUES

__all__ = ["PerpendicularGradient", "PerpGrad", "perpendicular_gradient"]


def perpendicular_gradient(weight: Tensor, grad: Tensor, eps: float = 1e-30) -> Tensor:
    """The part of ``grad`` orthogonal to ``weight``, rescaled to the norm of ``grad``.

    With w and g flattened: g⊥ = g - (w·g / (w·w + ε)) w, then g⊥ · ‖g‖ / (‖g⊥‖ + ε). Removing
    the component along w removes "naive loss minimization", which only scales the weights
    (and the logits) up; rescaling keeps the step size of the base optimizer unchanged. A
    g⊥ at rounding level (g parallel to w) gives 0. ``weight`` and ``grad`` must have one shape
    (a (3, 4) weight with a (4, 3) gradient raises instead of pairing elements).

    Example:
        >>> w, g = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
        >>> perpendicular_gradient(w, g)  # ‖g‖ = √2, all of it now along e₂
        tensor([0.0000, 1.4142])

    References:
        Grokking at the Edge of Numerical Stability (arXiv:2501.04697), section 5.
    """
    check_same_shape("perpendicular_gradient", ("weight", weight), ("grad", grad))
    w, g = weight.reshape(-1), grad.reshape(-1)
    projection = torch.dot(w, g) / (torch.dot(w, w) + eps)
    orthogonal = g - projection * w
    # g ∥ w (always so for a one-element tensor) leaves only rounding noise in g⊥: give 0,
    # not that noise rescaled to ‖g‖ in a random direction
    noise = orthogonal.norm() <= 4 * torch.finfo(g.dtype).eps * g.numel() ** 0.5 * g.norm()
    orthogonal = orthogonal * (g.norm() / (orthogonal.norm() + eps))
    return torch.where(noise, torch.zeros_like(orthogonal), orthogonal).view_as(grad)


class PerpendicularGradient(OptimizerWrapper):
    """⊥Grad around any optimizer: project each parameter's gradient with
    :func:`perpendicular_gradient`, then take the base optimizer's step.

    Example:
        >>> model = nn.Linear(3, 2, bias=False)
        >>> opt = PerpendicularGradient(torch.optim.AdamW(model.parameters(), lr=1e-2))
        >>> loss = model(torch.ones(4, 3)).pow(2).mean(); loss.backward(); opt.step()

    References:
        Grokking at the Edge of Numerical Stability (arXiv:2501.04697).
    """

    def __init__(self, base: torch.optim.Optimizer, eps: float = 1e-30) -> None:
        eps = check_non_negative("PerpendicularGradient", "eps", eps)
        super().__init__(base, {"perp_eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.copy_(perpendicular_gradient(p, p.grad, group["perp_eps"]))
        self.base.step()
        return loss


@TECHNIQUES.register(
    "perp_grad",
    summary="⊥Grad: keep only the gradient component orthogonal to the weights, at its "
    "original norm.",
    papers=(9,),
)
@dataclass
class PerpGrad(Technique):
    """Wrap the optimizer in :class:`PerpendicularGradient` (⊥AdamW with AdamW)."""

    eps: float = 1e-30  # guards the divisions, as in the paper's code

    touches = frozenset({"gradients"})

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        return PerpendicularGradient(optimizer, self.eps)
