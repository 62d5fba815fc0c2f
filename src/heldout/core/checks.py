"""Argument checks shared by the public functions a user calls in their own loop (losses,
gradient transforms, optimizer wrappers, calibration measures).

Each check raises the error torch itself would raise for the same class of mistake
(``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong shape or value), with one
line that names the function, the argument and what was expected. This module imports nothing
of heldout, so every layer may use it.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "check_class_targets",
    "check_non_negative",
    "check_probabilities",
    "check_same_shape",
    "check_unit_interval",
]


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_non_negative(owner: str, name: str, value: object) -> float:
    """``value`` as a float, if it is a finite real number >= 0 (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: {name} must be a real number, got "
                        f"{type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value}")
    return float(value)


def check_unit_interval(owner: str, name: str, value: object) -> float:
    """``value`` as a float, if it is a real number in [0, 1]."""
    number = check_non_negative(owner, name, value)
    if number > 1:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value}")
    return number


def check_same_shape(owner: str, first: tuple[str, Tensor], second: tuple[str, Tensor]) -> None:
    """Both tensors have one shape (no broadcasting, no element-by-element pairing of a
    reshaped view)."""
    (name_a, a), (name_b, b) = first, second
    if a.shape != b.shape:
        raise ValueError(f"{owner}: {name_a} of shape {_shape(a)} and {name_b} of shape "
                         f"{_shape(b)} differ")


def check_class_targets(owner: str, scores: Tensor, targets: Tensor,
                        scores_name: str = "logits") -> None:
    """``scores`` (..., C) floating point with C >= 1; ``targets`` integer class indices of
    shape ``scores.shape[:-1]`` (one per row), every one in [0, C). One device sync for the
    range check."""
    if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"{owner}: {scores_name} and targets must be tensors, got "
                        f"{type(scores).__name__} and {type(targets).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"{owner}: {scores_name} must be floating point, got {scores.dtype}")
    if scores.dim() < 1 or scores.shape[-1] < 1:
        raise ValueError(f"{owner}: {scores_name} must have a class dimension, got shape "
                         f"{_shape(scores)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"{owner}: targets must be integer class indices, got {targets.dtype}")
    if targets.shape != scores.shape[:-1]:
        raise ValueError(f"{owner}: expected targets of shape {_shape(scores)[:-1]} (one class "
                         f"index per row of {scores_name} of shape {_shape(scores)}), got "
                         f"{_shape(targets)}")
    classes = scores.shape[-1]
    if targets.numel() and bool(((targets < 0) | (targets >= classes)).any()):
        raise ValueError(f"{owner}: targets must be class indices in [0, {classes}), got "
                         f"values in [{int(targets.min())}, {int(targets.max())}]")


def check_probabilities(owner: str, probs: Tensor, name: str = "probs",
                        hint: str = "") -> None:
    """Rows of ``probs`` (..., C) are distributions: entries in [0, 1] and each row summing to
    1, both within sqrt(eps) of the dtype (3e-4 in float32, 1.5e-8 in float64). NaN fails."""
    tol = math.sqrt(torch.finfo(probs.dtype).eps)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"{owner}: {name} must be probabilities, got NaN or infinite values{hint}")
    low, high = float(probs.min()), float(probs.max())
    if not (low >= -tol and high <= 1 + tol):  # also false for NaN
        raise ValueError(f"{owner}: {name} must be probabilities in [0, 1], got values in "
                         f"[{low:.4g}, {high:.4g}]{hint}")
    sums = probs.sum(dim=-1)
    worst = float((sums - 1).abs().max())
    if not worst <= tol * max(1, probs.shape[-1]) ** 0.5:
        raise ValueError(f"{owner}: each row of {name} must sum to 1, got a row summing to "
                         f"{float(sums[(sums - 1).abs().argmax()]):.6g}{hint}")
