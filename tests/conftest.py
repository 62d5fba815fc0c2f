"""Shared fixtures: a private store per test and a tiny, fast run config."""

from __future__ import annotations

import pytest

from heldout.config import RunConfig, parse_overrides
from heldout.store import Store


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HELDOUT_HOME", str(tmp_path / "home"))
    return Store(tmp_path / "home")


def tiny_config(*overrides: str) -> RunConfig:
    """Modular addition mod 23 with a small MLP: a few milliseconds per step."""
    return parse_overrides(RunConfig(), [
        "task=modular", "task.p=23", "task.train_fraction=0.5", "task.val_fraction=0.1",
        "model=mlp", "model.hidden=[32]", "optimizer.lr=0.01", "steps=12", "eval_every=3",
        "checkpoint_every=4", *overrides,
    ])
