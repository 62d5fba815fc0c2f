"""Oracle tests of model soups, weight averaging (SWA, Gaussian), BatchNorm recalibration and
Sparse Model Soups: each against a hand computation (NumPy or plain torch ops) that does not
call the code under test."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.config import parse_overrides
from heldout.core.state import State
from heldout.engine import Trainer
from heldout.measures import Loss
from heldout.methods.averaging import (
    SWA,
    GaussianAveraging,
    GaussianTrajectoryAverage,
    StochasticWeightAverage,
    gaussian_average,
    gaussian_weights,
    has_batchnorm,
    recompute_batchnorm_stats,
    swa_update,
)
from heldout.methods.pruning import (
    MagnitudePruning,
    apply_mask,
    magnitude_prune_mask,
    mask_sparsity,
    sparse_model_soup,
)
from heldout.methods.soups import average_state_dicts, greedy_soup, uniform_soup
from heldout.registry import TECHNIQUES
from tests.conftest import assert_resume_is_exact, tiny_config


def _numpy(state):
    return {k: v.detach().double().numpy() for k, v in state.items()}


def _bn_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


# --------------------------------------------------------------------------- soups


def test_uniform_soup_is_the_parameter_mean_by_hand():
    models = [_bn_model(seed) for seed in range(3)]
    for k, m in enumerate(models):
        with torch.no_grad():
            m[1].running_mean.normal_()
        m[1].num_batches_tracked.fill_(10 * (k + 1))
    states = [_numpy(m.state_dict()) for m in models]
    # modules and state dicts may be mixed
    soup = uniform_soup([models[0], models[1].state_dict(), models[2]])
    for key, value in soup.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == torch.long and int(value) == 10  # from the first, not averaged
            continue
        by_hand = (states[0][key] + states[1][key] + states[2][key]) / 3
        np.testing.assert_allclose(value.numpy(), by_hand, rtol=1e-14, atol=1e-15)
        assert value.dtype == torch.float64


def test_weighted_average_by_hand():
    a = {"w": torch.tensor([1.0, -2.0, 4.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 2.0, 0.0]), "n": torch.tensor(9)}
    out = average_state_dicts([a, b], weights=[1.0, 3.0])
    # (1·a + 3·b) / 4 = ([1+9, -2+6, 4+0]) / 4
    assert torch.equal(out["w"], torch.tensor([2.5, 1.0, 1.0]))
    assert int(out["n"]) == 7
    # weights need not sum to one; float16 is accumulated in float32 and returned as float16
    half = average_state_dicts([{"w": torch.tensor([1.0], dtype=torch.float16)},
                                {"w": torch.tensor([2.0], dtype=torch.float16)}], [2, 2])
    assert half["w"].dtype == torch.float16 and float(half["w"]) == 1.5
    with pytest.raises(ValueError, match="non-negative"):
        average_state_dicts([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([a, {"w": b["w"]}])
    with pytest.raises(ValueError, match="2 weights for 1"):
        average_state_dicts([a], weights=[1, 1])


def _quadratic_score(target: float):
    """Held-out score of a one-number 'model': −(w − target)², higher is better."""
    return lambda state: -float((state["w"] - target) ** 2)


def test_greedy_soup_skips_a_candidate_that_hurts():
    # own scores: a = -1, b = -1.21, c = -1.69, d = -16 → order a, b, c, d
    # {a, b}: w = 1.05 → -1.1025 < -1: b hurts and is skipped
    # {a, c}: w = -0.15 → -0.0225: kept
    # {a, c, d}: w = (1 - 1.3 - 4) / 3 = -1.4333 → -2.054: skipped
    cands = [{"w": torch.tensor(w, dtype=torch.float64)} for w in (-1.3, 1.1, -4.0, 1.0)]
    c, b, d, a = range(4)
    result = greedy_soup(cands, _quadratic_score(0.0))
    assert result.chosen == [a, c]
    assert [i for i, _ in result.tried] == [b, c, d]
    assert result.trajectory == pytest.approx([-1.0, -1.0, -0.0225, -0.0225], abs=1e-12)
    assert all(y >= x for x, y in zip(result.trajectory, result.trajectory[1:], strict=False))
    assert float(result.state_dict["w"]) == pytest.approx((1.0 - 1.3) / 2, abs=1e-15)
    assert result.trajectory[-1] >= max(result.candidate_scores)


def test_greedy_soup_ties_follow_the_rule():
    cands = [{"w": torch.tensor(1.0)}, {"w": torch.tensor(-1.0)}]  # both score -1; soup: 0
    assert greedy_soup(cands, _quadratic_score(0.0)).chosen == [0, 1]
    same = [{"w": torch.tensor(1.0)}, {"w": torch.tensor(1.0)}]  # the soup scores the same
    assert greedy_soup(same, _quadratic_score(0.0)).chosen == [0, 1]  # >= keeps it
    assert greedy_soup(same, _quadratic_score(0.0), strict=True).chosen == [0]


@pytest.mark.parametrize("seed", range(4))
def test_greedy_soup_is_never_worse_than_the_best_candidate(seed):
    """Linear regressors around a solution, scored by held-out MSE: the soup is the mean of
    the chosen ones (by hand) and never scores below the best single one."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    w_star = torch.randn(5, generator=gen, dtype=torch.float64)
    y = x @ w_star

    def score(state):
        return -float(((x @ state["w"] - y) ** 2).mean())

    cands = [{"w": w_star + s * torch.randn(5, generator=gen, dtype=torch.float64)}
             for s in (0.3, 0.3, 0.3, 2.0, 3.0, 0.5)]
    result = greedy_soup(cands, score)
    own = [score(c) for c in cands]
    assert result.candidate_scores == own
    assert result.chosen[0] == int(np.argmax(own))
    assert result.trajectory[-1] >= max(own)
    assert score(result.state_dict) == pytest.approx(result.trajectory[-1], rel=1e-12)
    assert all(y >= x for x, y in zip(result.trajectory, result.trajectory[1:], strict=False))
    by_hand = np.mean([cands[i]["w"].numpy() for i in result.chosen], axis=0)
    np.testing.assert_allclose(result.state_dict["w"].numpy(), by_hand, rtol=1e-13, atol=1e-14)


def test_gaussian_weights_by_hand():
    e = math.exp(-0.5)
    np.testing.assert_allclose(gaussian_weights(3, center=2.0, sigma=1.0).numpy(),
                               [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)], rtol=1e-15)
    # defaults: PromptSRC's μ = 15, σ = 1 over 20 epochs, indices 1..20
    w = gaussian_weights(20).numpy()
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    assert int(np.argmax(w)) == 14  # epoch 15
    assert w[15] / w[14] == pytest.approx(math.exp(-0.5), rel=1e-12)
    assert w[16] / w[14] == pytest.approx(math.exp(-2.0), rel=1e-12)
    assert w[13] == pytest.approx(w[15], rel=1e-12)
    states = [{"w": torch.tensor([float(k)], dtype=torch.float64)} for k in (1.0, 4.0, 10.0)]
    avg = gaussian_average(states, center=2.0, sigma=1.0)
    assert float(avg["w"]) == pytest.approx((1 * e + 4 * 1 + 10 * e) / (1 + 2 * e), rel=1e-15)


@pytest.mark.parametrize("num,center,sigma", [(7, None, None), (50, 45.0, 0.5), (9, 3.0, 10.0)])
def test_online_gaussian_average_equals_the_batch_one(num, center, sigma):
    """(50, 45, 0.5): the first weights underflow to 0; the online mean must not divide by 0."""
    torch.manual_seed(0)
    model = _bn_model(0)
    online = GaussianTrajectoryAverage(model, num, center, sigma)
    trajectory = []
    for k in range(num):
        with torch.no_grad():
            for t in [*model.parameters(), model[1].running_mean]:
                t.add_(torch.randn_like(t))
            model[1].num_batches_tracked.fill_(k)
        trajectory.append(copy.deepcopy(model.state_dict()))
        online.update(model)
    by_batch = gaussian_average(trajectory, center, sigma)
    got = online.module.state_dict()
    for key, value in by_batch.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-12)
    assert int(got["1.num_batches_tracked"]) == num - 1  # a counter: the latest, not averaged
    with pytest.raises(RuntimeError, match="all"):
        online.update(model)


# --------------------------------------------------------------------------- BatchNorm


def test_recompute_batchnorm_stats_by_hand():
    model = _bn_model(1)
    bn = model[1]
    bn.momentum = 0.3
    with torch.no_grad():
        bn.running_mean.fill_(123.0)  # must be reset, not blended
    model.eval()
    model[3].train()  # a mixed mode, restored exactly
    x = torch.randn(48, 3, dtype=torch.float64)
    recompute_batchnorm_stats(model, (x, torch.zeros(48)), batch_size=16)
    h = (x @ model[0].weight.T + model[0].bias).detach().numpy()
    batches = np.split(h, 3)
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([b.mean(0) for b in batches], 0),
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(),
                               np.mean([b.var(0, ddof=1) for b in batches], 0), rtol=1e-12)
    assert int(bn.num_batches_tracked) == 3
    assert bn.momentum == 0.3
    assert [m.training for m in model] == [False, False, False, True]
    # one batch: the mean and unbiased variance of the whole set
    recompute_batchnorm_stats(model, x)
    np.testing.assert_allclose(bn.running_mean.numpy(), h.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), h.var(0, ddof=1), rtol=1e-12)
    # an iterable of batches works too
    recompute_batchnorm_stats(model, [x[:24], x[24:]])
    np.testing.assert_allclose(bn.running_mean.numpy(), h.mean(0), rtol=1e-12)
    plain = nn.Linear(2, 2)
    assert recompute_batchnorm_stats(plain, torch.randn(4, 2)) is plain
    assert has_batchnorm(model) and not has_batchnorm(plain)
    with pytest.raises(ValueError, match="no data"):
        recompute_batchnorm_stats(model, [])


# --------------------------------------------------------------------------- SWA


def test_swa_update_is_the_running_mean_and_round_trips():
    model = _bn_model(2)
    swa = StochasticWeightAverage(model)
    seen = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        seen.append([p.detach().numpy().copy() for p in model.parameters()])
        swa.update(model)
    for k, p in enumerate(swa.module.parameters()):
        np.testing.assert_allclose(p.numpy(), np.mean([s[k] for s in seen], 0), rtol=1e-13)
    restored = StochasticWeightAverage(_bn_model(3))
    restored.load_state_dict(copy.deepcopy(swa.state_dict()))
    assert restored.averaged == 4
    swa.update(model)
    restored.update(model)
    for a, b in zip(swa.module.state_dict().values(), restored.module.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        swa_update(swa.module, model, -1)


def _data(n=32, d=5, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=gen, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=gen))


def test_swa_through_the_trainer_equals_a_hand_loop():
    lr, steps = 0.5, 8
    x, y = _data()
    xt, yt = _data(40, seed=1)
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    replica, initial = copy.deepcopy(model), copy.deepcopy(model)

    # the oracle: full-batch SGD by hand, averaging at steps 4, 6, 8 (s0 = 0.5·8, every 2)
    opt = torch.optim.SGD(replica.parameters(), lr=lr)
    points = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        F.cross_entropy(replica(x).float(), y).backward()  # the Trainer's float32 loss
        opt.step()
        if step in (4, 6, 8):
            points.append([p.detach().numpy().copy() for p in replica.parameters()])
    weight, bias = (np.mean([pt[k] for pt in points], 0) for k in range(2))
    logits = xt.numpy() @ weight.T + bias
    logits -= logits.max(1, keepdims=True)
    hand_loss = -(logits[np.arange(40), yt.numpy()] - np.log(np.exp(logits).sum(1))).mean()

    technique = SWA(start_fraction=0.5, every=2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), (x, y),
                      max_steps=steps, eval_every=steps, eval_data={"test": (xt, yt)},
                      techniques=[technique], measures=[Loss()])
    history = trainer.fit()
    assert technique.average.averaged == 3
    np.testing.assert_allclose(technique.average.module.weight.numpy(), weight, rtol=1e-12)
    np.testing.assert_allclose(technique.average.module.bias.numpy(), bias, rtol=1e-12)
    assert history[-1][1]["test/loss"] == pytest.approx(hand_loss, rel=1e-10)
    raw = F.cross_entropy(replica(xt), yt).item()
    assert abs(raw - hand_loss) > 1e-3  # the average is not the raw model
    # before the first point, evaluation uses the raw model
    assert history[0][1]["test/loss"] == pytest.approx(F.cross_entropy(initial(xt), yt).item(),
                                                       rel=1e-12)


def test_swa_recomputes_batchnorm_of_the_average_and_leaves_training_alone():
    x, y = _data(48, 3, 2)
    steps = 6

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.3), nn.ReLU(),
                             nn.Linear(4, 2)).double()

    def fit(techniques):
        model = make()
        trainer = Trainer(model, lambda ps: torch.optim.SGD(ps, lr=0.2), (x, y),
                          max_steps=steps, batch_size=16, eval_every=2,
                          eval_data={"train": (x, y)}, techniques=techniques, measures=[Loss()],
                          seed=3)
        trainer.fit()
        return model

    technique = SWA(start_fraction=0.5, every=1)
    with_swa, plain = fit([technique]), fit([])
    # the BatchNorm pass (dropout active) draws no numbers from the training RNG stream
    for a, b in zip(with_swa.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    average = technique.average.module
    # recomputed at fit end in batches of the training batch size, 16, over the 48 rows
    h = (x @ average[0].weight.T + average[0].bias).numpy()
    batches = np.split(h, 3)
    np.testing.assert_allclose(average[1].running_mean.numpy(),
                               np.mean([b.mean(0) for b in batches], 0), rtol=1e-12)
    np.testing.assert_allclose(average[1].running_var.numpy(),
                               np.mean([b.var(0, ddof=1) for b in batches], 0), rtol=1e-12)
    assert not average.training


def test_swa_every_none_means_once_per_epoch():
    state = State(model=nn.Linear(2, 2), optimizer=None, max_steps=40, steps_per_epoch=5)
    technique = SWA(start_fraction=0.5)
    technique.on_fit_start(state)
    for step in range(1, 41):
        state.step = step
        technique.on_after_step(state)
    assert technique.average.averaged == 5  # steps 20, 25, 30, 35, 40


# --------------------------------------------------------------------------- Gaussian


def test_gaussian_averaging_through_the_trainer_equals_the_batch_average():
    lr, steps = 0.5, 6
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    replica = copy.deepcopy(model)
    opt = torch.optim.SGD(replica.parameters(), lr=lr)
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(replica(x).float(), y).backward()  # the Trainer's float32 loss
        opt.step()
        trajectory.append(copy.deepcopy(replica.state_dict()))
    # weights over the step index: μ = 0.5·6 = 3, σ = 0.25·6 = 1.5
    by_hand = gaussian_average(trajectory, center=3.0, sigma=1.5)

    technique = GaussianAveraging(center_fraction=0.5, sigma_fraction=0.25)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), (x, y),
                      max_steps=steps, eval_every=steps, eval_data={"train": (x, y)},
                      techniques=[technique], measures=[Loss()])
    history = trainer.fit()
    got = technique.average.module.state_dict()
    for key in by_hand:
        torch.testing.assert_close(got[key], by_hand[key], rtol=1e-12, atol=1e-13)
    average = copy.deepcopy(model)
    average.load_state_dict(by_hand)
    assert history[-1][1]["train/loss"] == pytest.approx(
        F.cross_entropy(average(x), y).item(), rel=1e-10)


# --------------------------------------------------------------------------- pruning


def test_magnitude_prune_mask_keeps_the_global_top_fraction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight.mul_(3.0)  # layers of different scales: the global cut is uneven
    mask = magnitude_prune_mask(model, 0.75)
    assert set(mask) == {"0.weight", "2.weight"}  # biases stay dense
    magnitudes = np.concatenate([model[0].weight.detach().abs().numpy().ravel(),
                                 model[2].weight.detach().abs().numpy().ravel()])
    keep = magnitudes >= np.sort(magnitudes)[-8]  # 32 weights, keep the top 8
    got = np.concatenate([mask["0.weight"].numpy().ravel(), mask["2.weight"].numpy().ravel()])
    assert keep.sum() == 8 and np.array_equal(got, keep)
    assert mask_sparsity(mask) == 0.75
    assert mask["2.weight"].float().mean() != mask["0.weight"].float().mean()
    # per layer: each tensor on its own
    layer = magnitude_prune_mask(model, 0.75, scope="layer")
    for name, tensor in (("0.weight", model[0].weight), ("2.weight", model[2].weight)):
        magn = tensor.detach().abs().numpy().ravel()
        n_keep = round(0.25 * magn.size)
        assert np.array_equal(layer[name].numpy().ravel(), magn >= np.sort(magn)[-n_keep])
    # iterative: what was pruned stays pruned even if it grew
    apply_mask(model, mask)
    with torch.no_grad():
        model[0].weight.add_(100.0 * (~mask["0.weight"]))
    deeper = magnitude_prune_mask(model, 0.875, previous=mask)
    assert not (deeper["0.weight"] & ~mask["0.weight"]).any()
    assert mask_sparsity(deeper) == 0.875
    with pytest.raises(ValueError, match="previous mask"):
        magnitude_prune_mask(model, 0.5, previous=mask)


def test_the_mask_survives_averaging():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(3)]
    mask = magnitude_prune_mask(models[0], 0.6)
    for m in models:
        apply_mask(m, mask)
    soup = uniform_soup(models)
    for name, keep in mask.items():
        assert torch.all(soup[name][~keep] == 0)
        assert torch.all(soup[name][keep] != 0)


def test_sparse_model_soup_prunes_retrains_and_averages():
    """S = 0.875 in 3 phases: 50%, 75%, 87.5% of the 96 weights; a training loop that knows
    nothing about the mask keeps it; the last soup is the mean of the last retrains."""
    x, y = _data(64, 8, 4)
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    before = copy.deepcopy(dense.state_dict())
    retrained = []

    def train(net, seed):
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(5):
            idx = torch.randperm(64, generator=gen)[:32]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        # the effective weight after the last step (module.weight is refreshed on forward)
        retrained.append({f"{i}.weight": (net[i].weight_orig * net[i].weight_mask).detach()
                          for i in (0, 2)})
        return net

    def score(state):
        net = copy.deepcopy(dense)
        net.load_state_dict(state)
        return -F.cross_entropy(net(x), y).item()

    result = sparse_model_soup(train, dense, sparsity=0.875, phases=3, n_retrains=3,
                               evaluate_fn=score)
    assert [p.target_sparsity for p in result.phases] == pytest.approx([0.5, 0.75, 0.875])
    assert [p.sparsity for p in result.phases] == pytest.approx([0.5, 0.75, 0.875])
    assert len(retrained) == 9
    assert set(result.model.state_dict()) == set(before)  # the reparametrization is undone
    for name, keep in result.mask.items():
        weight = result.model.state_dict()[name]
        assert torch.all(weight[~keep] == 0)
        by_hand = sum(r[name] for r in retrained[-3:]) / 3
        torch.testing.assert_close(weight, by_hand, rtol=1e-12, atol=1e-14)
    for key, value in dense.state_dict().items():  # the given model is left alone
        assert torch.equal(value, before[key])
    assert result.phases[-1].soup_score == pytest.approx(score(result.model.state_dict()))
    greedy = sparse_model_soup(train, dense, schedule=[0.5], seeds=[0, 1, 2], soup="greedy",
                               evaluate_fn=score)
    assert greedy.phases[0].soup_score >= max(greedy.phases[0].candidate_scores)


def test_magnitude_pruning_technique_keeps_pruned_weights_at_zero():
    x, y = _data(48, 6, 3)

    def fit(techniques):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        start = copy.deepcopy(model)
        Trainer(model, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
                (x.float(), y), max_steps=10, batch_size=16, eval_every=10,
                eval_data={"train": (x.float(), y)}, techniques=techniques,
                measures=[Loss()]).fit()
        return start, model

    technique = MagnitudePruning(sparsity=0.9)
    start, model = fit([technique])
    expected = magnitude_prune_mask(start, 0.9)
    mask = technique.mask
    assert all(torch.equal(mask[n], expected[n]) for n in expected)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name][~keep] == 0)
        assert torch.all(params[name][keep] != dict(start.named_parameters())[name][keep])
    _, unpruned = fit([])  # without it the same positions train away from zero
    assert any(torch.any(dict(unpruned.named_parameters())[n][~k] != 0) for n, k in mask.items())
    # a given mask is used as is, and the mask is the technique's state
    fixed = MagnitudePruning.from_mask(mask)
    assert fixed.sparsity == pytest.approx(mask_sparsity(mask))
    state = copy.deepcopy(technique.state_dict())
    fresh = MagnitudePruning()
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.mask[n], mask[n]) for n in mask)
    _, again = fit([MagnitudePruning.from_mask(mask)])
    for a, b in zip(again.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- registry, resume


def test_registered_with_paper_defaults():
    swa = TECHNIQUES.get("swa")
    assert swa.defaults() == {"start_fraction": 0.75, "every": None, "bn_update": True,
                              "evaluate_average": True}
    gauss = TECHNIQUES.get("gaussian_averaging")
    assert gauss.papers == (70,)
    assert gauss.defaults()["center_fraction"] == 0.75
    assert gauss.defaults()["sigma_fraction"] == 0.05
    pruning = TECHNIQUES.get("magnitude_pruning")
    assert pruning.papers == (60,) and pruning.defaults() == {"sparsity": 0.9,
                                                               "scope": "global"}
    for name in ("swa", "gaussian_averaging"):
        assert {"after_step", "eval_model"} == set(TECHNIQUES.get(name).cls.touches)


RESUME_CASES = {
    # averaging starts before the step-8 checkpoint, so the checkpoint holds an average
    "swa": ["techniques.swa.start_fraction=0.25", "techniques.swa.every=2"],
    "gaussian_averaging": [],
    "magnitude_pruning": ["techniques.magnitude_pruning.sparsity=0.5"],
}


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_resume_mid_average_is_exact(name, tmp_path, monkeypatch):
    """As the registry's contract test, with averaging under way at the checkpoint."""
    cfg = tiny_config("model.batch_norm=true", "batch_size=16", f"techniques={name}")
    cfg = parse_overrides(cfg, RESUME_CASES[name])
    assert_resume_is_exact(cfg, tmp_path, monkeypatch)
