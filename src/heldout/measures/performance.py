"""Performance: accuracy, loss and the generalization gap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["Accuracy", "GeneralizationGap", "Loss", "accuracy", "generalization_gap"]


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose arg-max logit is the target."""
    return float((logits.argmax(dim=-1) == targets).double().mean())


def generalization_gap(metrics: Mapping[str, float], reference: str = "test") -> dict[str, float]:
    """``gap/accuracy`` = train − reference accuracy; ``gap/loss`` = reference − train loss."""
    out = {}
    for name, sign in (("accuracy", 1.0), ("loss", -1.0)):
        train, other = metrics.get(f"train/{name}"), metrics.get(f"{reference}/{name}")
        if train is not None and other is not None:
            out[f"gap/{name}"] = sign * (train - other)
    return out


@MEASURES.register("accuracy", summary="Top-1 accuracy on each split.")
@dataclass
class Accuracy(Measure):
    """Top-1 accuracy; on a split with corrupted labels also the accuracy against the clean
    labels (``clean_accuracy``) and the share of corrupted labels fitted (``memorized``)."""

    targets = "classes"

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        out = {"accuracy": accuracy(ctx.logits, ctx.targets)}
        clean = ctx.clean_targets
        if clean is not None:
            corrupted = clean != ctx.targets
            out["clean_accuracy"] = accuracy(ctx.logits, clean)
            if corrupted.any():
                out["memorized"] = accuracy(ctx.logits[corrupted], ctx.targets[corrupted])
        return out


@MEASURES.register(
    "loss", summary="Mean softmax cross-entropy on each split (mean squared error for regression)."
)
@dataclass
class Loss(Measure):
    """Mean cross-entropy of the logits (or mean squared error on a regression split),
    computed in ``dtype``."""

    dtype: Literal["float32", "float64"] = "float64"  # precision of the log-softmax

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        dtype = getattr(torch, self.dtype)
        if ctx.targets.is_floating_point():  # regression: mean squared error
            return {"loss": float(F.mse_loss(ctx.logits.to(dtype), ctx.targets.to(dtype)))}
        return {"loss": float(F.cross_entropy(ctx.logits.to(dtype), ctx.targets))}


@MEASURES.register(
    "gap", summary="Generalization gap: train minus held-out accuracy, held-out minus train loss."
)
@dataclass
class GeneralizationGap(Measure):
    """Combines the per-split accuracy and loss into ``gap/accuracy`` and ``gap/loss``."""

    reference: Literal["test", "val"] = "test"  # the held-out split to compare with

    scope = "run"

    def combine(self, metrics: Mapping[str, float]) -> dict[str, float]:
        return generalization_gap(metrics, self.reference)
