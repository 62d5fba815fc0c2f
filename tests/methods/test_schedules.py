"""Schedules and large-batch rules against their closed forms."""

import math
from dataclasses import dataclass, field

import pytest
import torch

from heldout.engine import Technique, Trainer
from heldout.methods import (
    BatchLRScaling,
    LRSchedule,
    cosine_annealing,
    cosine_power_annealing,
    regime_steps,
    sqrt_batch_scaling,
    step_decay,
)


def test_cosine_power_annealing_closed_form():
    assert cosine_power_annealing(0, 100, 0.8, 0.02) == pytest.approx(0.8)
    assert cosine_power_annealing(100, 100, 0.8, 0.02) == pytest.approx(0.02)
    # t = T/2: c = 1/2, (10^0.5 - 1) / 9
    assert cosine_power_annealing(50, 100, 1.0, 0.0, 10) == pytest.approx((10**0.5 - 1) / 9)
    for t in range(0, 101, 7):  # p = 1 is cosine annealing
        assert cosine_power_annealing(t, 100, 1.0, 0.1, 1) == pytest.approx(
            cosine_annealing(t, 100, 1.0, 0.1))
        # a larger p is never above plain cosine: it decays faster early
        assert cosine_power_annealing(t, 100, 1.0, 0.0, 10) <= cosine_annealing(t, 100, 1.0) + 1e-12
    with pytest.raises(ValueError, match="power must be >= 1"):
        cosine_power_annealing(0, 10, 1.0, power=0.5)


def test_step_decay_and_large_batch_rules():
    assert [step_decay(t, (3, 6), 1.0, 0.1) for t in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert sqrt_batch_scaling(0.1, 4096, 128) == pytest.approx(0.1 * math.sqrt(32))
    # 4,000 examples, 10 epochs: batch 128 -> 32 steps/epoch; batch 2048 -> 2 steps/epoch
    assert regime_steps(10, 4000, 128, 128, adapt=False) == 320
    assert regime_steps(10, 4000, 2048, 128, adapt=False) == 20
    assert regime_steps(10, 4000, 2048, 128, adapt=True) == 320


@dataclass
class LRRecorder(Technique):
    seen: list = field(default_factory=list)

    def on_batch_start(self, state):
        self.seen.append(state.optimizer.param_groups[0]["lr"])


def _trainer(techniques, steps=10, batch_size=None, n=32):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(n, 3), torch.randint(0, 2, (n,))
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), (x, y),
                   max_steps=steps, techniques=techniques, batch_size=batch_size)


def _fit(techniques, steps=10, batch_size=None, n=32):
    trainer = _trainer(techniques, steps, batch_size, n)
    trainer.fit()
    return trainer


def test_lr_schedule_sets_the_lr_of_every_step():
    recorder = LRRecorder()
    _fit([LRSchedule(kind="cosine_power", power=10, min_factor=0.1), recorder])
    expected = [cosine_power_annealing(t, 10, 0.5, 0.05, 10) for t in range(10)]
    assert recorder.seen == pytest.approx(expected)


def test_lr_schedule_warmup_then_step():
    recorder = LRRecorder()
    _fit([LRSchedule(kind="step", milestones=(0.5,), gamma=0.1, warmup_steps=2), recorder])
    # warm-up 1/2, 2/2; then 8 steps with a milestone at round(0.5 * 8) = 4
    assert recorder.seen == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.05, 0.05, 0.05,
                                           0.05])


def test_batch_lr_scaling_applies_once_and_survives_resume(tmp_path):
    recorder = LRRecorder()
    trainer = _fit([BatchLRScaling(base_batch_size=2), recorder], steps=3, batch_size=8)
    assert recorder.seen == pytest.approx([0.5 * 2.0] * 3)  # sqrt(8 / 2) = 2
    trainer.save_checkpoint(tmp_path / "c.pt")
    fresh = _trainer([BatchLRScaling(base_batch_size=2), LRRecorder()], steps=5, batch_size=8)
    assert fresh.resume(tmp_path / "c.pt") == 3
    fresh.fit()
    assert fresh.techniques[1].seen == pytest.approx([1.0, 1.0])  # not scaled a second time
