"""AdvStyle (#63) and MixStyle: the gradient reversal, identity settings, exact statistics
swaps, the intensities' initialization and bound, Beta draws against scipy, and the registry
contracts (determinism, state round trip, exact resume) on a small 2-D CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import tests.test_contracts as contracts
from heldout.engine.trainer import Trainer
from heldout.methods.augment.style import (
    AdvStyle,
    AdvStyleLayer,
    MixStyle,
    MixStyleLayer,
    grad_reverse,
    insert_after,
    sample_beta,
)
from heldout.models.cnn import cnn1d_network
from heldout.models.cnn2d import cnn2d_network
from heldout.tasks.base import InputSpec, Split

SETTING = ["task=digits_shift", "model=cnn2d", "model.channels=[4,4]"]


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return flat.mean(-1), flat.std(-1)


def test_gradient_reversal_is_identity_forward_and_scaled_negation_backward():
    a = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    out = grad_reverse(a, 2.5)
    assert torch.equal(out, a)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert a.grad.tolist() == [-2.5, -5.0, -7.5]


def test_first_call_sets_intensities_to_the_batch_std_of_the_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5])[:, None, None]
    layer = AdvStyleLayer(3, p_identity=0.0, p_random=0.0, max_intensity=2.0).train()
    layer(x)
    mu, sd = _stats(x.numpy().astype(np.float64))
    np.testing.assert_allclose(layer.a_mu.detach().numpy(), mu.std(0, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(layer.a_sigma.detach().numpy(), sd.std(0, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(layer.bound_mu.numpy(), 2 * mu.std(0, ddof=1), rtol=1e-4)


def test_zero_intensities_without_the_random_branch_is_the_identity():
    x = torch.randn(5, 3, 7, generator=torch.Generator().manual_seed(1)) * 3 + 1
    layer = AdvStyleLayer(3, p_identity=0.0, p_random=0.0).train()
    layer(x)  # initializes the intensities
    with torch.no_grad():
        layer.a_mu.zero_()
        layer.a_sigma.zero_()
    torch.testing.assert_close(layer(x), x, rtol=1e-5, atol=1e-5)


def test_intensities_get_the_reversed_scaled_gradient():
    x = torch.randn(5, 3, 7, generator=torch.Generator().manual_seed(2))
    grads = {}
    for weight in (10.0, -1.0):  # weight -1: the plain gradient
        layer = AdvStyleLayer(3, adv_weight=weight, p_identity=0.0, p_random=0.0).train()
        layer.generator = torch.Generator().manual_seed(7)
        (layer(x) ** 2).sum().backward()
        grads[weight] = layer.a_mu.grad.clone()
    assert grads[-1.0].abs().sum() > 0
    torch.testing.assert_close(grads[10.0], -10.0 * grads[-1.0])


def test_projection_clamps_the_magnitudes_to_the_bound():
    layer = AdvStyleLayer(2)
    layer.bound_mu.copy_(torch.tensor([1.0, 1.0]))
    layer.bound_sigma.copy_(torch.tensor([2.0, 2.0]))
    with torch.no_grad():
        layer.a_mu.copy_(torch.tensor([-1.0, 5.0]))
        layer.a_sigma.copy_(torch.tensor([0.5, 9.0]))
    layer.project()
    assert layer.a_mu.tolist() == [-1.0, 1.0] and layer.a_sigma.tolist() == [0.5, 2.0]
    with torch.no_grad():
        layer.a_mu.copy_(torch.tensor([-3.0, 0.25]))
    layer.project()
    assert layer.a_mu.tolist() == [-1.0, 0.25]


@pytest.mark.parametrize("shape", [(6, 3, 9), (6, 3, 4, 5)])
def test_mixstyle_with_lambda_one_is_identity_and_zero_swaps_statistics(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    layer = MixStyleLayer(eps=0.0)
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    torch.testing.assert_close(layer.mix(x, torch.ones(6), perm), x, rtol=1e-5, atol=1e-5)
    out = layer.mix(x, torch.zeros(6), perm).numpy()
    mu, sd = _stats(x.numpy())
    out_mu, out_sd = _stats(out)
    np.testing.assert_allclose(out_mu, mu[perm.numpy()], atol=1e-5)
    np.testing.assert_allclose(out_sd, sd[perm.numpy()], rtol=1e-4)


def test_both_are_the_identity_in_eval_mode():
    x = torch.randn(4, 3, 5, 5)
    for layer in (AdvStyleLayer(3, p_identity=0.0, p_random=0.0), MixStyleLayer(p=1.0)):
        assert torch.equal(layer.eval()(x), x)
        assert not torch.equal(layer.train()(x), x)


def test_beta_draws_follow_scipy_beta():
    g = torch.Generator().manual_seed(0)
    for alpha in (0.1, 0.5, 2.0):
        draws = sample_beta(alpha, alpha, (4000,), g, dtype=torch.float64).numpy()
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    assert stats.kstest(sample_beta(0.3, 3.0, (4000,), g, dtype=torch.float64).numpy(),
                        stats.beta(0.3, 3.0).cdf).pvalue > 0.01


def test_insertion_into_cnn1d_and_cnn2d_and_clear_errors():
    net1 = cnn1d_network(InputSpec("continuous", (40,)), 10, channels=(4, 6), batch_norm=True)
    new, added = insert_after(net1, ("norm1", "act2"), lambda c: AdvStyleLayer(c), "adv_style")
    assert [m.a_mu.shape[0] for m in added] == [4, 6]
    assert "norm1_adv_style" in dict(new.named_children())
    assert new(torch.randn(3, 40)).shape == (3, 10)
    net2 = cnn2d_network(InputSpec("continuous", (64,)), 10, channels=(4, 8))
    technique = MixStyle(layers=("act1",), p=1.0)
    model = technique.transform_model(net2)
    assert model.train()(torch.randn(5, 64)).shape == (5, 10)
    with pytest.raises(ValueError, match="layers.*act9"):
        AdvStyle(layers=("act9",)).transform_model(net2)
    with pytest.raises(TypeError, match="nn.Sequential"):
        AdvStyle().transform_model(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="p_identity \\+ p_random"):
        AdvStyle(p_identity=0.7, p_random=0.7)


def test_training_keeps_intensities_bounded_and_the_adversary_moves_them():
    g = torch.Generator().manual_seed(0)
    data = Split(torch.rand(64, 64, generator=g), torch.arange(64) % 10)
    torch.manual_seed(0)
    technique = AdvStyle(layers=("act1",), adv_weight=100.0, max_intensity=1.5,
                         p_identity=0.0, p_random=0.0)
    trainer = Trainer(cnn2d_network(InputSpec("continuous", (64,)), 10, channels=(4,)),
                      lambda p: torch.optim.SGD(p, lr=0.1), data, max_steps=20, batch_size=16,
                      techniques=[technique], measures=[], eval_every=100, seed=0)
    trainer.fit()
    layer = technique._inserted[0]
    assert bool(layer.initialized)
    assert (layer.a_mu.abs() <= layer.bound_mu + 1e-7).all()
    assert (layer.a_sigma.abs() <= layer.bound_sigma + 1e-7).all()
    # the ascent pushed some intensity to its bound
    assert bool(torch.isclose(layer.a_mu.abs(), layer.bound_mu).any() or
                torch.isclose(layer.a_sigma.abs(), layer.bound_sigma).any())


@pytest.mark.parametrize("name", ["adv_style", "mixstyle"])
def test_registry_contracts_on_a_2d_cnn(name, tmp_path, monkeypatch):
    monkeypatch.setitem(contracts.TECHNIQUE_SETTING, name, SETTING)
    contracts.test_technique_runs_and_is_deterministic(name, tmp_path / "run")
    contracts.test_technique_state_round_trips(name)
    contracts.test_technique_resume_is_exact(name, tmp_path / "resume", monkeypatch)
