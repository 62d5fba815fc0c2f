"""Oracle tests of the neuron IPR (#68) and IPR-ordered pruning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heldout.core.inputs import InputSpec
from heldout.measures import evaluate
from heldout.measures.periodicity import (
    NeuronIPR,
    fourier_ipr,
    neuron_ipr,
    prune_by_ipr,
    prune_neurons,
)
from heldout.models import MLP

P = 7
N_FREQ = P // 2 + 1  # real-DFT bins, DC included
RESIDUES = torch.arange(P, dtype=torch.float64)


def _mode(k: int, phase: float = 0.0) -> torch.Tensor:
    return torch.cos(2 * math.pi * k * RESIDUES / P + phase)


def test_ipr_of_pure_modes_flat_spectra_and_scale():
    assert float(fourier_ipr(_mode(2))) == pytest.approx(1.0)
    assert float(fourier_ipr(3.7 * _mode(3, phase=0.4))) == pytest.approx(1.0)
    assert float(fourier_ipr(torch.ones(P))) == pytest.approx(1.0)  # the DC mode
    delta = torch.zeros(P, dtype=torch.float64)
    delta[4] = 1.0  # |DFT| = 1 in every bin: a flat spectrum over N_FREQ bins
    assert float(fourier_ipr(delta)) == pytest.approx(1 / N_FREQ)
    assert float(fourier_ipr(delta, r=3)) == pytest.approx(1 / N_FREQ**2)
    # two equal modes: ĉ = (1/√2, 1/√2) -> 2 * (1/2)^2
    assert float(fourier_ipr(_mode(1) + _mode(3))) == pytest.approx(0.5)
    assert float(fourier_ipr(torch.zeros(P))) == 0.0
    assert fourier_ipr(torch.stack([_mode(1), delta])).tolist() == pytest.approx([1, 1 / N_FREQ])


def _planted_mlp(hidden: tuple[int, ...] = (4,)) -> nn.Module:
    """Neurons 0 and 2 periodic (single modes in U, V and readout), 1 and 3 one-hot (flat)."""
    torch.manual_seed(0)
    net = MLP(hidden=hidden).build(InputSpec("tokens", (2,), vocab=P), num_classes=P)
    eye = torch.eye(P, dtype=torch.float64)
    rows = [torch.cat([_mode(1), _mode(1, 0.3)]), torch.cat([eye[0], eye[5]]),
            torch.cat([_mode(2), _mode(2, 1.0)]), torch.cat([eye[3], eye[3]])]
    with torch.no_grad():
        net.linear1.weight.copy_(torch.stack(rows).float())
        if len(hidden) == 1:
            net.head.weight.copy_(torch.stack([_mode(1), eye[2], _mode(2), eye[6]], 1).float())
    return net


def test_neuron_ipr_averages_input_and_readout_vectors():
    assert neuron_ipr(_planted_mlp()).tolist() == pytest.approx([1, 1 / N_FREQ, 1, 1 / N_FREQ])
    # deeper MLP: the next layer is hidden-to-hidden, so only U and V count; they are the same
    assert neuron_ipr(_planted_mlp((4, 5))).tolist() == pytest.approx(
        [1, 1 / N_FREQ, 1, 1 / N_FREQ])
    net = _planted_mlp()
    with torch.no_grad():
        net.head.weight[:, 0] = torch.eye(P)[1]  # readout of neuron 0 now flat: (1 + 1 + 1/4) / 3
    assert float(neuron_ipr(net)[0]) == pytest.approx((2 + 1 / N_FREQ) / 3)
    with pytest.raises(ValueError, match="TokenLinear"):
        neuron_ipr(nn.Sequential(nn.Linear(3, 3)))


@pytest.mark.parametrize(("order", "pruned", "kept"), [("low", [1, 3], [0, 2]),
                                                       ("high", [0, 2], [1, 3])])
def test_pruning_zeroes_exactly_the_chosen_neurons(order, pruned, kept):
    net = _planted_mlp()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    out = prune_by_ipr(net, 0.5, order=order)
    assert all(torch.equal(original[k], v) for k, v in net.state_dict().items())  # untouched
    w1, b1, head = out.linear1.weight, out.linear1.bias, out.head.weight
    assert (w1[pruned] == 0).all() and (b1[pruned] == 0).all() and (head[:, pruned] == 0).all()
    assert torch.equal(w1[kept], original["linear1.weight"][kept])
    assert torch.equal(b1[kept], original["linear1.bias"][kept])
    assert torch.equal(head[:, kept], original["head.weight"][:, kept])
    assert torch.equal(out.head.bias, original["head.bias"])
    # pruned neurons are silent on every input
    tokens = torch.tensor([[1, 2], [6, 0]])
    hidden = torch.relu(out.linear1(tokens))
    assert (hidden[:, pruned] == 0).all()
    assert prune_by_ipr(net, 0.0).state_dict().keys() == net.state_dict().keys()
    with pytest.raises(ValueError, match="fraction"):
        prune_by_ipr(net, 1.5)


def test_prune_neurons_in_a_deeper_mlp_zeroes_the_next_layer_columns():
    net = _planted_mlp((4, 5))
    out = prune_neurons(net, torch.tensor([2]))
    assert (out.linear1.weight[2] == 0).all() and (out.linear2.weight[:, 2] == 0).all()
    assert torch.equal(out.linear2.weight[:, [0, 1, 3]], net.linear2.weight[:, [0, 1, 3]])


def test_measure_through_evaluate():
    net = _planted_mlp()
    data = (torch.tensor([[0, 1], [2, 3]]), torch.tensor([1, 5]))
    out = evaluate(net, {"train": data, "test": data}, [NeuronIPR()])
    assert out == pytest.approx({"train/ipr_mean": (2 + 2 / N_FREQ) / 4,
                                 "train/ipr_high_fraction": 0.5})
    out = evaluate(net, {"train": data}, [NeuronIPR(threshold=0.2)])
    assert out["train/ipr_high_fraction"] == 1.0  # 1/4 >= 0.2
    with pytest.raises(ValueError, match="threshold"):
        NeuronIPR(threshold=0.0)
