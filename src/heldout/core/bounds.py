"""Bounds declared next to a hyper-parameter, checked in one place.

A component's field says its range in its type, ``rho: Annotated[float, Ge(0)] = 0.05``, and
:func:`check_bounds` checks every bounded field of an object (the registry runs it before each
registered component's own ``__post_init__``, so configs, the CLI and a plain loop all refuse
the same values with the same one-line message). ``None`` passes a bound (optional fields);
NaN fails every bound.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Widget:
    ...     rate: Annotated[float, Interval(0, 1, closed="left")] = 0.5
    ...     size: Annotated[int, Ge(1)] = 2
    >>> check_bounds(Widget())
    >>> check_bounds(Widget(rate=1.0))
    Traceback (most recent call last):
    ...
    ValueError: rate must be in [0, 1), got 1.0
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

__all__ = ["Annotated", "Bound", "Ge", "Gt", "Interval", "Le", "Lt", "bounds_of", "check_bounds"]


class Bound:
    """A constraint on a number; ``holds(value)`` and ``describe()`` (``"must be >= 0"``)."""

    def holds(self, value: float) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Ge(Bound):
    low: float

    def holds(self, value: float) -> bool:
        return value >= self.low

    def describe(self) -> str:
        return f"must be >= {self.low}"


@dataclass(frozen=True)
class Gt(Bound):
    low: float

    def holds(self, value: float) -> bool:
        return value > self.low

    def describe(self) -> str:
        return f"must be > {self.low}"


@dataclass(frozen=True)
class Le(Bound):
    high: float

    def holds(self, value: float) -> bool:
        return value <= self.high

    def describe(self) -> str:
        return f"must be <= {self.high}"


@dataclass(frozen=True)
class Lt(Bound):
    high: float

    def holds(self, value: float) -> bool:
        return value < self.high

    def describe(self) -> str:
        return f"must be < {self.high}"


@dataclass(frozen=True)
class Interval(Bound):
    """``low`` to ``high``; ``closed`` says which ends belong: both, left, right or neither."""

    low: float
    high: float
    closed: Literal["both", "left", "right", "neither"] = "both"

    def holds(self, value: float) -> bool:
        left = value >= self.low if self.closed in ("both", "left") else value > self.low
        right = value <= self.high if self.closed in ("both", "right") else value < self.high
        return left and right

    def describe(self) -> str:
        if self.high == math.inf and self.closed in ("left", "neither"):
            return f"must be a finite number {'>=' if self.closed == 'left' else '>'} {self.low}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"must be in {left}{self.low}, {self.high}{right}"


_BOUNDS: dict[type, dict[str, tuple[Bound, ...]]] = {}


def bounds_of(cls: type) -> dict[str, tuple[Bound, ...]]:
    """The bounded fields of the dataclass ``cls``: field name → its bounds (read once)."""
    if cls not in _BOUNDS:
        _BOUNDS[cls] = _read_bounds(cls)
    return _BOUNDS[cls]


def _read_bounds(cls: type) -> dict[str, tuple[Bound, ...]]:
    if not dataclasses.is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        found = tuple(m for m in getattr(hints.get(f.name), "__metadata__", ())
                      if isinstance(m, Bound))
        if found:
            out[f.name] = found
    return out


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def check_bounds(obj: Any) -> None:
    """Refuse the first bounded field of ``obj`` outside its bounds (a tuple field: each entry),
    in one line naming the field: ``rho must be >= 0, got -1``; a value that is not a real
    number (a string, a bool) is a ``TypeError``."""
    for name, bounds in bounds_of(type(obj)).items():
        for value in _values(getattr(obj, name)):
            if value is None:  # an optional field left unset
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            for bound in bounds:
                if math.isnan(value) or not bound.holds(value):
                    raise ValueError(f"{name} {bound.describe()}, got {value!r}")
