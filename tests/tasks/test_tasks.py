"""Tests of the built-in tasks: labels against hand-computed oracles, splits, noise, seeds."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

import heldout.tasks.mnist1d as mnist1d_module
from heldout.registry import TASKS
from heldout.tasks import MNIST1D, Digits, ModularArithmetic, Splits, XORClusters, modular_table
from heldout.tasks.modular import is_prime
from heldout.tasks.splitting import corrupt_labels, import_optional, split_counts


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh MNIST-1D cache folder and an empty in-process cache."""
    monkeypatch.setenv("HELDOUT_CACHE", str(tmp_path))
    mnist1d_module._load.cache_clear()
    yield tmp_path
    mnist1d_module._load.cache_clear()


def small_tasks() -> list:
    return [
        ModularArithmetic(p=11, val_fraction=0.2, label_corruption=0.25),
        XORClusters(dim=20, n_train=50, n_val=10, n_test=30),
        Digits(label_noise=0.1),
    ]


def assert_same_splits(first: Splits, second: Splits) -> None:
    for (name, a), (_, b) in zip(first.items(), second.items(), strict=True):
        assert torch.equal(a.x, b.x), name
        assert torch.equal(a.y, b.y), name


def differ(first: Splits, second: Splits) -> bool:
    return not torch.equal(first.train.x, second.train.x) or not torch.equal(
        first.train.y, second.train.y
    )


# --- modular arithmetic -------------------------------------------------------------------

# (a, b) -> a ∘ b mod 5, worked out by hand.
HAND_TABLE_P5 = {
    "+": {(3, 4): 2, (4, 4): 3, (0, 0): 0, (2, 1): 3},
    "-": {(1, 3): 3, (0, 4): 1, (4, 2): 2, (2, 2): 0},
    "*": {(3, 4): 2, (2, 3): 1, (4, 4): 1, (0, 3): 0},
    # b^-1 mod 5: 1->1, 2->3, 3->2, 4->4 (4*4 = 16 ≡ 1), so 3/4 = 3*4 = 12 ≡ 2.
    "/": {(3, 4): 2, (1, 2): 3, (4, 3): 3, (0, 1): 0},
    "x2+y2": {(1, 2): 0, (3, 4): 0, (2, 3): 3, (4, 1): 2},
}


@pytest.mark.parametrize("operation", list(HAND_TABLE_P5))
def test_modular_labels_match_hand_table(operation):
    pairs, labels = modular_table(5, operation)
    table = {(int(a), int(b)): int(y) for (a, b), y in zip(pairs, labels, strict=True)}
    assert len(table) == len(labels) == (20 if operation == "/" else 25)  # each pair once
    for pair, expected in HAND_TABLE_P5[operation].items():
        assert table[pair] == expected, (operation, pair)
    if operation == "/":
        assert all(b != 0 for _, b in table)


def test_modular_division_inverts_multiplication():
    pairs, labels = modular_table(13, "/")
    a, b = pairs[:, 0], pairs[:, 1]
    assert torch.equal(labels * b % 13, a)


def test_modular_split_sizes_and_disjointness():
    task = ModularArithmetic(p=23, train_fraction=0.4, val_fraction=0.1)
    splits = task.splits(seed=3)
    total = 23 * 23
    assert len(splits.train) == round(0.4 * total)
    assert abs(len(splits.val) - 0.1 * total) <= 1
    assert len(splits.train) + len(splits.val) + len(splits.test) == total
    codes = [set((s.x[:, 0] * 23 + s.x[:, 1]).tolist()) for _, s in splits.items()]
    assert sum(len(c) for c in codes) == total and set.union(*codes) == set(range(total))
    assert splits.input.kind == "tokens" and splits.input.shape == (2,) and splits.input.vocab == 23
    assert splits.num_classes == 23 and splits.train.x.dtype == torch.long
    for _, split in splits.items():  # clean labels follow the rule
        assert torch.equal(split.y, split.x.sum(1) % 23)


def test_modular_determinism_and_seeds():
    task = ModularArithmetic(p=17, label_corruption=0.2)
    assert_same_splits(task.splits(1), task.splits(1))
    assert differ(task.splits(1), task.splits(2))
    pinned = ModularArithmetic(p=17, data_seed=7)
    assert_same_splits(pinned.splits(1), pinned.splits(2))
    assert_same_splits(pinned.splits(1), ModularArithmetic(p=17).splits(7))


def test_modular_label_corruption_rate_and_values():
    task = ModularArithmetic(p=31, train_fraction=0.5, label_corruption=0.3)
    splits = task.splits(seed=0)
    train = splits.train
    assert train.clean_y is not None
    corrupted = train.corrupted
    assert int(corrupted.sum()) == round(0.3 * len(train))
    assert torch.all(train.y[corrupted] != train.clean_y[corrupted])
    assert torch.equal(train.clean_y, train.x.sum(1) % 31)
    assert train.y.min() >= 0 and train.y.max() < 31
    assert splits.val.clean_y is None and splits.test.clean_y is None
    # The split does not depend on the corruption rate (separate random streams).
    clean = ModularArithmetic(p=31, train_fraction=0.5).splits(seed=0)
    assert torch.equal(clean.train.x, train.x) and clean.train.clean_y is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"p": 1}, "p"),
        ({"p": 12, "operation": "/"}, "prime"),
        ({"operation": "^"}, "operation"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"train_fraction": 0.7, "val_fraction": 0.4}, "train_fraction \\+ val_fraction"),
        ({"label_corruption": 1.5}, "label_corruption"),
    ],
)
def test_modular_rejects_bad_parameters(params, field):
    with pytest.raises(ValueError, match=field):
        ModularArithmetic(**params)


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


# --- shared helpers -----------------------------------------------------------------------


def test_corrupted_labels_are_uniform_over_other_classes():
    labels = torch.zeros(30_000, dtype=torch.long)
    noisy = corrupt_labels(labels, 1.0, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(noisy, minlength=4)
    assert counts[0] == 0
    assert torch.allclose(counts[1:] / 30_000, torch.full((3,), 1 / 3), atol=0.015)


def test_split_counts_never_exceed_total():
    assert split_counts(5, (0.3, 0.7)) == [2, 3, 0]
    assert split_counts(10, (0.25,)) == [2, 8]
    assert sum(split_counts(529, (0.4, 0.1))) == 529


def test_missing_optional_package_explains_install():
    with pytest.raises(ImportError, match=r"pip install 'heldout\[data\]'"):
        import_optional("heldout_no_such_package.data")


# --- XOR clusters -------------------------------------------------------------------------


def test_xor_cluster_means_orthogonal_with_stated_norm():
    task = XORClusters(dim=300, mean_norm_sq=200.0)
    means = task.cluster_means(seed=4).double()
    assert means.shape == (2, 300)
    assert abs(float(means[0] @ means[1])) < 1e-3
    assert torch.allclose(means.pow(2).sum(1), torch.full((2,), 200.0, dtype=torch.float64))
    assert not torch.equal(means, task.cluster_means(seed=5).double())


def test_xor_labels_follow_clusters_and_flips_hit_train_only():
    task = XORClusters(dim=50, n_train=20_000, n_val=500, n_test=2_000, flip_probability=0.15)
    splits = task.splits(seed=0)
    means = task.cluster_means(seed=0)
    for name, split in splits.items():
        clean = split.y if split.clean_y is None else split.clean_y
        # With ‖μ‖ = √200 ≈ 14 against unit noise, the nearest mean axis gives the true class.
        nearest_axis = (split.x @ means.T).abs().argmax(1)
        assert torch.equal(clean, nearest_axis), name
    assert splits.val.clean_y is None and splits.test.clean_y is None
    flip_rate = float(splits.train.corrupted.float().mean())
    assert abs(flip_rate - 0.15) < 0.01  # 4 standard errors at n = 20,000
    assert torch.equal(
        splits.train.y[splits.train.corrupted], 1 - splits.train.clean_y[splits.train.corrupted]
    )
    # Balanced: each class about half, each sign about half within it.
    assert abs(float(splits.train.clean_y.float().mean()) - 0.5) < 0.02
    signs = torch.sign((splits.train.x @ means.T).gather(1, splits.train.clean_y[:, None]))
    assert abs(float((signs > 0).float().mean()) - 0.5) < 0.02


def test_xor_shapes_seeds_and_clean_option():
    task = XORClusters(dim=30, n_train=40, n_val=5, n_test=60, flip_probability=0.0)
    splits = task.splits(seed=1)
    assert splits.train.x.shape == (40, 30) and splits.train.x.dtype == torch.float32
    assert (len(splits.val), len(splits.test), splits.num_classes) == (5, 60, 2)
    assert splits.input.kind == "continuous" and splits.input.shape == (30,)
    assert splits.train.clean_y is None
    assert_same_splits(splits, task.splits(seed=1))
    assert differ(splits, task.splits(seed=2))
    with pytest.raises(ValueError, match="flip_probability"):
        XORClusters(flip_probability=1.2)
    with pytest.raises(ValueError, match="mean_norm_sq"):
        XORClusters(mean_norm_sq=0.0)


# --- MNIST-1D -----------------------------------------------------------------------------


def test_mnist1d_shapes_classes_and_splits(cache):
    splits = MNIST1D(num_samples=500, label_noise=0.2).splits(seed=0)
    assert splits.train.x.shape == (360, 40) and splits.train.x.dtype == torch.float32
    assert (len(splits.val), len(splits.test), splits.num_classes) == (40, 100, 10)
    assert splits.input.kind == "continuous" and splits.input.shape == (40,)
    assert set(splits.test.y.tolist()) == set(range(10))
    assert int(splits.train.corrupted.sum()) == round(0.2 * 360)
    assert torch.all(
        splits.train.y[splits.train.corrupted] != splits.train.clean_y[splits.train.corrupted]
    )
    other = MNIST1D(num_samples=500, label_noise=0.2).splits(seed=1)
    assert torch.equal(splits.test.x, other.test.x)  # the generator's test part is fixed
    assert differ(splits, other)


def test_mnist1d_generation_leaves_global_rngs_untouched(cache):
    random.seed(1234)
    np.random.seed(5678)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    MNIST1D(num_samples=500).splits(seed=0)
    assert list(cache.glob("*.npz")), "the data set was generated, not taken from a cache"
    assert random.getstate() == python_state
    for after, before in zip(np.random.get_state(), numpy_state, strict=True):
        assert np.array_equal(after, before)
    assert random.random() == random.Random(1234).random()


def test_mnist1d_cache_file_is_created_and_reused(cache, monkeypatch):
    arrays = mnist1d_module.mnist1d_arrays(num_samples=500, dataset_seed=42)
    files = list(cache.glob("*.npz"))
    assert [f.name for f in files] == ["mnist1d_n500_seed42_v1.npz"]
    assert not list(cache.glob("*.tmp"))
    assert mnist1d_module.mnist1d_arrays(500, 42) is arrays  # in-process cache

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the .npz cache exists")

    monkeypatch.setattr(mnist1d_module, "_generate", fail)
    mnist1d_module._load.cache_clear()
    reloaded = mnist1d_module.mnist1d_arrays(500, 42)
    assert reloaded is not arrays
    for name in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(reloaded[name], arrays[name])
    assert reloaded["x"].shape == (400, 40) and reloaded["x_test"].shape == (100, 40)


# --- digits -------------------------------------------------------------------------------


def test_digits_stratified_split_proportions():
    splits = Digits(val_fraction=0.15, test_fraction=0.25).splits(seed=0)
    assert splits.train.x.shape[1] == 64 and splits.train.x.dtype == torch.float32
    assert float(splits.train.x.min()) >= 0 and float(splits.train.x.max()) <= 1
    assert sum(len(s) for _, s in splits.items()) == 1797 and splits.num_classes == 10
    per_class = {name: torch.bincount(s.y, minlength=10) for name, s in splits.items()}
    totals = sum(per_class.values())
    for name, fraction in (("test", 0.25), ("val", 0.15), ("train", 0.60)):
        share = per_class[name] / totals
        assert torch.all((share - fraction).abs() <= 1.0 / totals), name


def test_digits_label_noise_seeds_and_validation():
    task = Digits(label_noise=0.1)
    splits = task.splits(seed=5)
    assert int(splits.train.corrupted.sum()) == round(0.1 * len(splits.train))
    assert torch.all(
        splits.train.y[splits.train.corrupted] != splits.train.clean_y[splits.train.corrupted]
    )
    assert_same_splits(splits, task.splits(seed=5))
    assert differ(splits, task.splits(seed=6))
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        Digits(val_fraction=0.5, test_fraction=0.5)


# --- every task ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", small_tasks(), ids=lambda t: type(t).__name__)
def test_splits_leave_global_rngs_untouched(task):
    torch_state, numpy_state, python_state = (
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
        random.getstate(),
    )
    task.splits(seed=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert random.getstate() == python_state


def test_tasks_are_registered_frozen_dataclasses(monkeypatch):
    monkeypatch.setattr(TASKS, "_loaded", True)
    for name, cls in [
        ("modular", ModularArithmetic),
        ("xor_clusters", XORClusters),
        ("mnist1d", MNIST1D),
        ("digits", Digits),
    ]:
        entry = TASKS.get(name)
        assert entry.cls is cls and cls.registry_name == name
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls))
    assert TASKS.get("modular").papers == (9, 68) and TASKS.get("xor_clusters").papers == (15,)
