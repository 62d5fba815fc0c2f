"""Long-tailed noisy tasks (#42): class counts follow the exponential profile, the noise rate
is exact, val/test are the base task's balanced clean splits."""

import pytest
import torch

from heldout.registry import TASKS
from heldout.tasks.digits import Digits
from heldout.tasks.long_tail import DigitsLongTail, long_tail_counts


def test_counts_follow_the_exponential_profile():
    for n_max, classes, ratio in ((100, 10, 100.0), (57, 4, 8.0), (30, 2, 1.0)):
        expected = [round(n_max * ratio ** (-c / (classes - 1))) for c in range(classes)]
        assert long_tail_counts(n_max, classes, ratio) == expected
    assert long_tail_counts(1000, 10, 100.0)[0] == 1000
    assert long_tail_counts(1000, 10, 100.0)[-1] == 10


@pytest.mark.parametrize("ratio,noise", [(10.0, 0.2), (50.0, 0.4), (1.0, 0.0)])
def test_digits_long_tail_train_split(ratio, noise):
    splits = DigitsLongTail(imbalance_ratio=ratio, label_noise=noise).splits(seed=3)
    base = Digits().splits(seed=3)
    n_max = int(torch.bincount(base.train.y).min())
    clean = splits.train.y if splits.train.clean_y is None else splits.train.clean_y
    assert torch.bincount(clean, minlength=10).tolist() == long_tail_counts(n_max, 10, ratio)
    corrupted = clean != splits.train.y
    assert int(corrupted.sum()) == round(noise * len(clean))
    # every kept example is one of the base training examples, with its true label
    rows = {tuple(r.tolist()): int(c) for r, c in zip(base.train.x, base.train.y, strict=True)}
    assert all(rows[tuple(r.tolist())] == int(c) for r, c in zip(splits.train.x, clean,
                                                                  strict=True))
    for name in ("val", "test"):  # balanced and clean: the base task's own splits
        assert torch.equal(splits[name].x, base[name].x)
        assert torch.equal(splits[name].y, base[name].y)
        assert splits[name].clean_y is None


def test_noise_is_symmetric_over_the_other_classes():
    splits = DigitsLongTail(imbalance_ratio=2.0, label_noise=0.9).splits(seed=0)
    clean, noisy = splits.train.clean_y, splits.train.y
    offsets = (noisy - clean)[noisy != clean] % 10
    counts = torch.bincount(offsets, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.5 * counts[1:].float().mean()


def test_mnist1d_long_tail_counts():
    splits = TASKS.build("mnist1d_long_tail", num_samples=1000, imbalance_ratio=5.0,
                         label_noise=0.1).splits(seed=1)
    counts = torch.bincount(splits.train.clean_y, minlength=10).tolist()
    assert counts == long_tail_counts(counts[0], 10, 5.0)
    assert torch.bincount(splits.test.y).min() > 0 and splits.test.clean_y is None


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="imbalance_ratio"):
        TASKS.build("digits_long_tail", imbalance_ratio=0.5)
    with pytest.raises(ValueError, match="label_noise"):
        TASKS.build("digits_long_tail", label_noise=1.5)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tail_counts(10, 3, 0.9)
    with pytest.raises(ValueError, match="num_classes"):
        long_tail_counts(10, 1, 2.0)
