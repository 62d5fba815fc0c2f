"""Base/novel class splits and the episode sampler: class counts, disjointness, determinism,
Dirichlet proportions, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heldout.registry import TASKS
from heldout.tasks.digits import Digits, digits_arrays
from heldout.tasks.few_shot import (
    DigitsBaseNovel,
    EpisodeSpec,
    MNIST1DBaseNovel,
    dirichlet_counts,
    sample_episode,
)


def test_digits_base_novel_keeps_base_classes_and_moves_all_novel_examples():
    task = DigitsBaseNovel(base_classes=(1, 3, 5, 7, 9))
    splits, parent = task.splits(0), Digits().splits(0)
    assert splits.num_classes == 5
    # base splits: the parent's base-class examples, in order, labels 1,3,5,7,9 -> 0..4
    for name in ("train", "val", "test"):
        keep = parent[name].y % 2 == 1
        assert torch.equal(splits[name].x, parent[name].x[keep])
        assert torch.equal(splits[name].y, (parent[name].y[keep] - 1) // 2)
    # novel: every even digit of the data set, labels 0,2,4,6,8 -> 0..4
    _, labels = digits_arrays()
    novel = splits.extra["novel"]
    assert len(novel) == int((labels % 2 == 0).sum())
    even = torch.tensor(labels[labels % 2 == 0])
    assert torch.equal(torch.bincount(novel.y), torch.bincount(even // 2))
    assert torch.equal(novel.x, task.splits(0).extra["novel"].x)


def test_mnist1d_base_novel(tmp_path, monkeypatch):
    monkeypatch.setenv("HELDOUT_CACHE", str(tmp_path))
    splits = MNIST1DBaseNovel(num_samples=400).splits(0)
    assert splits.num_classes == 5 and int(splits.train.y.max()) == 4
    assert sorted(torch.unique(splits.extra["novel"].y).tolist()) == [0, 1, 2, 3, 4]
    sizes = [len(splits[name]) for name in ("train", "val", "test", "novel")]
    assert sum(sizes) == 400


@pytest.mark.parametrize("bad", [(), (0, 0, 1), (0, 1, 10), (0,), tuple(range(10))])
def test_bad_base_classes_are_refused(bad):
    with pytest.raises(ValueError, match="base_classes"):
        TASKS.build("digits_base_novel", base_classes=bad)


def pool(n_classes: int = 6, per_class: int = 30):
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return torch.arange(len(y), dtype=torch.float32).unsqueeze(1), y


def test_balanced_episode_counts_labels_and_disjointness():
    x, y = pool()
    e = sample_episode(x, y, n_way=4, k_shot=3, n_query=7,
                       generator=torch.Generator().manual_seed(1))
    assert torch.bincount(e.support_y).tolist() == [3] * 4
    assert torch.bincount(e.query_y).tolist() == [7] * 4
    support_ids = set(e.support_x.flatten().tolist())
    query_ids = set(e.query_x.flatten().tolist())
    assert not support_ids & query_ids and len(support_ids) == 12 and len(query_ids) == 28
    # each episode label is one original class, the same for supports and queries
    original = {}
    for xs, ys in ((e.support_x, e.support_y), (e.query_x, e.query_y)):
        for value, label in zip(xs.flatten().tolist(), ys.tolist(), strict=True):
            original.setdefault(label, set()).add(int(value) // 30)
    assert all(len(c) == 1 for c in original.values())
    assert len(set().union(*original.values())) == 4


def test_episodes_are_deterministic_in_the_generator():
    x, y = pool()
    spec = EpisodeSpec(n_way=3, k_shot=2, n_query=5, alpha=2.0)
    a = spec.sample(x, y, torch.Generator().manual_seed(4))
    b = spec.sample(x, y, torch.Generator().manual_seed(4))
    c = spec.sample(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a.query_x, b.query_x) and torch.equal(a.support_x, b.support_x)
    assert not torch.equal(a.query_x, c.query_x) or not torch.equal(a.support_x, c.support_x)


def test_dirichlet_counts_sum_exactly_and_follow_largest_remainders():
    # 5, 2.5, 2.5: one short, the tie goes to the lower class
    assert dirichlet_counts(10, torch.tensor([0.5, 0.25, 0.25])).tolist() == [5, 3, 2]
    counts = dirichlet_counts(75, torch.tensor([0.013, 0.4, 0.587], dtype=torch.float64))
    # 0.975, 30, 44.025: the largest remainder (0.975) gets the missing query
    assert counts.tolist() == [1, 30, 44] and int(counts.sum()) == 75


def test_imbalanced_queries_have_dirichlet_mean_proportions():
    """Over many episodes the share of the i-th drawn class has mean 1/N (the Dirichlet mean)
    and the variance of a Dirichlet(α·1) marginal, (N−1) / (N²(Nα+1)), up to rounding."""
    x, y = pool(6, 100)
    n_way, n_query, alpha = 5, 15, 2.0
    generator = torch.Generator().manual_seed(0)
    counts = np.array([
        torch.bincount(sample_episode(x, y, n_way=n_way, k_shot=1, n_query=n_query, alpha=alpha,
                                      generator=generator).query_y, minlength=n_way).numpy()
        for _ in range(800)])
    assert (counts.sum(1) == n_way * n_query).all()
    shares = counts / (n_way * n_query)
    np.testing.assert_allclose(shares.mean(0), 1 / n_way, atol=0.02)
    want_var = (n_way - 1) / (n_way**2 * (n_way * alpha + 1))
    np.testing.assert_allclose(shares.var(0).mean(), want_var, rtol=0.15)
    # small alpha: strongly imbalanced (some class nearly empty in most episodes)
    sparse = [torch.bincount(sample_episode(x, y, n_way=n_way, k_shot=1, n_query=n_query,
                                            alpha=0.2, generator=generator).query_y,
                             minlength=n_way).min() for _ in range(50)]
    assert np.mean([int(s) == 0 for s in sparse]) > 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"n_way": 7}, "n_way=7"),
    ({"k_shot": 0}, "k_shot"),
    ({"n_query": 1.5}, "n_query"),
    ({"alpha": 0.0}, "alpha"),
    ({"k_shot": 20, "n_query": 15}, "too few"),
])
def test_impossible_requests_are_refused(kwargs, match):
    x, y = pool()
    args = {"n_way": 5, "k_shot": 1, "n_query": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_episode(x, y, generator=torch.Generator().manual_seed(0), **args)
