"""Self-distillation in kernel ridge regression (#73): against scikit-learn's KernelRidge, the
spectral closed form, the paper's infinite-step limit and a grid search for the optimal ξ."""

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge

from heldout.measures.excess_risk import spectral_excess_risk
from heldout.methods.kernel_distill import (
    KernelEigen,
    kernel_eigen,
    optimal_ground_truth_weight,
    optimal_weights,
    rbf_kernel,
    self_distillation_filters,
    self_distillation_fits,
)


@pytest.fixture
def design():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 1, 25))
    truth = np.sin(2 * np.pi * x)
    kernel = rbf_kernel(x[:, None], bandwidth=0.15)
    return x, truth, kernel, truth + rng.normal(0, 0.4, 25)


def test_rbf_kernel_matches_sklearn():
    from sklearn.metrics.pairwise import rbf_kernel as sk_rbf
    x = np.random.default_rng(1).normal(size=(7, 3))
    z = np.random.default_rng(2).normal(size=(4, 3))
    bandwidth = 0.7
    np.testing.assert_allclose(rbf_kernel(x, z, bandwidth), sk_rbf(x, z, gamma=1 / (2 * 0.49)),
                               atol=1e-12)


def test_ground_truth_only_equals_plain_kernel_ridge(design):
    x, _, kernel, y = design
    reference = KernelRidge(alpha=0.1, kernel="precomputed").fit(kernel, y).predict(kernel)
    for fit in self_distillation_fits(kernel, y, 0.1, [1.0, 1.0, 1.0]):
        np.testing.assert_allclose(fit, reference, atol=1e-9)


def test_filters_reproduce_direct_fits(design):
    _, _, kernel, y = design
    eigen = kernel_eigen(kernel)
    weights = [0.3, 0.0, 0.8, 0.5]
    fits = self_distillation_fits(kernel, y, 0.05, weights)
    filters = self_distillation_filters(eigen, 0.05, weights)
    assert len(fits) == len(filters) == 5
    for fit, p in zip(fits, filters, strict=True):
        np.testing.assert_allclose(fit, eigen.vectors @ (p * (eigen.vectors.T @ y)), atol=1e-9)


def test_teacher_only_is_a_power_of_the_ridge_filter(design):
    _, _, kernel, _ = design
    eigen = kernel_eigen(kernel)
    a = eigen.shrinkage(0.2)
    np.testing.assert_allclose(self_distillation_filters(eigen, 0.2, [0.0] * 4)[-1], a**5)


def test_constant_weight_converges_to_amplified_regularization(design):
    # the paper's limit: infinitely many steps with weight ξ equal KRR with ridge λ / ξ
    _, _, kernel, y = design
    fits = self_distillation_fits(kernel, y, 0.02, [0.25] * 400)
    limit = KernelRidge(alpha=0.02 / 0.25, kernel="precomputed").fit(kernel, y).predict(kernel)
    np.testing.assert_allclose(fits[-1], limit, atol=1e-8)


@pytest.mark.parametrize("noise_variance", [0.01, 0.16, 1.0])
@pytest.mark.parametrize("ridge", [0.005, 0.05, 0.5])
def test_optimal_weight_minimizes_closed_form_risk_over_a_grid(design, ridge, noise_variance):
    _, truth, kernel, _ = design
    eigen = kernel_eigen(kernel)
    beta = eigen.coefficients(truth)
    previous = self_distillation_filters(eigen, ridge, [0.0, 0.0])[-1]  # a teacher after 3
    a = eigen.shrinkage(ridge)
    grid = np.linspace(0, 1, 20001)
    risks = [spectral_excess_risk(a * (w + (1 - w) * previous), beta, noise_variance)
             for w in grid]
    best = optimal_ground_truth_weight(eigen, ridge, previous, truth, noise_variance)
    risk = spectral_excess_risk(a * (best + (1 - best) * previous), beta, noise_variance)
    assert risk <= min(risks) + 1e-12
    assert abs(best - grid[int(np.argmin(risks))]) <= 1e-4


def test_optimal_weight_hand_computed():
    # one eigenvalue d = 1, λ = 1: a = 1/2; teacher filter 1/2, so p(ξ) = 1/4 + ξ/4.
    # risk (1 − p)² β² + σ² p² with β = 1: least at p = 1/(1 + σ²)
    eigen = KernelEigen(np.array([1.0]), np.eye(1))
    for variance, expected in ((2.0, 1 / 3), (0.6, 1.0), (3.0, 0.0), (1.0, 1.0)):
        # p* = 1/3 → ξ = 1/3; p* = 0.625 > 1/2 → clipped at 1; p* = 1/4 → ξ = 0; p* = 1/2 → 1
        got = optimal_ground_truth_weight(eigen, 1.0, np.array([0.5]), np.array([1.0]), variance)
        assert got == pytest.approx(expected)


def test_optimal_schedule_is_greedy_and_never_worse_than_plain_kernel_ridge(design):
    _, truth, kernel, _ = design
    eigen = kernel_eigen(kernel)
    beta = eigen.coefficients(truth)
    weights = optimal_weights(eigen, 0.01, truth, 0.16, rounds=6)
    assert len(weights) == 5 and all(0.0 <= w <= 1.0 for w in weights)
    filters = self_distillation_filters(eigen, 0.01, weights)
    plain = spectral_excess_risk(filters[0], beta, 0.16)
    for t, p in enumerate(filters[1:], start=1):  # each round beats ξ = 1 from its own start
        assert spectral_excess_risk(p, beta, 0.16) <= plain + 1e-12
        assert weights[t - 1] == pytest.approx(optimal_ground_truth_weight(
            eigen, 0.01, filters[t - 1], truth, 0.16))


def test_bad_input_names_the_parameter(design):
    _, truth, kernel, y = design
    eigen = kernel_eigen(kernel)
    with pytest.raises(ValueError, match="regularization"):
        self_distillation_fits(kernel, y, 0.0, [0.5])
    with pytest.raises(ValueError, match="ground-truth weight"):
        self_distillation_filters(eigen, 0.1, [1.5])
    with pytest.raises(ValueError, match="noise_variance"):
        optimal_ground_truth_weight(eigen, 0.1, eigen.shrinkage(0.1), truth, -1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        rbf_kernel(np.zeros((2, 1)), bandwidth=0.0)
    with pytest.raises(ValueError, match="square"):
        kernel_eigen(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="rounds"):
        optimal_weights(eigen, 0.1, truth, 0.1, rounds=0)
    with pytest.raises(ValueError, match="targets"):
        self_distillation_fits(kernel, y[:3], 0.1, [])
