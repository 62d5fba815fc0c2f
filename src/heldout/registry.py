"""One small registry for every catalog: techniques, measures, tasks, models and claims.

A component is registered with a decorator that records its name, a one-line summary, the
papers it comes from (their numbers in the catalog of 77 papers) and, where it has one, a
hyper-parameter search space. A registered component is a dataclass: its fields are its
hyper-parameters, their defaults are the paper's defaults, and the config system reads their
types to check user input. So the catalog that ``heldout list`` prints is generated from code.

Example:
    >>> from heldout.registry import TECHNIQUES
    >>> TECHNIQUES.get("sam").summary  # doctest: +SKIP
    'Sharpness-Aware Minimization: ascend to the worst point in a rho-ball, descend from there.'
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, TypeVar

__all__ = [
    "CLAIMS",
    "MEASURES",
    "MODELS",
    "REGISTRIES",
    "TASKS",
    "TECHNIQUES",
    "Entry",
    "Paper",
    "Registry",
    "UnknownNameError",
    "paper",
    "papers",
]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Paper:
    """One row of the catalog of 77 papers that define heldout's scope."""

    number: int
    short: str
    title: str
    arxiv: str | None
    year: int | None
    kind: str
    builds: str
    tier: int

    @property
    def citation(self) -> str:
        ident = f"arXiv:{self.arxiv}" if self.arxiv else "arXiv id unknown"
        return f"{self.title} ({ident}; catalog #{self.number})"


@cache
def papers() -> tuple[Paper, ...]:
    """The 77 catalog papers, read from the data file shipped inside the package."""
    text = resources.files("heldout").joinpath("data/papers.json").read_text(encoding="utf-8")
    return tuple(Paper(**row) for row in json.loads(text))


def paper(number: int) -> Paper:
    """The catalog paper with this number (1-77)."""
    rows = papers()
    if not 1 <= number <= len(rows):
        raise UnknownNameError(f"no catalog paper #{number}; valid numbers are 1..{len(rows)}")
    return rows[number - 1]


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, kind, class, summary, papers and search space."""

    name: str
    kind: str
    cls: type
    summary: str
    papers: tuple[int, ...] = ()
    search_space: dict[str, Any] = field(default_factory=dict)
    references: tuple[str, ...] = ()  # works outside the catalog: "Title (arXiv:id)"

    def defaults(self) -> dict[str, Any]:
        """The component's hyper-parameters and their default values."""
        if not dataclasses.is_dataclass(self.cls):
            return {}
        out = {}
        for f in dataclasses.fields(self.cls):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def build(self, **params: Any) -> Any:
        """Instantiate the component with ``params`` over its defaults."""
        return self.cls(**params)

    def citations(self) -> list[str]:
        return [paper(n).citation for n in self.papers] + list(self.references)


class Registry:
    """A name → component mapping for one kind of component.

    Registering a name twice is an error (two components must not silently shadow each other);
    looking up an unknown name raises :class:`UnknownNameError` listing the valid names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        summary: str,
        papers: tuple[int, ...] = (),
        search_space: dict[str, Any] | None = None,
        references: tuple[str, ...] = (),
    ) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers a component under ``name``."""
        if not summary or "\n" in summary:
            raise ValueError(f"{self.kind} {name!r}: the summary must be one non-empty line")

        def deco(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            for number in papers:
                if not 1 <= number <= 77:
                    raise ValueError(f"{self.kind} {name!r}: no catalog paper #{number}")
            self._entries[name] = Entry(
                name, self.kind, cls, summary, tuple(papers), dict(search_space or {}),
                tuple(references),
            )
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> Entry:
        _load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **params: Any) -> Any:
        return self.get(name).build(**params)

    def names(self, pattern: str = "*") -> list[str]:
        _load_builtins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        _load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


TECHNIQUES = Registry("technique")
MEASURES = Registry("measure")
TASKS = Registry("task")
MODELS = Registry("model")
CLAIMS = Registry("claim")
REGISTRIES: dict[str, Registry] = {
    "techniques": TECHNIQUES,
    "measures": MEASURES,
    "tasks": TASKS,
    "models": MODELS,
    "claims": CLAIMS,
}

_BUILTIN_MODULES = (
    "heldout.methods",
    "heldout.measures",
    "heldout.tasks",
    "heldout.models",
    "heldout.claims",
)


def _load_builtins() -> None:
    """Import the modules that register heldout's own components (once, on first lookup)."""
    if _load_builtins.done:  # type: ignore[attr-defined]
        return
    _load_builtins.done = True  # type: ignore[attr-defined]
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


_load_builtins.done = False  # type: ignore[attr-defined]


def implementations(number: int) -> list[str]:
    """Names (``kind:name``) of the registered components that implement paper ``number``."""
    out = []
    for reg in REGISTRIES.values():
        out.extend(f"{reg.kind}:{e.name}" for e in reg.entries() if number in e.papers)
    return out
