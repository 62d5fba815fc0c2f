"""Rich Feature Construction (#55): the adversarial reweighting and the robust loss on hand
cases, one episode equal to a plain ERM loop, the weights moving toward the examples the
previous features fail on, and the technique's frozen synthesis equal to the pipeline's."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.core.adapter import split_head
from heldout.core.sampling import stream_generator
from heldout.engine.trainer import Trainer
from heldout.methods.rich_features import (
    RichFeatureConstruction,
    RichFeatureModel,
    RichFeatures,
    adversarial_weights,
    discovery_episode,
    failure_groups,
    rich_feature_construction,
    robust_loss,
)

torch.set_num_threads(1)


def test_adversarial_weights_on_a_hand_case():
    q = adversarial_weights(torch.tensor([0.25, 0.25, 0.5]), torch.tensor([1.0, 0.0, 9.0]),
                            step_size=math.log(2), present=torch.tensor([True, True, False]))
    # present groups: 0.25·2 and 0.25·1, rescaled to their share 0.5; the absent one keeps 0.5
    assert q.tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 2])
    same = adversarial_weights(torch.tensor([0.2, 0.8]), torch.tensor([3.0, 1.0]), 0.0)
    assert same.tolist() == pytest.approx([0.2, 0.8])  # η = 0: no ascent
    with pytest.raises(ValueError, match="step_size"):
        adversarial_weights(torch.ones(2) / 2, torch.ones(2), -1.0)


def test_robust_loss_on_a_hand_case():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss, per_group = robust_loss(losses, torch.tensor([0, 0, 1, 1]), torch.tensor([0.25, 0.75]))
    assert per_group.tolist() == [1.5, 3.5] and float(loss) == pytest.approx(3.0)
    loss, _ = robust_loss(losses, torch.tensor([0, 0, 2, 2]), torch.tensor([0.5, 0.25, 0.25]))
    assert float(loss) == pytest.approx(2 / 3 * 1.5 + 1 / 3 * 3.5)  # group 1 absent
    with pytest.raises(ValueError, match="groups"):
        robust_loss(losses, torch.tensor([0, 1]), torch.ones(2) / 2)


def test_failure_groups_code_the_right_wrong_pattern():
    correct = torch.tensor([[True, False, True, False], [True, True, False, False]])
    assert failure_groups(correct).tolist() == [0, 1, 2, 3]
    assert failure_groups(torch.ones(0, 3, dtype=torch.bool)).tolist() == [0, 0, 0]


def net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2))


def data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] + 0.3 * x[:, 1] > 0).long()


def test_one_episode_is_a_plain_erm_loop_and_its_features():
    x, y = data()
    rich = rich_feature_construction(lambda: net(1), x, y, episodes=1, steps=30,
                                     batch_size=16, lr=1e-2, seed=3)
    reference = net(1)  # independent loop: Adam on the mean cross-entropy, same batches
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    generator = stream_generator(3, "rich_features/episode0")
    for _ in range(30):
        rows = torch.randint(len(x), (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(reference(x[rows]), y[rows]).backward()
        optimizer.step()
    with torch.no_grad():
        assert torch.allclose(rich(x), split_head(reference)[0](x), atol=1e-6)
        assert torch.equal(rich(x), split_head(rich.networks[0])[0](x))


def test_the_weights_move_toward_the_examples_the_features_fail_on():
    x, y = data(200)
    groups = torch.zeros(200, dtype=torch.long)
    groups[:20] = 1
    x, y = x.clone(), y.clone()
    x[10:20], y[10:20] = x[:10], 1 - y[:10]  # group 1: each input with both labels, loss ≥ log 2
    q = discovery_episode(net(0), x, y, groups, steps=60, batch_size=32, lr=1e-2,
                          step_size=0.05, generator=torch.Generator().manual_seed(0))
    assert float(q[1]) > 0.5  # from 0.5 each: the hard group now outweighs the easy one
    q0 = discovery_episode(net(0), x, y, torch.zeros(200, dtype=torch.long), steps=5,
                           batch_size=32, lr=1e-2, step_size=0.05,
                           generator=torch.Generator().manual_seed(0))
    assert q0.tolist() == [1.0]  # one group: ERM


def test_the_technique_freezes_the_pipelines_representation():
    x, y = data()
    model = net(2)
    initial = copy.deepcopy(model)
    technique = RichFeatureConstruction(episodes=2, episode_steps=15, episode_lr=1e-2)
    trainer = Trainer(model, lambda p: torch.optim.SGD(p, lr=0.1), (x, y), max_steps=10,
                      batch_size=16, techniques=[technique], measures=[], eval_every=10, seed=5)
    rich_model = trainer.model
    assert isinstance(rich_model, RichFeatureModel)
    fresh = copy.deepcopy(rich_model.rich.networks[1])  # episode 2's initialization
    trainer.fit()
    made = iter([initial, fresh])
    pipeline = rich_feature_construction(lambda: next(made), x, y, episodes=2, steps=15,
                                         batch_size=16, lr=1e-2, seed=5)
    with torch.no_grad():
        assert torch.allclose(rich_model.rich(x), pipeline(x), atol=1e-6)
        assert rich_model.rich(x).shape == (len(x), 24)
    assert bool(rich_model.constructed)
    assert not any(p.requires_grad for p in rich_model.rich.parameters())
    with pytest.raises(ValueError, match="at least one network"):
        RichFeatures([])
    with pytest.raises(ValueError, match="episodes"):
        RichFeatureConstruction(episodes=0)
