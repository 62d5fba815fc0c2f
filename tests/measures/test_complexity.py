"""Oracle tests of local complexity (#30) on networks with hand-placed hyperplanes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.core.inputs import InputSpec
from heldout.measures import evaluate
from heldout.measures.complexity import (
    LocalComplexity,
    continuous_inputs,
    cross_polytope,
    local_complexity,
    orthonormal_directions,
)
from heldout.models import MLP


def _kinks_1d() -> nn.Sequential:
    """1-D input; layer 1 kinks at x = 0.1, -0.3, 0.7, 2.0; layer 2 has one neuron that
    changes sign where relu(x - 0.1) = 0.2 (x = 0.3) and two that never change sign."""
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(-torch.tensor([0.1, -0.3, 0.7, 2.0]))
        net[2].weight.zero_()
        net[2].weight[0, 0] = 1.0  # relu(x - 0.1) - 0.2
        net[2].weight[1, 0] = 1.0  # relu(x - 0.1) + 1: always positive
        net[2].weight[2, 3] = 1.0  # relu(x - 2) - 0.1: negative below x = 2.1
        net[2].bias.copy_(torch.tensor([-0.2, 1.0, -0.1]))
    return net


def test_exact_counts_in_one_dimension():
    # r = 0.5: the interval [x - 0.5, x + 0.5]. At x = 0: kinks 0.1 and -0.3 inside, and
    # layer-2 neuron 0 flips at x = 0.3 -> [2, 1]. At x = 1: only 0.7 inside, nothing flips in
    # layer 2 (relu(x - 0.1) - 0.2 >= 0.2 on [0.5, 1.5]) -> [1, 0]. At x = 5: nothing.
    counts = local_complexity(_kinks_1d(), torch.tensor([[0.0], [1.0], [5.0]]), radius=0.5,
                              n_vertices=2)
    assert counts["layer1"].tolist() == [2, 1, 0]
    assert counts["layer2"].tolist() == [1, 0, 0]
    assert counts["total"].tolist() == [3, 1, 0]


def test_linear_model_has_zero_local_complexity():
    # The same affine maps without the ReLUs: one linear region, no neuron boundary, LC = 0;
    # with them, the hyperplanes through the neighbourhood count.
    kinked = _kinks_1d()
    linear = nn.Sequential(kinked[0], kinked[2], kinked[4])
    x = torch.tensor([[0.0], [1.0]])
    assert local_complexity(linear, x, radius=0.5, n_vertices=2)["total"].tolist() == [0, 0]
    assert local_complexity(kinked, x, radius=0.5, n_vertices=2)["total"].tolist() == [3, 1]


@pytest.mark.parametrize("seed", range(5))
def test_exact_first_layer_count_in_two_dimensions(seed):
    # A random cross-polytope of radius r in 2-D is a square inscribed in the circle of
    # radius r: a line at distance < r / sqrt(2) always cuts it, one at distance > r never.
    r = 0.4
    point = torch.tensor([0.3, -0.2])
    normals = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]])
    distances = torch.tensor([0.1, 0.5, 1.5, 3.0]) * r  # the first two cross
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(normals)
        net[0].bias.copy_(-(normals @ point) + distances)
    out = local_complexity(net, point[None], radius=r, n_vertices=4,
                           generator=torch.Generator().manual_seed(seed))
    assert out["layer1"].tolist() == [2]
    assert out["total"].tolist() == [2]


def test_output_signs_are_reported_apart():
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(5.0)  # kink at -5: far away
        net[2].weight.fill_(1.0)
        net[2].bias.fill_(-5.0)  # output x + 5 - 5 = x: changes sign at 0
    out = local_complexity(net, torch.zeros(1, 1), radius=0.1, n_vertices=2,
                           include_output=True)
    assert out["output"].tolist() == [1] and out["total"].tolist() == [0]


def test_cross_polytope_and_directions():
    directions = orthonormal_directions(5, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(directions @ directions.t(), torch.eye(3, dtype=torch.float64))
    points = torch.randn(2, 5, dtype=torch.float64)
    vertices = cross_polytope(points, 0.3, directions)
    assert vertices.shape == (2, 6, 5)
    offsets = vertices - points[:, None]
    assert torch.allclose(offsets.norm(dim=-1), torch.full((2, 6), 0.3, dtype=torch.float64))
    assert torch.allclose(offsets[:, :3], -offsets[:, 3:])
    with pytest.raises(ValueError, match="n_directions"):
        orthonormal_directions(2, 3)


def test_token_inputs_are_one_hot_encoded():
    torch.manual_seed(0)
    net = MLP(hidden=(16,)).build(InputSpec("tokens", (2,), vocab=7), num_classes=7)
    tokens = torch.tensor([[0, 3], [6, 1], [2, 2]])
    one_hot = F.one_hot(tokens, 7).reshape(3, 14).float()
    assert torch.equal(continuous_inputs(net, tokens), one_hot)
    a = local_complexity(net, tokens, radius=0.5, n_vertices=10,
                         generator=torch.Generator().manual_seed(1))
    b = local_complexity(net, one_hot, radius=0.5, n_vertices=10,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["total"], b["total"]) and a["total"].sum() > 0
    with pytest.raises(ValueError, match="TokenLinear"):
        continuous_inputs(nn.Linear(2, 2), tokens)


def test_measure_through_evaluate_leaves_the_model_alone():
    torch.manual_seed(0)
    net = MLP(hidden=(12, 12), batch_norm=True).build(InputSpec("continuous", (6,)), 3)
    net.train()
    x_train, x_test = torch.randn(40, 6), torch.randn(30, 6) * 3
    y_train, y_test = torch.randint(0, 3, (40,)), torch.randint(0, 3, (30,))
    net(x_train).sum().backward()  # some gradients to preserve
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    measure = LocalComplexity(radius=0.3, n_vertices=8, max_points=25)
    splits = {"train": (x_train, y_train), "val": (x_train, y_train), "test": (x_test, y_test)}
    out = evaluate(net, splits, [measure])
    assert set(out) == {
        f"{split}/local_complexity{suffix}"
        for split in ("train", "test") for suffix in ("", "/layer1", "/layer2")
    } | {f"train/local_complexity_random{s}" for s in ("", "/layer1", "/layer2")}
    for prefix in ("train/local_complexity", "test/local_complexity",
                   "train/local_complexity_random"):
        assert out[prefix] == pytest.approx(out[f"{prefix}/layer1"] + out[f"{prefix}/layer2"])
        assert 0 <= out[prefix] <= 24
    assert out == evaluate(net, splits, [measure])  # seeded: same points and directions
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters(), strict=True))
    assert not any(m._forward_hooks for m in net.modules())


def test_local_complexity_grows_with_the_radius():
    # 1-D, kinks at integers 0..9: the interval of radius r around 4.5 holds about 2r of them
    net = nn.Sequential(nn.Linear(1, 10), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(-torch.arange(10.0))
    counts = [int(local_complexity(net, torch.tensor([[4.5]]), radius=r, n_vertices=2)["total"])
              for r in (0.4, 1.6, 3.1, 10.0)]
    assert counts == [0, 4, 6, 10]


@pytest.mark.parametrize(("field", "value"), [("radius", 0.0), ("n_vertices", 5),
                                              ("max_points", 0)])
def test_measure_rejects_bad_parameters(field, value):
    with pytest.raises(ValueError, match=field):
        LocalComplexity(**{field: value})
