"""GCD accuracy against a brute force over all assignments and hand cases."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from heldout.core.measure import evaluate
from heldout.measures.gcd import GCDAccuracy, gcd_accuracy
from heldout.tasks.base import Split


def brute_force(pred, target, old):
    """Best accuracy over every one-to-one map of cluster ids to classes, and the old / new
    accuracy under each best map (ties: the set of achievable pairs)."""
    size = max(pred.max(), target.max()) + 1
    best, pairs = -1, set()
    for perm in itertools.permutations(range(size)):
        correct = np.array(perm)[pred] == target
        hits = int(correct.sum())
        is_old = np.isin(target, old)
        pair = (float(correct[is_old].mean()), float(correct[~is_old].mean()))
        if hits > best:
            best, pairs = hits, {pair}
        elif hits == best:
            pairs.add(pair)
    return best / len(pred), pairs


@pytest.mark.parametrize("case", range(30))
def test_matches_brute_force_over_all_assignments(case):
    rng = np.random.default_rng(case)
    clusters = int(rng.integers(2, 7))  # up to 6 clusters: 720 permutations
    target = rng.integers(0, clusters, size=40)
    target[:clusters] = np.arange(clusters)  # every class present
    # a noisy clustering: a random relabeling, with a third of the ids replaced at random
    pred = rng.permutation(clusters)[target]
    noise = rng.random(40) < 0.35
    pred[noise] = rng.integers(0, clusters, size=int(noise.sum()))
    old = list(range(max(1, clusters // 2)))
    want_all, pairs = brute_force(pred, target, old)
    got = gcd_accuracy(pred, target, old)
    assert math.isclose(got["all"], want_all)
    assert (got["old"], got["new"]) in pairs or any(
        math.isclose(got["old"], o) and math.isclose(got["new"], n) for o, n in pairs)


def test_permuted_perfect_clustering_scores_one():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4])
    pred = torch.tensor([3, 1, 4, 2, 0])[target]
    assert gcd_accuracy(pred, target, [0, 1]) == {"all": 1.0, "old": 1.0, "new": 1.0}


def test_one_assignment_for_old_and_new():
    # Cluster 0 holds three class-0 (old) and two class-1 (new) examples; cluster 1 holds one
    # class-1 example. Matching old and new separately would credit cluster 0 twice; the one
    # assignment gives cluster 0 to class 0 and cluster 1 to class 1.
    pred = [0, 0, 0, 0, 0, 1]
    target = [0, 0, 0, 1, 1, 1]
    assert gcd_accuracy(pred, target, old_classes=1) == {"all": 4 / 6, "old": 1.0, "new": 1 / 3}


def test_more_clusters_than_classes_and_missing_parts():
    # five clusters over three classes: the unmatched clusters count as wrong
    scores = gcd_accuracy([0, 1, 2, 3, 4, 4], [0, 0, 1, 1, 2, 2], [0, 1, 2])
    assert scores["all"] == pytest.approx(4 / 6) and math.isnan(scores["new"])


@pytest.mark.parametrize("pred, target, old, match", [
    ([0, 1], [0], [0], "one length"),
    ([], [], [0], "non-empty"),
    ([0.5, 1.0], [0, 1], [0], "pred must be"),
    ([0, 1], [0, -1], [0], "target must be"),
    ([0, 1], [0, 1], [[0]], "old_classes"),
])
def test_bad_input_names_the_parameter(pred, target, old, match):
    with pytest.raises(ValueError, match=match):
        gcd_accuracy(pred, target, old)


def test_registered_measure_reads_the_argmax_of_the_logits():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([1, 1, 2, 2, 0, 1]), 3).float()
    model = nn.Identity()
    metrics = evaluate(model, {"unlabeled": Split(logits, target)}, [GCDAccuracy(num_old=1)])
    want = gcd_accuracy([1, 1, 2, 2, 0, 1], target, 1)
    assert metrics == {f"unlabeled/gcd_{k}": v for k, v in want.items()}
    assert metrics["unlabeled/gcd_old"] == 1.0 and metrics["unlabeled/gcd_all"] == 5 / 6
