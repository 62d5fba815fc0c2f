"""Triplet recall and weighted triplet recall (#44) on hand cases."""

import pytest
import torch

from heldout.measures import evaluate
from heldout.measures.scene_graph import TripletRecall, predicate_ranks, weighted_triplet_recall
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
                                     "test/zero_shot_recall_top2": 0.0})
    with pytest.raises(ValueError, match="k"):
        weighted_triplet_recall(logits, labels, torch.zeros(4), k=0)
