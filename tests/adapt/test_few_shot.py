"""Few-shot adapters against independent oracles: SimpleShot by hand, hard k-means against
scikit-learn's KMeans, soft k-means by hand, LaplacianShot at λ = 0 (nearest prototype), its
objective (recomputed here) never increasing, and a tiny hand case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SklearnKMeans
from torch import nn

from heldout.adapt.few_shot import (
    KMeans,
    LaplacianShot,
    SimpleShot,
    cl2n,
    kmeans,
    knn_affinity,
    laplacian_shot,
    nearest_prototype,
)
from heldout.core.adapter import Source
from heldout.registry import ADAPTERS


def episode(seed: int, n_way: int = 5, shots: int = 2, per_class: int = 15, dim: int = 8,
            spread: float = 0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_way, dim, generator=g, dtype=dtype) * 2
    support_y = torch.arange(n_way).repeat_interleave(shots)
    query_y = torch.arange(n_way).repeat_interleave(per_class)
    support = centers[support_y] + spread * torch.randn(len(support_y), dim, generator=g,
                                                        dtype=dtype)
    query = centers[query_y] + spread * torch.randn(len(query_y), dim, generator=g, dtype=dtype)
    return support, support_y, query, query_y


def test_cl2n_and_nearest_prototype_by_hand():
    features = torch.tensor([[4.0, 1.0], [1.0, 5.0]])
    # centered by (1, 1): (3, 0) -> (1, 0); (0, 4) -> (0, 1)
    assert torch.allclose(cl2n(features, torch.tensor([1.0, 1.0])),
                          torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    support_y = torch.tensor([0, 0, 1])  # prototypes (1, 0) and (0, 3)
    scores = nearest_prototype(support, support_y, torch.tensor([[1.0, 1.0]]))
    assert scores.tolist() == [[-1.0, -5.0]]


def test_hard_kmeans_without_supports_equals_sklearn_lloyd():
    for seed in range(5):
        support, support_y, query, _ = episode(seed)
        ours_scores, ours_centers = kmeans(support, support_y, query, iterations=50,
                                           include_support=False)
        init = torch.stack([support[support_y == c].mean(0) for c in range(5)])
        reference = SklearnKMeans(n_clusters=5, init=init.numpy(), n_init=1, max_iter=50,
                                  tol=0.0, algorithm="lloyd").fit(query.numpy())
        np.testing.assert_allclose(ours_centers.numpy(), reference.cluster_centers_,
                                   rtol=1e-10, atol=1e-12)
        assert (ours_scores.argmax(1).numpy() == reference.labels_).all()


def test_hard_kmeans_keeps_supports_in_the_means_by_hand():
    support, support_y = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1])
    query = torch.tensor([[3.0], [4.0], [9.0]])
    # iteration 1: 3, 4 -> class 0, 9 -> class 1; centers (0+3+4)/3, (10+9)/2; stable after
    _, centers = kmeans(support, support_y, query, iterations=5)
    assert centers.flatten().tolist() == pytest.approx([7 / 3, 9.5])


def test_soft_kmeans_step_by_hand():
    support, support_y = torch.tensor([[0.0], [2.0]], dtype=torch.float64), torch.tensor([0, 1])
    query = torch.tensor([[0.5], [1.5], [3.0]], dtype=torch.float64)
    temperature = 0.7
    d = (query - torch.tensor([[0.0, 2.0]], dtype=torch.float64)) ** 2
    r = torch.exp(-d / temperature)
    r = r / r.sum(1, keepdim=True)
    centers = torch.stack([(0.0 + (r[:, 0] * query[:, 0]).sum()) / (1 + r[:, 0].sum()),
                           (2.0 + (r[:, 1] * query[:, 0]).sum()) / (1 + r[:, 1].sum())])
    d1 = (query - centers.unsqueeze(0)) ** 2
    want = torch.log_softmax(-d1 / temperature, dim=1)
    scores, got_centers = kmeans(support, support_y, query, soft=True, temperature=temperature,
                                 iterations=1)
    torch.testing.assert_close(got_centers.flatten(), centers)
    torch.testing.assert_close(scores, want)


def test_knn_affinity_by_hand():
    # points 0, 1, 3, 10 on a line; 2 nearest neighbours: 0 -> {1, 3}, 1 -> {0, 3},
    # 3 -> {1, 0}, 10 -> {3, 1}
    w = knn_affinity(torch.tensor([[0.0], [1.0], [3.0], [10.0]]), 2)
    want = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 0.5], [1, 1, 0, 0.5], [0, 0.5, 0.5, 0]])
    assert torch.equal(w, want) and torch.equal(w, w.T)


def test_laplacian_lambda_zero_is_nearest_prototype():
    for seed in range(5):
        support, support_y, query, _ = episode(seed, spread=1.5)
        scores = nearest_prototype(support, support_y, query)
        result = laplacian_shot(-scores, knn_affinity(query, 3), 0.0)
        torch.testing.assert_close(result.log_assign, torch.log_softmax(scores, dim=1))
        assert torch.equal(result.log_assign.argmax(1), scores.argmax(1))


def objective(assign, unary, affinity, lam):
    """E(Y) = Σ y·a − (λ/2) Σ_pq w_pq y_p·y_q + Σ y log y, written out with loops."""
    q, n = assign.shape
    total = 0.0
    for i in range(q):
        for c in range(n):
            y = float(assign[i, c])
            total += y * float(unary[i, c]) + (y * np.log(y) if y > 0 else 0.0)
        for j in range(q):
            total -= lam / 2 * float(affinity[i, j]) * float(assign[i] @ assign[j])
    return total


@pytest.mark.parametrize("kind", ["gaussian_kernel", "knn"])
def test_laplacian_objective_never_increases(kind):
    """With a positive semi-definite affinity (a Gaussian kernel) the bound guarantees a
    non-increasing objective; the kNN affinity carries no such guarantee, but on these
    episodes it decreases too. The objective is recomputed here by loops from the final
    assignments of runs stopped after 1, 2, ... iterations."""
    for seed in range(4):
        support, support_y, query, _ = episode(seed, n_way=3, per_class=6, spread=1.5)
        support, query = cl2n(support, None), cl2n(query, None)
        unary = -nearest_prototype(support, support_y, query)
        if kind == "knn":
            affinity, lam = knn_affinity(query, 3), 1.0
        else:
            affinity, lam = torch.exp(-torch.cdist(query, query) ** 2), 0.5
            assert torch.linalg.eigvalsh(affinity).min() > -1e-10  # PSD
        energies = [objective(torch.softmax(-unary, dim=1), unary, affinity, lam)]
        for stop in range(1, 12):
            result = laplacian_shot(unary, affinity, lam, max_iterations=stop, tol=0.0)
            energies.append(objective(result.log_assign.exp(), unary, affinity, lam))
            assert result.objectives[-1] == pytest.approx(energies[-1], rel=1e-9)
        assert all(b <= a + 1e-9 for a, b in zip(energies, energies[1:], strict=False))
        assert energies[-1] < energies[0]


def test_laplacian_stops_when_the_objective_settles():
    support, support_y, query, _ = episode(0)
    unary = -nearest_prototype(support, support_y, query)
    result = laplacian_shot(unary, knn_affinity(query, 3), 1.0, max_iterations=100, tol=1e-6)
    assert result.converged and len(result.objectives) < 100
    last, before = result.objectives[-1], result.objectives[-2]
    assert abs(last - before) <= 1e-6 * abs(before)
    capped = laplacian_shot(unary, knn_affinity(query, 3), 1.0, max_iterations=1, tol=1e-6)
    assert not capped.converged and len(capped.objectives) == 1


def test_laplacian_hand_case_flips_an_isolated_ambiguous_query():
    # queries 0 and 1 sit on class 0; query 2 leans to class 1 on its own (0.6 vs 0.5) but
    # is the neighbour of both: y2 ← softmax(−0.6 + 2·0.88, −0.5 + 2·0.12) picks class 0
    unary = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.6, 0.5]])
    w = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    y0 = torch.softmax(-unary, 1)
    first = laplacian_shot(unary, w, 1.0, max_iterations=1)
    torch.testing.assert_close(first.log_assign, torch.log_softmax(-unary + w @ y0, 1))
    assert laplacian_shot(unary, w, 1.0).log_assign.argmax(1).tolist() == [0, 0, 0]
    assert laplacian_shot(unary, w, 0.0).log_assign.argmax(1).tolist() == [0, 0, 1]


def identity_backbone(dim: int) -> nn.Sequential:
    head = nn.Linear(dim, 3)
    return nn.Sequential(nn.Identity(), head)


def test_adapters_use_the_featurizer_and_cl2n_with_the_source_mean():
    support, support_y, query, _ = episode(1, dtype=torch.float32)
    net = identity_backbone(8)
    source = Source(torch.randn(40, 8) + 3, torch.zeros(40, dtype=torch.long))
    center = source.x.mean(0)
    s, q = cl2n(support, center), cl2n(query, center)
    adapter = SimpleShot().bind(net, source)
    torch.testing.assert_close(adapter(query, support_x=support, support_y=support_y),
                               nearest_prototype(s, support_y, q))
    # without source: centered by the support mean
    unbound = SimpleShot(net)
    sc, qc = cl2n(support, support.mean(0)), cl2n(query, support.mean(0))
    torch.testing.assert_close(unbound(query, support_x=support, support_y=support_y),
                               nearest_prototype(sc, support_y, qc))
    km = KMeans(soft=True, temperature=0.2).bind(net, source)
    torch.testing.assert_close(km(query, support_x=support, support_y=support_y),
                               kmeans(s, support_y, q, soft=True, temperature=0.2)[0])
    lap = LaplacianShot(lam=0.0).bind(net, source)
    assert torch.equal(lap(query, support_x=support, support_y=support_y).argmax(1),
                       nearest_prototype(s, support_y, q).argmax(1))


def test_transductive_methods_beat_the_prototype_on_clustered_queries():
    """Noisy supports (one shot), well-clustered queries: using the queries helps."""
    gains = []
    for seed in range(10):
        support, support_y, query, query_y = episode(seed, shots=1, spread=1.2,
                                                     dtype=torch.float32)
        net = identity_backbone(8)
        accuracy = {name: float((ADAPTERS.build(name).bind(net)(
            query, support_x=support, support_y=support_y).argmax(1) == query_y).float().mean())
            for name in ("simpleshot", "kmeans", "laplacianshot")}
        gains.append((accuracy["kmeans"] - accuracy["simpleshot"],
                      accuracy["laplacianshot"] - accuracy["simpleshot"]))
    assert np.mean(gains, axis=0).min() > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"support_x": torch.zeros(2, 8)}, "support_y"),
    ({"support_x": torch.zeros(2, 8), "support_y": torch.tensor([0, 2])}, "every class"),
    ({"support_x": torch.zeros(2, 8), "support_y": torch.tensor([0])}, "support_y"),
    ({"support_x": torch.zeros(2, 8), "support_y": torch.tensor([0, 1]), "other": 1}, "other"),
])
def test_bad_episodes_are_refused(kwargs, match):
    adapter = SimpleShot(identity_backbone(8))
    with pytest.raises((ValueError, TypeError), match=match):
        adapter(torch.zeros(3, 8), **kwargs)


def test_bad_hyper_parameters_name_the_field():
    with pytest.raises(ValueError, match="lam"):
        ADAPTERS.build("laplacianshot", lam=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        ADAPTERS.build("kmeans", temperature=0.0)
    with pytest.raises(ValueError, match="normalize"):
        SimpleShot(normalize="zscore")
