"""Mixed precision: the training forward under bfloat16 autocast, everything else float32."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.config import ConfigError, RunConfig, canonical_json, parse_overrides
from heldout.engine import Trainer
from heldout.measures import Accuracy, Loss
from heldout.methods import SharpnessAware
from heldout.run.execute import execute
from heldout.store import Store
from heldout.vectorize.trainer import can_vectorize


def _data(n=64, d=5, k=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _trainer(precision, steps=5, **kwargs):
    x, y = _data()
    model = _model()
    return Trainer(model, torch.optim.AdamW(model.parameters(), lr=0.01), (x, y),
                   max_steps=steps, eval_data={"train": (x, y)}, measures=[Accuracy(), Loss()],
                   precision=precision, **kwargs)


def test_the_training_forward_is_the_bf16_computation_and_the_loss_sees_float32():
    seen = []

    def loss_fn(logits, targets):
        seen.append(logits)
        return F.cross_entropy(logits, targets)

    trainer = _trainer("bf16-mixed", steps=1, loss_fn=loss_fn)
    x, _ = _data()
    first, second = (m.weight.detach().clone() for m in trainer.model if isinstance(m, nn.Linear))
    b1, b2 = (m.bias.detach().clone() for m in trainer.model if isinstance(m, nn.Linear))
    trainer.fit()
    # the same network by hand: bf16 operands for each Linear, ReLU in bf16, float32 logits
    bf = torch.bfloat16
    hidden = torch.relu(F.linear(x.to(bf), first.to(bf), b1.to(bf)))
    expected = F.linear(hidden, second.to(bf), b2.to(bf)).float()
    (logits,) = seen
    assert logits.dtype == torch.float32
    assert torch.equal(logits.detach(), expected)
    full = F.linear(torch.relu(F.linear(x, first, b1)), second, b2)
    assert not torch.equal(logits.detach(), full)  # the forward really ran in bf16
    assert (logits.detach() - full).abs().max() < 0.05


def test_weights_gradients_and_optimizer_state_stay_float32():
    trainer = _trainer("bf16-mixed", steps=3)
    trainer.fit()
    for param in trainer.model.parameters():
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32
        state = trainer.optimizer.state[param]
        assert state["exp_avg"].dtype == torch.float32


def test_evaluation_runs_in_float32():
    mixed, full = _trainer("bf16-mixed", steps=2), _trainer("float32", steps=2)
    mixed.fit()
    full.fit()
    assert mixed.history[0] == full.history[0]  # step 0: same weights, evaluated in float32
    assert mixed.history[-1] != full.history[-1]  # after bf16 training steps they differ
    with torch.no_grad():
        x, y = _data()
        loss = F.cross_entropy(mixed.model(x), y).item()
    assert mixed.history[-1][1]["train/loss"] == pytest.approx(loss, abs=1e-6)


def test_mixed_precision_trains_and_resumes_exactly(tmp_path):
    uninterrupted = _trainer("bf16-mixed", steps=40, techniques=[SharpnessAware()])
    uninterrupted.fit()
    losses = [m["train/loss"] for _, m in uninterrupted.history]
    assert losses[-1] < 0.8 * losses[0]
    first = _trainer("bf16-mixed", steps=40, techniques=[SharpnessAware()], checkpoint_every=7,
                     checkpoint_path=tmp_path / "c.pt")
    first.state.max_steps = 21
    first.fit()
    second = _trainer("bf16-mixed", steps=40, techniques=[SharpnessAware()],
                      checkpoint_every=7, checkpoint_path=tmp_path / "c.pt")
    assert second.resume() == 21
    second.fit()
    for a, b in zip(second.model.parameters(), uninterrupted.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # the first leg also evaluated at its last step, 21
    assert [h for h in second.history if h[0] != 21] == uninterrupted.history


def test_an_unknown_precision_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: float32, bf16-mixed"):
        _trainer("fp8")
    with pytest.raises(ConfigError, match="precision: expected one of 'float32', 'bf16-mixed'"):
        parse_overrides(RunConfig(), ["precision=16"])


def test_the_default_precision_leaves_run_ids_unchanged():
    # ids recorded before the precision field existed (computed on the code before it)
    assert RunConfig().identity == "b172f144a7d9"
    assert parse_overrides(RunConfig(), ["task.p=97", "techniques=sam"]).identity == \
        "cbd23fb5d7a9"
    mixed = parse_overrides(RunConfig(), ["precision=bf16-mixed"])
    assert "precision" not in json.loads(canonical_json(RunConfig()))
    assert json.loads(canonical_json(mixed))["precision"] == "bf16-mixed"
    assert mixed.identity != RunConfig().identity


def test_a_mixed_precision_run_through_the_store_and_no_vectorized_group(tmp_path):
    cfg = parse_overrides(RunConfig(), ["precision=bf16-mixed", "steps=20", "task.p=11",
                                        "eval_every=10", "checkpoint_every=10"])
    result = execute(cfg, Store(tmp_path))
    assert result.status == "done"
    assert Store(tmp_path).get_run(cfg.identity).config["precision"] == "bf16-mixed"
    ok, reason = can_vectorize([cfg, parse_overrides(cfg, ["seed=1"])])
    assert not ok and "precision 'bf16-mixed' is not supported" in reason
