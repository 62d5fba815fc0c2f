"""The exact fixed-design excess risk: equal to a Monte-Carlo average over noise draws (within
the simulation's standard error), and the three forms agree with each other."""

import numpy as np
import pytest

from heldout.measures.excess_risk import (
    kernel_ridge_excess_risk,
    smoother_excess_risk,
    spectral_excess_risk,
)


def _design(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-1, 1, n))
    kernel = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * 0.3**2))
    return kernel, np.cos(3 * x) + x


@pytest.mark.parametrize("ridge", [0.01, 0.3, 3.0])
def test_closed_form_equals_monte_carlo_average(ridge):
    kernel, truth = _design()
    sigma, draws = 0.5, 20000
    smoother = kernel @ np.linalg.inv(kernel + ridge * np.eye(len(kernel)))
    noise = np.random.default_rng(1).normal(0, sigma, (len(truth), draws))
    per_draw = np.mean((smoother @ (truth[:, None] + noise) - truth[:, None]) ** 2, axis=0)
    standard_error = per_draw.std(ddof=1) / np.sqrt(draws)
    closed = kernel_ridge_excess_risk(kernel, ridge, truth, sigma**2)
    assert abs(per_draw.mean() - closed) <= 4 * standard_error


def test_forms_agree():
    kernel, truth = _design(15, seed=3)
    ridge, variance = 0.2, 0.3
    smoother = kernel @ np.linalg.inv(kernel + ridge * np.eye(len(kernel)))
    values, vectors = np.linalg.eigh(kernel)
    spectral = spectral_excess_risk(values / (values + ridge), vectors.T @ truth, variance)
    assert kernel_ridge_excess_risk(kernel, ridge, truth, variance) == pytest.approx(spectral)
    assert smoother_excess_risk(smoother, truth, variance) == pytest.approx(spectral)


def test_hand_computed_bias_and_variance():
    # S = diag(1/2, 1): bias² = (1/2 · 2)² = 1, variance σ² (1/4 + 1) = 1.25; mean over 2 points
    smoother = np.diag([0.5, 1.0])
    assert smoother_excess_risk(smoother, np.array([2.0, 5.0]), 1.0) == pytest.approx(1.125)


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="noise_variance"):
        smoother_excess_risk(np.eye(2), np.ones(2), -0.1)
    with pytest.raises(ValueError, match="smoother"):
        smoother_excess_risk(np.eye(3), np.ones(2), 0.1)
    with pytest.raises(ValueError, match="filter_values"):
        spectral_excess_risk(np.ones(3), np.ones(2), 0.1)
    with pytest.raises(ValueError, match="regularization"):
        kernel_ridge_excess_risk(np.eye(2), 0.0, np.ones(2), 0.1)
