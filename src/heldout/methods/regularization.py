"""Explicit regularizers: weight decay as a technique (the grokking baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heldout.engine.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = ["WeightDecay"]


@TECHNIQUES.register(
    "weight_decay",
    summary="Weight decay set on the base optimizer (decoupled for AdamW, L2 for SGD/Adam).",
    search_space={"weight_decay": ("log_uniform", 1e-4, 1.0)},
    references=("Decoupled Weight Decay Regularization (arXiv:1711.05101)",),
)
@dataclass
class WeightDecay(Technique):
    """Set ``weight_decay`` in every parameter group of the base optimizer."""

    weight_decay: float = 1.0  # the usual grokking value with AdamW (Power et al., 2022)

    touches = frozenset({"optimizer"})

    def __post_init__(self) -> None:
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

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
