"""Oracle tests of the train-test representation divergences (#21)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from heldout.measures import evaluate
from heldout.measures.representation import (
    RepresentationDivergence,
    gaussian_kl,
    representation_divergence,
    sliced_wasserstein,
    wasserstein_1d,
)


def _mean_abs_projection(dim: int) -> float:
    """E|θ_1| for θ uniform on the unit sphere of R^dim."""
    return math.gamma(dim / 2) / (math.sqrt(math.pi) * math.gamma((dim + 1) / 2))


def test_wasserstein_1d_exact_small_cases():
    assert float(wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))) == 2.0
    assert float(wasserstein_1d(torch.tensor([0.0]), torch.tensor([0.0, 1.0]))) == 0.5
    assert float(wasserstein_1d(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([2.0, 3.0, 1.0]))) == 0
    batched = wasserstein_1d(torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
                             torch.tensor([[1.0, 2.0], [0.0, 4.0]]))
    assert batched.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(("n", "m"), [(40, 90), (13, 12), (1, 7)])
def test_wasserstein_1d_matches_scipy_for_unequal_sizes(n, m):
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, generator=gen, dtype=torch.float64)
    b = torch.randn(m, generator=gen, dtype=torch.float64) * 2 + 0.5
    expected = stats.wasserstein_distance(a.numpy(), b.numpy())
    assert float(wasserstein_1d(a, b)) == pytest.approx(expected, rel=1e-12)


def test_wasserstein_1d_of_shifted_gaussians_is_the_shift():
    # W1(N(0,1), N(s,1)) = |s|. Two samples of N = 20000: the empirical W1 between samples of
    # the same law is O(N^-1/2) (~0.01 here), so 0.05 leaves a wide margin.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, generator=gen, dtype=torch.float64) - 1.5
    assert float(wasserstein_1d(a, b)) == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize("dim", [3, 5])
def test_sliced_wasserstein_of_shifted_isotropic_gaussians(dim):
    # Projected on θ the laws are N(0,1) and N(<θ,s>,1): E_θ W1 = |s| E|θ_1|. Tolerance 0.06:
    # the slice average over 1000 directions has standard error <= |s| * 0.3 / sqrt(1000)
    # ~ 0.02, the sample W1 noise at N = 5000 is ~0.02.
    gen = torch.Generator().manual_seed(dim)
    direction = torch.randn(dim, generator=gen, dtype=torch.float64)
    shift = 2.0 * direction / direction.norm()
    a = torch.randn(5000, dim, generator=gen, dtype=torch.float64)
    b = torch.randn(5000, dim, generator=gen, dtype=torch.float64) + shift
    got = sliced_wasserstein(a, b, 1000, torch.Generator().manual_seed(1))
    assert got == pytest.approx(2.0 * _mean_abs_projection(dim), abs=0.06)


def _kl_numpy(a: np.ndarray, b: np.ndarray, ridge: float) -> float:
    """KL between the fitted Gaussians, from the textbook formula with explicit inverses."""
    d = a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.cov(a, rowvar=False) + ridge * np.eye(d)
    cov_b = np.cov(b, rowvar=False) + ridge * np.eye(d)
    inv_b = np.linalg.inv(cov_b)
    diff = mu_b - mu_a
    return 0.5 * (np.trace(inv_b @ cov_a) + diff @ inv_b @ diff - d
                  + np.log(np.linalg.det(cov_b) / np.linalg.det(cov_a)))


def test_gaussian_kl_matches_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 3, generator=gen, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.0, 0.0, 1.5]], dtype=torch.float64)
    b = torch.randn(300, 3, generator=gen, dtype=torch.float64) * 2 + 1
    for ridge in (0.0, 0.1):
        assert gaussian_kl(a, b, ridge) == pytest.approx(
            _kl_numpy(a.numpy(), b.numpy(), ridge), rel=1e-10)
    # against the true laws N(0, I) and N(m, diag(v)): KL = 1/2 [Σ 1/v + Σ m²/v - d + Σ ln v].
    # N = 50000 in 2-D: the fit's error is O(sqrt(d^2 / N)) ~ 0.01, tolerance 0.03
    m, v = np.array([1.0, -0.5]), np.array([4.0, 0.25])
    exact = 0.5 * ((1 / v).sum() + (m**2 / v).sum() - 2 + np.log(v).sum())
    x = torch.randn(50000, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(50000, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        np.sqrt(v)) + torch.tensor(m)
    assert gaussian_kl(x, y) == pytest.approx(exact, abs=0.03)


def test_representation_divergence_projection():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 10, generator=gen, dtype=torch.float64)
    b = a.clone()
    b[:, 0] += 3.0  # the shift dominates the pooled first principal direction
    full = representation_divergence(a, b, pca_dim=None, n_slices=64,
                                      generator=torch.Generator().manual_seed(0))
    projected = representation_divergence(a, b, pca_dim=1, n_slices=64,
                                           generator=torch.Generator().manual_seed(0))
    assert projected["w1"] == pytest.approx(3.0, abs=0.15)  # on the shift's own axis
    assert full["w1"] < projected["w1"]  # random slices see only part of the shift
    assert projected["kl"] > 0 and full["kl"] > 0


def _identity_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 2), nn.ReLU())


def test_measure_through_evaluate_against_closed_forms():
    # ReLU of the identity on data far from 0 is the identity: train N(10, I), test shifted by
    # (1, 0): sliced W1 = E|θ_1| in 2-D = 2/π, KL = 1/2. N = 2000 per split (tolerances ~4 SE)
    net = _identity_net()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    net.train()
    gen = torch.Generator().manual_seed(0)
    x_train = torch.randn(2000, 2, generator=gen) + 10
    x_test = torch.randn(2500, 2, generator=gen) + torch.tensor([11.0, 10.0])
    y_train, y_test = torch.zeros(2000, dtype=torch.long), torch.zeros(2500, dtype=torch.long)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    measure = RepresentationDivergence(n_slices=500)
    splits = {"train": (x_train, y_train), "val": (x_train, y_train), "test": (x_test, y_test)}
    out = evaluate(net, splits, [measure])
    assert set(out) == {"test/repr_w1/layer1", "test/repr_kl/layer1"}
    assert out["test/repr_w1/layer1"] == pytest.approx(2 / math.pi, abs=0.08)
    assert out["test/repr_kl/layer1"] == pytest.approx(0.5, abs=0.1)
    assert out == evaluate(net, splits, [measure])  # seeded
    assert net.training and not net[1]._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # same data on both sides: no divergence beyond sampling noise
    same = evaluate(net, {"train": (x_train, y_train), "test": (x_train, y_train)}, [measure])
    assert same["test/repr_kl/layer1"] < 0.01 and same["test/repr_w1/layer1"] < 0.05


def test_label_weight_separates_label_shift():
    net = _identity_net()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.fill_(10.0)
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    splits = {"train": (x, y), "test": (x, 1 - y)}  # same inputs, labels flipped
    plain = evaluate(net, splits, [RepresentationDivergence()])
    joint = evaluate(net, splits, [RepresentationDivergence(label_weight=2.0)])
    assert plain["test/repr_w1/layer1"] < 0.05
    assert joint["test/repr_w1/layer1"] > 0.3


def test_order_and_staleness_errors():
    net = _identity_net()
    x, y = torch.randn(30, 2), torch.zeros(30, dtype=torch.long)
    with pytest.raises(RuntimeError, match="'train' split first"):
        evaluate(net, {"test": (x, y), "train": (x, y)}, [RepresentationDivergence()])
    measure = RepresentationDivergence()
    evaluate(net, {"train": (x, y)}, [measure])
    with torch.no_grad():
        net[0].weight.add_(1.0)  # a training step in place
    with pytest.raises(RuntimeError, match="changed"):
        evaluate(net, {"test": (x, y)}, [measure])
    evaluate(net, {"train": (x, y), "test": (x, y)}, [measure])  # fresh reference: fine


@pytest.mark.parametrize(("field", "value"), [("n_slices", 0), ("pca_dim", 0),
                                              ("smoothing", 0.0), ("splits", ("train",))])
def test_measure_rejects_bad_parameters(field, value):
    with pytest.raises(ValueError, match=field):
        RepresentationDivergence(**{field: value})
