"""The GCD splits: disjoint, the declared fractions, old/new classes where they belong,
deterministic in the seed."""

import pytest
import torch

from heldout.registry import TASKS
from heldout.tasks.digits import digits_arrays
from heldout.tasks.gcd import gcd_partition


def _rows(split):
    return {tuple(row.tolist()) for row in split.x}


def test_partition_fractions_and_classes():
    labels = torch.arange(10).repeat_interleave(20)
    labeled, unlabeled = gcd_partition(labels, 4, 0.25, torch.Generator().manual_seed(0))
    assert len(set(labeled.tolist()) & set(unlabeled.tolist())) == 0
    assert sorted(torch.cat([labeled, unlabeled]).tolist()) == list(range(200))
    assert torch.bincount(labels[labeled], minlength=10).tolist() == [5] * 4 + [0] * 6
    assert torch.bincount(labels[unlabeled], minlength=10).tolist() == [15] * 4 + [20] * 6


@pytest.mark.parametrize("num_old, fraction, match", [
    (0, 0.5, "num_old"), (10, 0.5, "num_old"), (3, 0.0, "labeled_fraction"),
    (3, 1.0, "labeled_fraction")])
def test_partition_rejects_bad_input(num_old, fraction, match):
    with pytest.raises(ValueError, match=match):
        gcd_partition(torch.arange(10), num_old, fraction, torch.Generator())


def test_gcd_digits_splits():
    splits = TASKS.build("gcd_digits").splits(seed=0)
    train, val, test, unlabeled = splits.train, splits.val, splits.test, splits["unlabeled"]
    assert splits.num_classes == 10
    # labeled data holds old classes only; the unlabeled split holds old and new ones
    assert set(torch.cat([train.y, val.y]).tolist()) == set(range(5))
    assert set(unlabeled.y.tolist()) == set(range(10))
    assert set(test.y.tolist()) == set(range(10))
    # the splits partition the data set (the digits have no duplicate images across them)
    _, labels = digits_arrays()
    assert len(train) + len(val) + len(test) + len(unlabeled) == len(labels)
    parts = [_rows(s) for s in (train, val, test, unlabeled)]
    assert sum(map(len, parts)) == len(set().union(*parts))
    # per old class: half of the non-test examples labeled, the other half unlabeled
    labeled_y = torch.cat([train.y, val.y])
    for c in range(5):
        n_pool = int((labeled_y == c).sum() + (unlabeled.y == c).sum())
        assert int((labeled_y == c).sum()) == round(0.5 * n_pool)
    for c in range(5, 10):  # every non-test example of a new class is unlabeled
        assert int((unlabeled.y == c).sum()) == int((torch.tensor(labels) == c).sum()
                                                   - (test.y == c).sum())
    assert len(val) == round(0.15 * len(labeled_y))


def test_gcd_splits_are_deterministic_in_the_seed():
    task = TASKS.build("gcd_digits", num_old=3, labeled_fraction=0.3)
    a, b, c = task.splits(1), task.splits(1), task.splits(2)
    for name in ("train", "val", "test", "unlabeled"):
        assert torch.equal(a[name].x, b[name].x) and torch.equal(a[name].y, b[name].y)
    assert not torch.equal(a.train.x, c.train.x)
    assert set(a.train.y.tolist()) == {0, 1, 2}


def test_gcd_mnist1d_splits():
    splits = TASKS.build("gcd_mnist1d", num_samples=500).splits(seed=0)
    assert set(splits.train.y.tolist()) == set(range(5))
    assert set(splits["unlabeled"].y.tolist()) == set(range(10))
    assert splits.train.x.shape[1] == 40
    total = sum(len(splits[n]) for n in ("train", "val", "test", "unlabeled"))
    assert total == 500


def test_task_rejects_num_old_without_new_classes():
    with pytest.raises(ValueError, match="num_old"):
        TASKS.build("gcd_digits", num_old=10)
