"""Explicit regularizers: weight decay (the grokking baseline) and entropy bonus/penalty (#1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = ["EntropyRegularization", "WeightDecay", "entropy", "entropy_regularization"]


@TECHNIQUES.register(
    "weight_decay",
    summary="Weight decay set on the base optimizer (decoupled for AdamW, L2 for SGD/Adam).",
    search_space={"weight_decay": ("log_uniform", 1e-4, 1.0)},
    references=("Decoupled Weight Decay Regularization (arXiv:1711.05101)",),
)
@dataclass
class WeightDecay(Technique):
    """Set ``weight_decay`` in every parameter group of the base optimizer."""

    # the usual grokking value with AdamW (Power et al., 2022)
    weight_decay: Annotated[float, Ge(0)] = 1.0

    touches = frozenset({"optimizer"})
    vectorizable = frozenset({"weight_decay"})  # the stacked optimizer reads it per copy

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
        for group in optimizer.param_groups:
            if "weight_decay" not in group:
                raise ValueError(f"weight_decay: {type(optimizer).__name__} has no weight decay")
            if group["weight_decay"] not in (0, self.weight_decay):
                raise ValueError(
                    f"weight_decay: the optimizer already has weight_decay="
                    f"{group['weight_decay']}; set it in one place only"
                )
            group["weight_decay"] = self.weight_decay
        return optimizer


def entropy(logits: Tensor, dim: int = -1) -> Tensor:
    """H(softmax(z)) = logsumexp(z) − Σ_c softmax(z)_c z_c, per row (in nats)."""
    return torch.logsumexp(logits, dim=dim) - (torch.softmax(logits, dim=dim) * logits).sum(dim)


def entropy_regularization(logits: Tensor, coefficient: float,
                           mode: Literal["bonus", "penalty"] = "bonus",
                           mask: Tensor | None = None) -> Tensor:
    """The term to ADD to a loss that is minimized: −c·H̄ for a bonus (encourages entropy,
    exploration), +c·H̄ for a penalty (encourages confident predictions).

    H̄ is the mean entropy over rows; for token sequences (logits of shape (..., T, V)) pass
    ``mask`` (shape (..., T), 1 for real tokens) and H̄ is the masked token mean, as in the
    verl code of 1-shot RLVR, which subtracts c_ent·H̄ from its loss (c_ent = 0.001).

    Example:
        >>> z = torch.zeros(2, 4)  # uniform: H = log 4
        >>> round(float(entropy_regularization(z, 0.5, "bonus")), 4)  # -0.5 * log 4
        -0.6931

    References:
        Reinforcement Learning for Reasoning in Large Language Models with One Training
        Example (arXiv:2504.20571).
    """
    if mode not in ("bonus", "penalty"):
        raise ValueError(f"entropy_regularization: mode must be 'bonus' or 'penalty', got "
                         f"{mode!r}")
    if mask is not None and mask.shape != logits.shape[:-1]:
        raise ValueError(f"entropy_regularization: expected a mask of shape "
                         f"{tuple(logits.shape[:-1])} (logits without the class dimension), "
                         f"got {tuple(mask.shape)}")
    h = entropy(logits.float())
    if mask is None:
        mean = h.mean()
    else:
        mask = mask.to(h.dtype)
        mean = (h * mask).sum() / mask.sum().clamp_min(1.0)
    sign = -1.0 if mode == "bonus" else 1.0
    return sign * coefficient * mean


@TECHNIQUES.register(
    "entropy_reg",
    summary="Entropy bonus or penalty added to the loss (explicit sign convention; token "
    "means for sequences).",
    papers=(1,),
    search_space={"coefficient": ("log_uniform", 1e-4, 1e-1)},
)
@dataclass
class EntropyRegularization(Technique):
    """Add :func:`entropy_regularization` of the training logits to the loss."""

    coefficient: Annotated[float, Ge(0)] = 0.001  # c_ent (1-shot RLVR); the sign: see mode
    mode: Literal["bonus", "penalty"] = "bonus"  # bonus: loss − c·H; penalty: loss + c·H

    touches = frozenset({"loss_term"})

    def __post_init__(self) -> None:
        if self.mode not in ("bonus", "penalty"):
            raise ValueError(f"mode must be 'bonus' or 'penalty', got {self.mode!r}")

    def loss_term(self, logits: Tensor, targets: Tensor, state) -> Tensor:
        return entropy_regularization(logits, self.coefficient, self.mode)
