"""UNEM against oracles: with γ = 0 and one temperature its layers are soft k-means steps
(by hand and through :func:`kmeans`), the class-balance term by hand, learned
hyper-parameters lower the validation loss, and the fitted state checkpoints."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.adapt.few_shot import cl2n, kmeans
from heldout.adapt.unem import UNEM, unrolled_em
from heldout.tasks.few_shot import sample_episode


def small_episode(dtype=torch.float64):
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=dtype)
    support_y = torch.tensor([0, 1])
    query = torch.tensor([[0.4, 0.1], [1.5, -0.2], [2.5, 0.3], [1.0, 0.5]], dtype=dtype)
    return support, support_y, query


def test_two_layers_without_balance_are_one_soft_kmeans_step_by_hand():
    support, support_y, query = small_episode()
    t = 0.5
    r = torch.softmax(-torch.cdist(query, support) ** 2 / t, dim=1)  # E-step at prototypes
    centers = (support + r.T @ query) / (1 + r.sum(0)).unsqueeze(1)  # one support per class
    want = torch.log_softmax(-torch.cdist(query, centers) ** 2 / t, dim=1)
    got = unrolled_em(support, support_y, query, torch.tensor([t, t], dtype=torch.float64),
                      torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_without_balance_it_is_soft_kmeans(layers):
    support, support_y, query = small_episode()
    got = unrolled_em(support, support_y, query, torch.full((layers,), 0.3, dtype=torch.float64),
                      torch.zeros(layers, dtype=torch.float64))
    want, _ = kmeans(support, support_y, query, soft=True, temperature=0.3,
                     iterations=layers - 1)
    torch.testing.assert_close(got, want)


def test_class_balance_term_by_hand():
    support, support_y, query = small_episode()
    t, gamma = 0.5, 2.0
    r = torch.softmax(-torch.cdist(query, support) ** 2 / t, dim=1)  # layer 1: no prior yet
    centers = (support + r.T @ query) / (1 + r.sum(0)).unsqueeze(1)
    prior = torch.log(r.mean(0)) + 1
    want = torch.log_softmax(-torch.cdist(query, centers) ** 2 / t + gamma * prior, dim=1)
    got = unrolled_em(support, support_y, query, torch.tensor([t, t], dtype=torch.float64),
                      torch.tensor([5.0, gamma], dtype=torch.float64))  # γ_1 has no effect
    torch.testing.assert_close(got, want)


def identity_net(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Identity(), nn.Linear(dim, 2))


def pool(seed: int, n_classes: int = 5, per_class: int = 60, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g) * 1.5
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def episodes(x, y, n, seed, alpha=1.0):
    g = torch.Generator().manual_seed(seed)
    return [sample_episode(x, y, n_way=5, k_shot=1, n_query=10, alpha=alpha, generator=g)
            for _ in range(n)]


def mean_loss(adapter, eps):
    return float(torch.stack([F.nll_loss(adapter(e.query_x, support_x=e.support_x,
                                                 support_y=e.support_y), e.query_y)
                              for e in eps]).mean())


def test_fit_lowers_the_loss_on_held_out_episodes_and_checkpoints():
    x, y = pool(0)
    net = identity_net(6)
    adapter = UNEM(net, layers=4, temperature=1.0, balance=0.0)
    train, held_out = episodes(x, y, 30, seed=1), episodes(x, y, 30, seed=2)
    before = mean_loss(adapter, held_out)
    history = adapter.fit(train, epochs=15, lr=0.05)
    assert history[-1] < history[0]
    after = mean_loss(adapter, held_out)
    assert after < before
    assert not torch.equal(adapter.log_temperatures, torch.zeros(4))
    # the fitted values are state: a checkpoint restores them into a fresh adapter
    buffer = io.BytesIO()
    torch.save(adapter.state_dict(), buffer)
    buffer.seek(0)
    fresh = UNEM(net, layers=4, temperature=1.0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    e = held_out[0]
    assert torch.equal(fresh(e.query_x, support_x=e.support_x, support_y=e.support_y),
                       adapter(e.query_x, support_x=e.support_x, support_y=e.support_y))
    # fitting leaves the backbone alone
    assert all(not p.requires_grad or p.grad is None for p in adapter.net.parameters())


def test_default_unfitted_adapter_classifies():
    x, y = pool(3)
    adapter = UNEM(identity_net(6))
    e = episodes(x, y, 1, seed=0)[0]
    scores = adapter(e.query_x, support_x=e.support_x, support_y=e.support_y)
    assert scores.shape == (len(e.query_x), 5) and torch.isfinite(scores).all()
    support, query = cl2n(e.support_x, e.support_x.mean(0)), cl2n(e.query_x, e.support_x.mean(0))
    want, _ = kmeans(support, e.support_y, query, soft=True, temperature=0.1, iterations=9)
    torch.testing.assert_close(scores, want)


def test_bad_input_is_refused():
    support, support_y, query = small_episode()
    with pytest.raises(ValueError, match="temperatures and balances"):
        unrolled_em(support, support_y, query, torch.ones(2), torch.zeros(3))
    with pytest.raises(RuntimeError, match="bind"):
        UNEM().fit([])
    with pytest.raises(ValueError, match="epochs"):
        UNEM(identity_net(2)).fit([], epochs=1)
    with pytest.raises(ValueError, match="layers"):
        from heldout.registry import ADAPTERS
        ADAPTERS.build("unem", layers=0)
