"""Corrupt checkpoints (issue 9, bug 3): digests in the store, the previous checkpoint kept,
a fallback with a warning, one line and `--restart` when nothing is usable."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from heldout.cli import main
from heldout.engine.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
)
from heldout.engine.trainer import Trainer
from heldout.run.execute import execute
from tests.conftest import tiny_config

CLI_RUN = ["task=modular", "task.p=23", "task.train_fraction=0.5", "task.val_fraction=0.1",
           "model=mlp", "model.hidden=[32]", "optimizer.lr=0.01", "steps=12", "eval_every=3",
           "checkpoint_every=4"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interrupted(store, monkeypatch, cfg, after: int = 9) -> None:
    """Train ``cfg`` and stop it right after the evaluation at step ``after``."""
    original = Trainer._evaluate

    def interrupt(self):
        original(self)
        if self.state.step == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, store)
    monkeypatch.setattr(Trainer, "_evaluate", original)


def test_save_keeps_the_previous_checkpoint_and_removes_orphans(tmp_path):
    path = tmp_path / "checkpoint.pt"
    seen = []
    save_checkpoint({"step": 1}, path, on_written=seen.append)
    orphan = tmp_path / ".checkpoint.pt.abc123.tmp"  # what a SIGKILL mid-save leaves
    orphan.write_bytes(b"half")
    other = tmp_path / ".other.pt.abc123.tmp"
    other.write_bytes(b"not ours")
    save_checkpoint({"step": 2}, path, on_written=seen.append)
    assert not orphan.exists() and other.exists()
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(previous_checkpoint(path))["step"] == 1
    assert previous_checkpoint(path).name == "checkpoint.prev.pt"
    assert seen == [_sha(previous_checkpoint(path)), _sha(path)]  # digests of what was written

    def refuse(sha256: str) -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):  # nothing replaced, nothing left
        save_checkpoint({"step": 3}, path, on_written=refuse)
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.pt.abc123.tmp", "checkpoint.prev.pt", "checkpoint.pt"]


def test_the_store_records_each_checkpoints_digest(store):
    cfg = tiny_config()
    execute(cfg, store)
    path = store.checkpoint_path(cfg.identity)
    assert path == store.run_dir(cfg.identity) / "checkpoint.pt"
    assert store.checkpoint_digests(cfg.identity) == {_sha(path),
                                                      _sha(previous_checkpoint(path))}
    assert torch.load(path, weights_only=True)["step"] == 12
    assert torch.load(previous_checkpoint(path), weights_only=True)["step"] == 8


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "random bytes": lambda data: os.urandom(len(data)),
    "one flipped byte": lambda data: data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_last_checkpoint_falls_back_to_the_previous(corruption, store, tmp_path,
                                                              monkeypatch):
    cfg = tiny_config()
    straight = execute(cfg, type(store)(tmp_path / "straight"))
    _interrupted(store, monkeypatch, cfg)  # checkpoints at steps 4 and 8
    last = store.checkpoint_path(cfg.identity)
    last.write_bytes(CORRUPTIONS[corruption](last.read_bytes()))
    with pytest.warns(CheckpointWarning, match=f"{last}.*using the previous one"):
        result = execute(cfg, store)
    assert result.resumed_from == 4 and result.status == "done"
    assert result.metrics == straight.metrics  # resumed from 4: the same run, value for value
    assert store.metrics(cfg.identity) == type(store)(tmp_path / "straight").metrics(
        cfg.identity)


def test_no_usable_checkpoint_is_one_line_naming_it_and_restart_trains_again(
        tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HELDOUT_HOME", str(home))
    from heldout.store import Store

    cfg = tiny_config()
    store = Store(home)
    _interrupted(store, monkeypatch, cfg)
    last = store.checkpoint_path(cfg.identity)
    last.write_bytes(b"")
    previous_checkpoint(last).write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="--restart"):
        load_checkpoint(last, digests=store.checkpoint_digests(cfg.identity))
    capsys.readouterr()
    assert main(["run", *CLI_RUN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(last) in err and str(previous_checkpoint(last)) in err and "--restart" in err
    record = store.get_run(cfg.identity)
    assert record.status == "failed" and store.lease_holder(cfg.identity) is None
    assert main(["resume", cfg.identity[:6]]) == 2
    assert "--restart" in capsys.readouterr().err
    assert main(["resume", cfg.identity[:6], "--restart"]) == 0
    assert store.get_run(cfg.identity).status == "done"
    assert load_checkpoint(last)["step"] == 12
    assert sorted({s for s, _, _ in store.metrics(cfg.identity)}) == [0, 3, 6, 9, 12]


def test_a_loadable_checkpoint_with_an_unrecorded_digest_is_not_trusted(store, monkeypatch):
    cfg = tiny_config()
    _interrupted(store, monkeypatch, cfg)
    last = store.checkpoint_path(cfg.identity)
    state = torch.load(last, weights_only=True)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    torch.save(state, last)  # whole and loadable, but not what training wrote
    with pytest.warns(CheckpointWarning, match="does not match its recorded sha256"):
        assert execute(cfg, store).resumed_from == 4
