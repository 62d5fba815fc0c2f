"""Core: α-BN plus online minimization of a pairwise class-correlation loss (catalog #43).

What is from the paper (You, Li, Zhao, arXiv:2110.04065; only its abstract could be read):
Core is "a unified test time adaptation framework" built on α-BN that "performs the pairwise
class correlation online optimization" with "a novel loss function". What is our reading
(the loss's equation was not available to us): the pairwise class correlation of a test batch
is the ``C x C`` matrix of the batch's softmax predictions ``P`` (``B x C``),
``M = Pᵀ P`` (``M_jk = Σ_i p_ij p_ik``: how much the batch assigns to classes ``j`` and ``k``
together); each row is normalized to sum to one, ``M̃_jk = M_jk / Σ_k' M_jk'``, and the loss is
the mean cross-class correlation

    L(P) = (1 / C) Σ_j Σ_{k ≠ j} M̃_jk = 1 − tr(M̃) / C,

minimized online by Adam on the BatchNorm affine parameters (γ, β) only, as Tent does, while
every BatchNorm layer normalizes with α-BN's mixed statistics. This is the class-confusion
loss of Minimum Class Confusion (Jin et al., arXiv:1912.03699) without its entropy-based
example weights; a temperature ``T`` divides the logits before the softmax (MCC's ``T``;
``T = 1`` is the plain softmax). ``L`` is 0 when every example is confidently assigned and
no two classes share mass, and ``(C − 1) / C`` for uniform predictions.

References:
    You, Li, Zhao. Test-time Batch Statistics Calibration for Covariate Shift.
    arXiv:2110.04065.
    Jin, Wang, Long, Wang. Minimum Class Confusion for Versatile Domain Adaptation.
    arXiv:1912.03699.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from heldout.adapt.normalization import use_mixed_norms
from heldout.core.adapter import Adapter, Source, freeze_except
from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.registry import ADAPTERS

__all__ = ["Core", "class_correlation_loss"]


def class_correlation_loss(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The mean cross-class correlation of a batch's predictions,
    ``1 − tr(M̃) / C`` with ``M = Pᵀ P``, ``P = softmax(logits / T)`` and ``M̃`` ``M`` with
    rows normalized to sum to one (see the module docstring for what is our reading).

    Example:
        >>> round(float(class_correlation_loss(torch.zeros(5, 4))), 4)  # uniform: (C − 1) / C
        0.75
        >>> float(class_correlation_loss(torch.tensor([[30.0, 0.0], [0.0, 30.0]])))  # certain
        0.0
    """
    if logits.dim() != 2:
        raise ValueError(f"class_correlation_loss: logits must be (batch, classes), got shape "
                         f"{tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"class_correlation_loss: temperature must be > 0, got {temperature}")
    probabilities = (logits / temperature).softmax(dim=-1)
    correlation = probabilities.T @ probabilities
    normalized = correlation / correlation.sum(dim=1, keepdim=True)
    return 1 - normalized.diagonal().sum() / logits.shape[1]


@ADAPTERS.register(
    "core",
    summary="Core: α-BN statistics plus online minimization of a pairwise class-correlation "
    "loss over BatchNorm's affine parameters.",
    papers=(43,),
    search_space={"alpha": ("log_uniform", 0.01, 1.0), "lr": ("log_uniform", 1e-4, 1e-2)},
    references=("Minimum Class Confusion for Versatile Domain Adaptation (arXiv:1912.03699)",),
)
@dataclass(eq=False)
class Core(Adapter):
    """Core (You, Li, Zhao; arXiv:2110.04065): BatchNorm normalizes with α-BN's statistics
    ``μ = (1 − α) μ_source + α μ_batch`` (and likewise σ²) and, for each test batch, ``steps``
    Adam steps minimize :func:`class_correlation_loss` over the BatchNorm affine parameters
    only. The predictions returned are those before the batch's update (as Tent). ``steps = 0``
    (or ``lr = 0``) is α-BN exactly. The loss's form is our reading of the abstract (module
    docstring)."""

    changes: ClassVar[frozenset[str]] = frozenset({"bn_statistics", "parameters"})

    alpha: Annotated[float, Interval(0.0, 1.0)] = 0.1  # weight of the test-batch statistics
    lr: Annotated[float, Ge(0)] = 1e-3  # Adam learning rate (Tent's CIFAR setting)
    steps: Annotated[int, Ge(0)] = 1  # gradient steps per test batch; 0: α-BN
    temperature: Annotated[float, Gt(0.0)] = 1.0  # divides the logits inside the loss

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        norms = use_mixed_norms(net, self.alpha)
        params = [p for m in norms for p in (m.norm.weight, m.norm.bias) if p is not None]
        if not params:
            raise ValueError("core updates BatchNorm's affine parameters, but the model's "
                             "BatchNorm layers have none (affine=False)")
        freeze_except(net, params)
        self.optimizer = torch.optim.Adam(params, lr=self.lr)

    def forward(self, x: Tensor) -> Tensor:
        assert self.net is not None
        with torch.set_grad_enabled(self.steps > 0):
            logits = self.net(x)
        outputs = logits.detach()
        for step in range(self.steps):
            if step:
                logits = self.net(x)
            loss = class_correlation_loss(logits, self.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return outputs

    def extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
