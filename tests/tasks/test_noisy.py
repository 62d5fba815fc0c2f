"""Label-noise variants (tasks/noisy.py): flip rates, noise models, clean labels, determinism."""

import math

import pytest
import torch
from scipy import stats

from heldout.config import ConfigError, parse_overrides
from heldout.registry import TASKS
from heldout.tasks.noisy import NoisyLabels, flip_labels
from tests.conftest import tiny_config


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_flip_rate_is_binomial(kind):
    labels = torch.randint(0, 10, (50_000,), generator=torch.Generator().manual_seed(1))
    noisy = flip_labels(labels, 0.3, 10, kind, torch.Generator().manual_seed(2))
    assert _within_binomial(int((noisy != labels).sum()), len(labels), 0.3)


def test_symmetric_flips_go_uniformly_to_other_classes():
    labels = torch.full((40_000,), 3)
    noisy = flip_labels(labels, 0.5, 5, "symmetric", torch.Generator().manual_seed(0))
    targets = noisy[noisy != labels]
    counts = torch.bincount(targets, minlength=5)
    assert counts[3] == 0  # a flipped label is never the true class
    others = counts[[0, 1, 2, 4]].numpy()
    assert stats.chisquare(others).pvalue > 1e-3  # uniform over the 4 other classes


def test_asymmetric_flips_to_the_next_class():
    labels = torch.arange(10).repeat(100)
    noisy = flip_labels(labels, 0.4, 10, "asymmetric", torch.Generator().manual_seed(0))
    moved = noisy != labels
    assert torch.equal(noisy[moved], (labels[moved] + 1) % 10)
    assert torch.equal(flip_labels(labels, 0.0, 10, "asymmetric"), labels)


def test_task_keeps_clean_labels_and_clean_evaluation_splits():
    base = TASKS.build("digits").splits(0)
    splits = NoisyLabels(base="digits", noise=0.4).splits(0)
    assert torch.equal(splits.train.x, base.train.x)
    assert torch.equal(splits.train.clean_y, base.train.y)
    for name in ("val", "test"):
        assert torch.equal(splits[name].y, base[name].y) and splits[name].clean_y is None
    n = len(splits.train)
    assert _within_binomial(int(splits.train.corrupted.sum()), n, 0.4)


def test_base_noise_is_kept_as_the_clean_reference():
    base = TASKS.build("digits", label_noise=0.1).splits(0)
    splits = NoisyLabels(base="digits", base_params="{label_noise: 0.1}", noise=0.0).splits(0)
    assert torch.equal(splits.train.y, base.train.y)
    assert torch.equal(splits.train.clean_y, base.train.clean_y)


def test_deterministic_and_the_split_does_not_depend_on_the_noise():
    a = NoisyLabels(noise=0.2).splits(3)
    b = NoisyLabels(noise=0.2).splits(3)
    c = NoisyLabels(noise=0.4).splits(3)
    assert torch.equal(a.train.y, b.train.y)
    assert torch.equal(a.train.x, c.train.x) and torch.equal(a.train.clean_y, c.train.clean_y)
    assert not torch.equal(a.train.y, NoisyLabels(noise=0.2).splits(4).train.y)


def test_groups_and_extra_splits_pass_through():
    base = TASKS.build("digits_shift").splits(0)
    splits = NoisyLabels(base="digits_shift", noise=0.3).splits(0)
    assert torch.equal(splits.train.groups, base.train.groups)
    assert list(splits.extra) == list(base.extra)


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="base"):
        NoisyLabels(base="no_such_task")
    with pytest.raises(ValueError, match="base"):
        NoisyLabels(base="noisy_labels")
    with pytest.raises(ValueError, match="base_params"):
        NoisyLabels(base_params="[1, 2]")
    with pytest.raises(ValueError, match="kind"):
        flip_labels(torch.tensor([0, 1]), 0.1, 2, "diagonal")
    with pytest.raises(ValueError, match="rate"):
        flip_labels(torch.tensor([0, 1]), 1.5, 2)
    with pytest.raises(ConfigError, match="noise must be in"):
        parse_overrides(tiny_config(), ["task=noisy_labels", "task.noise=2"])


def test_usable_from_a_config():
    cfg = parse_overrides(tiny_config(), ["task=noisy_labels", "task.base=modular",
                                          "task.base_params='{p: 11}'", "task.noise=0.25"])
    assert cfg.task.params["noise"] == 0.25 and cfg.task.params["base_params"] == "{p: 11}"
