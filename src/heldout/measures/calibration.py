"""Calibration: ECE and MCE (equal-width or equal-mass bins), Brier score, NLL, AURC/E-AURC,
and reliability-diagram data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge
from heldout.core.checks import check_class_targets, check_probabilities
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
    if binning == "width":  # bins (k/B, (k+1)/B]
        return (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()
    if binning == "mass":
        order = torch.argsort(confidence, stable=True)
        bins = torch.empty(n, dtype=torch.long, device=confidence.device)
        bins[order] = torch.arange(n, device=confidence.device) * n_bins // n
        return bins
    raise ValueError(f"binning must be 'width' or 'mass', got {binning!r}")


def _probabilities(owner: str, probs: Tensor, targets: Tensor, from_logits: bool) -> Tensor:
    """``probs`` (N, C) in float64 after checking it and ``targets`` (N integer class indices
    in [0, C)); with ``from_logits`` the softmax of the given logits."""
    name = "logits" if from_logits else "probs"
    check_class_targets(owner, probs, targets, name)
    probs = probs.detach()  # a measure: no graph, so model(x) may be passed as it comes
    if probs.dim() != 2:
        raise ValueError(f"{owner}: {name} must be (examples, classes), got shape "
                         f"{tuple(probs.shape)}")
    if len(probs) == 0:
        raise ValueError(f"{owner}: calibration of an empty set")
    if from_logits:
        if not bool(torch.isfinite(probs).all()):
            raise ValueError(f"{owner}: logits must be finite, got NaN or infinite values")
        return torch.softmax(probs.double(), dim=-1)
    check_probabilities(owner, probs, hint=" (for logits pass from_logits=True)")
    return probs.double()


def reliability_diagram(
    probs: Tensor, targets: Tensor, n_bins: int = 10, binning: Literal["width", "mass"] = "width",
    *, from_logits: bool = False,
) -> dict[str, list[float]]:
    """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (NaN for an empty bin), and the
    bin edges ``lower``/``upper`` (for equal-mass bins, the confidence range of the bin).
    Inputs as for :func:`expected_calibration_error`."""
    return _diagram(_probabilities("reliability_diagram", probs, targets, from_logits),
                    targets, n_bins, binning)


def _diagram(probs: Tensor, targets: Tensor, n_bins: int, binning: str
             ) -> dict[str, list[float]]:
    confidence, prediction = probs.max(dim=-1)
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
    *,
    from_logits: bool = False,
) -> float:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b| over bins of the confidence (max probability).

    ``binning="width"``: bins (k/B, (k+1)/B], as in the PS-KD code; ``"mass"``: B bins holding
    (nearly) equal numbers of examples, sorted by confidence. Empty bins contribute 0. The
    result is a fraction in [0, 1] (multiply by 100 for the percent that papers print).

    ``probs`` is (N, C) with rows that are distributions; with ``from_logits=True`` it holds
    the model's logits and the softmax is taken here (in float64), the route for a plain loop.
    ``targets`` holds N class indices in [0, C). Logits passed as probabilities, labels out of
    range, NaN or a shape mismatch raise ``ValueError`` (``TypeError`` for float labels).

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1]])  # 90% confident, right half the time
        >>> round(expected_calibration_error(p, torch.tensor([0, 1])), 6)
        0.4
        >>> z = torch.log(p)  # the same predictions as logits
        >>> round(expected_calibration_error(z, torch.tensor([0, 1]), from_logits=True), 6)
        0.4

    References:
        On Calibration of Modern Neural Networks (arXiv:1706.04599); Self-Knowledge
        Distillation with Progressive Refinement of Targets (arXiv:2006.12000).
    """
    probs = _probabilities("expected_calibration_error", probs, targets, from_logits)
    confidence, prediction = probs.max(dim=-1)
    correct = (prediction == targets).double()
    bins = _bins(confidence, n_bins, binning)
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((conf_sum - correct_sum).abs().sum() / len(targets))


def maximum_calibration_error(
    probs: Tensor, targets: Tensor, n_bins: int = 10, binning: Literal["width", "mass"] = "width",
    *, from_logits: bool = False,
) -> float:
    """MCE = max over non-empty bins of |acc_b − conf_b| (Guo et al., 2017); inputs as for
    :func:`expected_calibration_error`."""
    probs = _probabilities("maximum_calibration_error", probs, targets, from_logits)
    diagram = _diagram(probs, targets, n_bins, binning)
    gaps = [abs(a - c) for a, c, n in zip(diagram["accuracy"], diagram["confidence"],
                                          diagram["count"], strict=True) if n > 0]
    return max(gaps)


def brier_score(probs: Tensor, targets: Tensor, *, from_logits: bool = False) -> float:
    """Mean over examples of Σ_k (p_k − 1[k = y])² (the multi-class Brier score); inputs as
    for :func:`expected_calibration_error`."""
    probs = _probabilities("brier_score", probs, targets, from_logits)
    onehot = torch.nn.functional.one_hot(targets.long(), probs.shape[-1]).double()
    return float(((probs - onehot) ** 2).sum(dim=-1).mean())


def risk_coverage(probs: Tensor, targets: Tensor, *, from_logits: bool = False
                  ) -> dict[str, float]:
    """Selective-classification area under the risk-coverage curve.

    Sort by confidence, most confident first; the risk at coverage i/n is the error rate among
    the i most confident examples; AURC is the mean of those n risks. E-AURC subtracts the
    AURC of an oracle ranking with the same e errors (all of them last), computed exactly:
    (1/n) Σ_{i=1..e} i / (n − e + i), as the PS-KD code does (``utils/metric.py``,
    ``calc_aurc``), not by the continuous approximation r + (1 − r) ln(1 − r) of the
    bias-reduced-uncertainty paper's code. Ties in confidence are broken by index order (the
    PS-KD code reverses NumPy's unstable ascending argsort, so its order of tied examples is
    unspecified). Inputs as for :func:`expected_calibration_error`.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
        >>> out = risk_coverage(p, torch.tensor([0, 1, 0, 1]))  # wrong at ranks 2 and 4
        >>> round(out["aurc"], 6), round(out["aurc"] - out["eaurc"], 6)  # oracle (1/3 + 2/4)/4
        (0.333333, 0.208333)

    References:
        Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers (arXiv:1805.08206);
        Self-Knowledge Distillation with Progressive Refinement of Targets (arXiv:2006.12000).
    """
    probs = _probabilities("risk_coverage", probs, targets, from_logits)
    confidence, prediction = probs.max(dim=-1)
    errors = (prediction != targets).double()
    n = len(errors)
    order = torch.argsort(-confidence, stable=True)
    coverage = torch.arange(1, n + 1, dtype=torch.float64, device=errors.device)
    aurc = float((errors[order].cumsum(0) / coverage).mean())
    e = int(errors.sum())
    oracle = torch.clamp(coverage - (n - e), min=0) / coverage  # i / (n − e + i) in the tail
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

    n_bins: Annotated[int, Ge(1)] = 10  # PS-KD's convention (Guo et al. use 15)
    binning: Literal["width", "mass"] = "width"  # equal-width or equal-mass bins

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        return {"ece": expected_calibration_error(ctx.logits, ctx.targets, self.n_bins,
                                                  self.binning, from_logits=True)}


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

    # Guo et al.'s convention for the full suite (the "ece" measure uses 10)
    n_bins: Annotated[int, Ge(1)] = 15
    binning: Literal["width", "mass"] = "width"  # equal-width or equal-mass bins

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
