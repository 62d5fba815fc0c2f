"""Group metrics (#58): accuracy per group, worst-group accuracy, disparity between groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["GroupAccuracy", "group_accuracies", "group_metrics"]


def group_accuracies(logits: Tensor, targets: Tensor, groups: Tensor) -> dict[int, float]:
    """Top-1 accuracy within each group id present in ``groups``."""
    correct = (logits.argmax(dim=-1) == targets).double()
    ids = torch.unique(groups)
    return {int(g): float(correct[groups == g].mean()) for g in ids}


def group_metrics(logits: Tensor, targets: Tensor, groups: Tensor) -> dict[str, float]:
    """``worst_group_accuracy`` (min over groups), ``group_disparity`` (max − min accuracy),
    ``mean_group_accuracy`` (unweighted mean over groups) and ``group<g>_accuracy`` each.

    Example:
        >>> logits = torch.tensor([[1.0, 0], [1, 0], [0, 1], [1, 0]])
        >>> m = group_metrics(logits, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
        >>> m["worst_group_accuracy"], m["group_disparity"]
        (0.5, 0.5)

    References:
        Does Progress On Object Recognition Benchmarks Improve Real-World Generalization?
        (arXiv:2307.13136); Distributionally Robust Neural Networks (arXiv:1911.08731).
    """
    per_group = group_accuracies(logits, targets, groups)
    values = list(per_group.values())
    out = {f"group{g}_accuracy": a for g, a in per_group.items()}
    out["worst_group_accuracy"] = min(values)
    out["group_disparity"] = max(values) - min(values)
    out["mean_group_accuracy"] = sum(values) / len(values)
    return out


@MEASURES.register(
    "group_accuracy",
    summary="Per-group accuracy, worst-group accuracy and the disparity between groups.",
    papers=(58,),
)
@dataclass
class GroupAccuracy(Measure):
    """:func:`group_metrics` on every split whose data carries ``groups`` (others: nothing)."""

    targets = "classes"

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        groups = ctx.groups
        if groups is None:
            return {}
        return group_metrics(ctx.logits, ctx.targets, groups)
