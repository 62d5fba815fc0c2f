"""Density-normalized edge loss (#44) against hand computations and the standard loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from heldout.core.state import State
from heldout.methods.scene_graph import (
    DensityNormalizedLoss,
    density_normalized_edge_loss,
    graph_density,
)


def _graph():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([2, 0, 0, 3, 0, 0])  # one graph: M = 6 edges, M_FG = 2
    return logits, labels


def test_one_graph_is_the_papers_sum_over_foreground_edges():
    logits, labels = _graph()
    ce = [-float(torch.log_softmax(logits[i], 0)[labels[i]]) for i in range(6)]
    fg = sum(ce[i] for i in (0, 3))
    bg = sum(ce[i] for i in (1, 2, 4, 5))
    density = graph_density(labels, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(density, torch.full((6,), 2 / 6, dtype=torch.float64))
    for beta in (1.0, 0.5):
        loss = density_normalized_edge_loss(logits, labels, density, beta)
        assert float(loss) == pytest.approx((fg + beta * bg) / 2, rel=1e-6)
    # the paper's decomposition: standard loss = d·L_FG + (1 − d)·L_BG; normalized = it / d
    standard = F.cross_entropy(logits.float(), labels)
    assert float(standard) == pytest.approx(2 / 6 * fg / 2 + 4 / 6 * bg / 4, rel=1e-6)
    assert float(density_normalized_edge_loss(logits, labels, density)) == pytest.approx(
        float(standard) * 3, rel=1e-6)


def test_density_one_is_the_standard_edge_cross_entropy():
    logits, labels = _graph()
    assert torch.equal(density_normalized_edge_loss(logits, labels, 1.0),
                       F.cross_entropy(logits.float(), labels))
    # every edge foreground: the density is 1 and nothing changes
    dense = torch.tensor([1, 2, 3, 1, 2, 3])
    assert torch.equal(graph_density(dense, torch.zeros(6)), torch.ones(6, dtype=torch.float64))


def test_graph_without_foreground_counts_one_and_bad_input_is_refused():
    density = graph_density(torch.tensor([0, 0, 0, 0]), torch.tensor([5, 5, 7, 7]))
    assert density.tolist() == [0.5, 0.5, 0.5, 0.5]
    logits, labels = _graph()
    with pytest.raises(ValueError, match="density"):
        density_normalized_edge_loss(logits, labels, 0.0)
    with pytest.raises(ValueError, match="background_weight"):
        density_normalized_edge_loss(logits, labels, 1.0, -1.0)
    with pytest.raises(ValueError, match="graph id"):
        DensityNormalizedLoss().loss(logits, labels, State(None, None, 1, batch=(
            torch.zeros(6, 1), labels, torch.arange(6))))


def test_technique_divides_each_edge_by_its_whole_graphs_density():
    labels = torch.tensor([1, 0, 0, 0, 2, 0, 3, 4])  # graph 0: d = 1/4; graph 1: d = 3/4
    graphs = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    index = torch.tensor([1, 4, 6])  # a batch with one edge of graph 0, two of graph 1
    state = State(None, None, 1, train_data=(torch.zeros(8, 1), labels), train_groups=graphs,
                  batch=(torch.zeros(3, 1), labels[index], index))
    loss = DensityNormalizedLoss().loss(logits[index], labels[index], state)
    ce = F.cross_entropy(logits[index], labels[index], reduction="none")
    assert float(loss) == pytest.approx(float((ce / torch.tensor([0.25, 0.75, 0.75])).mean()))
    assert math.isfinite(float(loss))
