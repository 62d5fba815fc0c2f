"""Shared fixtures: a private store per test and a tiny, fast run config."""

from __future__ import annotations

import pytest
import torch

from heldout.config import RunConfig, parse_overrides
from heldout.core.inputs import InputSpec
from heldout.models.mlp import mlp_network
from heldout.models.transformer import TransformerNetwork
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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors: one thread per test process is fastest and steady on a shared machine
    (pytest-xdist runs one process per core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_resume_is_exact(cfg: RunConfig, tmp_path, monkeypatch, stop_after: int = 9,
                           resumed_from: int = 8) -> list:
    """Run ``cfg`` unbroken, and again interrupted right after the evaluation at
    ``stop_after``; rerunning the interrupted one must resume from the checkpoint at
    ``resumed_from`` and end with the same metric history, value for value."""
    from heldout.engine.trainer import Trainer
    from heldout.run.execute import execute

    straight = Store(tmp_path / "straight")
    execute(cfg, straight)
    broken = Store(tmp_path / "broken")
    original = Trainer._evaluate

    def interrupt(self):
        original(self)
        if self.state.step == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, broken)
    assert broken.get_run(cfg.identity).status == "failed"
    monkeypatch.setattr(Trainer, "_evaluate", original)
    result = execute(cfg, broken)
    assert result.resumed_from == resumed_from
    history = straight.metrics(cfg.identity)
    assert broken.metrics(cfg.identity) == history
    return history


# ----------------------------------------------------------------- architecture techniques
@pytest.fixture
def arch():
    """Mix-LN, µP and the grad-norm callback's public names in one namespace."""
    import importlib
    import types

    names = {}
    for module in ("heldout.methods.mix_ln", "heldout.methods.mup",
                   "heldout.callbacks.grad_norms"):
        mod = importlib.import_module(module)
        names.update({name: getattr(mod, name) for name in mod.__all__})
    return types.SimpleNamespace(**names)


TOKENS = InputSpec("tokens", (3,), vocab=7)


def transformer(norms, d_model=16, seed=0):
    torch.manual_seed(seed)
    return TransformerNetwork(TOKENS, 7, norms=norms, d_model=d_model, n_heads=2)


def mlp(hidden, seed=0, in_dim=16, classes=10):
    torch.manual_seed(seed)
    return mlp_network(InputSpec("continuous", (in_dim,)), classes, hidden=tuple(hidden))
