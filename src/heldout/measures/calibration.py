"""Calibration: ECE and MCE (equal-width or equal-mass bins), Brier score, NLL, AURC/E-AURC,
and reliability-diagram data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = [
    "ECE",
    "Calibration",
    "brier_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "reliability_diagram",
    "risk_coverage",
]


def _bins(confidence: Tensor, n_bins: int, binning: str) -> Tensor:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    n = len(confidence)
    if n == 0:
        raise ValueError("calibration of an empty set")
    if not bool(torch.isfinite(confidence).all()):  # NaN would land in no bin (or crash)
        raise ValueError("calibration: the probabilities hold NaN or infinite values")
    if binning == "width":  # bins (k/B, (k+1)/B]
        return (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()
    if binning == "mass":
        order = torch.argsort(confidence, stable=True)
        bins = torch.empty(n, dtype=torch.long, device=confidence.device)
        bins[order] = torch.arange(n, device=confidence.device) * n_bins // n
        return bins
    raise ValueError(f"binning must be 'width' or 'mass', got {binning!r}")


def reliability_diagram(
    probs: Tensor, targets: Tensor, n_bins: int = 10, binning: Literal["width", "mass"] = "width"
) -> dict[str, list[float]]:
    """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (NaN for an empty bin), and the
    bin edges ``lower``/``upper`` (for equal-mass bins, the confidence range of the bin)."""
    confidence, prediction = probs.double().max(dim=-1)
    correct = (prediction == targets).double()
    bins = _bins(confidence, n_bins, binning)
    count = torch.bincount(bins, minlength=n_bins).double()
    conf = torch.bincount(bins, weights=confidence, minlength=n_bins) / count
    acc = torch.bincount(bins, weights=correct, minlength=n_bins) / count
    if binning == "width":
        lower = [k / n_bins for k in range(n_bins)]
        upper = [(k + 1) / n_bins for k in range(n_bins)]
    else:
        lower = [float(confidence[bins == k].min()) if count[k] else float("nan")
                 for k in range(n_bins)]
        upper = [float(confidence[bins == k].max()) if count[k] else float("nan")
                 for k in range(n_bins)]
    return {"lower": lower, "upper": upper, "count": count.tolist(),
            "confidence": conf.tolist(), "accuracy": acc.tolist()}


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
    confidence, prediction = probs.double().max(dim=-1)
    correct = (prediction == targets).double()
    bins = _bins(confidence, n_bins, binning)
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((conf_sum - correct_sum).abs().sum() / len(targets))


def maximum_calibration_error(
    probs: Tensor, targets: Tensor, n_bins: int = 10, binning: Literal["width", "mass"] = "width"
) -> float:
    """MCE = max over non-empty bins of |acc_b − conf_b| (Guo et al., 2017)."""
    diagram = reliability_diagram(probs, targets, n_bins, binning)
    gaps = [abs(a - c) for a, c, n in zip(diagram["accuracy"], diagram["confidence"],
                                          diagram["count"], strict=True) if n > 0]
    return max(gaps)


def brier_score(probs: Tensor, targets: Tensor) -> float:
    """Mean over examples of Σ_k (p_k − 1[k = y])² (the multi-class Brier score)."""
    onehot = torch.nn.functional.one_hot(targets.long(), probs.shape[-1]).double()
    return float(((probs.double() - onehot) ** 2).sum(dim=-1).mean())


def risk_coverage(probs: Tensor, targets: Tensor) -> dict[str, float]:
    """Selective-classification area under the risk-coverage curve.

    Sort by confidence, most confident first; the risk at coverage i/n is the error rate among
    the i most confident examples; AURC is the mean of those n risks. E-AURC subtracts the
    AURC of an oracle ranking with the same errors (all of them last), computed exactly here
    (the PS-KD code uses the continuous approximation r + (1 − r) ln(1 − r)). Ties in
    confidence are broken by the stable sort order.

    References:
        Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers (arXiv:1805.08206);
        Self-Knowledge Distillation with Progressive Refinement of Targets (arXiv:2006.12000).
    """
    confidence, prediction = probs.double().max(dim=-1)
    errors = (prediction != targets).double()
    n = len(errors)
    order = torch.argsort(-confidence, stable=True)
    coverage = torch.arange(1, n + 1, dtype=torch.float64)
    aurc = float((errors[order].cumsum(0) / coverage).mean())
    e = int(errors.sum())
    oracle = torch.clamp(coverage - (n - e), min=0) / coverage
    return {"aurc": aurc, "eaurc": aurc - float(oracle.mean())}


@MEASURES.register(
    "ece",
    summary="Expected calibration error of the softmax confidence (10 equal-width bins).",
    papers=(2,),
)
@dataclass
class ECE(Measure):
    """:func:`expected_calibration_error` of the softmax probabilities on each split."""

    targets = "classes"

    n_bins: int = 10  # PS-KD's convention (Guo et al. use 15)
    binning: Literal["width", "mass"] = "width"  # equal-width or equal-mass bins

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        probs = torch.softmax(ctx.logits.double(), dim=-1)
        return {"ece": expected_calibration_error(probs, ctx.targets, self.n_bins, self.binning)}


@MEASURES.register(
    "calibration",
    summary="Calibration suite: ECE, MCE, Brier score, NLL, AURC and E-AURC on each split.",
    papers=(2,),
    references=("On Calibration of Modern Neural Networks (arXiv:1706.04599)",),
)
@dataclass
class Calibration(Measure):
    """ECE and MCE with ``n_bins`` bins, Brier score, NLL, AURC and E-AURC of the softmax."""

    targets = "classes"

    n_bins: int = 15  # Guo et al.'s convention for the full suite (the "ece" measure uses 10)
    binning: Literal["width", "mass"] = "width"  # equal-width or equal-mass bins

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        logits = ctx.logits.double()
        probs = torch.softmax(logits, dim=-1)
        nll = torch.nn.functional.cross_entropy(logits, ctx.targets)
        return {
            "ece": expected_calibration_error(probs, ctx.targets, self.n_bins, self.binning),
            "mce": maximum_calibration_error(probs, ctx.targets, self.n_bins, self.binning),
            "brier": brier_score(probs, ctx.targets),
            "nll": float(nll),
            **risk_coverage(probs, ctx.targets),
        }
