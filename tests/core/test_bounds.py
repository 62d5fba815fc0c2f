"""Every bound declared on a registered component's field (heldout.core.bounds) is exercised:
the component built with a value just outside it is refused with the one-line ValueError that
names the field, before the component's own checks run."""

from __future__ import annotations

import math
import typing
from typing import Any

import pytest

from heldout.core.bounds import Bound, Ge, Gt, Interval, Le, Lt, bounds_of
from heldout.registry import REGISTRIES, Entry


def _is_int(cls: type, name: str) -> bool:
    """Whether the field holds integers (``int``, ``int | None``, ``tuple[int, ...]``)."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) or (hint,)
    return int in args and float not in args


def _outside(bound: Bound, integer: bool) -> list[float]:
    """The values just outside ``bound``: the nearest integer or float past a closed end, the
    end itself where it is open (an open end at infinity is refused at infinity)."""
    def below(x: float) -> float:
        return x - 1 if integer else math.nextafter(x, -math.inf)

    def above(x: float) -> float:
        return x + 1 if integer else math.nextafter(x, math.inf)

    if isinstance(bound, Ge):
        return [below(bound.low)]
    if isinstance(bound, Gt):
        return [bound.low]
    if isinstance(bound, Le):
        return [above(bound.high)]
    if isinstance(bound, Lt):
        return [bound.high]
    assert isinstance(bound, Interval)
    left = below(bound.low) if bound.closed in ("both", "left") else bound.low
    right = above(bound.high) if bound.closed in ("both", "right") else bound.high
    return [left, right]


def _cases() -> list[Any]:
    cases = []
    for registry in REGISTRIES.values():
        for entry in registry.entries():
            if not isinstance(entry.cls, type):
                continue
            for name, bounds in bounds_of(entry.cls).items():
                integer = _is_int(entry.cls, name)
                tuple_field = isinstance(entry.defaults().get(name), tuple)
                for bound in bounds:
                    for value in _outside(bound, integer):
                        given = (value,) if tuple_field else value
                        cases.append(pytest.param(
                            entry, name, bound, value, given,
                            id=f"{entry.kind}:{entry.name}:{name}={given!r}"))
    return cases


CASES = _cases()


def test_the_registered_components_declare_their_bounds():
    components = {(entry.kind, entry.name) for entry, *_ in (case.values for case in CASES)}
    assert len(components) >= 50 and len(CASES) >= 150  # the methods, measures, models, tasks


@pytest.mark.parametrize(("entry", "name", "bound", "value", "given"), CASES)
def test_a_value_just_outside_a_declared_bound_is_refused_naming_the_field(
        entry: Entry[Any], name: str, bound: Bound, value: float, given: Any):
    assert not bound.holds(value)
    with pytest.raises(ValueError) as error:
        entry.build(**{name: given})
    assert str(error.value) == f"{name} {bound.describe()}, got {value!r}"
