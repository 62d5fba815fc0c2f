"""One process per run (issue 9, bug 1): the run lease, with real processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heldout.config import RunConfig, parse_overrides
from heldout.experiments.executors import LocalExecutor, run_jobs
from heldout.run.execute import execute
from heldout.run.recorder import RunRecorder
from heldout.store import LeaseLost, RunFinishedError, RunLeased, Store
from tests.conftest import tiny_config

# the tiny modular config for a few seconds, with checkpoints along the way
RUN = ["task=modular", "task.p=23", "model.hidden=[32]", "steps=400", "eval_every=50",
       "checkpoint_every=50", "batch_size=64", "measures=accuracy"]


def _heldout(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HELDOUT_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "heldout.cli", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lease(store: Store, run_id: str, proc: subprocess.Popen) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        holder = store.lease_holder(run_id) if store.path.exists() else None
        if holder is not None:
            return holder
        time.sleep(0.02)
    raise AssertionError(f"the run never took its lease: {proc.communicate()}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_second_process_is_refused_and_the_finished_run_stays_untouched(tmp_path):
    home = tmp_path / "home"
    run_id = parse_overrides(RunConfig(), RUN).identity
    first = _heldout(home, *RUN)
    store = Store(home, readonly=True)
    holder = _wait_for_lease(store, run_id, first)
    assert holder["pid"] == first.pid
    first.send_signal(signal.SIGSTOP)
    try:
        second = _heldout(home, *RUN)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, (out, err)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"run {run_id} is being trained by pid {first.pid} on host" in err
        waiting = _heldout(home, *RUN, "--wait")  # waits for the holder instead
        time.sleep(3.0)
        assert waiting.poll() is None
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "was already done" in out, (out, err)

    record = store.get_run(run_id)
    assert record.status == "done" and record.step == 400
    assert store.lease_holder(run_id) is None  # released when it finished
    checkpoint = store.checkpoint_path(run_id)
    files = {p.name: _sha(p) for p in checkpoint.parent.iterdir()}
    metrics = store.metrics(run_id)
    assert sorted({s for s, _, _ in metrics}) == list(range(0, 401, 50))
    again = _heldout(home, *RUN)  # a later invocation: nothing is written again
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "was already done" in out
    assert {p.name: _sha(p) for p in checkpoint.parent.iterdir()} == files
    assert store.metrics(run_id) == metrics
    assert store.get_run(run_id) == record


def test_a_dead_holders_lease_is_taken_over(tmp_path):
    home = tmp_path / "home"
    run_id = parse_overrides(RunConfig(), RUN).identity
    first = _heldout(home, *RUN)
    store = Store(home, readonly=True)
    _wait_for_lease(store, run_id, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert store.lease_holder(run_id)["pid"] == first.pid  # nobody could release it
    second = _heldout(home, *RUN)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert store.get_run(run_id).status == "done"
    assert store.lease_holder(run_id) is None


def test_lease_held_stale_and_lost(store):
    cfg = tiny_config()
    store.create_run(cfg.identity, {"x": 1}, seed=0)
    held = store.acquire_lease(cfg.identity)
    with pytest.raises(RunLeased, match=f"pid {os.getpid()} on host"):
        Store(store.home).acquire_lease(cfg.identity)
    with pytest.raises(RunLeased):
        Store(store.home).acquire_lease(cfg.identity, wait=0.3)
    patient = Store(store.home, lease_stale_after=0.0)  # a silent holder is presumed gone
    taken = patient.acquire_lease(cfg.identity)
    assert taken.token != held.token
    with pytest.raises(LeaseLost, match="took over"):
        RunRecorder(store, cfg.identity, held).log(3, {"train/loss": 1.0})
    assert store.metrics(cfg.identity) == []  # the lost holder wrote nothing
    with pytest.raises(LeaseLost):
        store.record_checkpoint(cfg.identity, "0" * 64, 4, lease=held)
    assert store.checkpoint_digests(cfg.identity) is None
    store.release_lease(held)  # not its lease any more: nothing happens
    assert store.lease_holder(cfg.identity)["pid"] == os.getpid()
    patient.release_lease(taken)
    assert store.lease_holder(cfg.identity) is None


def test_a_finished_run_is_never_written_again(store):
    cfg = tiny_config()
    execute(cfg, store)
    record = store.get_run(cfg.identity)
    digests = store.checkpoint_digests(cfg.identity)
    with pytest.raises(RunFinishedError, match="is done"):
        store.start_run(cfg.identity, 0)
    with pytest.raises(RunFinishedError):
        store.record_checkpoint(cfg.identity, "0" * 64, 12)
    store.finish_run(cfg.identity, status="failed", seconds=5.0, step=3, error="late")
    store.set_checkpoint(cfg.identity, "elsewhere", 3)
    assert store.get_run(cfg.identity) == record
    assert store.checkpoint_digests(cfg.identity) == digests


def test_two_sweep_drivers_share_the_lease(store):
    """A run whose lease another driver holds is reported skipped and is not trained."""
    a, b = tiny_config(), tiny_config("seed=1")
    for cfg in (a, b):
        store.create_run(cfg.identity, {"x": cfg.seed}, cfg.seed)
    other_driver = store.acquire_lease(b.identity)
    outcomes = run_jobs([a, b], store, LocalExecutor(store.home, workers=1))
    by_id = {o.run_id: o for o in outcomes}
    assert by_id[a.identity].status == "done"
    assert by_id[b.identity].status == "skipped"
    assert f"pid {os.getpid()}" in by_id[b.identity].error
    assert store.get_run(b.identity).status == "queued" and store.metrics(b.identity) == []
    assert not store.checkpoint_path(b.identity).exists()
    assert store.lease_holder(a.identity) is None  # released once its run finished
    store.release_lease(other_driver)
