"""ASAM (#11's adaptive variant): SAM whose ball is scaled by T_w = |w| + η on the weight-like
parameters only, so the sharpness of a ReLU network is invariant to rescaling its layers. It is
:class:`~heldout.methods.sam.sam.SAM`'s adaptive rule with ``scale="weights"`` (the registered
``sam`` with ``adaptive=true`` is the same rule with ``scale="all"``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heldout.core.bounds import Annotated, Interval
from heldout.core.stacked import Stack, StackedRule, per_copy
from heldout.core.technique import Technique
from heldout.methods.sam.sam import SAM, StackedAscent
from heldout.registry import TECHNIQUES

__all__ = ["ASAM", "AdaptiveSharpnessAware"]

class ASAM(SAM):
    """Adaptive SAM around any base optimizer: e = ρ T² g / ‖T g‖ with T = diag(|w| + η) for
    weight-like parameters and T = I for the others (biases).

    A parameter is weight-like when its name in ``model`` contains ``"weight"`` (the official
    code's rule, so BatchNorm's γ is rescaled and biases are not). Without ``model`` the names
    are unknown and every parameter is rescaled (davda54's ``adaptive=True`` convention). With
    η = 0, rescaling a ReLU layer by c and the next by 1/c rescales e by the same factors, so
    the perturbed function, and the sharpness ASAM minimizes, is unchanged.

    Use ``step(closure)`` as for :class:`~heldout.methods.sam.SAM` (two forward-backward
    passes; ``model`` also freezes the BatchNorm statistics in the second). Built like SAM:
    around an optimizer instance or from ``(params, optimizer_class, ..., **optimizer_kwargs)``;
    its own settings by keyword.

    Example:
        >>> import torch.nn.functional as F
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> opt = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, model=model)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> def closure():
        ...     opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep
        Neural Networks (arXiv:2102.11600); official code SamsungLabs/ASAM (``asam.py``).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer | Iterable[Any],
        optimizer_class: type[torch.optim.Optimizer] | None = None,
        *,
        rho: float = 0.5,
        eta: float = 0.01,
        model: nn.Module | None = None,
        preserve_batchnorm: bool = True,
        **optimizer_kwargs: Any,
    ) -> None:
        super().__init__(base, optimizer_class, rho=rho, adaptive=True, eta=eta, scale="weights",
                         model=model, preserve_batchnorm=preserve_batchnorm, **optimizer_kwargs)


@TECHNIQUES.register(
    "asam",
    summary="Adaptive SAM: a rho-ball scaled by |w| + eta on the weights, invariant to "
    "rescaling the layers of a ReLU network.",
    search_space={"rho": ("log_uniform", 0.05, 2.0)},
    references=(
        "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep "
        "Neural Networks (arXiv:2102.11600)",
    ),
)
@dataclass
class AdaptiveSharpnessAware(Technique):
    """Wrap the optimizer in :class:`ASAM` (two forward-backward passes per step)."""

    # radius (official README: 0.5 on CIFAR-10, 1.0 on CIFAR-100)
    rho: Annotated[float, Interval(0, math.inf, closed="left")] = 0.5
    # added to |w| in T_w (official class default)
    eta: Annotated[float, Interval(0, math.inf, closed="left")] = 0.01
    preserve_batchnorm: bool = True  # keep BN statistics from the second pass out

    touches = frozenset({"step"})
    vectorizable = frozenset({"rho"})

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        return ASAM(optimizer, rho=self.rho, eta=self.eta, model=model,
                    preserve_batchnorm=self.preserve_batchnorm)

    @classmethod
    def stacked_rule(cls, copies: Sequence[AdaptiveSharpnessAware], stack: Stack
                     ) -> StackedRule:
        return StackedAscent(per_copy([c.rho for c in copies], stack.flat), stack.layout,
                             eta=copies[0].eta, scale="weights")
