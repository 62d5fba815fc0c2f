"""Calibration: expected calibration error with equal-width or equal-mass bins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from heldout.measures.base import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["ECE", "expected_calibration_error"]


def expected_calibration_error(
    probs: Tensor,
    targets: Tensor,
    n_bins: int = 10,
    binning: Literal["width", "mass"] = "width",
) -> float:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b| over bins of the confidence (max probability).

    ``binning="width"``: bins (k/B, (k+1)/B], as in the PS-KD code; ``"mass"``: B bins holding
    (nearly) equal numbers of examples, sorted by confidence. Empty bins contribute 0. The
    result is a fraction in [0, 1] (multiply by 100 for the percent that papers print).

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1]])  # 90% confident, right half the time
        >>> round(expected_calibration_error(p, torch.tensor([0, 1])), 6)
        0.4

    References:
        On Calibration of Modern Neural Networks (arXiv:1706.04599); Self-Knowledge
        Distillation with Progressive Refinement of Targets (arXiv:2006.12000).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, prediction = probs.double().max(dim=-1)
    correct = (prediction == targets).double()
    n = len(targets)
    if n == 0:
        raise ValueError("ECE of an empty set")
    if binning == "width":
        bins = (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()
    elif binning == "mass":
        order = torch.argsort(confidence, stable=True)
        bins = torch.empty(n, dtype=torch.long, device=confidence.device)
        bins[order] = torch.arange(n, device=confidence.device) * n_bins // n
    else:
        raise ValueError(f"binning must be 'width' or 'mass', got {binning!r}")
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((conf_sum - correct_sum).abs().sum() / n)


@MEASURES.register(
    "ece",
    summary="Expected calibration error of the softmax confidence (10 equal-width bins).",
    papers=(2,),
)
@dataclass
class ECE(Measure):
    """:func:`expected_calibration_error` of the softmax probabilities on each split."""

    n_bins: int = 10  # PS-KD's convention (Guo et al. use 15)
    binning: Literal["width", "mass"] = "width"  # equal-width or equal-mass bins

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        probs = torch.softmax(ctx.logits.double(), dim=-1)
        return {"ece": expected_calibration_error(probs, ctx.targets, self.n_bins, self.binning)}
