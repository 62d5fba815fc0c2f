"""The generated scene_graph task: densities, zero-shot triplets, frequency counts."""

import torch

from heldout.methods.scene_graph import graph_density
from heldout.tasks.scene_graph import PREDICATES, SceneGraph, triplet_ids


def _triplets(split, classes):
    subject = split.x[:, :classes].argmax(1)
    obj = split.x[:, classes:2 * classes].argmax(1)
    return triplet_ids(subject, split.y, obj, classes)


def test_counts_match_a_recount_and_zero_shot_triplets_are_held_out():
    task = SceneGraph(num_graphs=200)
    splits = task.splits(0)
    classes = task.object_classes
    train = _triplets(splits.train, classes)[splits.train.y > 0]
    ids, counts = torch.unique(train, return_counts=True)
    recount = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    test = splits.test
    fg = test.y > 0
    expected = [recount.get(t, 0) for t in _triplets(test, classes)[fg].tolist()]
    assert test.triplet_counts[fg].tolist() == expected
    assert (test.triplet_counts[fg] == 0).sum() > 0  # zero-shot compositions in test
    assert splits.num_classes == len(PREDICATES)
    # graphs are whole in one split
    assert not set(splits.train.groups.tolist()) & set(test.groups.tolist())


def test_large_graphs_are_sparse():
    splits = SceneGraph(num_graphs=200, zero_shot_fraction=0.0).splits(1)
    train = splits.train
    density = graph_density(train.y, train.groups)
    size = train.x[:, -1]  # n / max_objects
    assert density[size == 1.0].max() < 0.1 < 0.5 <= density[size == size.min()].min()
