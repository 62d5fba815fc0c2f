"""GBNN: each boosting round adds η·ρ·g_t with ρ the Newton step; truncation keeps rounds."""

import pytest
import torch
import torch.nn.functional as F

import heldout.methods.boosting as boosting
from heldout.engine import Trainer
from heldout.methods import GBNN, StackedUnits, keep_first_units, newton_step
from heldout.tasks import BreastCancer, Moons


def test_newton_step_by_hand():
    f = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    r = torch.tensor([[0.5, -0.5], [0.25, -0.25]])
    p = torch.tensor([[0.5, 0.5], [0.75, 0.25]])
    numerator = 1 * 0.5 + (-1) * (-0.5) + 2 * 0.25
    denominator = 1 * 0.25 + 1 * 0.25 + 4 * 0.75 * 0.25 + 0
    assert newton_step(f, r, p) == pytest.approx(numerator / denominator)


def test_each_round_adds_shrinkage_times_newton_times_stage(monkeypatch):
    torch.manual_seed(0)
    splits = Moons(n_train=60, n_test=20).splits(0)
    x, y = splits.train.x, splits.train.y
    fitted = []
    original = boosting.fit_stage

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        fitted.append(out)
        return out

    monkeypatch.setattr(boosting, "fit_stage", spy)
    model = StackedUnits(2, 2, max_units=6)
    technique = GBNN(units_per_round=2, shrinkage=0.4, lbfgs_iterations=20)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), (x, y), max_steps=3,
                      techniques=[technique])
    outputs = [model(x).detach().clone()]
    for step in range(1, 4):
        trainer.state.max_steps = step
        trainer.fit()
        outputs.append(model(x).detach().clone())
    assert int(model.active) == 6 and len(fitted) == 3
    for t, (w, b, a, c) in enumerate(fitted):
        before = outputs[t]
        probs = torch.softmax(before, -1)
        residuals = F.one_hot(y, 2).float() - probs
        stage = torch.sigmoid(x @ w.T + b) @ a.T + c
        rho = (stage * residuals).sum() / (stage.pow(2) * probs * (1 - probs)).sum()
        torch.testing.assert_close(outputs[t + 1] - before, 0.4 * rho * stage, atol=1e-5,
                                   rtol=1e-4)
    # the stacked network is the sum of its rounds, and truncation keeps the first rounds
    for t in range(4):
        torch.testing.assert_close(model.keep_first(2 * t)(x), outputs[t], atol=1e-5, rtol=1e-5)


def test_gbnn_refuses_other_models_and_full_network():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="gbnn grows a gbnn_units model"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), max_steps=1,
                techniques=[GBNN()])
    net = StackedUnits(2, 2, max_units=1)
    trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1),
                      (torch.randn(8, 2), torch.randint(0, 2, (8,))), max_steps=2,
                      techniques=[GBNN(lbfgs_iterations=2)])
    with pytest.raises(RuntimeError, match="no room"):
        trainer.fit()


def test_keep_first_units_of_an_mlp_zeroes_the_rest_of_the_head():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    x = torch.randn(4, 3)
    cut = keep_first_units(mlp, 2)
    h = torch.relu(mlp[0](x))[:, :2]
    torch.testing.assert_close(cut(x), h @ mlp[2].weight[:, :2].T + mlp[2].bias)
    with pytest.raises(ValueError, match="exactly one hidden layer"):
        keep_first_units(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3),
                                             torch.nn.Linear(3, 2)), 1)


def test_tabular_tasks():
    cancer = BreastCancer().splits(0)
    assert len(cancer.train) + len(cancer.test) == 569
    assert cancer.train.x.mean(0).abs().max() < 1e-5  # standardized on the training split
    share = float(cancer.train.y.float().mean())
    assert abs(share - float(cancer.test.y.float().mean())) < 0.02  # stratified
    moons = Moons().splits(3)
    assert torch.equal(moons.train.x, Moons().splits(3).train.x)
    assert not torch.equal(moons.train.x, Moons().splits(4).train.x)
    assert len(moons.train) == 200 and len(moons.test) == 1000
