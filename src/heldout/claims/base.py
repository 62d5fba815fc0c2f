"""The claims ledger: each headline claim as a small, cited experiment with a verdict rule.

A claim is a registered dataclass (its parameters are the experiment's settings, with a
``ci`` scale for the continuous-integration-sized version) whose ``run`` executes its runs
through the store and returns a :class:`Verdict`: *holds*, *does not hold* or *inconclusive*,
with the numbers and seeds it rests on. The verdict is recorded in the store's ``claims``
table next to the runs it used.

A claim builds its runs as typed :class:`~heldout.config.RunConfig` objects (``RunConfig``
checks every component and fills in its defaults); variants of a run are
``dataclasses.replace(cfg, ...)`` of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from heldout.config import Component, RunConfig
from heldout.run.execute import RunFailed, execute
from heldout.store.sqlite import Store

__all__ = ["STEP_DECAY", "Claim", "Verdict", "named", "record", "seed_vote"]

VerdictName = Literal["holds", "does not hold", "inconclusive"]


def named(*names: str) -> tuple[Component, ...]:
    """Registered components by name, each with its defaults.

    Example:
        >>> [c.name for c in named("accuracy", "loss")]
        ['accuracy', 'loss']
    """
    return tuple(Component(name) for name in names)


# The learning rate divided by 10 at 50% and 75% of the run: the "regime" schedule of the
# large-batch and PS-KD recipes.
STEP_DECAY = Component("lr_schedule", {"kind": "step", "milestones": (0.5, 0.75)})


@dataclass(frozen=True)
class Verdict:
    """The outcome of a claim: its verdict, a one-line summary and the numbers behind it."""

    claim: str
    verdict: VerdictName
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    run_ids: tuple[str, ...] = ()
    scale: str = "full"

    def __str__(self) -> str:
        return f"{self.claim}: {self.verdict.upper()} — {self.summary}"


def seed_vote(passed: Sequence[bool]) -> VerdictName:
    """Holds if at least two thirds of the seeds pass, does not hold if at most one third
    does, inconclusive in between (one seed decides alone)."""
    n, k = len(passed), sum(passed)
    if n == 0:
        raise ValueError("no seeds")
    if k >= math.ceil(2 * n / 3):
        return "holds"
    if k <= n // 3:
        return "does not hold"
    return "inconclusive"


class Claim:
    """Base of the registered claims (subclasses are dataclasses of their settings)."""

    registry_name: ClassVar[str]
    statement: ClassVar[str]  # the claim, in one sentence, as the paper makes it
    default_seeds: ClassVar[int] = 3

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        raise NotImplementedError

    def verdict(self, verdict: VerdictName, summary: str, numbers: dict[str, Any],
                seeds: Sequence[int], run_ids: Sequence[str], scale: str) -> Verdict:
        return Verdict(self.registry_name, verdict, summary, numbers, tuple(seeds),
                       tuple(run_ids), scale)

    @staticmethod
    def execute(cfg: RunConfig, store: Store, progress: bool = False) -> dict[int, dict]:
        """Run (or reuse) ``cfg`` and return its history as ``{step: metrics}``."""
        try:
            result = execute(cfg, store, progress=progress)
        except RunFailed:
            pass  # a failed run is evidence too: its history up to the failure is kept
        else:
            assert result.status == "done"
        by_step: dict[int, dict] = {}
        for step, key, value in store.metrics(cfg.identity):
            by_step.setdefault(step, {})[key] = value
        return by_step


def record(store: Store, verdict: Verdict) -> Verdict:
    """Write ``verdict`` to the store's claims table and return it."""
    store.record_claim(verdict.claim, verdict.verdict, verdict.summary, verdict.numbers,
                       verdict.seeds, verdict.run_ids, verdict.scale)
    return verdict
