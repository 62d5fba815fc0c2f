"""Model selection after training: pure functions from a sweep's run records to choices.

A sweep trains, for every task × technique × hyper-parameter draw ``h`` × seed × held-out
domain set, one run. A *selection rule* looks at the runs of one *group* — one
``(task, technique, held_out, seed)`` — and chooses one draw; the result is a
:class:`Selection` that points at the chosen run, its step and its checkpoint, and carries the
run's final test metrics. Selection never trains anything, so one sweep serves every rule.

**The record format.** A record is a plain dict per run::

    {
        "run_id": "3f2a…",                        # the run's id in the store
        "task": "rotated_mnist",
        "technique": "sam",
        "hparams": 3,                             # draw index h; 0 = the defaults
        "seed": 1,
        "held_out": ("rot60",),                   # the domains not trained on
        "domains": ("rot0", "rot30", "rot60"),    # every domain of the task
        "final": {"val/accuracy": 0.91, "test/accuracy": 0.72, ...},  # the last step's values
        "history": {"val/accuracy": [(100, 0.85), (200, 0.91)], ...},
        "checkpoint": "/…/runs/3f2a…/checkpoint.pt",  # or None
    }

Metric keys are ``"<split>/<name>"``: ``train``, ``val`` (pooled training-domain
validation), ``test`` (the held-out domains' test data), and per domain ``val@<domain>`` and
``test@<domain>``. :func:`record_from_store` builds a record from the runs store.

**The rules** (:data:`SELECTION_RULES`; each has a ``name`` and a one-line ``description``):

* ``train_domain_val`` — the draw with the highest final ``val/accuracy`` (pooled
  training-domain validation); DomainBed's ``IIDAccuracySelectionMethod``.
* ``lodo`` — leave-one-domain-out: for each training domain ``d``, the run of the same draw and
  seed that *also* held out ``d`` is scored by its final ``val@d/accuracy``; the draw with the
  highest mean over ``d`` wins and the result is that draw's run holding out only the test
  domains; DomainBed's ``LeaveOneOutSelectionMethod``.
* ``oracle`` — test-domain validation: the draw with the highest final
  ``val@<held-out domain>/accuracy`` (mean over held-out domains), read at the last step only:
  one test-domain query per draw and no early stopping; DomainBed's ``OracleSelectionMethod``.
* ``last`` — no selection: draw 0 (the defaults) and its last checkpoint.

Every rule reads the *last* step of a run: the store keeps one checkpoint per run (its last
step), so a choice of an earlier step could not point at a model. This differs from DomainBed,
whose training-domain and leave-one-out rules also maximise over the evaluation steps.

**Groups, draws and missing runs.** By default the groups are the held-out sets of the
smallest size in each task (so the larger LODO sets serve as auxiliary runs, not as groups of
their own); pass ``held_out=`` to name them. The draws a group should have are all the draws
that occur for its (task, technique). A draw that cannot be scored — its run is absent, a
needed LODO run is absent, or a needed metric was not logged — is listed in
:attr:`Selection.missing`. With ``strict=True`` (the default) such a group is not selected at
all (``run_id`` is ``None``): choosing among the draws that happen to be complete would be a
different, smaller search. With ``strict=False`` the rule chooses among the scorable draws and
still lists what was missing. Ties go to the lowest draw index.

Example:
    >>> def rec(h, held_out, final):
    ...     return {"run_id": f"h{h}-{'+'.join(held_out)}", "task": "toy", "technique": "erm",
    ...             "hparams": h, "seed": 0, "held_out": held_out, "domains": ("a", "b", "c"),
    ...             "final": final, "history": {"val/accuracy": [(10, 0.0)]},
    ...             "checkpoint": None}
    >>> records = [rec(0, ("c",), {"val/accuracy": 0.8, "test/accuracy": 0.5}),
    ...            rec(1, ("c",), {"val/accuracy": 0.9, "test/accuracy": 0.4})]
    >>> [s.run_id for s in select(records, "train_domain_val")]
    ['h1-c']

References:
    In Search of Lost Domain Generalization (arXiv:2007.01434) — the three selection rules and
    the limit of one test-domain query per draw for the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heldout.registry import SELECTION_RULES

__all__ = [
    "SELECTION_RULES",
    "Record",
    "Selection",
    "SelectionRule",
    "get_rule",
    "record_from_store",
    "select",
    "select_all",
]

Record = dict[str, Any]
"""One run of a sweep, as described in the module docstring."""

_REQUIRED = ("run_id", "task", "technique", "hparams", "seed", "held_out", "domains", "final")

# (task, technique, held-out set, seed, draw) → record
_Key = tuple[str, str, frozenset, int, int]


class _Missing(Exception):
    """A draw cannot be scored; the message says which run or metric is absent."""


@dataclass(frozen=True)
class Selection:
    """What a rule chose for one ``(task, technique, held_out, seed)`` group.

    ``run_id`` is ``None`` when the group could not be selected; ``missing`` then says why.
    ``score`` is the selection score of the chosen draw (NaN for ``last``, which does not
    select), ``scores`` the score of every scorable draw, ``step`` and ``checkpoint`` the step
    and the checkpoint file the choice points at, ``test`` the chosen run's final test metrics
    (``test/…`` and ``test@<domain>/…``), and ``test_domain_queries`` how many test-domain
    evaluations the rule read (non-zero for the oracle only).
    """

    rule: str
    task: str
    technique: str
    held_out: tuple[str, ...]
    seed: int
    run_id: str | None
    hparams: int | None
    score: float
    step: int | None
    checkpoint: str | None
    test: dict[str, float] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    test_domain_queries: int = 0

    @property
    def ok(self) -> bool:
        """Whether a run was chosen."""
        return self.run_id is not None


@dataclass(frozen=True)
class SelectionRule:
    """A named rule: ``score(record, runs)`` scores one draw's run holding out the test
    domains (``runs`` finds the sweep's other runs); the highest score wins. A rule with
    ``defaults_only`` scores nothing and takes draw 0."""

    name: str
    description: str
    score: Callable[[Record, _Runs], float]
    defaults_only: bool = False
    reads_test_domains: bool = False

    def select(self, records: Iterable[Record], *,
               held_out: Iterable[Sequence[str]] | None = None,
               strict: bool = True) -> list[Selection]:
        """One :class:`Selection` per group; see :func:`select`."""
        return select(records, self, held_out=held_out, strict=strict)


def _rule(name: str, description: str, *, defaults_only: bool = False,
          reads_test_domains: bool = False):
    """Register the decorated score function as the rule ``name`` in
    :data:`~heldout.registry.SELECTION_RULES` (tables print the rules in this file's order)."""

    def deco(score: Callable[[Record, _Runs], float]) -> Callable[[Record, _Runs], float]:
        rule = SelectionRule(name, description, score, defaults_only, reads_test_domains)

        def build() -> SelectionRule:
            return rule

        build.__doc__ = score.__doc__ or description
        SELECTION_RULES.register(name, summary=description)(build)
        return score

    return deco


def get_rule(name: str | SelectionRule) -> SelectionRule:
    """The rule called ``name`` (a rule passes through); unknown names list the valid ones."""
    if isinstance(name, SelectionRule):
        return name
    return SELECTION_RULES.build(name)


# ----------------------------------------------------------------------------------- records
class _Runs:
    """The sweep's runs, found by (task, technique, held-out set, seed, draw)."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.by_key: dict[_Key, Record] = {}
        for record in records:
            missing = [k for k in _REQUIRED if k not in record]
            if missing:
                raise ValueError(f"record {record.get('run_id', '?')!r} lacks {missing}")
            key = _key(record)
            if key in self.by_key:
                raise ValueError(
                    f"runs {self.by_key[key]['run_id']!r} and {record['run_id']!r} are the same "
                    f"task, technique, held-out set, seed and draw"
                )
            self.by_key[key] = record

    def find(self, task: str, technique: str, held_out: Iterable[str], seed: int,
             hparams: int) -> Record:
        key = (task, technique, frozenset(held_out), seed, hparams)
        try:
            return self.by_key[key]
        except KeyError:
            raise _Missing(
                f"draw {hparams}: no run holding out {_label(sorted(held_out))}"
            ) from None


def _key(record: Mapping[str, Any]) -> _Key:
    return (record["task"], record["technique"], frozenset(record["held_out"]),
            int(record["seed"]), int(record["hparams"]))


def _label(domains: Iterable[str]) -> str:
    return "{" + ", ".join(domains) + "}"


def _ordered(domains: Iterable[str], order: Sequence[str]) -> tuple[str, ...]:
    """``domains`` in the task's domain order (unknown names last, sorted)."""
    domains = set(domains)
    return tuple(d for d in order if d in domains) + tuple(sorted(domains - set(order)))


def _final(record: Record, key: str) -> float:
    value = record["final"].get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _Missing(f"draw {record['hparams']}: run {record['run_id']!r} has no final {key}")
    return float(value)


def _last_step(record: Record) -> int | None:
    """The run's last logged step (its checkpoint's step), from its history."""
    steps = [step for series in (record.get("history") or {}).values() for step, _ in series]
    if steps:
        return int(max(steps))
    step = record.get("step")
    return None if step is None else int(step)


def _test_metrics(record: Record) -> dict[str, float]:
    return {k: float(v) for k, v in record["final"].items()
            if k.startswith(("test/", "test@")) and v is not None}


def record_from_store(store: Any, run_id: str, *, task: str, technique: str, hparams: int,
                      seed: int, held_out: Sequence[str], domains: Sequence[str]) -> Record:
    """Build a run's record from a :class:`heldout.store.Store` and the sweep's bookkeeping.

    ``final`` and ``history`` come from the store; ``checkpoint`` is the run directory's
    ``checkpoint.pt`` if it exists, else the checkpoint path the store recorded, else None.
    """
    path = Path(store.checkpoint_path(run_id))
    checkpoint = str(path) if path.exists() else store.get_run(run_id).checkpoint
    return {
        "run_id": run_id, "task": task, "technique": technique, "hparams": int(hparams),
        "seed": int(seed), "held_out": tuple(held_out), "domains": tuple(domains),
        "final": store.final_metrics(run_id), "history": store.history(run_id),
        "checkpoint": checkpoint,
    }


# ----------------------------------------------------------------------------------- rules
@_rule("train_domain_val",
       "training-domain validation: the draw with the highest final pooled val/accuracy "
       "of the training domains")
def _train_domain_val(record: Record, runs: _Runs) -> float:
    return _final(record, "val/accuracy")


@_rule("lodo",
       "leave-one-domain-out: the draw with the highest mean val@d/accuracy over training "
       "domains d, each read from the run that also held out d")
def _leave_one_domain_out(record: Record, runs: _Runs) -> float:
    test_domains = set(record["held_out"])
    training = [d for d in record["domains"] if d not in test_domains]
    if not training:
        raise _Missing(f"draw {record['hparams']}: no training domain to leave out")
    accuracies = []
    for domain in training:
        other = runs.find(record["task"], record["technique"], test_domains | {domain},
                          record["seed"], record["hparams"])
        accuracies.append(_final(other, f"val@{domain}/accuracy"))
    return sum(accuracies) / len(accuracies)


@_rule("oracle",
       "test-domain oracle: the draw with the highest val@<held-out>/accuracy at the last "
       "step only; at most one test-domain query per draw",
       reads_test_domains=True)
def _oracle(record: Record, runs: _Runs) -> float:
    if not record["held_out"]:
        raise _Missing(f"draw {record['hparams']}: no held-out domain to query")
    values = [_final(record, f"val@{d}/accuracy") for d in record["held_out"]]
    return sum(values) / len(values)


@_rule("last", "no selection: draw 0 (the defaults) and its last checkpoint",
       defaults_only=True)
def _last(record: Record, runs: _Runs) -> float:
    return math.nan


# ----------------------------------------------------------------------------------- select
def select(records: Iterable[Record], rule: str | SelectionRule, *,
           held_out: Iterable[Sequence[str]] | None = None,
           strict: bool = True) -> list[Selection]:
    """Apply ``rule`` to every ``(task, technique, held_out, seed)`` group of ``records``.

    ``held_out`` names the held-out sets that form groups (default: in each task, the sets of
    the smallest size present). ``strict``: a group with any unscorable draw is not selected
    (see the module docstring). Returns the selections sorted by task, technique, held-out
    set (in the task's domain order) and seed; unselected groups are included with
    ``run_id=None`` and their ``missing`` reasons.

    Example:
        >>> select([], "oracle")
        []
    """
    rule = get_rule(rule)
    records = list(records)
    runs = _Runs(records)

    draws: dict[tuple[str, str], set[int]] = {}
    for task, technique, _, _, h in runs.by_key:
        draws.setdefault((task, technique), set()).add(h)

    wanted = None if held_out is None else {frozenset(s) for s in held_out}
    smallest: dict[str, int] = {}
    for task, _, domains, _, _ in runs.by_key:
        smallest[task] = min(smallest.get(task, len(domains)), len(domains))

    order: dict[str, tuple[str, ...]] = {}
    groups: set[tuple[str, str, frozenset, int]] = set()
    for record in records:
        task, technique, domains, seed, _ = _key(record)
        order.setdefault(task, tuple(record["domains"]))
        is_group = len(domains) == smallest[task] if wanted is None else domains in wanted
        if is_group:
            groups.add((task, technique, domains, seed))

    def sort_key(group: tuple[str, str, frozenset, int]) -> tuple:
        task, technique, domains, seed = group
        positions = tuple(order[task].index(d) if d in order[task] else len(order[task])
                          for d in _ordered(domains, order[task]))
        return (task, technique, len(domains), positions, seed)

    return [_select_group(rule, runs, group, sorted(draws[group[:2]]), order[group[0]], strict)
            for group in sorted(groups, key=sort_key)]


def _select_group(rule: SelectionRule, runs: _Runs, group: tuple[str, str, frozenset, int],
                  draws: list[int], order: Sequence[str], strict: bool) -> Selection:
    task, technique, domains, seed = group
    candidates = [0] if rule.defaults_only else draws
    scores: dict[int, float] = {}
    missing: list[str] = []
    for h in candidates:
        try:
            record = runs.find(task, technique, domains, seed, h)
            scores[h] = rule.score(record, runs)
        except _Missing as why:
            missing.append(str(why))
    queries = len(scores) if rule.reads_test_domains else 0
    empty = Selection(rule=rule.name, task=task, technique=technique,
                      held_out=_ordered(domains, order), seed=seed, run_id=None, hparams=None,
                      score=math.nan, step=None, checkpoint=None, scores=scores,
                      missing=tuple(missing), test_domain_queries=queries)
    if not scores or (strict and missing):
        return empty
    # highest score, ties to the lowest draw (``last`` scores draw 0 only)
    chosen = min(scores, key=lambda h: (-scores[h], h))
    record = runs.find(task, technique, domains, seed, chosen)
    return Selection(
        rule=rule.name, task=task, technique=technique, held_out=_ordered(domains, order),
        seed=seed, run_id=record["run_id"], hparams=chosen, score=scores[chosen],
        step=_last_step(record), checkpoint=record.get("checkpoint"),
        test=_test_metrics(record), scores=scores, missing=tuple(missing),
        test_domain_queries=queries,
    )


def select_all(records: Iterable[Record],
               rules: Iterable[str | SelectionRule] | None = None, *,
               held_out: Iterable[Sequence[str]] | None = None,
               strict: bool = True) -> list[Selection]:
    """:func:`select` for each rule (default: every registered rule), concatenated."""
    records = list(records)
    held = None if held_out is None else [tuple(s) for s in held_out]
    out: list[Selection] = []
    for rule in (SELECTION_RULES if rules is None else rules):
        out.extend(select(records, rule, held_out=held, strict=strict))
    return out
