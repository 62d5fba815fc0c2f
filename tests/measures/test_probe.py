"""Linear probe (#69): closed-form ridge against scikit-learn, separable and random labels."""

import pytest
import torch
from sklearn.linear_model import Ridge
from torch import nn

from heldout.measures import evaluate
from heldout.measures.probe import LinearProbe, fit_ridge_probe


def test_ridge_probe_matches_scikit_learn():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen, dtype=torch.float64) * torch.arange(1, 6)
    y = torch.randint(0, 3, (60,), generator=gen)
    probe = fit_ridge_probe(x, y, 3, ridge=0.1)
    z = ((x - x.mean(0)) / x.std(0)).numpy()
    onehot = torch.nn.functional.one_hot(y, 3).double().numpy()
    reference = Ridge(alpha=0.1 * 60).fit(z, onehot).predict(z)
    assert torch.allclose(probe.logits(x), torch.from_numpy(reference), atol=1e-10)


def test_probe_is_perfect_on_separable_features_and_chance_on_random_labels():
    gen = torch.Generator().manual_seed(1)
    n, classes = 3000, 4
    y = torch.randint(0, classes, (n,), generator=gen)
    separable = torch.nn.functional.one_hot(y, classes).double() * 3 + 0.3 * torch.randn(
        n, classes, generator=gen, dtype=torch.float64)
    probe = fit_ridge_probe(separable[:2000], y[:2000], classes)
    assert probe.accuracy(separable[2000:], y[2000:]) == 1.0
    noise = torch.randn(n, 8, generator=gen)
    random_labels = torch.randint(0, classes, (n,), generator=gen)
    chance = fit_ridge_probe(noise[:2000], random_labels[:2000], classes).accuracy(
        noise[2000:], random_labels[2000:])
    assert abs(chance - 1 / classes) < 0.05


def test_measure_fits_on_train_and_scores_later_splits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(400, 2)
    y = (x[:, 0] > 0).long()
    metrics = evaluate(net, {"train": (x[:300], y[:300]), "test": (x[300:], y[300:])},
                       [LinearProbe()])
    assert metrics["test/probe_accuracy"] > 0.9
    features = net[:-1](x).detach()
    expected = fit_ridge_probe(features[:300], y[:300], 2).accuracy(features[300:], y[300:])
    assert metrics["test/probe_accuracy"] == expected
    with pytest.raises(RuntimeError, match="evaluate 'train' first"):
        evaluate(net, {"test": (x, y)}, [LinearProbe()])


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="ridge"):
        fit_ridge_probe(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), 2, ridge=0)
    with pytest.raises(ValueError, match="features"):
        fit_ridge_probe(torch.randn(4), torch.tensor([0, 1, 0, 1]), 2)
