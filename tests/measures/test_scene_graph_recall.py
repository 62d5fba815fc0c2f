"""Triplet recall and weighted triplet recall (#44) on hand cases."""

import pytest
import torch

from heldout.measures import evaluate
from heldout.measures.scene_graph import (
    TripletRecall,
    graph_recall,
    predicate_ranks,
    weighted_triplet_recall,
)
from heldout.tasks.scene_graph import SceneGraphSplit


def _case():
    # 4 edges, predicates 1..3 (+ background 0); edge 2 is background and never counts
    logits = torch.tensor([[5.0, 3, 1, 2],    # true 1: rank 0
                           [0.0, 3, 1, 2],    # true 3: rank 1
                           [9.0, 0, 0, 0],    # background
                           [0.0, 1, 2, 3]])   # true 1: rank 2
    labels = torch.tensor([1, 3, 0, 1])
    return logits, labels


def test_ranks_and_recall_by_hand():
    logits, labels = _case()
    assert predicate_ranks(logits, labels).tolist() == [0, 1, 2]
    counts = torch.tensor([9, 1, 0, 0])  # training frequencies of the edges' triplets
    top1 = weighted_triplet_recall(logits, labels, counts, k=1)
    # hits (1, 0, 0); weights 1/10, 1/2, 1/1 → 0.1 / 1.6
    assert top1 == pytest.approx({"triplet_recall": 1 / 3, "weighted_triplet_recall": 0.1 / 1.6,
                                  "zero_shot_recall": 0.0})
    top2 = weighted_triplet_recall(logits, labels, counts, k=2)
    assert top2["triplet_recall"] == pytest.approx(2 / 3)
    assert top2["weighted_triplet_recall"] == pytest.approx(0.6 / 1.6)
    assert weighted_triplet_recall(logits, labels, counts, k=3)["zero_shot_recall"] == 1.0


def test_weighted_recall_is_plain_recall_when_frequencies_are_equal():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 6, generator=gen)
    labels = torch.randint(0, 6, (200,), generator=gen)
    for k in (1, 3):
        recall = weighted_triplet_recall(logits, labels, torch.full((200,), 4), k)
        assert recall["weighted_triplet_recall"] == pytest.approx(recall["triplet_recall"])
        assert "zero_shot_recall" not in recall


def test_measure_reads_the_split_counts_and_skips_other_splits():
    logits, labels = _case()
    split = SceneGraphSplit(torch.eye(4), labels, groups=torch.zeros(4),
                            triplet_counts=torch.tensor([9, 1, 0, 0]))

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x @ logits

    metrics = evaluate(Fixed(), {"test": split, "plain": (torch.eye(4), labels)},
                       [TripletRecall(k=2)])
    assert metrics == pytest.approx({"test/triplet_recall_top2": 2 / 3,
                                     "test/weighted_triplet_recall_top2": 0.6 / 1.6,
                                     "test/zero_shot_recall_top2": 0.0,
                                     # all 4 pairs kept (K = 20): only edge 0's argmax is right
                                     "test/graph_recall_top20": 1 / 3,
                                     "test/weighted_graph_recall_top20": 0.1 / 1.6})
    with pytest.raises(ValueError, match="k"):
        weighted_triplet_recall(logits, labels, torch.zeros(4), k=0)


def test_graph_recall_keeps_the_top_k_pairs_of_each_graph():
    # graph 0: two foreground edges, both predicted right, the background pair scores highest
    # on a foreground predicate, so with K = 2 only the better of the two is kept
    logits = torch.tensor([[0.0, 4, 0],   # fg 1, right, p ≈ 0.96
                           [0.0, 0, 2],   # fg 2, right, p ≈ 0.79
                           [0.0, 6, 0],   # bg, p ≈ 0.99 → takes a slot
                           [0.0, 1, 0],   # graph 1: fg 1, right
                           [0.0, 0, 1]])  # graph 1: fg 1, wrong (predicts 2)
    labels = torch.tensor([1, 2, 0, 1, 1])
    graphs = torch.tensor([0, 0, 0, 1, 1])
    counts = torch.tensor([1, 0, 0, 4, 0])
    out = graph_recall(logits, labels, graphs, counts, k=2)
    # graph 0: 1 of 2 (weights 1/2, 1 → 1/3 weighted); graph 1: 1 of 2 (weights 1/5, 1 → 1/6)
    assert out == pytest.approx({"graph_recall": 0.5, "weighted_graph_recall": (1 / 3 + 1 / 6) / 2})
    full = graph_recall(logits, labels, graphs, counts, k=3)
    assert full["graph_recall"] == pytest.approx((1 + 0.5) / 2)
    # equal frequencies: the weighted recall is the plain one
    same = graph_recall(logits, labels, graphs, torch.full((5,), 2), k=2)
    assert same["weighted_graph_recall"] == pytest.approx(same["graph_recall"])
