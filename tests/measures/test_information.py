"""Oracle tests of the adaptive MI estimators (#6) and the information-plane measure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heldout.measures import evaluate
from heldout.measures.information import (
    InformationPlane,
    adaptive_bin_edges,
    bin_activations,
    binned_information,
    discrete_mutual_information,
    entropy_bits,
    hidden_layers,
    kde_information,
    ksg_mutual_information,
    layer_activations,
)


def _h(*probs: float) -> float:
    """Entropy in bits of a distribution given by hand."""
    return -sum(p * math.log2(p) for p in probs if p > 0)


# --- continuous path: KSG against jointly Gaussian variables --------------------------------

# I(X;Y) = -1/2 log2(1 - rho^2) for a bivariate normal. Tolerance 0.1 bits: over 20 seeds at
# N = 2000 the estimate had standard deviation 0.036 bits (the ideal sqrt(Var[i(X;Y)] / N) =
# sqrt(rho^2 / N) / ln 2 = 0.026 bits), mean 0.745 for 0.737; 0.1 is ~3 standard deviations. A
# nats/bits mix-up (0.51 vs 0.74) or a self-counted neighbour fails it.
@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_ksg_matches_gaussian_closed_form(rho):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    x = z[:, :1]
    y = rho * x + math.sqrt(1 - rho**2) * z[:, 1:]
    expected = -0.5 * math.log2(1 - rho**2)
    assert ksg_mutual_information(x, y) == pytest.approx(expected, abs=0.1)


def test_ksg_chunking_does_not_change_the_estimate():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 2, generator=gen)
    y = x[:, :1] + torch.randn(300, 1, generator=gen)
    assert ksg_mutual_information(x, y, chunk=64) == pytest.approx(ksg_mutual_information(x, y))


# --- discrete: entropies and binning by hand ------------------------------------------------

def test_entropy_and_mutual_information_by_hand():
    assert entropy_bits(torch.tensor([0, 0, 1, 2])) == pytest.approx(1.5)
    # X = [0, 0, 1, 1], T = [0, 1, 2, 2]: H(T) = 1.5, H(T|X) = 1/2 * 1 + 1/2 * 0 = 0.5
    x, t = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 2])
    assert discrete_mutual_information(x, t) == pytest.approx(1.0)
    assert discrete_mutual_information(t, t) == pytest.approx(1.5)


def test_adaptive_bin_edges_by_hand():
    values = torch.tensor([0.0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
    # distinct: 0 alone, then 7 distinct levels above it, edges at positions floor(k * 7 / 3)
    # = 0, 2, 4 of [1, 2, 3, 4, 5, 6, 7]
    assert adaptive_bin_edges(values, 3, "distinct").tolist() == [0, 1, 3, 5]
    # mass: edges at the sorted positions floor(k * 10 / 2) = 0, 5 -> values 0 and 3
    assert adaptive_bin_edges(values, 2, "mass").tolist() == [0, 3]
    assert bin_activations(values, 3).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_binned_information_on_a_hand_table():
    # 8 distinct inputs; with enough bins every distinct activation row is its own symbol:
    # T = a a b b c d d d; Y = 0 0 0 1 1 1 1 1
    t = torch.tensor([[0.0, 0], [0, 0], [0, 1], [0, 1], [1, 0], [2, 2], [2, 2], [2, 2]])
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    h_t = _h(2 / 8, 2 / 8, 1 / 8, 3 / 8)
    h_t_given_y = 3 / 8 * _h(2 / 3, 1 / 3) + 5 / 8 * _h(1 / 5, 1 / 5, 3 / 5)
    ixt, ity = binned_information(t, torch.arange(8), y, n_bins=30)
    assert ixt == pytest.approx(h_t)  # deterministic T, distinct X: I(X;T) = H(T)
    assert ity == pytest.approx(h_t - h_t_given_y)
    # one bin above the lowest value merges 1 and 2: T = a a b b c e e e, same partition
    # sizes, so the same values; and a single symbol carries no information
    assert binned_information(t, torch.arange(8), y, n_bins=1)[0] == pytest.approx(h_t)
    assert binned_information(torch.zeros(8, 2), torch.arange(8), y) == (0.0, 0.0)


# --- KDE ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bound", "scale"), [("upper", 2.0), ("lower", 8.0)])
def test_kde_information_two_points_closed_form(bound, scale):
    # two points at distance d: each row's mean kernel is (1 + exp(-d^2 / (c sigma^2))) / 2
    t, sigma = torch.tensor([[0.0, 0.0], [0.6, 0.8]]), 0.7  # d = 1
    expected = -math.log2((1 + math.exp(-1.0 / (scale * sigma**2))) / 2)
    ixt, ity = kde_information(t, torch.tensor([0, 1]), sigma, bound)
    assert ixt == pytest.approx(expected)
    assert ity == pytest.approx(expected)  # each class has one point: conditional term 0


def test_kde_information_separated_clusters():
    t = torch.tensor([[0.0], [0.0], [10.0], [10.0], [20.0], [20.0]])
    y = torch.tensor([0, 0, 1, 1, 1, 1])
    ixt, ity = kde_information(t, y, noise_std=0.1)
    assert ixt == pytest.approx(math.log2(3))  # three equally likely clusters
    assert ity == pytest.approx(math.log2(3) - 4 / 6 * 1.0)  # class 1 spans two clusters
    wide = kde_information(t, y, noise_std=1e4)
    assert wide[0] == pytest.approx(0.0, abs=1e-6)


# --- layers and the measure -----------------------------------------------------------------

def _relu_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    return net


def test_hidden_layers_are_the_activation_modules():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 1))
    assert [name for name, _ in hidden_layers(net)] == ["1", "3"]
    assert [name for name, _ in hidden_layers(net, ("2",))] == ["2"]
    with pytest.raises(ValueError, match="no module named"):
        hidden_layers(net, ("nope",))
    with pytest.raises(ValueError, match="no activation modules"):
        hidden_layers(nn.Linear(2, 2))
    acts = layer_activations(net, torch.randn(5, 2), batch_size=2)
    assert list(acts) == ["layer1", "layer2"] and acts["layer1"].shape == (5, 3)


def test_information_plane_through_evaluate():
    net = _relu_net()
    net.train()
    x = torch.tensor([[-2.0], [-1.0], [0.0], [1.0], [2.0], [3.0]])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = evaluate(net, {"train": (x, y), "test": (x, y)}, [InformationPlane()])
    # ReLU outputs 0 0 0 1 2 3: H(T) = 1/2 * 1 + 3 * (1/6) log2 6; T|Y=1 uniform on 3 values
    h_t = _h(1 / 2, 1 / 6, 1 / 6, 1 / 6)
    assert out == pytest.approx({
        "train/mi_xt/layer1": h_t,
        "train/mi_ty/layer1": h_t - 0.5 * math.log2(3),
        "train/mi_x_entropy": math.log2(6),
    })
    assert net.training and not net[1]._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_information_plane_kde_and_subsample():
    net = _relu_net()
    x = torch.linspace(-1, 1, 50)[:, None]
    y = (x[:, 0] > 0).long()
    measure = InformationPlane(estimator="kde", max_examples=20, splits=("test",))
    out = evaluate(net, {"train": (x, y), "test": (x, y)}, [measure])
    assert set(out) == {"test/mi_xt/layer1", "test/mi_ty/layer1", "test/mi_x_entropy"}
    assert out["test/mi_x_entropy"] == pytest.approx(math.log2(20))
    assert 0 < out["test/mi_ty/layer1"] <= out["test/mi_xt/layer1"] <= math.log2(20) + 1e-9
    assert out == evaluate(net, {"train": (x, y), "test": (x, y)}, [measure])  # seeded


@pytest.mark.parametrize(("field", "value"), [("n_bins", 0), ("noise_scale", 0.0),
                                              ("estimator", "knn"), ("max_examples", 1)])
def test_information_plane_rejects_bad_parameters(field, value):
    with pytest.raises(ValueError, match=field):
        InformationPlane(**{field: value})
