"""Last-layer retraining (#58, DFR): balanced subsets, the head fit against scikit-learn, a
frozen featurizer, and worst-group accuracy on a toy spurious-correlation problem."""

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from heldout import Trainer
from heldout.core.sampling import stream_generator
from heldout.measures.groups import group_metrics
from heldout.methods.last_layer import (
    LastLayerRetraining,
    fit_linear_head,
    group_balanced_subset,
    retrain_last_layer,
)


def test_balanced_subset_has_equal_group_counts_and_is_a_subset():
    groups = torch.tensor([0] * 50 + [1] * 7 + [3] * 20)
    rows = group_balanced_subset(groups, torch.Generator().manual_seed(0))
    assert len(rows.unique()) == len(rows)  # without replacement
    assert rows.min() >= 0 and rows.max() < len(groups)
    assert torch.bincount(groups[rows]).tolist() == [7, 7, 0, 7]
    small = group_balanced_subset(groups, torch.Generator().manual_seed(0), per_group=3)
    assert torch.bincount(groups[small]).tolist() == [3, 3, 0, 3]
    again = group_balanced_subset(groups, torch.Generator().manual_seed(0))
    assert torch.equal(rows, again)
    with pytest.raises(ValueError, match="per_group"):
        group_balanced_subset(groups, per_group=8)
    with pytest.raises(ValueError, match="groups"):
        group_balanced_subset(torch.rand(4))


def test_head_fit_matches_scikit_learn_logistic_regression():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 5))
    y = (z @ rng.normal(size=(5, 3)) + rng.normal(size=(120, 3))).argmax(1)
    l2 = 0.05
    sk = LogisticRegression(C=1 / (len(y) * l2), tol=1e-10, max_iter=10_000).fit(z, y)
    w, b = fit_linear_head(torch.tensor(z), torch.tensor(y), 3, l2=l2)
    # softmax parameters are defined up to a shift shared by all classes: compare centred
    np.testing.assert_allclose(w.numpy() - w.numpy().mean(0), sk.coef_ - sk.coef_.mean(0),
                               atol=1e-4)
    np.testing.assert_allclose(b.numpy() - b.numpy().mean(), sk.intercept_
                               - sk.intercept_.mean(), atol=1e-4)


def test_only_the_head_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(60, 4), torch.arange(60) % 3
    retrain_last_layer(model, x, y, num_subsets=3, generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same != key.startswith("3."), key  # head changed, all else (BN stats too) kept
    assert model.training and model[1].training  # the mode is restored


def _toy(n, minority, generator):
    """y in {0, 1}; a spurious attribute a = y except for a `minority` fraction. Features:
    a noisy core feature (2y − 1 + N(0, 0.8²)) and a clean spurious one (2a − 1 + N(0, 0.1²))."""
    y = torch.randint(0, 2, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < minority
    a = torch.where(flip, 1 - y, y)
    core = 2.0 * y - 1 + 0.8 * torch.randn(n, generator=generator)
    spurious = 2.0 * a - 1 + 0.1 * torch.randn(n, generator=generator)
    return torch.stack([core, spurious], 1), y, 2 * y + (a == y).long()


def test_balanced_retraining_raises_worst_group_accuracy_when_a_group_is_rare():
    generator = torch.Generator().manual_seed(0)
    x_train, y_train, _ = _toy(2000, 0.02, generator)
    x_held, y_held, g_held = _toy(400, 0.5, generator)  # curated: every group present
    x_test, y_test, g_test = _toy(4000, 0.5, generator)
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 2))  # frozen features = the inputs
    w, b = fit_linear_head(x_train, y_train, 2, l2=1e-3)  # ERM on the spurious training set
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(b)
        erm = group_metrics(model(x_test), y_test, g_test)["worst_group_accuracy"]
        retrain_last_layer(model, x_held, y_held, g_held, l2=1e-3,
                           generator=torch.Generator().manual_seed(1))
        dfr = group_metrics(model(x_test), y_test, g_test)["worst_group_accuracy"]
    assert erm < 0.4  # ERM follows the spurious feature: most of the rare groups are wrong
    assert dfr > 0.75 and dfr > erm + 0.4


def test_technique_evaluates_the_retrained_head_at_the_last_step_only():
    generator = torch.Generator().manual_seed(0)
    x, y, _ = _toy(512, 0.02, generator)
    x_held, y_held, g_held = _toy(200, 0.5, generator)
    x_test, y_test, g_test = _toy(1000, 0.5, generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    technique = LastLayerRetraining(l2=1e-3, num_subsets=2).use_data(x_held, y_held, g_held)
    trainer = Trainer(model, lambda p: torch.optim.Adam(p, lr=1e-2), (x, y), max_steps=100,
                      batch_size=64, techniques=[technique], eval_every=50,
                      eval_data={"test": (x_test, y_test)})
    assert technique.eval_model(trainer.state) is None  # before the last step: the model
    history = trainer.fit()
    erm_head = trainer.model[2].weight.detach().clone()
    retrained = technique.eval_model(trainer.state)
    assert torch.equal(trainer.model[2].weight, erm_head)  # training keeps the ERM weights
    expected = retrain_last_layer(copy.deepcopy(trainer.model), x_held, y_held, g_held,
                                  l2=1e-3, num_subsets=2,
                                  generator=stream_generator(0, "last_layer_retraining"))
    with torch.no_grad():
        assert torch.equal(retrained(x_test), expected(x_test))
        accuracy = float((retrained(x_test).argmax(1) == y_test).float().mean())
        worst_dfr = group_metrics(retrained(x_test), y_test, g_test)["worst_group_accuracy"]
        worst_erm = group_metrics(trainer.model(x_test), y_test, g_test)[
            "worst_group_accuracy"]
    assert history[-1][1]["test/accuracy"] == pytest.approx(accuracy)
    assert worst_dfr > worst_erm


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="task"):
        LastLayerRetraining(task="no_such_task")
    with pytest.raises(ValueError, match="task_params"):
        LastLayerRetraining(task_params="{p: 3}")
    with pytest.raises(ValueError, match="l2"):
        fit_linear_head(torch.randn(3, 2), torch.tensor([0, 1, 0]), 2, l2=0.0)
    with pytest.raises(ValueError, match="num_subsets"):
        retrain_last_layer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.randn(4, 2),
                           torch.tensor([0, 1, 0, 1]), num_subsets=0)


def test_technique_retrains_on_a_named_split_of_a_task():
    from heldout.config import parse_overrides
    from heldout.registry import TASKS
    from heldout.run.assembly import build
    from tests.conftest import tiny_config

    cfg = parse_overrides(tiny_config(), [
        "task=spurious", "steps=20", "batch_size=64", "techniques=last_layer_retraining",
        "techniques.last_layer_retraining.task=spurious",
        "techniques.last_layer_retraining.split=val@agree10",
        "techniques.last_layer_retraining.num_subsets=2"])
    trainer = build(cfg)
    trainer.fit()
    split = TASKS.build("spurious").splits(cfg.seed)["val@agree10"]
    expected = retrain_last_layer(copy.deepcopy(trainer.model), split.x, split.y, split.groups,
                                  num_subsets=2,
                                  generator=stream_generator(cfg.seed, "last_layer_retraining"))
    retrained = trainer.techniques[0].eval_model(trainer.state)
    x = split.x[:50]
    with torch.no_grad():
        assert torch.equal(retrained(x), expected(x))
        assert not torch.equal(retrained(x), trainer.model(x))
