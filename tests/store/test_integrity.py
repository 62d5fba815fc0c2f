"""A damaged store (issue 9, bug 4), a read-only store (bug 5), `store check` / `store
backup`, and run-id prefixes that are not SQL patterns."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from heldout.cli import main
from heldout.run.execute import execute
from heldout.store import Store, StoreError
from tests.conftest import tiny_config

TINY = ["task=modular", "task.p=23", "model.hidden=[16]", "steps=3", "eval_every=3"]
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def home_with_runs(tmp_path) -> Path:
    home = tmp_path / "home"
    store = Store(home)
    for seed in range(3):
        execute(tiny_config(f"seed={seed}", "steps=3"), store)
    return home


def _fail_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _scribble(path: Path) -> None:
    """Random bytes over every page after the first (the schema page stays whole)."""
    data = path.read_bytes()
    path.write_bytes(data[:4096] + os.urandom(len(data) - 4096))


@pytest.mark.parametrize("damage", [_truncate, _scribble])
def test_a_damaged_store_is_one_line_for_every_command(damage, home_with_runs, capsys):
    path = home_with_runs / "store.sqlite"
    assert not Path(f"{path}-wal").exists()  # closed cleanly: all in the main file
    damage(path)
    before = path.read_bytes()
    home = ["--home", str(home_with_runs)]
    for argv in (["runs", "ls"], ["runs", "export"], ["report", "abc"],
                 ["run", *TINY], ["sweep", "status", "x"], ["claims", "list"]):
        err = _fail_line(capsys, home + argv)
        assert str(path) in err and "heldout store check" in err, (argv, err)
    assert path.read_bytes() == before  # nothing was written into it
    assert main(home + ["store", "check"]) == 1
    problems = capsys.readouterr().out
    assert problems.strip() and problems.strip() != "ok"


def test_store_check_and_backup(home_with_runs, tmp_path, capsys):
    home = ["--home", str(home_with_runs)]
    assert main(home + ["store", "check"]) == 0
    assert capsys.readouterr().out == "ok\n"
    copy = tmp_path / "copy.sqlite"
    assert main(home + ["store", "backup", str(copy)]) == 0
    assert str(copy) in capsys.readouterr().out
    original = Store(home_with_runs)
    restored_home = tmp_path / "restored"
    restored_home.mkdir()
    shutil.copy(copy, restored_home / "store.sqlite")
    restored = Store(restored_home)
    assert [r.id for r in restored.runs()] == [r.id for r in original.runs()]
    assert all(restored.metrics(r.id) == original.metrics(r.id) for r in original.runs())
    err = _fail_line(capsys, home + ["store", "backup", str(copy)])  # never overwrites
    assert f"{copy} exists" in err
    err = _fail_line(capsys, home + ["store", "backup", str(tmp_path / "no" / "b.sqlite")])
    assert "is not a directory" in err


def test_the_check_runs_after_an_unclean_shutdown(home_with_runs):
    writers = home_with_runs / ".writers"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    marker = writers / f"{dead}@{os.uname().nodename}"
    marker.touch()  # a writer that died with the store open
    Store(home_with_runs)  # sound: opens, and the dead writer's marker is cleared
    assert not marker.exists()
    assert (writers / f"{os.getpid()}@{os.uname().nodename}").exists()  # ours, while open

    # damage the metrics' pages only: reading the runs table still works, the check does not
    path = home_with_runs / "store.sqlite"
    with sqlite3.connect(path) as db:
        pages = [p for (p,) in db.execute(
            "SELECT pageno FROM dbstat WHERE name = 'metrics' AND pagetype = 'leaf'")]
    data = bytearray(path.read_bytes())
    for page in pages:
        data[(page - 1) * 4096 + 8: page * 4096] = os.urandom(4096 - 8)
    path.write_bytes(bytes(data))
    marker.touch()
    with pytest.raises(StoreError, match="fails its integrity check after an unclean shutdown"):
        Store(home_with_runs)
    assert marker.exists()  # still unclean: every opening checks until it is repaired


def test_read_commands_open_the_store_read_only(home_with_runs, capsys):
    path = home_with_runs / "store.sqlite"
    with sqlite3.connect(path) as db:  # a store from before leases: reads must not migrate it
        db.execute("DROP TABLE leases")
        db.execute("DROP TABLE checkpoints")
    shutil.rmtree(home_with_runs / ".writers")
    before = path.read_bytes()
    run_id = Store(home_with_runs, readonly=True).runs()[0].id
    home = ["--home", str(home_with_runs)]
    for argv in (["runs", "ls"], ["runs", "show", run_id], ["runs", "export"],
                 ["runs", "export", "--format", "json"], ["claims", "list"]):
        assert main(home + argv) == 0, argv
    assert run_id in capsys.readouterr().out
    assert main(home + ["report", run_id, "--out", str(home_with_runs.parent / "r")]) == 0
    assert path.read_bytes() == before
    assert not (home_with_runs / ".writers").exists()
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "leases" not in tables and "checkpoints" not in tables
    missing = home_with_runs.parent / "nothing-here"
    assert main(["--home", str(missing), "runs", "ls"]) == 0
    assert not missing.exists()  # reading an empty home creates nothing


def _as_nobody(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
         "-m", "heldout.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC), "HOME": "/"})


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to run a command as an unprivileged user")
def test_a_read_only_home_can_be_read():
    """As a user who may not write the directory (root ignores file modes)."""
    base = Path(tempfile.mkdtemp(prefix="heldout-ro-"))
    try:
        base.chmod(0o755)
        home = base / "home"
        store = Store(home)
        execute(tiny_config("steps=3"), store)
        run_id = store.runs()[0].id
        for path in [home, *home.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        assert not Path(f"{store.path}-wal").exists()
        for args in (["runs", "ls"], ["runs", "show", run_id[:5]]):
            done = _as_nobody(home, *args)
            assert done.returncode == 0, (args, done.stderr)
            assert run_id in done.stdout
        report = base / "report"
        report.mkdir(mode=0o777)
        report.chmod(0o777)
        done = _as_nobody(home, "report", run_id, "--out", str(report))
        assert done.returncode == 0, done.stderr
        done = _as_nobody(home, "run", *TINY)  # a write: one line naming the store
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and str(home) in done.stderr
        assert sorted(p.name for p in home.iterdir()) == [".writers", "runs", "store.sqlite"]
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(base)


def test_run_id_prefixes_are_not_patterns(store, capsys):
    for seed in range(2):
        execute(tiny_config(f"seed={seed}", "steps=3"), store)
    for pattern in ("%", "_", "%%", "_" * 12, "\\"):
        with pytest.raises(KeyError, match="no run"):
            store.get_run(pattern)
        err = _fail_line(capsys, ["--home", str(store.home), "runs", "show", pattern])
        assert "no run" in err
    run_id = store.runs()[0].id
    assert store.get_run(run_id[:4]).id == run_id
    store.record_sweep("abc_def", "s", {}, [])
    store.record_sweep("abcXdef", "t", {}, [])
    assert store.get_sweep("abc_").get("id") == "abc_def"
    with pytest.raises(KeyError, match="no sweep"):
        store.get_sweep("%")
