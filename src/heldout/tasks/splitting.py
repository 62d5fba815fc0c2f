"""Helpers shared by the built-in tasks: seeds, named random streams, index splits, label noise
and parameter checks. Private: the public surface is the tasks themselves."""

from __future__ import annotations

import importlib
import operator
from collections.abc import Sequence
from itertools import pairwise
from types import ModuleType

import torch
from torch import Tensor

from heldout.tasks.base import Split


def resolve_seed(seed: int, data_seed: int | None) -> int:
    """The seed that builds the data: the task's own ``data_seed`` when set, else the run's."""
    resolved = seed if data_seed is None else data_seed
    try:
        value = operator.index(resolved)  # ints, NumPy ints; not floats or strings
    except TypeError:
        value = -1
    if isinstance(resolved, bool) or value < 0:
        raise ValueError(f"a data seed must be a non-negative int, got {resolved!r}")
    return value


def split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Sizes of the leading parts of ``total`` items for ``fractions``; the rest is the last part.

    Part boundaries are the rounded cumulative fractions, so the first part has exactly
    ``round(fractions[0] * total)`` items and the sizes never add up to more than ``total``.
    """
    boundaries, cumulative = [0], 0.0
    for fraction in fractions:
        cumulative += fraction
        boundaries.append(min(round(cumulative * total), total))
    boundaries.append(total)
    return [end - start for start, end in pairwise(boundaries)]


def random_partition(
    total: int, counts: Sequence[int], generator: torch.Generator
) -> tuple[Tensor, ...]:
    """Split ``range(total)`` into consecutive chunks of a random permutation, sized ``counts``."""
    if sum(counts) != total or min(counts, default=0) < 0:
        raise ValueError(f"part sizes {list(counts)} do not partition {total} items")
    order = torch.randperm(total, generator=generator)
    return tuple(torch.split(order, list(counts)))


def stratified_partition(
    labels: Tensor, fractions: Sequence[float], generator: torch.Generator
) -> tuple[Tensor, ...]:
    """Split example indices into ``len(fractions) + 1`` parts with the class mix of ``labels``.

    Within each class the examples are permuted and the leading parts take ``round(fraction *
    class size)`` of them; the last part takes the rest. Each part is then shuffled, so classes
    are interleaved.
    """
    parts: list[list[Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        for part, chunk in zip(
            parts, torch.split(members, split_counts(len(members), fractions)), strict=True
        ):
            part.append(chunk)
    out = []
    for chunks in parts:
        indices = torch.cat(chunks)
        out.append(indices[torch.randperm(len(indices), generator=generator)])
    return tuple(out)


def corrupt_labels(
    labels: Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> Tensor:
    """Replace the labels of ``round(fraction * n)`` random examples by a different class.

    The examples are a uniformly random subset; each new label is uniform over the other
    ``num_classes - 1`` classes (offset by 1..num_classes-1 modulo ``num_classes``), so every
    corrupted label differs from its clean one. Returns a new tensor.
    """
    if num_classes < 2:
        raise ValueError(f"label corruption needs at least 2 classes, got {num_classes}")
    count = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=generator)[:count]
    offsets = torch.randint(1, num_classes, (count,), generator=generator, dtype=labels.dtype)
    corrupted = labels.clone()
    corrupted[chosen] = (labels[chosen] + offsets) % num_classes
    return corrupted


def noisy_split(
    x: Tensor, clean_y: Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> Split:
    """A split whose labels are corrupted at rate ``fraction`` (clean, ``clean_y=None``, at 0)."""
    if fraction == 0:
        return Split(x, clean_y)
    return Split(x, corrupt_labels(clean_y, fraction, num_classes, generator), clean_y)


def check_range(
    name: str,
    value: float,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` lies in the stated interval."""
    above = value > low if low_open else value >= low
    below = high is None or (value < high if high_open else value <= high)
    if not (above and below):
        left = "(" if low_open else "["
        right = ")" if high_open or high is None else "]"
        upper = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{low:g}, {upper}{right}, got {value!r}")


def import_optional(module: str) -> ModuleType:
    """Import an optional data dependency, or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this task needs the optional package {module.split('.')[0]!r} ({error}): "
            "pip install 'heldout[data]'"
        ) from error
