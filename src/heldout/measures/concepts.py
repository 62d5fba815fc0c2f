"""Concept frequency vs performance (#16): the log-linear fit and a long-tail test split.

Udandarao et al. count how often each downstream concept occurs in a model's pretraining data
and find per-concept performance linear in the *logarithm* of that count: ``acc ≈ a + b·ln(f)``,
so each constant gain in accuracy needs exponentially more data. This module fits that line
(:func:`log_linear_fit`: ordinary least squares with the slope's standard error, R², Pearson
and Spearman correlations), builds a test split from the least frequent concepts
(:func:`long_tail_split`, the idea behind their "Let It Wag!" benchmark), and, as a measure,
applies the fit to a classifier with the classes as concepts and their training-set counts
as frequencies (:class:`ConceptFrequency`).

Verified against the spec of the official code (``bethgelab/frequency_determines_performance``,
the log-linear notebooks): counts of 0 are clipped to 1 before the logarithm, natural log,
model ``acc ≈ a + b·ln(freq)``. The paper's headline statistic is a Pearson correlation on
*binned* means (12 bins over ln-frequency), which inflates the correlation; it is not
reproduced here. The raw OLS slope with its standard error and the raw Spearman correlation
are reported instead, as the spec recommends. Counting concepts in a caption corpus (spaCy
lemmas, RAM++ image tags) is outside heldout's scope: pass the counts in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES
from heldout.tasks.base import Split

__all__ = [
    "ConceptFrequency",
    "LogLinearFit",
    "concept_accuracy",
    "log_linear_fit",
    "long_tail_concepts",
    "long_tail_split",
]

ArrayLike = Tensor | Sequence[float]


@dataclass(frozen=True)
class LogLinearFit:
    """Least-squares fit of ``accuracy ≈ intercept + slope · ln(max(frequency, 1))``."""

    intercept: float  # a: the fitted accuracy at frequency 1
    slope: float  # b: accuracy gained per e-fold increase of the frequency
    slope_stderr: float  # standard error of b: sqrt(SSE / (n - 2) / Σ (x - x̄)²)
    r_squared: float  # 1 - SSE / SST (1.0 when the accuracies are all equal and fitted exactly)
    pearson: float  # correlation of accuracy with ln-frequency (0.0 if accuracy is constant)
    spearman: float  # rank correlation (average ranks for ties; 0.0 if a side is constant)
    n: int  # concepts used (those with a finite accuracy)


def _as_double(values: ArrayLike) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu()


def _ranks(values: Tensor) -> Tensor:
    """Average ranks (ties share the mean of their positions), 0-based."""
    order = values.argsort(stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: Tensor, y: Tensor) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else 0.0


def log_linear_fit(frequencies: ArrayLike, accuracies: ArrayLike) -> LogLinearFit:
    """OLS fit of per-concept accuracy on ``ln(max(frequency, 1))``.

    Concepts whose accuracy is NaN (no test example) are left out. Needs at least 3 concepts
    and two distinct clipped frequencies.

    References:
        Udandarao, Prabhu, Ghosh, Sharma, Torr, Bibi, Albanie, Bethge. No "Zero-Shot" Without
        Exponential Data: Pretraining Concept Frequency Determines Multimodal Model
        Performance. arXiv:2404.04125.

    Example:
        >>> fit = log_linear_fit([1, 10, 100, 1000], [0.1, 0.3, 0.5, 0.7])
        >>> round(fit.slope * math.log(10), 6), round(fit.r_squared, 6)
        (0.2, 1.0)
    """
    freq, acc = _as_double(frequencies), _as_double(accuracies)
    if len(freq) != len(acc):
        raise ValueError(f"{len(freq)} frequencies but {len(acc)} accuracies")
    if (freq < 0).any():
        raise ValueError("frequencies must be >= 0")
    keep = torch.isfinite(acc)
    x, y = freq[keep].clamp_min(1.0).log(), acc[keep]
    n = len(y)
    if n < 3:
        raise ValueError(f"the fit needs at least 3 concepts with an accuracy, got {n}")
    dx = x - x.mean()
    sxx = float((dx * dx).sum())
    if sxx == 0:
        raise ValueError("all (clipped) frequencies are equal: the slope is undefined")
    slope = float((dx * (y - y.mean())).sum()) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    sse = float(((y - intercept - slope * x) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    return LogLinearFit(
        intercept=intercept,
        slope=slope,
        slope_stderr=math.sqrt(sse / (n - 2) / sxx),
        r_squared=1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0),
        pearson=_pearson(x, y),
        spearman=_pearson(_ranks(x), _ranks(y)),
        n=n,
    )


def concept_accuracy(logits: Tensor, targets: Tensor, num_concepts: int | None = None) -> Tensor:
    """Accuracy per class (concept), ``(num_concepts,)`` float64; NaN where a class has no
    example. ``num_concepts`` defaults to the number of logits."""
    num = logits.shape[-1] if num_concepts is None else num_concepts
    correct = (logits.argmax(dim=-1) == targets).double().cpu()
    t = targets.long().cpu()
    hits = torch.zeros(num, dtype=torch.float64).index_add_(0, t, correct)
    counts = torch.bincount(t, minlength=num).double()
    return torch.where(counts > 0, hits / counts.clamp_min(1), torch.nan)


def long_tail_concepts(frequencies: ArrayLike, fraction: float = 0.1) -> Tensor:
    """Ids of the ``ceil(fraction · C)`` least frequent of the ``C`` concepts, rarest first
    (ties in index order)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    freq = _as_double(frequencies)
    count = max(1, math.ceil(fraction * len(freq) - 1e-9))  # 0.1 * 30 is 3.0000000000000004
    return freq.argsort(stable=True)[:count]


def long_tail_split(
    split: Split,
    frequencies: ArrayLike,
    fraction: float = 0.1,
    concepts: Tensor | None = None,
) -> Split:
    """The examples of ``split`` whose concept is among the least frequent
    (:func:`long_tail_concepts`): a long-tail test split in the spirit of "Let It Wag!".

    An example's concept is its label ``y`` unless ``concepts`` (one id per example) says
    otherwise; ``clean_y`` and ``groups`` are subset alongside. ``fraction = 0.1`` is
    heldout's default, not the paper's.

    Example:
        >>> s = Split(torch.arange(6.0)[:, None], torch.tensor([0, 1, 2, 2, 1, 0]))
        >>> long_tail_split(s, [50, 3, 900], fraction=0.3).y  # concept 1 is the rarest
        tensor([1, 1])
    """
    ids = split.y if concepts is None else concepts
    if len(ids) != len(split):
        raise ValueError(f"concepts has {len(ids)} entries but the split {len(split)} examples")
    tail = long_tail_concepts(frequencies, fraction).to(ids.device)
    keep = torch.isin(ids, tail).nonzero().squeeze(1)
    return Split(
        split.x[keep],
        split.y[keep],
        None if split.clean_y is None else split.clean_y[keep],
        None if split.groups is None else split.groups[keep],
    )


@MEASURES.register(
    "concept_frequency",
    summary="Log-linear fit of per-class held-out accuracy on the class's training "
    "frequency (slope, its standard error, R², Spearman).",
    papers=(16,),
)
@dataclass
class ConceptFrequency(Measure):
    """:func:`log_linear_fit` of each class's accuracy on a listed split against the class's
    count in the ``reference`` (training) split: the classes are the concepts.

    Keys on a listed split: ``concept_slope``, ``concept_slope_stderr``, ``concept_r2``,
    ``concept_spearman``. Nothing is reported when the fit is undefined (fewer than 3 classes
    present, or all training counts equal). Like ``repr_divergence``, the adapter keeps the
    reference split's counts when called on it, so :func:`~heldout.measures.evaluate` must
    visit the reference split first (it visits splits in insertion order); otherwise it raises
    RuntimeError.

    References:
        Udandarao et al. No "Zero-Shot" Without Exponential Data: Pretraining Concept
        Frequency Determines Multimodal Model Performance. arXiv:2404.04125.

    Example:
        >>> logits = torch.eye(3)[[0, 0, 0, 1, 1, 2]]
        >>> train = (logits, torch.tensor([0, 0, 0, 1, 1, 2]))
        >>> test = (torch.eye(3)[[0, 1, 0]], torch.tensor([0, 1, 2]))
        >>> from heldout.measures import evaluate
        >>> out = evaluate(torch.nn.Identity(), {"train": train, "test": test},
        ...                [ConceptFrequency()])
        >>> sorted(out)[0]
        'test/concept_r2'
    """

    splits: tuple[str, ...] = ("test",)  # splits whose per-class accuracy is fitted
    reference: str = "train"  # the split whose class counts are the frequencies

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        if self.reference in self.splits:
            raise ValueError(f"splits: cannot contain the reference split {self.reference!r}")
        self._counts: Tensor | None = None  # the reference split's class counts, transient

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split == self.reference:
            num = ctx.logits.shape[-1]
            self._counts = torch.bincount(ctx.targets.long().cpu(), minlength=num).double()
            return {}
        if ctx.split not in self.splits:
            return {}
        if self._counts is None:
            raise RuntimeError(
                f"concept_frequency on {ctx.split!r} needs the {self.reference!r} split first: "
                f"evaluate {self.reference!r} before {ctx.split!r} in the same evaluate() call")
        accuracy = concept_accuracy(ctx.logits, ctx.targets, len(self._counts))
        try:
            fit = log_linear_fit(self._counts, accuracy)
        except ValueError:
            return {}
        return {"concept_slope": fit.slope, "concept_slope_stderr": fit.slope_stderr,
                "concept_r2": fit.r_squared, "concept_spearman": fit.spearman}
