"""DRM's test-time half: entropy-based head selection and weighting on hand cases, the
fallback to a single head, and the online steering of the heads only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heldout.adapt.drm import DRMAdapter, combine_heads
from heldout.methods.drm import DomainHeads

torch.set_num_threads(1)


def drm_network(seed: int = 0) -> DomainHeads:
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return DomainHeads(base, 3).eval()


def test_select_takes_the_lowest_entropy_head_per_sample():
    logits = torch.tensor([
        [[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # sample 0: head 0 surest
        [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 6.0]],  # sample 1: head 2 surest
    ])
    got = combine_heads(logits, "select")
    assert torch.allclose(got[0], logits[0, 0].softmax(0))
    assert torch.allclose(got[1], logits[1, 2].softmax(0))


def test_weighted_uses_inverse_entropy_powers():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # p = (.5, .5) and (.75, .25)
    h0, h1 = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    w0, w1 = h0 ** -2 / (h0 ** -2 + h1 ** -2), h1 ** -2 / (h0 ** -2 + h1 ** -2)
    got = combine_heads(logits, "weighted", gamma=2.0)
    assert got[0].tolist() == pytest.approx([w0 * 0.5 + w1 * 0.75, w0 * 0.5 + w1 * 0.25])
    with pytest.raises(ValueError, match="combine"):
        combine_heads(logits, "vote")  # type: ignore[arg-type]


def test_without_steps_the_adapter_is_the_drm_networks_selection():
    net = drm_network()
    x = torch.randn(20, 5)
    adapter = DRMAdapter(net, steps=0)
    with torch.no_grad():
        assert torch.allclose(adapter(x), net(x), atol=1e-6)


def test_a_plain_model_falls_back_to_its_single_head():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(10, 5)
    assert torch.allclose(DRMAdapter(net, steps=0)(x), net(x).log_softmax(-1), atol=1e-6)
    with pytest.raises(ValueError, match="drm needs a model"):
        DRMAdapter(nn.Sequential(nn.Linear(5, 8), nn.ReLU()))


def test_online_steps_move_the_heads_only_and_only_when_confident():
    net = drm_network()
    x = torch.randn(32, 5)
    still = DRMAdapter(net, beta=1.1)  # nothing is ever that confident
    still(x)
    assert all(torch.equal(a, b) for a, b in zip(still.net.state_dict().values(),
                                                 net.state_dict().values(), strict=True))
    moving = DRMAdapter(net, beta=0.0, lr=1e-2)
    first = moving(x)
    assert torch.equal(moving.net.features[0].weight, net.features[0].weight)
    assert not torch.equal(moving.net.heads[1].weight, net.heads[1].weight)
    assert not torch.equal(moving(x), first)  # the steered heads predict differently
