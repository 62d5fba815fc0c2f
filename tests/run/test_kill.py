"""SIGKILL at a random moment: resumed runs end bit-identical; the store stays whole."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from heldout.store import Store

RUN = ["run", "task=modular", "task.p=47", "model.hidden=[96,96]", "optimizer.lr=0.003",
       "steps=150", "eval_every=5", "checkpoint_every=7", "batch_size=256",
       "techniques=sam,ema"]


def _heldout(home: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "HELDOUT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "heldout.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run_to_end(home: Path, *args: str) -> str:
    proc = _heldout(home, *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def test_sigkilled_run_resumes_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    _run_to_end(straight, *RUN)
    (run_id,) = [r.id for r in Store(straight).runs()]

    killed = tmp_path / "killed"
    rng = random.Random(os.getpid())
    for _ in range(2):  # kill twice, at random moments after a checkpoint exists
        proc = _heldout(killed, *RUN)
        checkpoint = killed / "runs" / run_id / "checkpoint.pt"
        deadline = time.time() + 120
        while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    record = Store(killed).get_run(run_id)
    out = _run_to_end(killed, *RUN)
    if record.status != "done":  # the kills landed mid-run, as intended
        assert "resumed run" in out
    a, b = Store(straight), Store(killed)
    assert b.get_run(run_id).status == "done"
    assert a.metrics(run_id) == b.metrics(run_id)  # every value, every step, bit for bit
    final_a = torch.load(straight / "runs" / run_id / "checkpoint.pt", weights_only=True)
    final_b = torch.load(killed / "runs" / run_id / "checkpoint.pt", weights_only=True)
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key])


def test_resume_command_continues_a_killed_run(tmp_path):
    home = tmp_path / "home"
    proc = _heldout(home, *RUN)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        runs = list((home / "runs").glob("*/checkpoint.pt")) if (home / "runs").exists() else []
        if runs:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (record,) = Store(home).runs()
    assert record.status == "running"  # killed: nobody could mark it
    out = _run_to_end(home, "resume", record.id[:6])
    assert "resumed run" in out
    assert Store(home).get_run(record.id).status == "done"


WRITER = textwrap.dedent("""
    import sys
    from heldout.store import Store
    store = Store(sys.argv[1])
    i = 0
    while True:
        run = f"run{i:05d}"
        store.create_run(run, {"i": i}, seed=i)
        store.log_metrics(run, [(s, "train", f"m{k}", float(s * k)) for s in range(20)
                                for k in range(25)])
        i += 1
""")


def test_killed_writer_leaves_no_half_written_run(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(home)])
    deadline = time.time() + 60
    while time.time() < deadline and not (home / "store.sqlite").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # let it write a few runs, then kill it mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(home)
    assert store.integrity_check() == "ok"
    runs = store.runs()
    assert runs, "the writer wrote nothing before it was killed"
    for record in runs:
        n = len(store.metrics(record.id))
        assert n in (0, 500), f"{record.id} has a partial metric batch ({n} rows)"
