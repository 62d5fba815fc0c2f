"""One small registry for every catalog: techniques, measures, adapters, tasks, models, claims.

A component is registered with a decorator that records its name, a one-line summary, the
papers it comes from (their numbers in the catalog of 77 papers) and, where it has one, a
hyper-parameter search space. A registered component is a dataclass: its fields are its
hyper-parameters, their defaults are the paper's defaults, and the config system reads their
types to check user input. So the catalog that ``heldout list`` prints is generated from code.

Each registry loads the modules that define its built-ins the first time it is asked for a
name, and only those: looking up a technique imports the techniques, never the claims ledger.
A search space is checked against the component's fields when it registers.

Example:
    >>> from heldout.registry import TECHNIQUES
    >>> TECHNIQUES.get("perp_grad").papers
    (9,)
    >>> "sam" in TECHNIQUES and "no-such-thing" not in TECHNIQUES
    True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import json
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from heldout.core.bounds import bounds_of, check_bounds

if TYPE_CHECKING:  # for the annotations only: the registry imports no component at load time

    from heldout.core.adapter import Adapter
    from heldout.core.callback import Callback
    from heldout.core.measure import Measure
    from heldout.core.technique import Technique

__all__ = [
    "ADAPTERS",
    "CALLBACKS",
    "CLAIMS",
    "MEASURES",
    "MODELS",
    "REGISTRIES",
    "SEARCH_KINDS",
    "SELECTION_RULES",
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
C = TypeVar("C", bound=Callable[..., Any])


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


SEARCH_KINDS = ("uniform", "log_uniform", "int_uniform", "choice")
"""How a hyper-parameter is drawn: ``(kind, lo, hi)``, or ``("choice", [v, ...])``."""


def check_search_space(owner: str, cls: Any, space: dict[str, Any]) -> None:
    """Refuse a search space naming a parameter ``cls`` does not have, or a malformed range."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(
        cls) else None
    for key, spec in space.items():
        if fields is not None and key not in fields:
            raise ValueError(f"{owner}: the search space names {key!r}, which is not a "
                             f"parameter; parameters: {', '.join(sorted(fields)) or 'none'}")
        kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
        if kind not in SEARCH_KINDS:
            raise ValueError(f"{owner}: search space of {key!r} is {spec!r}; the kind must be "
                             f"one of {', '.join(SEARCH_KINDS)}")
        if kind == "choice":
            if len(spec) != 2 or not isinstance(spec[1], (tuple, list)) or not spec[1]:
                raise ValueError(f"{owner}: search space of {key!r} must be "
                                 f"('choice', [values]), got {spec!r}")
        elif len(spec) != 3 or not spec[1] < spec[2] or (kind == "log_uniform" and spec[1] <= 0):
            raise ValueError(f"{owner}: search space of {key!r} must be ({kind!r}, lo, hi) with "
                             f"{'0 < ' if kind == 'log_uniform' else ''}lo < hi, got {spec!r}")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: its name, kind, class (or factory), summary, papers and search
    space."""

    name: str
    kind: str
    cls: Callable[..., T]
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

    def build(self, **params: Any) -> T:
        """Instantiate the component with ``params`` over its defaults."""
        return self.cls(**params)

    def citations(self) -> list[str]:
        return [paper(n).citation for n in self.papers] + list(self.references)


def _check_bounds_first(cls: type) -> None:
    """Make ``cls``'s ``__post_init__`` check the bounds its fields declare
    (:func:`~heldout.core.bounds.check_bounds`) before its own checks. The component's base
    class (Technique, Measure, ...) defines a ``__post_init__``, so the dataclass ``__init__``
    calls it."""
    original = getattr(cls, "__post_init__", None)
    if original is None:
        raise TypeError(f"{cls.__name__} declares bounds but its __init__ calls no "
                        "__post_init__: derive it from heldout's component base class")
    if cls.__dict__.get("__post_init__") is not None and getattr(original, "checks_bounds",
                                                                   False):
        return

    def __post_init__(self: Any, *init_vars: Any) -> None:  # adapters take their model
        check_bounds(self)
        original(self, *init_vars)

    __post_init__.checks_bounds = True  # type: ignore[attr-defined]
    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]


class Registry(Generic[T]):
    """A name → component mapping for one kind of component.

    Registering a name twice is an error (two components must not silently shadow each other);
    looking up an unknown name raises :class:`UnknownNameError` listing the valid names.
    ``builtins`` names the modules that register heldout's own components of this kind; they
    are imported on the first lookup. Names list sorted, or in registration order when
    ``ordered`` (the selection rules, which tables print in a fixed order).
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = (), *, ordered: bool = False
                 ) -> None:
        self.kind = kind
        self.builtins = builtins
        self.ordered = ordered
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = not builtins

    def register(
        self,
        name: str,
        *,
        summary: str,
        papers: tuple[int, ...] = (),
        search_space: dict[str, Any] | None = None,
        references: tuple[str, ...] = (),
    ) -> Callable[[C], C]:
        """Decorator that registers a component class (or a factory) under ``name``."""
        if not summary or "\n" in summary:
            raise ValueError(f"{self.kind} {name!r}: the summary must be one non-empty line")

        def deco(cls: C) -> C:
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            for number in papers:
                if not 1 <= number <= 77:
                    raise ValueError(f"{self.kind} {name!r}: no catalog paper #{number}")
            check_search_space(f"{self.kind} {name!r}", cls, dict(search_space or {}))
            if isinstance(cls, type) and bounds_of(cls):
                _check_bounds_first(cls)
            self._entries[name] = Entry(
                name, self.kind, cls, summary, tuple(papers), dict(search_space or {}),
                tuple(references),
            )
            if isinstance(cls, type):
                cls.registry_name = name  # type: ignore[attr-defined]  # set on the class
            return cls

        return deco

    def load_builtins(self) -> None:
        """Import the modules that register heldout's own components of this kind (once): each
        builtin module and, for a package, every module inside it, so a component's file
        registers it without being listed anywhere else."""
        if self._loaded:
            return
        self._loaded = True
        for name in self.builtins:
            module = importlib.import_module(name)
            for found in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
                importlib.import_module(found.name)

    def get(self, name: str) -> Entry[T]:
        self.load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **params: Any) -> T:
        return self.get(name).build(**params)

    def names(self, pattern: str = "*") -> list[str]:
        self.load_builtins()
        names = [n for n in self._entries if fnmatch.fnmatch(n, pattern)]
        return names if self.ordered else sorted(names)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


TECHNIQUES: Registry[Technique] = Registry("technique", ("heldout.methods",))
MEASURES: Registry[Measure] = Registry("measure", ("heldout.measures",))
TASKS: Registry[Any] = Registry("task", ("heldout.tasks",))  # heldout.tasks.Task subclasses
MODELS: Registry[Any] = Registry("model", ("heldout.models",))  # builders of nn.Module
CLAIMS: Registry[Any] = Registry("claim", ("heldout.claims",))  # heldout.claims.Claim subclasses
CALLBACKS: Registry[Callback] = Registry("callback", ("heldout.callbacks",))
ADAPTERS: Registry[Adapter] = Registry("adapter", ("heldout.adapt",))
SELECTION_RULES: Registry[Any] = Registry(
    "selection rule", ("heldout.experiments.model_selection",), ordered=True)
REGISTRIES: dict[str, Registry[Any]] = {
    "techniques": TECHNIQUES,
    "measures": MEASURES,
    "tasks": TASKS,
    "models": MODELS,
    "claims": CLAIMS,
    "callbacks": CALLBACKS,
    "adapters": ADAPTERS,
    "selection-rules": SELECTION_RULES,
}


def implementations(number: int) -> list[str]:
    """Names (``kind:name``) of the registered components that implement paper ``number``."""
    out: list[str] = []
    for reg in REGISTRIES.values():
        out.extend(f"{reg.kind}:{e.name}" for e in reg.entries() if number in e.papers)
    return out
