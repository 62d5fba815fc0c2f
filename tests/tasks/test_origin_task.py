"""The origin_pairs task: deterministic, disjoint train/test origins, variants that differ
from their origin as declared, and clear errors."""

from __future__ import annotations

import pytest
import torch

from heldout.registry import TASKS
from heldout.tasks.origin import SYNONYMS, origin_sentences, perturb


def test_splits_are_deterministic_and_the_origins_disjoint():
    task = TASKS.build("origin_pairs", origins=40, variants=2)
    a, b = task.splits(3), task.splits(3)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not set(a.train.y.tolist()) & set(a.test.y.tolist())
    assert len(a.train) + len(a.test) == 80 and len(a.val) == 0
    assert torch.equal(a.extra["origins"].y, torch.arange(40)) and a.num_classes == 40
    assert torch.bincount(torch.cat([a.train.y, a.test.y])).tolist() == [2] * 40


def test_variants_come_from_their_origin():
    task = TASKS.build("origin_pairs", origins=30, variants=2, swap=0.0, dropout=0.0,
                       reorder=1.0)
    origins, generated, source = task.texts(0)
    assert len(set(origins)) == 30
    for text, index in zip(generated, source.tolist(), strict=True):
        assert sorted(text.split()) == sorted(origins[index].split())  # only reordered
    unchanged = TASKS.build("origin_pairs", origins=30, swap=0.0, dropout=0.0, reorder=0.0)
    origins, generated, source = unchanged.texts(0)
    assert generated == [origins[i] for i in source.tolist()]


def test_perturbations_as_declared():
    g = torch.Generator().manual_seed(0)
    swapped = perturb("the old teacher repaired the boat", g, swap=1.0, dropout=0.0,
                      reorder=0.0).split()
    assert swapped[0] == "the" and swapped[1] in SYNONYMS["old"]
    assert swapped[4] == "the" and swapped[5] in SYNONYMS["boat"]
    dropped = perturb("a b c d", g, swap=0.0, dropout=1.0, reorder=0.0).split()
    assert len(dropped) == 1 and dropped[0] in "abcd"  # one word always stays
    again = perturb("the old teacher", torch.Generator().manual_seed(5), swap=0.5,
                    dropout=0.3, reorder=0.5)
    assert again == perturb("the old teacher", torch.Generator().manual_seed(5), swap=0.5,
                            dropout=0.3, reorder=0.5)


@pytest.mark.parametrize("call, match", [
    (lambda: TASKS.build("origin_pairs", origins=4, test_fraction=0.1), "test_fraction"),
    (lambda: origin_sentences(10**6, torch.Generator()), "origins"),
    (lambda: perturb("a b", torch.Generator(), swap=1.5, dropout=0.0, reorder=0.0), "swap"),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
