"""Opposing signals (#20): planted groups in a synthetic loss table are found exactly; the
adapter's tracked losses round-trip through state_dict, torch.save and a resumed run."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.measures import evaluate
from heldout.measures.outliers import (
    OpposingSignals,
    group_gradient_cosine,
    opposing_signals,
    per_example_losses,
)

RISING = [3, 17, 40, 41, 99]  # planted: loss rises at the last transition
FALLING = [5, 6, 60, 61, 62, 150, 151]  # planted: loss falls at the last transition


def _planted_table(transitions: int = 5, n: int = 200, seed: int = 0) -> torch.Tensor:
    """Losses at transitions+1 evaluations: background noise of 0.01, the two planted groups
    alternating (+1 / -0.8, then the other way round) as in the paper's oscillation."""
    g = torch.Generator().manual_seed(seed)
    changes = 0.01 * torch.randn(transitions, n, generator=g, dtype=torch.float64)
    for t in range(transitions):
        sign = 1.0 if (transitions - 1 - t) % 2 == 0 else -1.0  # last transition: sign +1
        changes[t, RISING] += sign * 1.0
        changes[t, FALLING] -= sign * 0.8
    start = 2.0 + torch.rand(n, generator=g, dtype=torch.float64)
    return torch.cat([start[None], start + changes.cumsum(0)])


def test_planted_opposing_groups_are_found_exactly():
    found = opposing_signals(_planted_table())
    assert sorted(found.rising.tolist()) == RISING
    assert sorted(found.falling.tolist()) == FALLING
    assert found.rise == pytest.approx(1.0, abs=0.02)
    assert found.fall == pytest.approx(-0.8, abs=0.02)
    assert found.swing == pytest.approx(0.8, abs=0.02)
    assert found.correlation < -0.99  # they swing against each other at every transition


def test_groups_are_ordered_and_capped_by_top_k():
    table = _planted_table()
    delta = table[-1] - table[-2]
    found = opposing_signals(table, top_k=3)
    assert len(found.rising) == 3 and len(found.falling) == 3
    assert found.rising.tolist() == torch.argsort(delta, descending=True)[:3].tolist()
    assert found.falling.tolist() == torch.argsort(delta)[:3].tolist()


def test_threshold_zero_is_plain_top_and_bottom_k():
    g = torch.Generator().manual_seed(1)
    table = torch.rand(2, 50, generator=g)
    found = opposing_signals(table, top_k=4, threshold=0.0)
    delta = (table[1] - table[0]).double()
    assert found.rising.tolist() == torch.argsort(delta, descending=True)[:4].tolist()
    assert found.falling.tolist() == torch.argsort(delta)[:4].tolist()


def test_a_single_group_is_not_an_opposing_pair():
    table = _planted_table()
    table[-1, FALLING] = table[-2, FALLING]  # only the rising group moves now
    found = opposing_signals(table)
    assert sorted(found.rising.tolist()) == RISING
    assert len(found.falling) == 0 and found.fall == 0.0
    assert found.swing == 0.0 and math.isnan(found.correlation)


def test_earlier_transition_and_short_windows():
    table = _planted_table()
    found = opposing_signals(table, at=-2)  # one step earlier the roles are swapped
    assert sorted(found.rising.tolist()) == FALLING
    assert sorted(found.falling.tolist()) == RISING
    assert math.isnan(opposing_signals(table[-3:]).correlation)  # 2 transitions: undefined
    with pytest.raises(ValueError, match="T >= 2"):
        opposing_signals(table[:1])
    assert opposing_signals(torch.ones(3, 10)).swing == 0.0  # nothing moved


def test_per_example_losses_match_torch():
    logits, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 1, 2, 0])
    torch.testing.assert_close(per_example_losses(logits, y),
                               F.cross_entropy(logits.double(), y, reduction="none"))
    out, target = torch.randn(6, 2), torch.randn(6, 2)
    torch.testing.assert_close(per_example_losses(out, target),
                               ((out - target).double() ** 2).mean(1))


def test_group_gradient_cosine_of_opposing_and_agreeing_groups():
    torch.manual_seed(0)
    net = nn.Linear(3, 1, bias=False)
    x = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    with torch.no_grad():
        net.weight.zero_()
    y = torch.tensor([[1.0], [2.0], [-1.0], [-3.0]])  # the same feature, opposite targets
    assert group_gradient_cosine(net, x, y, torch.tensor([0, 1]),
                                 torch.tensor([2, 3])) == pytest.approx(-1.0)
    assert group_gradient_cosine(net, x, y, torch.tensor([0]),
                                 torch.tensor([1])) == pytest.approx(1.0)
    assert math.isnan(group_gradient_cosine(net, x, y, torch.tensor([0]),
                                            torch.tensor([], dtype=torch.long)))


# --- the adapter ----------------------------------------------------------------------------


def _logit_splits(table: torch.Tensor):
    """Per-evaluation data for nn.Identity: logits whose cross-entropy (class 0 of 2) equals
    the planted losses: z = [0, log(exp(loss) - 1)] gives -log softmax_0 = loss."""
    for losses in table:
        z1 = torch.log(torch.expm1(losses))
        x = torch.stack([torch.zeros_like(z1), z1], dim=1)
        yield {"train": (x, torch.zeros(len(losses), dtype=torch.long)),
               "test": (x[:10], torch.zeros(10, dtype=torch.long))}


def test_adapter_tracks_the_probe_and_finds_the_planted_groups():
    table = _planted_table()
    measure = OpposingSignals(probe_size=500, window=4)
    history = [evaluate(nn.Identity(), data, [measure]) for data in _logit_splits(table)]
    assert history[0] == {}  # nothing to compare with yet
    assert "train/opposing_correlation" not in history[2]  # 2 transitions
    last = history[-1]
    assert last["train/opposing_rising_size"] == len(RISING)
    assert last["train/opposing_falling_size"] == len(FALLING)
    assert last["train/opposing_rise"] == pytest.approx(1.0, abs=0.02)
    assert last["train/opposing_swing"] == pytest.approx(0.8, abs=0.02)
    assert last["train/opposing_correlation"] < -0.99
    assert not any(k.startswith("test/") for k in last)
    state = measure.state_dict()
    assert list(state) == ["losses.train"] and state["losses.train"].shape == (4, 200)
    torch.testing.assert_close(state["losses.train"], table[-4:], rtol=1e-9, atol=1e-12)


def test_adapter_state_round_trips_and_resumes_identically():
    tables = list(_logit_splits(_planted_table(transitions=7)))
    straight = OpposingSignals(probe_size=64, window=5, top_k=4, gradient_check=False)
    expected = [evaluate(nn.Identity(), d, [straight]) for d in tables]

    first = OpposingSignals(probe_size=64, window=5, top_k=4)
    for data in tables[:4]:
        evaluate(nn.Identity(), data, [first])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # tensors only: loads with weights_only
    buffer.seek(0)
    resumed = OpposingSignals(probe_size=64, window=5, top_k=4)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(resumed.state_dict().values(), first.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [evaluate(nn.Identity(), d, [resumed]) for d in tables[4:]] == expected[4:]
    # a deep copy carries the state too, and a fresh measure starts empty
    assert copy.deepcopy(resumed).state_dict().keys() == resumed.state_dict().keys()
    assert OpposingSignals().state_dict() == {}


def test_adapter_resume_through_the_trainer_is_exact(tmp_path):
    from heldout.engine import Trainer

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 5, generator=g), torch.randint(0, 3, (48,), generator=g)

    def make(path):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), (x, y),
                       max_steps=12, batch_size=8, eval_every=1, checkpoint_every=3,
                       checkpoint_path=path, eval_data={"train": (x, y)}, seed=1,
                       measures=[OpposingSignals(probe_size=32, window=4, top_k=3, threshold=0.0,
                                                 gradient_check=True, chunk_size=8)])

    straight = make(tmp_path / "straight.pt")
    straight.fit()
    first = make(tmp_path / "c.pt")
    first.state.max_steps = 6
    first.fit()
    second = make(tmp_path / "c.pt")
    assert second.resume() == 6
    second.fit()
    assert second.history == straight.history  # restored from the checkpoint, then identical
    assert "train/opposing_gradient_cosine" in straight.history[-1][1]
    assert "train/opposing_correlation" in straight.history[-1][1]


def test_adapter_refuses_a_mismatched_state():
    measure = OpposingSignals(probe_size=8)
    with pytest.raises(ValueError, match="unexpected state"):
        measure.load_state_dict({"previous": torch.zeros(3)})
    measure.load_state_dict({"losses.train": torch.zeros(2, 5)})
    data = {"train": (torch.randn(20, 3), torch.randint(0, 3, (20,)))}
    with pytest.raises(ValueError, match="probe has 8"):
        evaluate(nn.Identity(), data, [measure])


@pytest.mark.parametrize("bad", [{"probe_size": 1}, {"window": 1}, {"top_k": 0},
                                 {"threshold": -1.0}, {"chunk_size": 0}, {"loss": "l1"}])
def test_adapter_validates_its_fields(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        OpposingSignals(**bad)
