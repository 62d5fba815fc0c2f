"""DRM's training half: one domain is ERM exactly, the loss routes each example to its own
domain's head only, and several domains need their groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.engine.trainer import Trainer
from heldout.methods.drm import DRM, DomainHeads, domain_specific_risk

torch.set_num_threads(1)


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, :3].argmax(1))


def train(techniques, steps: int = 20) -> Trainer:
    trainer = Trainer(mlp(0), lambda p: torch.optim.SGD(p, lr=0.1), data(), max_steps=steps,
                      batch_size=16, techniques=techniques, measures=[], eval_every=steps)
    trainer.fit()
    return trainer


def test_one_domain_is_erm_with_the_same_logits():
    erm, drm = train([]), train([DRM(num_domains=1)])
    x = data(40, seed=9)[0]
    erm.model.eval()
    drm.model.eval()
    with torch.no_grad():
        assert torch.equal(drm.model.head_logits(x)[:, 0], erm.model(x))
        assert torch.allclose(drm.model(x), erm.model(x).log_softmax(-1))


def test_each_example_trains_only_its_own_domains_head():
    torch.manual_seed(0)
    net = DomainHeads(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    domains = torch.tensor([0, 0, 2, 2, 2, 0, 2, 0, 0, 2])  # no example of domain 1
    domain_specific_risk(net.head_logits(x), y, domains).backward()
    assert net.heads[1].weight.grad is None or not net.heads[1].weight.grad.any()
    for k in (0, 2):  # head k's gradient is that of its examples' summed loss / B
        rows = domains == k
        want = torch.autograd.grad(
            F.cross_entropy(net.heads[k](net.features(x[rows])), y[rows], reduction="sum")
            / len(x), net.heads[k].weight)[0]
        assert torch.allclose(net.heads[k].weight.grad, want, atol=1e-7)


def test_loss_matches_a_hand_case_and_checks_its_input():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[1.0, 1.0], [0.0, 0.0]]])
    got = domain_specific_risk(logits, torch.tensor([0, 1]), torch.tensor([1, 0]))
    want = (F.cross_entropy(torch.tensor([[0.0, 3.0]]), torch.tensor([0]))
            + torch.log(torch.tensor(2.0))) / 2
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="domains"):
        domain_specific_risk(logits, torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="head_logits"):
        domain_specific_risk(logits[0], torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_several_domains_need_groups_and_use_them():
    x, y = data()
    with pytest.raises(ValueError, match="use_groups"):
        train([DRM(num_domains=2)], steps=1)
    with pytest.raises(ValueError, match="num_domains=2"):
        DRM(num_domains=2).use_groups(torch.arange(96) % 3)
    groups = torch.where(torch.arange(96) < 48, 3, 7)  # any ids: mapped to heads 0, 1
    technique = DRM(num_domains=2).use_groups(groups)
    trainer = Trainer(mlp(0), lambda p: torch.optim.SGD(p, lr=0.1), (x, y), max_steps=6,
                      batch_size=16, techniques=[technique], measures=[], eval_every=6)
    before = [h.weight.detach().clone() for h in trainer.model.heads]
    trainer.fit()
    assert all(not torch.equal(b, h.weight) for b, h in zip(before, trainer.model.heads,
                                                               strict=True))
