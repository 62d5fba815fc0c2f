"""Losses: StableMax cross-entropy (#9) and label smoothing.

Each loss is a pure function for a user's own loop plus a Technique that makes it the
Trainer's training loss (a technique that ``touches`` the loss: one at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.bounds import Annotated, Interval
from heldout.core.checks import check_class_targets
from heldout.core.stacked import Stack, StackedRule, cast, per_copy
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = [
    "LabelSmoothing",
    "StableMax",
    "label_smoothing_cross_entropy",
    "log_stablemax",
    "stablemax",
    "stablemax_cross_entropy",
]


def _s(logits: Tensor) -> Tensor:
    """s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0: linear growth instead of exp."""
    return torch.where(logits >= 0, logits + 1, 1 / (1 - torch.clamp(logits, max=0)))


def stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """StableMax: s(z_i) / sum_j s(z_j), with s as above (Prieto et al. 2025, eq. 3).

    References:
        Grokking at the Edge of Numerical Stability (arXiv:2501.04697).
    """
    s = _s(logits)
    return s / s.sum(dim=dim, keepdim=True)


def log_stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """log StableMax(z) = log s(z) - log sum_j s(z_j)."""
    s = _s(logits)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


REDUCTIONS = ("mean", "sum", "none")


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


def _check_reduction(owner: str, reduction: str, valid: tuple[str, ...] = REDUCTIONS) -> None:
    if reduction not in valid:
        raise ValueError(f"{owner}: unknown reduction {reduction!r}; valid reductions: "
                         f"{', '.join(valid)}")


def stablemax_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """-log StableMax(z)_y per row, computed in float64 as in the paper's code and returned in
    the dtype of ``logits``; ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``
    (one loss per row), as for ``F.cross_entropy``.

    Because s grows linearly, the correct-class probability of a confident sample approaches 1
    only polynomially in the margin, so the loss and its gradient never round to exactly 0
    (the Softmax Collapse that stops learning under float32 softmax).

    ``logits`` is (..., C) floating point and ``targets`` integer class indices of shape
    ``logits.shape[:-1]`` in [0, C); anything else raises (``TypeError`` for a dtype,
    ``ValueError`` for a shape or a value), as ``F.cross_entropy`` does.

    Example:
        >>> z = torch.tensor([[1.0, -1.0, 0.0]])
        >>> round(float(stablemax_cross_entropy(z, torch.tensor([0]))), 4)  # -log(2/3.5)
        0.5596

    References:
        Grokking at the Edge of Numerical Stability (arXiv:2501.04697).
    """
    check_class_targets("stablemax_cross_entropy", logits, targets)
    _check_reduction("stablemax_cross_entropy", reduction)
    log_p = log_stablemax(logits.to(torch.float64))
    losses = -log_p.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return _reduce(losses, reduction).to(logits.dtype)


def label_smoothing_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float | Tensor,
                                  reduction: str = "mean") -> Tensor:
    """Cross-entropy against (1 - ε)·one-hot + ε/K: the label-smoothing baseline.

    ``reduction="none"`` returns the per-example losses (shape of ``targets``); ``smoothing``
    may then be a tensor that broadcasts against them (one ε per copy of a vectorized group).
    Targets are checked as for :func:`stablemax_cross_entropy`.

    References:
        Rethinking the Inception Architecture for Computer Vision (arXiv:1512.00567).
    """
    _check_reduction("label_smoothing_cross_entropy", reduction, ("mean", "none"))
    check_class_targets("label_smoothing_cross_entropy", logits, targets)
    log_p = F.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    losses = (1 - smoothing) * nll - smoothing * log_p.mean(dim=-1)
    return _reduce(losses, reduction)


@TECHNIQUES.register(
    "stablemax",
    summary="StableMax cross-entropy in float64: a softmax with linear growth that avoids "
    "Softmax Collapse.",
    papers=(9,),
)
@dataclass
class StableMax(Technique):
    """Train with :func:`stablemax_cross_entropy` instead of softmax cross-entropy."""

    touches = frozenset({"loss"})

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        return stablemax_cross_entropy(logits, targets)


@TECHNIQUES.register(
    "label_smoothing",
    summary="Label smoothing: cross-entropy against targets mixed with the uniform distribution.",
    search_space={"smoothing": ("uniform", 0.0, 0.3)},
    references=("Rethinking the Inception Architecture for Computer Vision (arXiv:1512.00567)",),
)
@dataclass
class LabelSmoothing(Technique):
    """Train with :func:`label_smoothing_cross_entropy` (a baseline regularizer)."""

    # ε, the mass moved to the uniform distribution (Szegedy et al.)
    smoothing: Annotated[float, Interval(0, 1, closed="left")] = 0.1

    touches = frozenset({"loss"})
    vectorizable = frozenset({"smoothing"})

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        return label_smoothing_cross_entropy(logits, targets, self.smoothing)

    @classmethod
    def stacked_rule(cls, copies: Sequence[LabelSmoothing], stack: Stack) -> StackedRule:
        return _StackedLabelSmoothing(per_copy([c.smoothing for c in copies], stack.flat))


class _StackedLabelSmoothing(StackedRule):
    """Each copy's mean smoothed cross-entropy on its batch, with its own ε."""

    def __init__(self, smoothing: float | Tensor) -> None:
        self.smoothing = smoothing

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        eps = cast(self.smoothing, logits)
        return label_smoothing_cross_entropy(logits, targets, eps, reduction="none").mean(dim=1)
