"""RCAL (#42): LOF against scikit-learn, Gaussian estimation on exact Gaussian data, robust
estimation under label noise, sampling moments, and the Bayes-optimal LDA boundary when the
classifier is retrained on samples from the true class Gaussians."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from heldout.core.state import State
from heldout.methods.rcal import (
    RCAL,
    ClassGaussians,
    calibrate_tail,
    fit_linear_classifier,
    local_outlier_factor,
    rcal_head,
    robust_class_gaussians,
    sample_class_gaussians,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_local_outlier_factor_matches_sklearn():
    from sklearn.neighbors import LocalOutlierFactor
    points = torch.randn(120, 3, generator=_gen(0), dtype=torch.float64)
    points[:5] *= 6  # a few outliers
    for k in (5, 20):
        reference = -LocalOutlierFactor(n_neighbors=k).fit(points.numpy()).negative_outlier_factor_
        np.testing.assert_allclose(local_outlier_factor(points, k).numpy(), reference, rtol=1e-9)


def _gaussians():
    means = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, -3.0, 2.0]], dtype=torch.float64)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=torch.float64)
    covariances = torch.stack([root @ root.T, 0.5 * torch.eye(3, dtype=torch.float64),
                               torch.diag(torch.tensor([2.0, 0.3, 1.0], dtype=torch.float64))])
    return means, covariances


@pytest.mark.parametrize("lof_threshold", [None, 1.5])
def test_estimation_on_exact_gaussian_data_recovers_the_parameters(lof_threshold):
    means, covariances = _gaussians()
    truth = ClassGaussians(means, covariances, torch.tensor([1, 1, 1]))
    n = 6000
    x, y = sample_class_gaussians(truth, n, _gen(1))
    got = robust_class_gaussians(x, y, 3, lof_threshold=lof_threshold)
    if lof_threshold is None:
        assert got.counts.tolist() == [n] * 3
    else:  # on clean Gaussian data LOF sets aside almost nothing
        assert (got.counts >= 0.98 * n).all()
    for c in range(3):
        standard_error = (covariances[c].diagonal() / n).sqrt()
        assert ((got.means[c] - means[c]).abs() <= 4 * standard_error).all()
        tolerance = 0.08 if lof_threshold is None else 0.15  # LOF trims the far tails a little
        assert torch.allclose(got.covariances[c], covariances[c], atol=tolerance * float(
            covariances[c].diagonal().max()))


def test_outlier_removal_recovers_the_mean_under_label_noise():
    # class 0: 400 points around 0, plus 45 mislabeled ones from 9 other classes far away
    g = _gen(2)
    clean = torch.randn(400, 2, generator=g, dtype=torch.float64)
    centers = 8.0 * torch.stack([torch.tensor([np.cos(a), np.sin(a)]) for a in
                                 np.linspace(0, 2 * np.pi, 9, endpoint=False)])
    mislabeled = (centers.repeat_interleave(5, 0)
                  + torch.randn(45, 2, generator=g, dtype=torch.float64))
    mislabeled[:, 0] += 4.0  # not symmetric around 0: the naive mean is pulled off
    x = torch.cat([clean, mislabeled])
    y = torch.zeros(len(x), dtype=torch.long)
    naive = robust_class_gaussians(x, y, 1, lof_threshold=None).means[0]
    robust = robust_class_gaussians(x, y, 1, n_neighbors=20, lof_threshold=1.5)
    assert naive.norm() > 0.35
    assert robust.means[0].norm() < 0.15
    set_aside = local_outlier_factor(x, 20) > 1.5
    assert int(set_aside[400:].sum()) >= 41  # 90% of the mislabeled points
    assert int(set_aside[:400].sum()) <= 20  # and at most 5% of the clean ones
    assert int(robust.counts[0]) == int((~set_aside).sum())


def test_tail_calibration_borrows_the_nearest_head_covariances():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [1.2, 0.1]], dtype=torch.float64)
    covariances = torch.stack([k * torch.eye(2, dtype=torch.float64) for k in (1.0, 2.0, 5.0,
                                                                                0.0)])
    out = calibrate_tail(ClassGaussians(means, covariances, torch.tensor([100, 80, 90, 4])),
                         neighbors=2, shrinkage=0.1)
    eye = torch.eye(2, dtype=torch.float64)
    assert torch.allclose(out.covariances[3], 1.5 * eye + 0.1 * eye)  # heads 1 and 0 nearest
    for c, k in ((0, 1.0), (1, 2.0), (2, 5.0)):
        assert torch.allclose(out.covariances[c], (k + 0.1) * eye)
    assert torch.equal(out.means, means)


def test_sampling_moments_including_a_singular_covariance():
    means, covariances = _gaussians()
    covariances[1] = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
                                  dtype=torch.float64)  # rank one
    draws, labels = sample_class_gaussians(ClassGaussians(means, covariances,
                                                          torch.tensor([3, 3, 0])), 40000, _gen(3))
    assert labels.unique().tolist() == [0, 1]  # class 2 has no examples: not sampled
    for c in (0, 1):
        part = draws[labels == c]
        assert torch.allclose(part.mean(0), means[c], atol=0.03)
        assert torch.allclose(torch.cov(part.T), covariances[c], atol=0.04)
    a, _ = sample_class_gaussians(ClassGaussians(means, covariances, torch.ones(3)), 5, _gen(4))
    b, _ = sample_class_gaussians(ClassGaussians(means, covariances, torch.ones(3)), 5, _gen(4))
    assert torch.equal(a, b)


def test_retraining_on_true_gaussians_gives_the_lda_boundary():
    # equal priors and covariances: the Bayes boundary is w = Σ⁻¹(μ1 − μ0), b = −½(μ0 + μ1)ᵀw
    means = torch.tensor([[0.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    truth = ClassGaussians(means, torch.stack([sigma, sigma]), torch.tensor([1, 1]))
    x, y = sample_class_gaussians(truth, 20000, _gen(5))
    head = fit_linear_classifier(x, y, 2, steps=400, lr=0.1)
    w = (head.weight[1] - head.weight[0]).double()
    b = float(head.bias[1] - head.bias[0])
    w_star = torch.linalg.solve(sigma, means[1] - means[0])
    b_star = float(-0.5 * (means[0] + means[1]) @ w_star)
    assert float(torch.nn.functional.cosine_similarity(w, w_star, dim=0)) > 0.999
    assert float((w - w_star).norm()) <= 0.03 * float(w_star.norm())
    assert b == pytest.approx(b_star, rel=0.03)
    test, _ = sample_class_gaussians(truth, 5000, _gen(6))
    agree = ((test @ w + b > 0) == (test @ w_star + b_star > 0)).double().mean()
    assert agree > 0.995


def test_rcal_head_on_a_noisy_long_tailed_toy_follows_the_bayes_rule():
    # 3 classes N(center_c, I), long-tailed (300/100/40), 10% of the head's labels flipped
    # into the other two classes. On balanced test data the Bayes rule is the nearest center.
    g = _gen(7)
    centers = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    sizes = (300, 100, 40)
    x = torch.cat([centers[c] + torch.randn(n, 2, generator=g) for c, n in enumerate(sizes)])
    noisy = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    noisy[:30] = torch.arange(30) % 2 + 1
    test = torch.cat([centers[c] + torch.randn(500, 2, generator=g) for c in range(3)])
    bayes = torch.cdist(test, centers).argmin(1)
    # estimated from the examples a plain fit assigns to their label, trained on the samples
    # alone (balanced draws of the recovered Gaussians)
    keep = fit_linear_classifier(x, noisy, 3)(x).argmax(1) == noisy
    head = rcal_head(x, noisy, 3, _gen(8), samples_per_class=300, use_real=False, keep=keep)
    assert float((head(test).argmax(1) == bayes).float().mean()) > 0.98
    # LOF alone misses the clusters of 15 mislabeled points: the tail-class estimate drifts
    lof_only = robust_class_gaussians(x, noisy, 3)
    with_keep = robust_class_gaussians(x, noisy, 3, keep=keep)
    assert (with_keep.means[2] - centers[2]).norm() < 0.3 < (lof_only.means[2] - centers[2]).norm()


def _state(step=10, max_steps=10, seed=0):
    g = _gen(9)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(90, 4, generator=g)
    y = torch.arange(3).repeat(30)
    return State(model=model, optimizer=None, max_steps=max_steps, step=step,
                 train_data=(x, y), seed=seed)


def test_technique_replaces_the_head_only_and_is_deterministic():
    state = _state()
    before = copy.deepcopy(state.model.state_dict())
    model = RCAL(samples_per_class=20, steps=50).eval_model(state)
    again = RCAL(samples_per_class=20, steps=50).eval_model(state)
    assert model is not None and again is not None
    assert all(torch.equal(before[k], v) for k, v in state.model.state_dict().items())
    assert torch.equal(model[0].weight, state.model[0].weight)  # the featurizer is untouched
    assert not torch.equal(model[2].weight, state.model[2].weight)
    assert torch.equal(model[2].weight, again[2].weight)
    # the same head as the plain-loop function on the same features and stream
    from heldout.core.sampling import stream_generator
    with torch.no_grad():
        features = state.model[:2](state.train_data[0])
        keep = state.model(state.train_data[0]).argmax(1) == state.train_data[1]
    head = rcal_head(features, state.train_data[1], 3, stream_generator(0, "rcal@10"),
                     samples_per_class=20, steps=50, keep=keep)
    assert torch.equal(model[2].weight, head.weight)


def test_technique_waits_for_start_fraction_and_needs_tensors():
    assert RCAL(start_fraction=0.5).eval_model(_state(step=4)) is None
    assert RCAL(start_fraction=0.5, steps=5).eval_model(_state(step=5)) is not None
    state = _state()
    state.train_data = None
    with pytest.raises(ValueError, match="train_data"):
        RCAL().eval_model(state)


def test_bad_input_names_the_parameter():
    x, y = torch.randn(10, 2), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="n_neighbors"):
        local_outlier_factor(x, 0)
    with pytest.raises(ValueError, match="lof_threshold"):
        robust_class_gaussians(x, y, 1, lof_threshold=0.0)
    g = robust_class_gaussians(x, y, 1)
    with pytest.raises(ValueError, match="tail_fraction"):
        calibrate_tail(g, tail_fraction=0.0)
    with pytest.raises(ValueError, match="shrinkage"):
        calibrate_tail(g, shrinkage=-1.0)
    with pytest.raises(ValueError, match="samples_per_class"):
        sample_class_gaussians(g, -1, _gen(0))
    with pytest.raises(ValueError, match="shrinkage"):
        RCAL(shrinkage=-0.1)
    with pytest.raises(ValueError, match="features"):
        robust_class_gaussians(x, y[:3], 1)
    with pytest.raises(ValueError, match="keep"):
        robust_class_gaussians(x, y, 1, keep=torch.ones(3, dtype=torch.bool))
