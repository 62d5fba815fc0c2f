"""Experiments over sweeps: specs and executors, model selection after training, and
aggregation over seeds.

:mod:`~heldout.experiments.model_selection` chooses, per (task, technique, held-out set,
seed) group, one run by a named rule (training-domain validation, leave-one-domain-out,
test-domain oracle, or the defaults' last checkpoint) and points at its checkpoint;
:mod:`~heldout.experiments.aggregate` turns those choices into tables of means and Student-t
confidence intervals over seeds, exported as CSV or Markdown.
"""

from heldout.experiments.aggregate import (
    AVERAGE,
    METRICS,
    Interval,
    Table,
    aggregate,
    mean_interval,
    t_quantile,
    to_csv,
    to_markdown,
)
from heldout.experiments.executors import (
    LocalExecutor,
    Outcome,
    RayExecutor,
    make_executor,
    run_jobs,
)
from heldout.experiments.model_selection import (
    SELECTION_RULES,
    Record,
    Selection,
    SelectionRule,
    get_rule,
    record_from_store,
    select,
    select_all,
)
from heldout.experiments.sweep import (
    PlannedRun,
    SweepSpec,
    draw_value,
    expand,
    load_sweep,
    run_sweep,
    sweep_from_dict,
    sweep_status,
)

__all__ = [
    "LocalExecutor",
    "Outcome",
    "PlannedRun",
    "RayExecutor",
    "SweepSpec",
    "draw_value",
    "expand",
    "load_sweep",
    "make_executor",
    "run_jobs",
    "run_sweep",
    "sweep_from_dict",
    "sweep_status",
    "AVERAGE",
    "METRICS",
    "SELECTION_RULES",
    "Interval",
    "Record",
    "Selection",
    "SelectionRule",
    "Table",
    "aggregate",
    "get_rule",
    "mean_interval",
    "record_from_store",
    "select",
    "select_all",
    "t_quantile",
    "to_csv",
    "to_markdown",
]
