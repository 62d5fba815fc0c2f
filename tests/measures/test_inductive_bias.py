"""Oracle tests of the inductive-bias estimate (heldout.measures.inductive_bias): closed-form
χ² tails, losses drawn from a known scaled non-central χ² (so I(ε) is known), and a Gaussian
process whose posterior is its prior (so the loss distribution is known exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from heldout.measures import evaluate
from heldout.measures.inductive_bias import (
    InductiveBias,
    estimate_inductive_bias,
    fit_scaled_ncx2,
    gp_posterior_losses,
    ncx2_neg_log_cdf,
    perturbed_hypothesis_losses,
)

stats = pytest.importorskip("scipy.stats")


def _scaled_ncx2_samples(n: int, df: int, nc: float, scale: float, seed: int) -> np.ndarray:
    """scale · Σ_i (z_i + μ_i)² with Σ μ_i² = nc, drawn from normals (not from scipy)."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(df)
    shift[0] = math.sqrt(nc)
    return scale * ((rng.standard_normal((n, df)) + shift) ** 2).sum(axis=1)


def test_neg_log_cdf_closed_form_for_two_degrees_of_freedom():
    # scale · χ²_2 is exponential with mean 2·scale: P[X <= x] = 1 − exp(−x / (2 scale))
    for x, scale in ((0.3, 0.5), (2.0, 0.1), (1e-3, 1.0)):
        value, fallback = ncx2_neg_log_cdf(x, 2.0, 0.0, scale)
        assert value == pytest.approx(-math.log(-math.expm1(-x / (2 * scale))), rel=1e-9)
        assert not fallback


def test_series_tail_where_scipy_underflows():
    # deep in the left tail only the j = 0 Poisson term and the n = 0 gamma term matter:
    # log P ≈ −nc/2 + (df/2) log(y/2) − y/2 − log Γ(df/2 + 1), y = x / scale
    df, nc, scale, x = 20.0, 5.0, 0.01, 1e-40
    assert stats.ncx2.logcdf(x, df, nc, scale=scale) == -math.inf
    value, fallback = ncx2_neg_log_cdf(x, df, nc, scale)
    y = x / scale
    leading = -nc / 2 + df / 2 * math.log(y / 2) - y / 2 - math.lgamma(df / 2 + 1)
    assert fallback and value == pytest.approx(-leading, rel=1e-9)
    # the paper's code's fallback is bounded and far smaller there
    paper, _ = ncx2_neg_log_cdf(x, df, nc, scale, tail="sankaran")
    assert 0 < paper < value / 10


def test_fit_recovers_a_known_distribution_and_its_tail():
    df, nc, scale = 20, 5.0, 0.01
    samples = _scaled_ncx2_samples(2000, df, nc, scale, seed=0)
    estimate = estimate_inductive_bias(samples, 0.07)  # the 0.06% quantile
    assert estimate.nats == pytest.approx(-stats.ncx2.logcdf(0.07, df, nc, scale=scale),
                                          rel=0.05)
    assert estimate.bits == pytest.approx(estimate.nats / math.log(2))
    assert estimate.ks_statistic < 0.05 and not estimate.fallback
    at_6_percent, _ = ncx2_neg_log_cdf(0.1, estimate.df, estimate.nc, estimate.scale)
    assert at_6_percent == pytest.approx(-stats.ncx2.logcdf(0.1, df, nc, scale=scale), rel=0.05)
    mean = estimate.scale * (estimate.df + estimate.nc)
    assert mean == pytest.approx(scale * (df + nc), rel=0.02)
    with pytest.raises(ValueError, match="non-negative"):
        fit_scaled_ncx2([1.0, -1.0, 2.0])


def test_exponential_losses_give_the_hand_formula():
    # exponential losses with mean 0.2 = 0.1 · χ²_2: I(ε) = −ln(1 − e^{−ε/0.2})
    losses = np.random.default_rng(1).exponential(0.2, size=2000)
    estimate = estimate_inductive_bias(losses, 0.002)
    assert estimate.nats == pytest.approx(-math.log(-math.expm1(-0.002 / 0.2)), rel=0.05)
    assert estimate.empirical_fraction == pytest.approx(float(np.mean(losses <= 0.002)))


def test_constant_losses_have_an_empirical_answer():
    assert estimate_inductive_bias([1.0, 1.0, 1.0], 1.0).nats == 0.0
    assert estimate_inductive_bias([1.0, 1.0, 1.0], 0.5).nats == math.inf


def test_gp_posterior_far_from_the_data_is_the_prior():
    # test points 10 apart and 100 away from the one training point: K ≈ 0 between them, so
    # f_t ~ N(0, I) per output, and the MSE on one-hot targets is exactly
    # (1/(n k)) · χ²'(df = n k, nc = n) with n = 20 test points and k = 2 classes.
    n, k = 20, 2
    x_test = (torch.arange(n, dtype=torch.float64) * 10).view(-1, 1)
    y_test = torch.arange(n) % k
    x_train, y_train = torch.tensor([[1000.0]]), torch.tensor([0])
    losses = gp_posterior_losses(x_train, y_train, x_test, y_test, num_classes=k,
                                 num_samples=1500, seed=0)
    df, nc, scale = n * k, float(n), 1 / (n * k)
    assert float(losses.mean()) == pytest.approx(scale * (df + nc), abs=4 * math.sqrt(
        2 * (df + 2 * nc) * scale**2 / 1500))
    eps = float(stats.ncx2.ppf(1e-3, df, nc, scale=scale))
    estimate = estimate_inductive_bias(losses, eps)
    assert estimate.nats == pytest.approx(-math.log(1e-3), rel=0.1)


def test_gp_posterior_interpolates_the_training_set():
    x = torch.tensor([[0.0], [0.5], [3.0]])
    y = torch.tensor([0, 1, 0])
    losses = gp_posterior_losses(x, y, x, y, num_samples=50)
    assert float(losses.max()) < 1e-6  # noise-free posterior: zero variance at the data


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _data() -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)
    return {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}


def test_perturbed_losses_of_the_gaussian_sampler_grow_with_sigma():
    torch.manual_seed(0)
    model = _Tiny().eval()
    x, y = _data()["test"]
    small = perturbed_hypothesis_losses(model, x, y, num_samples=100, sigma=0.01)
    large = perturbed_hypothesis_losses(model, x, y, num_samples=100, sigma=0.5)
    assert small[-1] == large[-1]  # the model's own loss
    spread_small = float((small[:-1] - small[-1]).abs().mean())
    spread_large = float((large[:-1] - large[-1]).abs().mean())
    assert spread_small < spread_large


def test_inductive_bias_measure_through_evaluate():
    torch.manual_seed(0)
    model = _Tiny()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    measure = InductiveBias(num_samples=200)
    metrics = evaluate(model, _data(), [measure])
    assert set(metrics) == {"test/inductive_bias", "test/inductive_bias_bits",
                            "test/inductive_bias_target", "test/inductive_bias_ks"}
    assert metrics["test/inductive_bias"] >= 0 and math.isfinite(metrics["test/inductive_bias"])
    assert metrics == evaluate(model, _data(), [measure])  # seeded
    loose = evaluate(model, _data(), [InductiveBias(num_samples=200, target_error=10.0)])
    tight = evaluate(model, _data(), [InductiveBias(num_samples=200, target_error=0.05)])
    assert loose["test/inductive_bias"] < 1e-6 < tight["test/inductive_bias"]
    reinit = evaluate(model, _data(), [InductiveBias(num_samples=50, sampler="reinit")])
    assert math.isfinite(reinit["test/inductive_bias"])
    assert model.training and torch.equal(torch.get_rng_state(), rng_state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="num_samples"):
        InductiveBias(num_samples=1)
    with pytest.raises(ValueError, match="sigma"):
        InductiveBias(sigma=0.0)
    with pytest.raises(ValueError, match="sampler"):
        InductiveBias(sampler="trained")  # type: ignore[arg-type]
