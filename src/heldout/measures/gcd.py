"""Generalized category discovery: all / old / new accuracy under one Hungarian assignment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge
from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES
from heldout.tasks.splitting import import_optional

__all__ = ["GCDAccuracy", "gcd_accuracy", "hungarian_mapping"]


def _as_labels(values: Tensor | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values)
    if array.ndim != 1 or (array.size and (array.dtype.kind not in "iu" or array.min() < 0)):
        raise ValueError(f"{name} must be a 1-D array of non-negative integer labels, got "
                         f"shape {array.shape} and dtype {array.dtype}")
    return array.astype(np.int64)


def hungarian_mapping(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``mapping[cluster] = class``: the one-to-one assignment of cluster ids to classes that
    maximizes the number of examples whose mapped cluster is their class (scipy's
    ``linear_sum_assignment`` on the cluster × class count matrix)."""
    optimize = import_optional("scipy.optimize")
    size = int(max(pred.max(initial=-1), target.max(initial=-1))) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (pred, target), 1)
    rows, cols = optimize.linear_sum_assignment(counts, maximize=True)
    mapping = np.empty(size, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def gcd_accuracy(pred: Tensor | np.ndarray | Sequence[int],
                 target: Tensor | np.ndarray | Sequence[int],
                 old_classes: Sequence[int] | int) -> dict[str, float]:
    """Clustering accuracy of generalized category discovery on the unlabeled examples.

    One one-to-one assignment ``h`` of predicted cluster ids to classes is computed on all
    examples (the Hungarian algorithm, maximizing the matches); then

        all = mean_i 1[h(pred_i) = y_i],  old = the same mean over examples whose class is
        old,  new = over examples whose class is new.

    A single assignment for both parts (the "v2" protocol of the GCD benchmarks) means a
    method cannot gain by matching old and new examples separately. ``old_classes`` is the
    collection of old class ids, or an int ``n``: classes ``0 .. n-1``. ``old`` (``new``)
    is NaN when no example is of an old (new) class.

    References:
        Vaze, Han, Vedaldi, Zisserman. Generalized Category Discovery. arXiv:2201.02609.

    Example:
        >>> gcd_accuracy([2, 2, 0, 1, 0], [0, 0, 1, 2, 2], old_classes=[0])
        {'all': 0.8, 'old': 1.0, 'new': 0.6666666666666666}
    """
    pred, target = _as_labels(pred, "pred"), _as_labels(target, "target")
    if len(pred) != len(target) or not len(pred):
        raise ValueError(f"pred and target must be non-empty and of one length, got "
                         f"{len(pred)} and {len(target)}")
    old = np.arange(old_classes) if isinstance(old_classes, int) else np.asarray(old_classes)
    if old.ndim != 1:
        raise ValueError(f"old_classes must be an int or a 1-D collection, got shape {old.shape}")
    correct = hungarian_mapping(pred, target)[pred] == target
    is_old = np.isin(target, old)

    def mean(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    return {"all": float(correct.mean()), "old": mean(is_old), "new": mean(~is_old)}


@MEASURES.register(
    "gcd_accuracy",
    summary="Generalized category discovery: all / old / new accuracy under one Hungarian "
    "assignment of predicted classes to true classes.",
)
@dataclass
class GCDAccuracy(Measure):
    """:func:`gcd_accuracy` of the arg-max predictions on each split, with classes
    ``0 .. num_old-1`` old: ``gcd_all``, ``gcd_old``, ``gcd_new``."""

    num_old: Annotated[int, Ge(1)] = 5  # classes 0 .. num_old-1 are the old (labeled) ones

    targets = "classes"

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        pred = ctx.logits.argmax(dim=-1)
        scores = gcd_accuracy(pred, ctx.targets.to(torch.int64), self.num_old)
        return {f"gcd_{key}": value for key, value in scores.items()}
