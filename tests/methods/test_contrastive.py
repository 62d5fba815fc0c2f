"""CLOOB (#69): InfoNCE, InfoLOOB, Hopfield retrieval and the CLOOB loss against hand-computed
cases, and the paired-views training path."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.engine.trainer import Trainer
from heldout.measures.probe import LinearProbe
from heldout.methods.contrastive import (
    CLOOB,
    InfoNCE,
    TwoViewModel,
    cloob_loss,
    hopfield_retrieve,
    info_loob,
    info_nce,
)
from heldout.tasks.paired import PairedViews


def _hand_terms(u, v, tau, leave_out):
    """Both directions of the loss, written out with explicit loops over i and j."""
    n = len(u)
    total = 0.0
    for anchors, others in ((u, v), (v, u)):
        for i in range(n):
            positive = float(anchors[i] @ others[i]) / tau
            denominator = sum(math.exp(float(anchors[i] @ others[j]) / tau)
                              for j in range(n) if not (leave_out and j == i))
            total += -(positive - math.log(denominator)) / n
    return total


def test_info_nce_and_info_loob_match_a_hand_3x3_case():
    u = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    for tau in (1.0, 0.5):
        assert float(info_nce(u, v, tau)) == pytest.approx(_hand_terms(u, v, tau, False),
                                                           rel=1e-12)
        assert float(info_loob(u, v, tau)) == pytest.approx(_hand_terms(u, v, tau, True),
                                                            rel=1e-12)


def test_info_loob_is_info_nce_without_the_positive_in_the_denominator():
    # 2x2, tau = 1: with s = u·vᵀ, InfoNCE row i is log(Σ_j e^{s_ij}) − s_ii; InfoLOOB drops
    # e^{s_ii}, leaving log(e^{s_ij}) − s_ii = s_ij − s_ii for the one other j.
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    s = u @ v.T
    loob = ((s[0, 1] - s[0, 0]) + (s[1, 0] - s[1, 1])) / 2 * 2  # rows, then columns (same)
    assert float(info_loob(u, v, 1.0)) == pytest.approx(float(loob), abs=1e-12)
    nce_rows = torch.logsumexp(s, 1) - s.diagonal()
    nce_cols = torch.logsumexp(s, 0) - s.diagonal()
    assert float(info_nce(u, v, 1.0)) == pytest.approx(float(nce_rows.mean() + nce_cols.mean()))
    # removing the positive always lowers the loss: log(Σ_{j≠i}) < log(Σ_j)
    assert float(info_loob(u, v, 1.0)) < float(info_nce(u, v, 1.0))


def test_hopfield_retrieval_limits():
    gen = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=-1)
    queries = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    # beta = 0: uniform attention, the normalized mean of the memory
    mean = F.normalize(memory.mean(0, keepdim=True), dim=-1).expand(5, -1)
    assert torch.allclose(hopfield_retrieve(queries, memory, 0.0), mean)
    # beta -> infinity: the stored pattern of largest inner product
    nearest = memory[(queries @ memory.T).argmax(dim=1)]
    assert torch.allclose(hopfield_retrieve(queries, memory, 1e6), nearest)
    # a stored pattern at high beta retrieves itself
    assert torch.allclose(hopfield_retrieve(memory, memory, 1e6), memory)


def test_cloob_loss_is_info_loob_of_the_four_retrievals():
    gen = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(7, 3, generator=gen, dtype=torch.float64), dim=-1)
    v = F.normalize(torch.randn(7, 3, generator=gen, dtype=torch.float64), dim=-1)
    beta, tau = 3.0, 0.5

    def retrieve(q, m):  # written out: softmax over stored rows, weighted sum, normalize
        weights = torch.exp(beta * q @ m.T)
        weights = weights / weights.sum(1, keepdim=True)
        out = weights @ m
        return out / out.norm(dim=1, keepdim=True)

    uu, uv, vu, vv = retrieve(u, u), retrieve(v, u), retrieve(u, v), retrieve(v, v)
    first = _hand_terms(uu, uv, tau, True)  # both directions; keep the U-anchored one
    n = len(u)
    term_u = sum(-(float(uu[i] @ uv[i]) / tau - math.log(sum(
        math.exp(float(uu[i] @ uv[j]) / tau) for j in range(n) if j != i))) for i in range(n))
    term_v = sum(-(float(vv[i] @ vu[i]) / tau - math.log(sum(
        math.exp(float(vu[j] @ vv[i]) / tau) for j in range(n) if j != i))) for i in range(n))
    assert float(cloob_loss(u, v, tau, beta)) == pytest.approx((term_u + term_v) / n, rel=1e-10)
    assert first != pytest.approx((term_u + term_v) / n)  # the memories matter


def test_bad_input_names_the_parameter():
    u = torch.randn(3, 2)
    with pytest.raises(ValueError, match="tau"):
        info_nce(u, u, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        info_loob(u[:1], u[:1])
    with pytest.raises(ValueError, match="beta"):
        hopfield_retrieve(u, u, -1.0)
    with pytest.raises(ValueError, match="same shape"):
        cloob_loss(u, torch.randn(3, 4))
    with pytest.raises(ValueError, match="paired task"):
        CLOOB().loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), None)


def test_two_view_model_encodes_each_view_with_one_shared_encoder():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    model = TwoViewModel(net)
    x = torch.randn(5, 6)  # view 0 in features 0-2, view 1 in 3-5
    z = model(x)
    # view k is encoded as the pair (x_k, x_k); swapping the views swaps the features
    assert torch.allclose(z[:, 0], net[:-1](torch.cat([x[:, :3], x[:, :3]], dim=1)))
    assert torch.allclose(z[:, 1], net[:-1](torch.cat([x[:, 3:], x[:, 3:]], dim=1)))
    assert torch.allclose(model(torch.cat([x[:, 3:], x[:, :3]], dim=1)), z.flip(1))
    model.eval()
    assert torch.allclose(model(x), net[-1](z.mean(1)))


@pytest.mark.parametrize("technique", [InfoNCE(), CLOOB()])
def test_contrastive_training_learns_a_probeable_representation(technique):
    """300 steps on paired digit crops: the probe on the learned features beats the
    probe on the untrained network's features (trained with the same seed)."""
    torch.manual_seed(0)
    splits = PairedViews().splits(0)
    data = {"train": splits.train, "test": splits.test}

    def probe(steps):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 10))
        trainer = Trainer(net, lambda p: torch.optim.Adam(p, lr=1e-3), splits.train,
                          max_steps=steps, batch_size=128, techniques=[technique],
                          eval_every=max(steps, 1), measures=[LinearProbe()], eval_data=data)
        return trainer.fit()[-1][1]["test/probe_accuracy"]

    assert probe(300) > probe(0) + 0.1  # measured: 0.36 → 0.59 (infonce), 0.51 (cloob)
