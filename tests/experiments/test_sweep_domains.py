"""A multi-domain sweep end to end: shift suite → sweep → selection → report tables."""

import csv
import io

from heldout.experiments.sweep import expand, run_sweep, sweep_from_dict
from heldout.report.sweep import write_sweep_report
from heldout.store import Store

SPEC = {
    "name": "rotation",
    "base": {"model": {"name": "mlp", "hidden": [32]}, "optimizer": {"name": "adam",
                                                                      "lr": 0.003},
             "steps": 40, "eval_every": 20, "checkpoint_every": 40, "batch_size": 64,
             "measures": ["accuracy", "loss", "ece", "group_accuracy"]},
    "tasks": [{"name": "digits_shift", "shift": "rotation"}],
    "techniques": ["erm", "sam"],
    "hparams": 2,
    "seeds": 2,
    "held_out": [[0], [3]],
    "selection": ["train_domain_val", "oracle", "last"],
}


def test_multi_domain_sweep_to_report(tmp_path):
    spec = sweep_from_dict(SPEC)
    plan = expand(spec)
    assert len(plan) == 2 * 2 * (1 + 2)  # erm searches nothing: its draw 1 would repeat 0
    assert {p.held_out for p in plan} == {("rot0",), ("rot90",)}
    store = Store(tmp_path / "home")
    outcomes = run_sweep(spec, store, workers=2)
    assert all(o.status == "done" for o in outcomes) and len(outcomes) == 12
    final = store.final_metrics(plan[0].config.identity)
    for domain in ("rot0", "rot30", "rot60", "rot90"):  # per-domain splits were evaluated
        assert f"val@{domain}/accuracy" in final and f"test@{domain}/accuracy" in final
    path = write_sweep_report(store, "rotation", tmp_path / "report")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report" / "tables.csv").read_text())))
    assert {r["rule"] for r in rows} == {"train_domain_val", "oracle", "last"}
    assert {r["held_out"] for r in rows} == {"rot0", "rot90", "average"}
    assert all(r["worst_group_accuracy"] and r["accuracy"] for r in rows)
    page = path.read_text()
    assert "Per-domain test accuracy" in page and "training-domain validation" in page
