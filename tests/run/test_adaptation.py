"""Adapting a finished run: records, before/after metrics, exact resume after a kill, the CLI."""

from __future__ import annotations

import pytest
import torch

from heldout.adapt import Tent
from heldout.cli import main
from heldout.config import ConfigError, RunConfig, parse_overrides
from heldout.run.adaptation import AdaptConfig, adapt, adapt_stream
from heldout.run.execute import execute
from heldout.store import Store


def digits_run(store: Store) -> str:
    cfg = parse_overrides(RunConfig(), [
        "task=digits_shift", "task.held_out=[2,3]", "model=mlp", "model.hidden=[32]",
        "model.batch_norm=true", "steps=40", "eval_every=40", "checkpoint_every=40",
        "optimizer.lr=0.01", "measures=[accuracy]"])
    execute(cfg, store)
    return cfg.identity


@pytest.fixture
def run_id(store):
    return digits_run(store)


def test_adaptation_is_recorded_with_before_and_after_metrics(store, run_id):
    cfg = AdaptConfig(run_id, "bn_adapt", ("test@rot60", "test@rot90"), batch_size=32)
    result = adapt(cfg, store)
    assert set(result.after) == set(result.before) == {
        f"test@{d}/{m}" for d in ("rot60", "rot90") for m in ("accuracy", "ece")}
    # before = the source model on the domain, as the run's own evaluation measured it
    assert result.before["test@rot90/accuracy"] == pytest.approx(
        store.final_metrics(run_id)["test@rot90/accuracy"])
    assert result.after != result.before  # BN statistics of the test batches differ
    row = store.get_adaptation(result.id)
    assert row["status"] == "done" and row["source_run"] == run_id
    assert row["config"]["adapter"] == {"name": "bn_adapt", "episodic": False}
    # the source adapter changes nothing: after == before
    source = adapt(AdaptConfig(run_id, "source", ("test@rot90",)), store)
    assert source.after == pytest.approx(source.before)
    # a done adaptation is read back, not run again
    assert adapt(cfg, store) == result
    assert [a["id"] for a in store.adaptations(run_id)] == [result.id, source.id]


def test_killed_adaptation_resumes_exactly(store, run_id, monkeypatch, tmp_path):
    cfg = AdaptConfig(run_id, {"name": "tent", "lr": 0.01}, ("test@rot60", "test@rot90"),
                      batch_size=8, checkpoint_every=2)
    calls = {"n": 0, "kill_at": None}
    original = Tent.forward

    def counted(self, x):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(Tent, "forward", counted)
    straight = adapt(cfg, store)
    total, calls["n"], calls["kill_at"] = calls["n"], 0, 7
    # the same adaptation in a second store, killed in its 7th batch, then run again
    other = Store(tmp_path / "second")
    assert digits_run(other) == run_id
    with pytest.raises(KeyboardInterrupt):
        adapt(cfg, other)
    assert other.adaptations(run_id)[0]["status"] == "failed"
    calls["n"], calls["kill_at"] = 0, None
    resumed = adapt(cfg, other)
    assert resumed.after == straight.after  # bit for bit, same predictions
    assert calls["n"] == total - 6  # resumed after the checkpoint at batch 6


def test_adapt_stream_resumes_from_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3)).eval()
    domains = [torch.randn(50, 5), torch.randn(30, 5) + 1]
    straight = adapt_stream(Tent(net, lr=0.05), domains, batch_size=8)
    path = tmp_path / "stream.pt"
    adapter = Tent(net, lr=0.05)
    original, count = adapter.forward, {"n": 0}

    def killed(x):
        count["n"] += 1
        if count["n"] == 9:
            raise KeyboardInterrupt
        return original(x)

    adapter.forward = killed
    with pytest.raises(KeyboardInterrupt):
        adapt_stream(adapter, domains, batch_size=8, checkpoint=path, checkpoint_every=3)
    fresh = Tent(net, lr=0.05)
    seen = {"n": 0}
    inner = fresh.forward

    def counted(x):
        seen["n"] += 1
        return inner(x)

    fresh.forward = counted
    resumed = adapt_stream(fresh, domains, batch_size=8, checkpoint=path, checkpoint_every=3)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert seen["n"] == 4  # killed in the second domain: resumed at its start, 4 batches


def test_episodic_adapter_resets_at_each_domain():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3)).eval()
    x = torch.randn(32, 5)
    carried = adapt_stream(Tent(net, lr=0.1), [x, x], batch_size=8)
    episodic = adapt_stream(Tent(net, lr=0.1, episodic=True), [x, x], batch_size=8)
    assert torch.equal(episodic[0], episodic[1])  # the second domain starts from the source
    assert not torch.equal(carried[0], carried[1])


def test_bad_adaptation_configs_say_what_is_wrong(store, run_id):
    with pytest.raises(ConfigError, match="unknown adapter 'nope'; valid adapters: .*tent"):
        AdaptConfig(run_id, "nope", ("test@rot90",))
    with pytest.raises(ConfigError, match="alpha"):
        AdaptConfig(run_id, {"name": "alpha_bn", "alpha": 2}, ("test@rot90",))
    with pytest.raises(ConfigError, match="batch_size"):
        AdaptConfig(run_id, "tent", ("test@rot90",), batch_size=0)
    with pytest.raises(ConfigError, match="domains"):
        AdaptConfig(run_id, "tent", ())
    with pytest.raises(KeyError, match="test@rot45.*test@rot90"):
        adapt(AdaptConfig(run_id, "tent", ("test@rot45",)), store)


def test_cli_adapt_prints_before_and_after(store, run_id, capsys):
    code = main(["adapt", run_id[:8], "--adapter", "alpha_bn", "--domain", "test@rot90",
                 "--set", "alpha=0.5", "--batch-size", "16"])
    out = capsys.readouterr().out
    assert code == 0 and "test@rot90/accuracy" in out and "before" in out
    assert store.adaptations(run_id)[0]["config"]["adapter"]["alpha"] == 0.5
    assert main(["runs", "show", run_id]) == 0
    assert "adapted  a" in capsys.readouterr().out
    assert main(["adapt", run_id, "--adapter", "alpha_bn", "--domain", "test@nowhere"]) == 2
    assert "no split 'test@nowhere'" in capsys.readouterr().err
    assert main(["adapt", run_id, "--adapter", "alpha_bn", "--domain", "test@rot90",
                 "--set", "alpha"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
