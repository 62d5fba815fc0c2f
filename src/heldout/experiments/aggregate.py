"""Aggregate selections over seeds: means, Student-t confidence intervals, and tables.

:func:`aggregate` turns the :class:`~heldout.experiments.model_selection.Selection` records of
one or more rules into a :class:`Table` with one row per (rule, task, technique, held-out set)
and an ``average`` row per (rule, task, technique). Every cell is an :class:`Interval` over seeds::

    mean ± t_{(1+c)/2, n−1} · s / √n        (s: the sample standard deviation, ddof = 1)

with ``c = 0.95`` by default. One seed gives no interval: the half-width is NaN (and prints as
``nan``); no seed gives a NaN mean too (an empty cell).

The ``average`` row follows DomainBed: its mean is the mean of the per-held-out-set means. Its
interval comes from the per-seed averages over held-out sets, using only the seeds that have a
value for every held-out set (``n`` counts them); when every seed has every set, the mean of
those per-seed averages equals the mean of means.

Metrics (:data:`METRICS`): ``accuracy`` (``test/accuracy``), ``worst_group_accuracy``
(``test/worst_group_accuracy``, a column only when some selection logged it) and ``ece``
(``test/ece``). The exporters print accuracies in percent with 1 decimal and ECE, a fraction
in [0, 1], also multiplied by 100 but with 2 decimals (ECE 0.0345 prints as ``3.45``). Every
table names the selection rule in its first column, because numbers under different rules are
not comparable.

The t quantile is computed here without scipy: for integer degrees of freedom the t
distribution's CDF has a closed form (a finite trigonometric series), which
:func:`t_quantile` inverts by bisection to double precision.

Example:
    >>> interval = mean_interval([0.80, 0.84])
    >>> round(interval.mean, 2), round(interval.half_width, 4)
    (0.82, 0.2541)

References:
    In Search of Lost Domain Generalization (arXiv:2007.01434) — per-domain means averaged
    over test domains. Abramowitz & Stegun, Handbook of Mathematical Functions, 26.7.3–26.7.4
    — the t distribution's CDF for integer degrees of freedom.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heldout.experiments.model_selection import SELECTION_RULES, Selection

__all__ = [
    "AVERAGE",
    "METRICS",
    "Interval",
    "Table",
    "adaptation_table",
    "aggregate",
    "mean_interval",
    "t_quantile",
    "to_csv",
    "to_markdown",
]

METRICS: dict[str, str] = {
    "accuracy": "test/accuracy",
    "worst_group_accuracy": "test/worst_group_accuracy",
    "ece": "test/ece",
}
"""Table column → the final test metric it aggregates."""

AVERAGE = "average"
"""The ``held_out`` label of the row averaged over held-out sets."""

_DECIMALS = {"accuracy": 1, "worst_group_accuracy": 1, "ece": 2}  # after multiplying by 100
_KEY_COLUMNS = ("rule", "task", "technique", "held_out", "seeds", "missing")
_HEADERS = {
    "held_out": "held-out", "accuracy": "accuracy (%)",
    "worst_group_accuracy": "worst-group accuracy (%)", "ece": "ECE (×100)",
}


# ----------------------------------------------------------------------------------- intervals
def _abs_t_cdf(t: float, df: int) -> float:
    """P(|T| ≤ t) for T ~ Student t with integer ``df`` ≥ 1 and t ≥ 0 (A&S 26.7.3–4)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin θ · (1 + ½cos²θ + (1·3)/(2·4)cos⁴θ + … up to cos^{df−2}θ)
        term = total = 1.0
        for k in range(2, df - 1, 2):
            term *= (k - 1) / k * cos2
            total += term
        return sin * total
    if df == 1:
        return 2 * theta / math.pi
    # (2/π)(θ + sin θ · (cos θ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + … up to cos^{df−2}θ))
    term = total = math.cos(theta)
    for k in range(3, df - 1, 2):
        term *= (k - 1) / k * cos2
        total += term
    return 2 / math.pi * (theta + sin * total)


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t distribution with integer ``df`` ≥ 1.

    Exact to double precision: bisection on the closed-form CDF.

    Example:
        >>> round(t_quantile(0.975, 1), 3), round(t_quantile(0.975, 4), 3)
        (12.706, 2.776)
    """
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability!r}")
    df = int(df)
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    target = 2.0 * probability - 1.0  # P(|T| ≤ t)
    if target == 0.0:
        return 0.0
    lo, hi = 0.0, 1.0
    while _abs_t_cdf(hi, df) < target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _abs_t_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and the half-width of its confidence interval (NaN if n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t half-width ``t_{(1+c)/2, n−1} · s / √n`` of ``values``.

    ``s`` is the sample standard deviation (ddof = 1). With one value the half-width is NaN;
    with none the mean is NaN too.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Interval(mean, t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n), n)


# ----------------------------------------------------------------------------------- tables
@dataclass
class Table:
    """Rows (dicts) under a fixed column order; metric cells are :class:`Interval` objects.

    Key columns: ``rule`` (the selection rule's name), ``task``, ``technique``, ``held_out``
    (the held-out domains joined by ``+``, or ``average``), ``seeds`` (seeds in the cell's
    row) and ``missing`` (groups the rule could not select); then one column per metric.
    """

    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    confidence: float = 0.95

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in _KEY_COLUMNS and c != "adapter")


def _held_out_label(held_out: Sequence[str]) -> str:
    return "+".join(held_out) if held_out else "(none)"


def aggregate(selections: Iterable[Selection],
              metrics: Mapping[str, str] | Sequence[str] | None = None,
              confidence: float = 0.95) -> Table:
    """Mean and confidence interval over seeds of each selection's final test metrics.

    ``metrics``: column names from :data:`METRICS`, or a mapping column → metric key; by
    default every metric of :data:`METRICS` that some selection has. Rows keep the order in
    which (rule, task, technique) and held-out sets first occur in ``selections`` (the order
    :func:`~heldout.experiments.model_selection.select` returns), each group of held-out rows
    followed by its ``average`` row.

    Example:
        >>> aggregate([]).rows
        []
    """
    selections = list(selections)
    if metrics is None:
        present = {k for s in selections for k in s.test}
        metrics = {c: k for c, k in METRICS.items() if k in present}
    elif not isinstance(metrics, Mapping):
        unknown = [c for c in metrics if c not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; valid metrics: {', '.join(METRICS)}")
        metrics = {c: METRICS[c] for c in metrics}
    metrics = dict(metrics)
    table = Table(columns=_KEY_COLUMNS + tuple(metrics), confidence=confidence)

    # (rule, task, technique) → held-out set → its selections, in order of first occurrence
    grouped: dict[tuple[str, str, str], dict[tuple[str, ...], list[Selection]]] = {}
    for s in selections:
        cell = grouped.setdefault((s.rule, s.task, s.technique), {})
        cell.setdefault(tuple(s.held_out), []).append(s)

    for (rule, task, technique), by_held_out in grouped.items():
        base = {"rule": rule, "task": task, "technique": technique}
        per_set: dict[str, list[Interval]] = {c: [] for c in metrics}
        for held_out, group in by_held_out.items():
            chosen = [s for s in group if s.ok]
            row: dict[str, Any] = {**base, "held_out": _held_out_label(held_out),
                   "seeds": len({s.seed for s in chosen}),
                   "missing": len(group) - len(chosen)}
            for column, key in metrics.items():
                row[column] = mean_interval(
                    [s.test[key] for s in chosen if key in s.test], confidence)
                per_set[column].append(row[column])
            table.rows.append(row)
        table.rows.append(_average_row(base, by_held_out, metrics, per_set, confidence))
    return table


def _average_row(base: dict[str, Any], by_held_out: Mapping[tuple[str, ...], list[Selection]],
                 metrics: Mapping[str, str], per_set: Mapping[str, list[Interval]],
                 confidence: float) -> dict[str, Any]:
    sets = list(by_held_out)
    complete_seeds: set[int] | None = None
    row: dict[str, Any] = {**base, "held_out": AVERAGE, "seeds": 0,
                           "missing": sum(not s.ok for g in by_held_out.values() for s in g)}
    for column, key in metrics.items():
        # seed → held-out set → value, for the seeds that have every set
        values: dict[int, dict[tuple[str, ...], float]] = {}
        for held_out, group in by_held_out.items():
            for s in group:
                if s.ok and key in s.test:
                    values.setdefault(s.seed, {})[held_out] = s.test[key]
        seeds = sorted(seed for seed, v in values.items() if len(v) == len(sets))
        spread = mean_interval([math.fsum(values[seed].values()) / len(sets) for seed in seeds],
                               confidence)
        means = [interval.mean for interval in per_set[column]]
        mean = math.fsum(means) / len(means) if all(m == m for m in means) else math.nan
        row[column] = Interval(mean, spread.half_width, spread.n)
        complete_seeds = set(seeds) if complete_seeds is None else complete_seeds & set(seeds)
    row["seeds"] = len(complete_seeds or ())
    return row


# ----------------------------------------------------------------------------------- exporters
def _format(column: str, interval: Interval) -> str:
    if interval.n == 0 or math.isnan(interval.mean):
        return ""
    decimals = _DECIMALS.get(column, 3)
    half = "nan" if math.isnan(interval.half_width) else f"{100 * interval.half_width:.{decimals}f}"
    return f"{100 * interval.mean:.{decimals}f} ± {half}"


def _cell(column: str, value: Any) -> str:
    if isinstance(value, Interval):
        return _format(column, value)
    return "" if value is None else str(value)


def to_csv(table: Table, *, formatted: bool = True) -> str:
    """The table as CSV (``\\n`` line ends), header = column names.

    ``formatted=True``: metric cells as ``"mean ± half"`` in display units (accuracies in % with
    1 decimal, ECE ×100 with 2). ``formatted=False``: each metric becomes three raw columns,
    ``<metric>_mean``, ``<metric>_half_width`` (fractions, full precision) and ``<metric>_n``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [c for c in table.columns if c not in table.metrics]
    if formatted:
        writer.writerow(table.columns)
        for row in table:
            writer.writerow([_cell(c, row.get(c)) for c in table.columns])
        return buffer.getvalue()
    writer.writerow(keys + [f"{m}_{part}" for m in table.metrics
                            for part in ("mean", "half_width", "n")])
    for row in table:
        cells = [_cell(c, row.get(c)) for c in keys]
        for m in table.metrics:
            interval = row[m]
            cells += [repr(interval.mean), repr(interval.half_width), str(interval.n)]
        writer.writerow(cells)
    return buffer.getvalue()


def _markdown(text: str) -> str:
    """``text`` as one Markdown table cell: a pipe would end the cell and a line break the
    row, so pipes (and the backslashes that could undo their escape) are escaped and line
    breaks become spaces."""
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def to_markdown(table: Table, *, describe: bool = True) -> str:
    """The table as a GitHub Markdown table (numbers right-aligned).

    Metric headers carry their units; with ``describe`` a footer states the interval and lists
    the one-line description of every selection rule in the table.
    """
    headers = [_markdown(_HEADERS.get(c, c)) for c in table.columns]
    numeric = {"seeds", "missing", *table.metrics}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if c in numeric else "---" for c in table.columns) + "|",
    ]
    for row in table:
        lines.append("| " + " | ".join(_markdown(_cell(c, row.get(c))) for c in table.columns)
                     + " |")
    if describe:
        percent = f"{100 * table.confidence:g}%"
        lines += ["", f"Cells: mean ± half-width of the {percent} Student-t interval over "
                      "seeds (nan: one seed); accuracies in %, ECE ×100."]
        for rule in dict.fromkeys(row["rule"] for row in table):
            if rule in SELECTION_RULES:
                lines.append(f"- `{rule}`: {SELECTION_RULES.get(rule).summary}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- adaptation
ADAPTATION_COLUMNS = ("rule", "task", "technique", "adapter", "held_out", "seeds", "before",
                      "after", "change")


def adaptation_table(selections: Iterable[Selection],
                     results: Mapping[tuple[str, str], Mapping[str, Mapping[str, float]]],
                     adapters: Sequence[str], metric: str = "accuracy",
                     confidence: float = 0.95) -> Table:
    """Before/after test-time adaptation, per selection rule × technique × adapter ×
    held-out domain, mean ± interval over seeds; an ``average`` row per rule × technique ×
    adapter averages each seed's domains first (when there are several).

    ``results[(run_id, adapter)]`` is an adaptation's ``{"before": ..., "after": ...}``
    metrics, read at ``test@<domain>/<metric>``. ``change`` is after − before, paired per
    seed."""
    cells: dict[tuple[str, str, str, str, str], list[tuple[int, float, float]]] = {}
    for s in selections:
        if s.run_id is None or not s.held_out:
            continue
        for adapter in adapters:
            metrics = results.get((s.run_id, adapter))
            if not metrics:
                continue
            for domain in s.held_out:
                name = f"test@{domain}/{metric}"
                if name in metrics["before"] and name in metrics["after"]:
                    cells.setdefault((s.rule, s.task, s.technique, adapter, domain), []).append(
                        (s.seed, metrics["before"][name], metrics["after"][name]))
    table = Table(ADAPTATION_COLUMNS, confidence=confidence)
    averages: dict[tuple[str, ...], dict[int, list[tuple[float, float]]]] = {}
    for key, values in cells.items():
        table.rows.append(_adaptation_row(key, values, confidence))
        for seed, before, after in values:
            averages.setdefault(key[:4], {}).setdefault(seed, []).append((before, after))
    for key4, by_seed in averages.items():
        if len({k[4] for k in cells if k[:4] == key4}) < 2:
            continue
        values = [(seed, math.fsum(b for b, _ in v) / len(v), math.fsum(a for _, a in v) / len(v))
                  for seed, v in sorted(by_seed.items())]
        table.rows.append(_adaptation_row((*key4, AVERAGE), values, confidence))
    return table


def _adaptation_row(key: tuple[str, ...], values: Sequence[tuple[int, float, float]],
                    confidence: float) -> dict[str, Any]:
    rule, task, technique, adapter, held_out = key
    return {"rule": rule, "task": task, "technique": technique, "adapter": adapter,
            "held_out": held_out, "seeds": len(values),
            "before": mean_interval([b for _, b, _ in values], confidence),
            "after": mean_interval([a for _, _, a in values], confidence),
            "change": mean_interval([a - b for _, b, a in values], confidence)}
