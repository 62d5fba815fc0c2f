"""A sweep spec's ``adapt`` list: every finished run adapted on its held-out domains, once;
the report's before/after table with intervals over seeds."""

from __future__ import annotations

import csv
import io

import pytest

from heldout.config import ConfigError
from heldout.experiments.aggregate import adaptation_table
from heldout.experiments.model_selection import Selection
from heldout.experiments.sweep import run_sweep, sweep_from_dict
from heldout.report.sweep import write_sweep_report
from heldout.store import Store

SPEC = {
    "name": "adapt-small",
    "base": {"model": {"name": "mlp", "hidden": [32], "batch_norm": True},
             "optimizer": {"name": "adam", "lr": 0.01}, "steps": 30, "eval_every": 30,
             "checkpoint_every": 30, "measures": ["accuracy"]},
    "tasks": [{"name": "digits_shift", "shift": "rotation", "strengths": [0, 45, 90]}],
    "techniques": ["erm"],
    "seeds": 2,
    "held_out": [[2]],
    "selection": ["last"],
    "adapt": ["source", "bn_adapt", {"name": "alpha_bn", "alpha": 0.5}],
    "adapt_batch_size": 32,
}


def test_sweep_adapts_every_run_once_and_reports_before_and_after(tmp_path):
    store = Store(tmp_path / "home")
    spec = sweep_from_dict(SPEC)
    run_sweep(spec, store, vectorize=1, workers=1)
    runs = [r for r, _ in store.sweep_runs(spec.identity)]
    assert len(runs) == 2 and all(r.status == "done" for r in runs)
    adaptations = [a for r in runs for a in store.adaptations(r.id)]
    assert len(adaptations) == 6 and all(a["status"] == "done" for a in adaptations)
    assert {tuple(a["config"]["domains"]) for a in adaptations} == {("test@rot90",)}
    run_sweep(spec, store, vectorize=1, workers=1)  # again: nothing new
    assert len([a for r in runs for a in store.adaptations(r.id)]) == 6

    page = write_sweep_report(store, spec.name, tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    assert "Test-time adaptation: before → after" in text
    rows = list(csv.DictReader(io.StringIO(
        (tmp_path / "report" / "adaptation.csv").read_text(encoding="utf-8"))))
    assert [r["adapter"] for r in rows] == ["source", "bn_adapt", "alpha_bn(alpha=0.5)"]
    assert all(r["seeds"] == "2" and r["held_out"] == "rot90" for r in rows)
    source = rows[0]
    assert source["before"] == source["after"]  # no adaptation: no change


def test_adaptation_table_intervals_are_over_seeds():
    def selection(seed, run):
        return Selection("last", "t", "erm", ("d1",), seed, run, 0, float("nan"), 1, None)

    results = {(f"r{s}", "bn_adapt"): {"before": {"test@d1/accuracy": b},
                                       "after": {"test@d1/accuracy": a}}
               for s, (b, a) in enumerate([(0.5, 0.6), (0.4, 0.6), (0.6, 0.6)])}
    table = adaptation_table([selection(s, f"r{s}") for s in range(3)], results, ["bn_adapt"])
    (row,) = table.rows
    assert row["seeds"] == 3
    assert row["before"].mean == pytest.approx(0.5) and row["after"].mean == pytest.approx(0.6)
    assert row["change"].mean == pytest.approx(0.1)
    # the paired change's sd is that of (0.1, 0.2, 0.0): 0.1; t_{0.975, 2} = 4.303
    assert row["change"].half_width == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)


@pytest.mark.parametrize(("change", "message"), [
    ({"adapt": ["nope"]}, "adapt\\[0\\]: unknown adapter 'nope'; valid adapters"),
    ({"adapt": [{"name": "alpha_bn", "alpha": 3}]}, "adapt\\[0\\]: alpha"),
    ({"adapt": [5]}, "adapt: expected an adapter name or mapping"),
    ({"adapt_batch_size": 0}, "adapt_batch_size"),
])
def test_adapt_spec_errors_are_clear(change, message):
    with pytest.raises(ConfigError, match=message):
        sweep_from_dict({**SPEC, **change})


def test_a_spec_without_adapt_keeps_its_id():
    without = {k: v for k, v in SPEC.items() if k not in ("adapt", "adapt_batch_size")}
    # the id this spec had before sweeps could adapt (computed with that code)
    assert sweep_from_dict(without).identity == "5607f78e6c0d"
    assert sweep_from_dict(SPEC).identity != "5607f78e6c0d"


def test_adaptation_table_has_a_row_per_domain_and_their_average():
    selections = [Selection("last", "t", "erm", ("d1", "d2"), seed, f"r{seed}", 0,
                            float("nan"), 1, None) for seed in (0, 1)]
    results = {(f"r{seed}", "tent"): {
        "before": {"test@d1/accuracy": 0.5, "test@d2/accuracy": 0.3 + seed * 0.1},
        "after": {"test@d1/accuracy": 0.7, "test@d2/accuracy": 0.3}} for seed in (0, 1)}
    table = adaptation_table(selections, results, ["tent"])
    rows = {row["held_out"]: row for row in table.rows}
    assert list(rows) == ["d1", "d2", "average"]
    assert rows["d1"]["change"].mean == pytest.approx(0.2)
    assert rows["d2"]["change"].mean == pytest.approx(-0.05)
    # the average row averages each seed's two domains first: changes 0.1 and 0.05
    assert rows["average"]["change"].mean == pytest.approx(0.075)
    assert rows["average"]["seeds"] == 2


def test_the_shipped_corruption_spec_adapts_with_every_domain_adapter():
    from pathlib import Path

    from heldout.experiments.sweep import expand, load_sweep
    from heldout.registry import ADAPTERS

    spec = load_sweep(Path(__file__).parents[2] / "configs/sweeps/corruption-adapt.yaml")
    runs = expand(spec)
    assert len(runs) == 3 and all(len(r.held_out) == 8 for r in runs)
    listed = {a if isinstance(a, str) else a["name"] for a in spec.adapt}
    # every adapter that adapts a run's domains (no supports, no new classes) is listed
    domain_adapters = {n for n in ADAPTERS.names() if not ADAPTERS.get(n).cls.needs_support
                       and "num_new" not in ADAPTERS.get(n).defaults()}
    assert listed == domain_adapters
