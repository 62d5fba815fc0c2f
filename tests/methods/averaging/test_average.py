"""Oracle tests of the one weight-average holder and its three rules (EMA, SWA, Gaussian): each
against a hand computation (exact binary fractions, or NumPy over the saved snapshots), against
``torch.optim.swa_utils.AveragedModel`` where the holder reuses its rules, and the loading of
the checkpoint formats written before the holder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from heldout.core.state import State
from heldout.methods.averaging import (
    SWA,
    GaussianAveraging,
    GaussianRule,
    GaussianTrajectoryAverage,
    StochasticWeightAverage,
    WeightAverage,
    ema_rule,
    gaussian_weights,
    swa_rule,
)
from heldout.methods.averaging.ema import ExponentialMovingAverage


def _bn_model(seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).to(dtype)


def _trajectory(model: nn.Module, points: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``points`` snapshots of ``model``, each moving every floating entry (parameters and
    BatchNorm statistics) at random and setting the batch counter to k; ``model`` ends at the
    last."""
    gen = torch.Generator().manual_seed(seed)
    snapshots = []
    for k in range(points):
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            model[1].num_batches_tracked.fill_(k)
        snapshots.append(copy.deepcopy(model.state_dict()))
    return snapshots


def _params(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def test_ema_rule_two_steps_by_hand():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    average = WeightAverage(model, ema_rule(0.75))
    for weights in ([5.0, -3.0], [-1.0, 7.0]):
        with torch.no_grad():
            model.weight.copy_(torch.tensor([weights]))
        average.update(model)
    # 0.75·(1, 2) + 0.25·(5, −3) = (2, 0.75); 0.75·(2, 0.75) + 0.25·(−1, 7) = (1.25, 2.3125)
    assert torch.equal(average.module.weight, torch.tensor([[1.25, 2.3125]]))
    assert average.updates == 2
    assert set(average.state_dict()) == {"module", "updates"}  # the vectorized trainer's format


def test_swa_rule_is_the_arithmetic_mean_of_the_snapshots():
    model = _bn_model(0)
    average = WeightAverage(model, swa_rule)
    snapshots = []
    for snapshot in _trajectory(model, 5):
        model.load_state_dict(snapshot)
        average.update(model)
        snapshots.append(snapshot)
    got = average.module.state_dict()
    for name in _params(model):
        mean = np.mean([s[name].numpy() for s in snapshots], axis=0)
        np.testing.assert_allclose(got[name].numpy(), mean, rtol=1e-14, atol=1e-15)
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):  # copied
        assert torch.equal(got[name], snapshots[-1][name])
    assert average.updates == 5


@pytest.mark.parametrize("num,center,sigma", [(6, 3.0, 1.5), (8, None, None), (40, 35.0, 0.4)])
def test_gaussian_rule_is_the_closed_form_weighted_mean(num, center, sigma):
    """(40, 35, 0.4): the early weights underflow to 0 against the later ones."""
    model = _bn_model(1)
    average = GaussianTrajectoryAverage(model, num, center, sigma)
    snapshots = []
    for snapshot in _trajectory(model, num, seed=1):
        model.load_state_dict(snapshot)
        average.update(model)
        snapshots.append(snapshot)
    w = gaussian_weights(num, center, sigma).numpy()
    got = average.module.state_dict()
    for name, value in snapshots[0].items():
        if value.is_floating_point():  # parameters and BatchNorm statistics
            closed = sum(wk * s[name].numpy() for wk, s in zip(w, snapshots, strict=True))
            np.testing.assert_allclose(got[name].numpy(), closed, rtol=1e-12, atol=1e-12)
    assert int(got["1.num_batches_tracked"]) == num - 1  # a counter is copied
    before = copy.deepcopy(got)
    with torch.no_grad():
        model[1].num_batches_tracked.fill_(99)
    with pytest.raises(RuntimeError, match="all"):
        average.update(model)
    after = average.module.state_dict()  # a refused update leaves every entry as it was
    assert all(torch.equal(after[k], before[k]) for k in before) and average.updates == num


def test_swa_and_ema_holders_agree_with_averaged_model():
    """Where the holder reuses AveragedModel's rules, the two hold the same average. The EMA
    holder starts from the weights at construction: AveragedModel's first update copies, so it
    is given those weights first."""
    model = _bn_model(2, torch.float32)
    swa, ema = WeightAverage(model, swa_rule), WeightAverage(model, ema_rule(0.9))
    torch_swa = AveragedModel(model)
    torch_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    torch_ema.update_parameters(model)
    snapshots = []
    for snapshot in _trajectory(model, 4, seed=2):
        model.load_state_dict(snapshot)
        for average in (swa, ema):
            average.update(model)
        for average in (torch_swa, torch_ema):
            average.update_parameters(model)
        snapshots.append(snapshot)
    assert int(torch_swa.n_averaged) == swa.updates == 4
    for ours, theirs in ((swa, torch_swa), (ema, torch_ema)):
        for a, b in zip(ours.module.state_dict().values(), theirs.module.state_dict().values(),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # and both are the hand-computed averages
    hand_ema = {n: p.detach().clone() for n, p in _bn_model(2, torch.float32).named_parameters()}
    for s in snapshots:
        hand_ema = {n: 0.9 * v + 0.1 * s[n] for n, v in hand_ema.items()}
    for name in _params(model):
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        torch.testing.assert_close(swa.module.state_dict()[name], mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ema.module.state_dict()[name], hand_ema[name], rtol=1e-6,
                                   atol=1e-6)


def test_swa_loads_its_format_of_before_the_holder():
    """Before the holder, SWA counted its points under "averaged" and its technique added
    "bn_stale": such a checkpoint resumes the average exactly."""
    model = _bn_model(3)
    reference = StochasticWeightAverage(model)
    snapshots = _trajectory(model, 3, seed=3)
    for snapshot in snapshots:
        model.load_state_dict(snapshot)
        reference.update(model)
    old = {"module": copy.deepcopy(reference.module.state_dict()), "averaged": 3,
           "bn_stale": True}
    technique = SWA(start_fraction=0.0, every=1)
    technique.load_state_dict(old)  # before the fit: kept until the holder exists
    state = State(model=_bn_model(4), optimizer=None, max_steps=10)
    technique.on_fit_start(state)
    assert technique.average.averaged == 3
    assert technique.state_dict()["bn_stale"] is True
    reference.update(model)
    technique.average.update(model)
    for a, b in zip(reference.module.state_dict().values(),
                    technique.average.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert set(technique.state_dict()) == {"module", "updates", "bn_stale"}


def test_gaussian_loads_its_format_of_before_the_holder():
    """Before the holder, the Gaussian average counted its points under "points"."""
    model = _bn_model(5)
    snapshots = _trajectory(model, 6, seed=5)
    whole = GaussianTrajectoryAverage(_bn_model(5), 6, 3.0, 1.5)
    half = GaussianTrajectoryAverage(_bn_model(5), 6, 3.0, 1.5)
    for k, snapshot in enumerate(snapshots):
        model.load_state_dict(snapshot)
        whole.update(model)
        if k < 3:
            half.update(model)
    rule = half.rule.state_dict()
    old = {"module": copy.deepcopy(half.module.state_dict()), "points": 3,
           "log_total": rule["log_total"], "num_points": 6, "center": 3.0, "sigma": 1.5}
    technique = GaussianAveraging(center_fraction=0.5, sigma_fraction=0.25)
    technique.load_state_dict(old)
    technique.on_fit_start(State(model=_bn_model(6), optimizer=None, max_steps=6))
    resumed = technique.average
    assert resumed.points == 3 and resumed.num_points == 6
    for snapshot in snapshots[3:]:
        model.load_state_dict(snapshot)
        resumed.update(model)
    for a, b in zip(whole.module.state_dict().values(), resumed.module.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert set(resumed.state_dict()) == {"module", "updates", "log_total", "num_points",
                                         "center", "sigma"}


def test_ema_state_round_trips_through_the_holder_format():
    model = _bn_model(7)
    ema = ExponentialMovingAverage(model, decay=0.5)
    _trajectory(model, 2)
    ema.update(model)
    restored = ExponentialMovingAverage(_bn_model(8), decay=0.5)
    restored.load_state_dict(copy.deepcopy(ema.state_dict()))
    assert restored.updates == 1
    with pytest.raises(KeyError, match="no update count"):
        restored.load_state_dict({"module": ema.module.state_dict()})


def test_the_gaussian_rule_refuses_bad_settings():
    with pytest.raises(ValueError, match="num_points"):
        GaussianRule(0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianRule(5, sigma=0.0)
    with pytest.raises(ValueError, match="different numbers"):
        WeightAverage(nn.Linear(2, 2), swa_rule).update(nn.Linear(2, 2, bias=False))
