"""PGD adversarial accuracy: eps = 0 is clean accuracy, the closed form on a linear model, the
eps-ball and data range are never left, gradients run through the RAW pipeline."""

import pytest
import torch
from torch import nn

from heldout.measures.adversarial import PGDAccuracy, pgd_accuracy, pgd_attack
from heldout.methods.raw_pipeline import RawPipeline
from heldout.registry import MEASURES
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import tiny_config


def linear_model(seed=0, dim=6):
    torch.manual_seed(seed)
    return nn.Linear(dim, 2).double()


def data(seed=0, n=200, dim=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 2, (n,), generator=g)


def test_eps_zero_is_clean_accuracy():
    model, (x, y) = linear_model(), data()
    clean = float((model(x).argmax(-1) == y).double().mean())
    assert pgd_accuracy(model, x, y, eps=0.0, generator=torch.Generator()) == clean
    assert torch.equal(pgd_attack(model, x, y, eps=0.0), x)


def test_one_step_on_a_linear_model_is_eps_sign_of_the_weight_difference():
    model, (x, y) = linear_model(), data()
    adv = pgd_attack(model, x, y, eps=0.05, step_size=0.05, steps=1, random_start=False,
                     clip=None)
    w = model.weight.detach()
    direction = torch.sign(w[y] - w[1 - y])  # w_true - w_other, per example
    assert torch.allclose(adv, x - 0.05 * direction)


def test_linear_adversarial_accuracy_has_its_closed_form():
    """For two classes, min over the eps-ball of the margin (w_y - w_o)·x' + b_y - b_o is the
    margin minus eps·||w_y - w_o||_1 (a corner of the box), which PGD reaches exactly."""
    model, (x, y) = linear_model(1), data(1)
    w, b = model.weight.detach(), model.bias.detach()
    margin = ((w[y] - w[1 - y]) * x).sum(-1) + b[y] - b[1 - y]
    for eps in (0.02, 0.05, 0.1):
        expected = float((margin - eps * (w[y] - w[1 - y]).abs().sum(-1) > 0).double().mean())
        measured = pgd_accuracy(model, x, y, eps=eps, steps=5, step_size=eps, clip=None,
                                generator=torch.Generator().manual_seed(0))
        assert measured == expected
    assert expected < float((margin > 0).double().mean())  # the attack did hurt


def test_the_attack_stays_in_the_eps_ball_and_the_data_range():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x = torch.rand(64, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    adv = pgd_attack(model, x, y, eps=0.3, steps=7, step_size=0.2,
                     generator=torch.Generator().manual_seed(1))
    assert (adv - x).abs().max() <= 0.3 + 1e-12
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0.29  # it moved to the boundary somewhere
    again = pgd_attack(model, x, y, eps=0.3, steps=7, step_size=0.2,
                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(adv, again)  # random start from the generator: repeatable
    assert not any(p.grad is not None for p in model.parameters())


def test_attack_runs_end_to_end_through_the_raw_pipeline():
    torch.manual_seed(0)
    model = nn.Sequential(RawPipeline(), nn.Linear(192, 10))
    x, y = torch.rand(32, 192) * 0.5 + 0.25, torch.randint(0, 10, (32,))
    y = model(x).argmax(-1)  # clean accuracy 1
    robust = pgd_accuracy(model, x, y, eps=0.1, steps=5,
                          generator=torch.Generator().manual_seed(0))
    assert robust < 1  # gradients reached the input through the ISP


def test_measure_in_a_run_and_bad_input(tmp_path):
    cfg = tiny_config("task=digits_color", "model.hidden=[16]", "steps=3",
                      "measures=accuracy,pgd_accuracy", "measures.pgd_accuracy.steps=3",
                      "measures.pgd_accuracy.max_points=50")
    a = execute(cfg, Store(tmp_path / "a")).metrics
    b = execute(cfg, Store(tmp_path / "b")).metrics
    assert a == b and 0 <= a["test/pgd_accuracy"] <= a["test/accuracy"]
    assert "train/pgd_accuracy" not in a
    assert MEASURES.get("pgd_accuracy").papers == (76, 30)
    with pytest.raises(ValueError, match="clip_min"):
        PGDAccuracy(clip_min=None)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(nn.Linear(2, 2), torch.rand(2, 2), torch.zeros(2, dtype=torch.long), eps=-1)
    with pytest.raises(ValueError, match="float"):
        pgd_attack(nn.Linear(2, 2), torch.ones(2, 2, dtype=torch.long),
                   torch.zeros(2, dtype=torch.long), eps=0.1)
