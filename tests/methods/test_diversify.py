"""Diversification (DivDis, #45): the MI disagreement against closed forms and scikit-learn,
the prior regularizer and head selection on hand cases, gradients that separate two heads,
and one head with zero weights equal to ERM exactly."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import mutual_info_score
from torch import nn

from heldout.engine.trainer import Trainer
from heldout.methods.diversify import (
    DiverseHeads,
    Diversify,
    disagreement_queries,
    diversity_loss,
    head_model,
    head_mutual_information,
    prior_loss,
    select_head_by_entropy,
    select_head_by_labels,
)
from heldout.registry import TASKS

torch.set_num_threads(1)


def one_hot(labels: list[int], c: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), c).double()


def test_independent_heads_have_zero_mi_and_identical_ones_the_entropy():
    a = one_hot([0, 0, 0, 1, 1, 1, 2, 2, 2])
    b = one_hot([0, 1, 2, 0, 1, 2, 0, 1, 2])  # every pair of labels once: independent
    assert float(head_mutual_information(a, b)) == pytest.approx(0.0, abs=1e-9)
    skewed = one_hot([0, 0, 0, 1])  # identical deterministic heads: I = H(ŷ)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(head_mutual_information(skewed, skewed)) == pytest.approx(entropy, abs=1e-9)


def test_deterministic_mi_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 3, (40,), generator=g)
        y = torch.where(torch.rand(40, generator=g) < 0.6, x, torch.randint(0, 3, (40,),
                                                                             generator=g))
        ours = float(head_mutual_information(one_hot(x.tolist()), one_hot(y.tolist())))
        assert ours == pytest.approx(mutual_info_score(x.numpy(), y.numpy()), abs=1e-9)


def test_soft_mi_matches_a_hand_computed_joint():
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    q = torch.tensor([[0.6, 0.4], [0.1, 0.9]], dtype=torch.float64)
    joint = [[(p[0, a] * q[0, b] + p[1, a] * q[1, b]) / 2 for b in range(2)] for a in range(2)]
    row = [sum(joint[a]) for a in range(2)]
    col = [joint[0][b] + joint[1][b] for b in range(2)]
    want = sum(joint[a][b] * math.log(joint[a][b] / (row[a] * col[b]))
               for a in range(2) for b in range(2))
    assert float(head_mutual_information(p, q)) == pytest.approx(float(want), abs=1e-12)
    three = torch.stack([p, q, p], dim=1)  # pairs (0,1), (0,2), (1,2)
    expected = 2 * want + float(head_mutual_information(p, p))
    assert float(diversity_loss(three)) == pytest.approx(float(expected), abs=1e-12)
    assert float(diversity_loss(p[:, None])) == 0.0  # one head: no pair


def test_prior_loss_is_the_kl_of_each_heads_marginal():
    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    prior = torch.tensor([0.5, 0.5])
    assert float(prior_loss(probs, prior)) == pytest.approx(0.0, abs=1e-9)
    skew = torch.tensor([0.8, 0.2])  # both marginals are (0.5, 0.5)
    kl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert float(prior_loss(probs, skew)) == pytest.approx(2 * kl, abs=1e-6)
    with pytest.raises(ValueError, match="prior"):
        prior_loss(probs, torch.ones(3) / 3)


def test_disagreement_gradients_separate_two_nearly_identical_heads():
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    first = nn.Linear(2, 2)
    second = nn.Linear(2, 2)
    with torch.no_grad():  # confident, and the same head up to 1e-3
        first.weight.mul_(5)
        second.weight.copy_(first.weight + 1e-3 * torch.randn(2, 2))
        second.bias.copy_(first.bias)
    optimizer = torch.optim.SGD([*first.parameters(), *second.parameters()], lr=1.0)

    def mi() -> torch.Tensor:
        return diversity_loss(torch.stack([first(x), second(x)], 1).softmax(-1))

    start = float(mi().detach())
    assert start > 0.1  # identical predictions: high MI
    for _ in range(200):
        optimizer.zero_grad()
        mi().backward()
        optimizer.step()
    assert float(mi().detach()) < start / 4
    differ = (first(x).argmax(1) != second(x).argmax(1)).float().mean()
    assert float(differ) > 0.2  # the heads now predict differently on many inputs


def test_head_selection_rules_on_hand_cases():
    logits = torch.tensor([[[2.0, 0], [0, 2]], [[2, 0], [2, 0]], [[0, 2], [0, 2]]])  # (3, 2, 2)
    y = torch.tensor([1, 0, 1])  # head 0 right on 2, head 1 on 3
    assert select_head_by_labels(logits, y) == 1
    assert select_head_by_labels(logits, torch.tensor([0, 0, 1])) == 0  # ties: lowest index
    confident = torch.tensor([[[0.1, 0], [9, 0]], [[0, 0.2], [0, 9]]])
    assert select_head_by_entropy(confident) == 1
    assert disagreement_queries(logits, 1).tolist() == [0]  # heads disagree on example 0 only
    with pytest.raises(ValueError, match="m must be"):
        disagreement_queries(logits, 4)
    with pytest.raises(ValueError, match="targets"):
        select_head_by_labels(logits, y[:2])


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, :3].argmax(1)


def train(techniques, steps: int = 20) -> Trainer:
    trainer = Trainer(mlp(0), lambda p: torch.optim.SGD(p, lr=0.1), data(), max_steps=steps,
                      batch_size=16, techniques=techniques, measures=[], eval_every=steps)
    trainer.fit()
    return trainer


def test_one_head_with_zero_weights_is_erm_exactly():
    erm = train([])
    div = train([Diversify(num_heads=1, diversity_weight=0.0, prior_weight=0.0)])
    x = data(40, seed=9)[0]
    erm.model.eval()
    div.model.eval()
    with torch.no_grad():
        assert torch.equal(div.model(x), erm.model(x))


def test_diversified_training_uses_the_target_and_selects_a_head():
    target = data(50, seed=3)[0]
    trainer = train([Diversify(num_heads=3).use_target(target)])
    net = trainer.model
    assert isinstance(net, DiverseHeads)
    net.eval()
    x = data(10, seed=4)[0]
    with torch.no_grad():
        heads = net.head_logits(x)
        assert torch.equal(net(x), heads[:, 0])
        net.select(2)
        assert torch.equal(net(x), heads[:, 2]) and torch.equal(head_model(net, 1)(x), heads[:, 1])
    assert "selected" in net.state_dict()
    with pytest.raises(ValueError, match="head must be"):
        net.select(3)


def test_the_target_comes_from_a_task_split_with_the_run_seed():
    task = {"cue_agreement": [0.9, 0.8, 0.5]}
    technique = Diversify(target_task="spurious", target_params=str(task),
                          target_split="val")
    state = type("S", (), {"seed": 4, "train_data": None})()
    technique.on_fit_start(state)
    want = TASKS.build("spurious", cue_agreement=(0.9, 0.8, 0.5)).splits(4)["val"].x
    assert torch.equal(technique._target, want)


def test_bad_inputs_are_refused_with_the_parameter_named():
    with pytest.raises(ValueError, match="target_params"):
        Diversify(target_params="[1, 2]")
    with pytest.raises(ValueError, match="target_params given without target_task"):
        Diversify(target_params="{a: 1}")
    with pytest.raises(ValueError, match="target_task: unknown task"):
        Diversify(target_task="no-such-task")
    with pytest.raises(ValueError, match="num_heads"):
        Diversify(num_heads=0)
    with pytest.raises(ValueError, match="target inputs"):
        Diversify().use_target(torch.zeros(0, 6))
    technique = Diversify()  # no target and no training tensors
    net = technique.transform_model(mlp(0))
    state = type("S", (), {"model": net, "seed": 0, "step": 0, "train_data": None})()
    with pytest.raises(ValueError, match="unlabelled target inputs"):
        technique.loss(net(torch.randn(4, 6)), torch.zeros(4, dtype=torch.long), state)
    with pytest.raises(ValueError, match="probs_j"):
        head_mutual_information(torch.ones(3, 2), torch.ones(3, 3))
