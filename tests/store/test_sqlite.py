import csv
import io
import json
from pathlib import Path

import pytest

from heldout.run.execute import RunFailed, execute
from tests.conftest import tiny_config


def test_store_records_a_run(store):
    cfg = tiny_config()
    result = execute(cfg, store)
    record = store.get_run(cfg.identity)
    assert record.status == "done" and record.step == cfg.steps and record.error is None
    assert record.config["task"]["p"] == 23 and record.seed == 0
    assert record.versions["torch"] and record.seconds > 0
    steps = sorted({s for s, _, _ in store.metrics(cfg.identity)})
    assert steps == [0, 3, 6, 9, 12]
    assert result.metrics == store.final_metrics(cfg.identity)
    assert "test/accuracy" in result.metrics and "gap/accuracy" in result.metrics


def test_same_config_runs_once(store):
    cfg = tiny_config()
    first = execute(cfg, store)
    again = execute(cfg, store)
    assert again.skipped and again.metrics == first.metrics
    assert len(store.runs()) == 1
    redo = execute(cfg, store, restart=True)
    assert not redo.skipped and redo.metrics == first.metrics


def test_export_csv_and_json(store):
    a, b = tiny_config(), tiny_config("seed=1")
    execute(a, store)
    execute(b, store)
    rows = list(csv.DictReader(io.StringIO(store.export(fmt="csv"))))
    assert {r["id"] for r in rows} == {a.identity, b.identity}
    assert all(float(r["test/accuracy"]) >= 0 for r in rows)
    data = json.loads(store.export([a.identity], fmt="json"))
    assert data[0]["id"] == a.identity and data[0]["history"]
    with pytest.raises(ValueError, match="valid formats: csv, json"):
        store.export(fmt="xml")


def test_prefix_and_name_lookup(store):
    cfg = tiny_config("name=my-run")
    execute(cfg, store)
    assert store.get_run(cfg.identity[:5]).id == cfg.identity
    assert store.get_run("my-run").id == cfg.identity
    with pytest.raises(KeyError, match="no run"):
        store.get_run("zzzz")


def test_nan_run_is_marked_failed_with_its_step(store):
    cfg = tiny_config("optimizer.lr=1e30", "optimizer.name=sgd", "steps=30",
                      "checkpoint_every=1")
    with pytest.raises(RunFailed, match="non-finite loss"):
        execute(cfg, store)
    record = store.get_run(cfg.identity)
    assert record.status == "failed" and "at step" in record.error
    failed_step = int(record.error.split("at step ")[1].split(";")[0])
    assert record.step == failed_step
    checkpoint = store.run_dir(cfg.identity) / "checkpoint.pt"
    import torch

    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == failed_step - 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_claims_table_keeps_latest(store):
    store.record_claim("c", "holds", "first", {"x": 1}, [0], ["r"], "ci")
    store.record_claim("c", "does not hold", "second", {"x": 2}, [0, 1], [], "full")
    (latest,) = store.claim_results("c")
    assert latest["verdict"] == "does not hold" and latest["numbers"] == {"x": 2}


def test_checkpoint_is_recorded_as_an_artifact(store):
    import hashlib

    cfg = tiny_config()
    execute(cfg, store)
    (artifact,) = store.artifacts(cfg.identity)
    assert artifact["name"] == "checkpoint"
    data = Path(artifact["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"]


def test_init_from_starts_from_a_finished_run(store):
    import torch

    from heldout.run.assembly import build

    base = tiny_config()
    execute(base, store)
    saved = torch.load(store.run_dir(base.identity) / "checkpoint.pt", weights_only=True)
    tuned = tiny_config(f"init_from={base.identity}", "optimizer.lr=0.001")
    trainer = build(tuned, store=store)
    for key, value in saved["model"].items():
        assert torch.equal(trainer.initial_state[key], value)
    result = execute(tuned, store)
    assert result.status == "done" and tuned.identity != base.identity
    wrong = tiny_config(f"init_from={base.identity}", "model.hidden=[16]")
    with pytest.raises(ValueError, match="do not fit this model"):
        build(wrong, store=store)
    with pytest.raises(ValueError, match="init_from: no run"):  # a ConfigError: one line
        build(tiny_config("init_from=nosuchrun"), store=store)
