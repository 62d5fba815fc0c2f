"""Shift suites and multi-domain loaders: the domains differ as declared, and every
multi-domain task follows the split convention (held_out, val@ / test@ per domain)."""

import csv
import dataclasses
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch

from heldout.config import ConfigError, RunConfig, parse_overrides
from heldout.registry import TASKS
from heldout.tasks import loaders
from heldout.tasks.digits import digits_arrays
from heldout.tasks.domains import (
    DigitsShift,
    DomainSuite,
    LabelShift,
    MNIST1DShift,
    SpuriousCue,
    rotate_images,
)
from heldout.tasks.loaders import ImageFolderDomains, TableDomains
from heldout.tasks.mnist1d import mnist1d_arrays

N1D = 800  # MNIST-1D examples for the small suites (200 per domain)


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HELDOUT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def digits_images() -> torch.Tensor:
    return torch.tensor(digits_arrays()[0]).reshape(-1, 8, 8)


def mnist1d_signals() -> torch.Tensor:
    arrays = mnist1d_arrays(N1D)
    return torch.tensor(np.concatenate([arrays["x"], arrays["x_test"]]))


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """The multiset of (input, label) examples."""
    return Counter((row.numpy().tobytes(), int(label)) for row, label in zip(x, y, strict=True))


def binomial_tolerance(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n) + 1 / n


# ------------------------------------------------------------------------------ rotation


def test_rotate_images_quarter_turns_equal_rot90():
    image = torch.zeros(8, 8)
    image[1, 2:7] = 1.0  # an "F": no rotation or flip maps it to itself
    image[1:7, 2] = torch.arange(6.0) + 2
    image[4, 2:5] = 5.0
    for k in (1, 2, 3):
        expected = torch.from_numpy(np.rot90(image.numpy(), k).copy())
        assert torch.equal(rotate_images(image, 90 * k), expected)
    assert torch.equal(rotate_images(image, 0), image)
    batch = rotate_images(torch.stack([image, image.T]), 90)
    assert torch.equal(batch[1], torch.from_numpy(np.rot90(image.T.numpy()).copy()))


def test_rotate_images_interpolates_a_ramp_exactly_at_any_angle():
    """Bilinear interpolation reproduces a linear image, so inside the image the rotated ramp
    is the ramp at the counter-clockwise rotated-back position."""
    size, degrees = 9, 30.0
    centre = (size - 1) / 2
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                          torch.arange(size, dtype=torch.float64), indexing="ij")
    ramp = 0.5 * r + 2.0 * c + 1.0
    out = rotate_images(ramp, degrees)
    t = math.radians(degrees)
    source_r = math.cos(t) * (r - centre) + math.sin(t) * (c - centre) + centre
    source_c = -math.sin(t) * (r - centre) + math.cos(t) * (c - centre) + centre
    inner = (r - centre) ** 2 + (c - centre) ** 2 <= 3.5**2
    expected = 0.5 * source_r + 2.0 * source_c + 1.0
    assert torch.allclose(out[inner], expected[inner], atol=1e-9)
    assert not torch.allclose(out[inner], ramp[inner], atol=0.1)


# ---------------------------------------------------------------------- declared shifts


def test_digits_rotation_domains_are_rotated_copies_of_disjoint_images():
    task = DigitsShift(shift="rotation")
    assert task.domain_names() == ("rot0", "rot30", "rot60", "rot90")
    domains = task.domains(0)
    source, labels = digits_images(), torch.tensor(digits_arrays()[1])
    used = torch.cat([d.index for d in domains])
    assert sorted(used.tolist()) == list(range(len(source)))  # disjoint, covering the data
    assert max(len(d) for d in domains) - min(len(d) for d in domains) <= 1
    for degrees, domain in zip((0, 30, 60, 90), domains, strict=True):
        assert torch.equal(domain.y, labels[domain.index])
        expected = rotate_images(source[domain.index], degrees).reshape(len(domain), 64)
        assert torch.equal(domain.x, expected)
    quarter = domains[3]
    turned = np.rot90(source[quarter.index].numpy(), axes=(1, 2)).reshape(-1, 64)
    assert torch.equal(quarter.x, torch.from_numpy(turned.copy()))
    assert torch.equal(domains[0].x, source[domains[0].index].reshape(-1, 64))


@pytest.mark.parametrize("task, source", [
    (DigitsShift(shift="noise"), "digits"),
    (MNIST1DShift(shift="noise", num_samples=N1D), "mnist1d"),
])
def test_noise_domains_add_gaussian_noise_of_the_declared_std(task, source):
    clean = digits_images().reshape(-1, 64) if source == "digits" else mnist1d_signals()
    sigmas = task.domain_strengths()
    assert sigmas[0] == 0 and list(sigmas) == sorted(sigmas)
    for sigma, domain in zip(sigmas, task.domains(0), strict=True):
        residual = domain.x - clean[domain.index]
        if sigma == 0:
            assert torch.equal(residual, torch.zeros_like(residual))
        else:  # thousands of draws: the std is within a few percent, the mean near 0
            assert abs(residual.std().item() / sigma - 1) < 0.05
            assert abs(residual.mean().item()) < 4 * sigma / math.sqrt(residual.numel())


@pytest.mark.parametrize("task, source", [
    (DigitsShift(shift="scale"), "digits"),
    (MNIST1DShift(shift="scale", num_samples=N1D), "mnist1d"),
])
def test_scale_domains_have_the_declared_amplitude_ratio(task, source):
    clean = digits_images().reshape(-1, 64) if source == "digits" else mnist1d_signals()
    assert task.domain_strengths() == (1.0, 0.75, 0.5, 0.25)
    for scale, domain in zip(task.domain_strengths(), task.domains(0), strict=True):
        original = clean[domain.index]
        ratio = domain.x.norm() / original.norm()
        assert ratio.item() == pytest.approx(scale, rel=1e-6)
        assert torch.allclose(domain.x, original * scale)


def test_mnist1d_translation_domains_are_circular_shifts_of_generated_signals():
    task = MNIST1DShift(shift="translation", num_samples=N1D)
    assert task.domain_names() == ("shift0", "shift5", "shift10", "shift15")
    clean = mnist1d_signals()
    known = {row.numpy().tobytes() for row in clean}
    for positions, domain in zip((0, 5, 10, 15), task.domains(0), strict=True):
        assert torch.equal(domain.x, torch.roll(clean[domain.index], positions, dims=1))
        back = torch.roll(domain.x, -positions, dims=1)  # undoing the declared shift ...
        assert all(row.numpy().tobytes() in known for row in back)
        if positions:  # ... and only that shift gives generated signals back
            wrong = torch.roll(domain.x, 1 - positions, dims=1)
            assert sum(row.numpy().tobytes() in known for row in wrong) < len(domain) / 10


# ---------------------------------------------------------------------------- spurious cue


def test_spurious_cue_agrees_with_the_label_at_each_domains_rate():
    task = SpuriousCue()
    assert task.domain_names() == ("agree90", "agree80", "agree10") and task.held_out == (2,)
    source, digits = digits_images().reshape(-1, 64), torch.tensor(digits_arrays()[1])
    correlations = []
    for p, domain in zip((0.9, 0.8, 0.1), task.domains(0), strict=True):
        n = len(domain)
        assert torch.equal(domain.x[:, :64], source[domain.index])
        cue_value = domain.x[:, 64]
        assert set(cue_value.tolist()) <= {-1.0, 1.0}
        cue = (cue_value > 0).long()
        agreement = (cue == domain.y).float().mean().item()
        assert abs(agreement - p) <= binomial_tolerance(p, n)
        assert torch.equal(domain.clean_y, (digits[domain.index] < 5).long())
        flipped = (domain.y != domain.clean_y).float().mean().item()
        assert abs(flipped - 0.25) <= binomial_tolerance(0.25, n)
        assert torch.equal(domain.groups, 2 * domain.y + (cue == domain.y).long())
        label_sign = 2.0 * domain.y - 1
        correlations.append(torch.corrcoef(torch.stack([cue_value, label_sign]))[0, 1].item())
    assert correlations[0] > 0.6 and correlations[1] > 0.4  # 2p - 1: 0.8 and 0.6
    assert correlations[2] < -0.6  # the cue flips sign in the test domain


def test_spurious_test_groups_are_label_by_cue_and_worst_group_is_meaningful():
    task = SpuriousCue(source="mnist1d", num_samples=N1D)
    assert task.input.shape == (41,)
    splits = task.splits(0)
    test = splits.test
    cue = (test.x[:, -1] > 0).long()
    assert torch.equal(test.groups, 2 * test.y + (cue == test.y).long())
    assert set(test.groups.tolist()) == {0, 1, 2, 3}
    assert (cue == test.y).float().mean() < 0.3  # mostly the disagreeing groups 0 and 2
    assert set(splits.train.groups.tolist()) == {0, 1}  # domain indices elsewhere
    assert torch.equal(splits["test@agree10"].groups, torch.full((len(test),), 2))
    assert torch.equal(splits["test@agree10"].y, test.y)
    assert splits.train.clean_y is not None and splits.train.corrupted.any()


# ----------------------------------------------------------------------------- label shift


def test_label_shift_step_domains_have_the_declared_class_frequencies():
    task = LabelShift(imbalance=0.1)
    favoured = [{0, 1, 2, 3, 4}, {2, 3, 4, 5, 6}, {5, 6, 7, 8, 9}, {7, 8, 9, 0, 1}]
    proportions = task.class_proportions(0)
    for d, classes in enumerate(favoured):
        heavy = proportions[d, sorted(classes)]
        light = np.delete(proportions[d], sorted(classes))
        assert np.allclose(heavy, 1 / 5.5) and np.allclose(light, 0.1 / 5.5)
    domains = task.domains(0)
    sizes = {len(d) for d in domains}
    assert len(sizes) == 1
    n = sizes.pop()
    counts = np.stack([np.bincount(d.y.numpy(), minlength=10) for d in domains])
    assert np.array_equal(counts, task.class_counts(0))
    assert np.abs(counts / n - proportions).max() <= 1 / n
    for d, classes in enumerate(favoured):
        heavy, light = counts[d, sorted(classes)], np.delete(counts[d], sorted(classes))
        assert heavy.min() > 5 * light.max()
        assert abs(light.mean() - 0.1 * heavy.mean()) <= 1
    used = torch.cat([d.index for d in domains])
    assert len(set(used.tolist())) == len(used)  # disjoint
    source = digits_images().reshape(-1, 64)
    assert all(torch.equal(d.x, source[d.index]) for d in domains)  # only the labels shift


def test_label_shift_dirichlet_priors_are_seeded_and_matched():
    task = LabelShift(prior="dirichlet", concentration=1.0)
    proportions = task.class_proportions(0)
    assert proportions.shape == (4, 10) and np.allclose(proportions.sum(axis=1), 1)
    assert np.abs(proportions[0] - proportions[1]).sum() > 0.3  # domains differ
    assert np.array_equal(proportions, task.class_proportions(0))
    assert not np.allclose(proportions, task.class_proportions(1))
    domains = task.domains(0)
    n = len(domains[0])
    counts = np.stack([np.bincount(d.y.numpy(), minlength=10) for d in domains])
    assert np.abs(counts - n * proportions).max() < 1
    with pytest.raises(ValueError, match="at most"):
        LabelShift(domain_size=10_000).splits(0)


# ---------------------------------------------------------------------------- convention


def check_convention(task: DomainSuite, seed: int = 0) -> None:
    splits, domains, names = task.splits(seed), task.domains(seed), task.domain_names()
    held = set(task.held_out)
    training = set(range(len(names))) - held
    assert set(splits.extra) == {f"{part}@{name}" for part in ("val", "test") for name in names}
    assert set(splits.train.groups.tolist()) == training
    assert set(splits.val.groups.tolist()) == training
    test_parts = [splits[f"test@{names[d]}"] for d in sorted(held)]
    assert torch.equal(splits.test.x, torch.cat([p.x for p in test_parts]))
    assert torch.equal(splits.test.y, torch.cat([p.y for p in test_parts]))
    if not isinstance(task, SpuriousCue):
        assert torch.equal(splits.test.groups, torch.cat([p.groups for p in test_parts]))
    for d, name in enumerate(names):
        val, test, domain = splits[f"val@{name}"], splits[f"test@{name}"], domains[d]
        assert (val.groups == d).all() and (test.groups == d).all()
        assert abs(len(test) - task.test_fraction * len(domain)) <= task.num_classes
        assert abs(len(val) - task.val_fraction * len(domain)) <= task.num_classes
        everything = rows(domain.x, domain.y)
        if d in training:
            mine = splits.train.groups == d
            assert torch.equal(splits.val.x[splits.val.groups == d], val.x)
            parts = rows(splits.train.x[mine], splits.train.y[mine]) + rows(val.x, val.y)
            assert parts + rows(test.x, test.y) == everything  # each example in one part
        else:
            assert not (splits.train.groups == d).any()
            assert not rows(val.x, val.y) + rows(test.x, test.y) - everything
            assert len(val) + len(test) < len(domain)


def assert_same_splits(a, b) -> None:
    assert [n for n, _ in a.items()] == [n for n, _ in b.items()]
    for (_, x), (_, y) in zip(a.items(), b.items(), strict=True):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
        assert torch.equal(x.groups, y.groups)


CONVENTION_TASKS = [
    DigitsShift(held_out=(1, 3)),
    DigitsShift(shift="noise"),
    SpuriousCue(),
    LabelShift(held_out=(2,), prior="dirichlet"),
    MNIST1DShift(num_samples=N1D, shift="translation", held_out=(3,)),
]


@pytest.mark.parametrize("task", CONVENTION_TASKS, ids=lambda t: t.registry_name)
def test_suites_follow_the_split_convention_deterministically(task):
    check_convention(task)
    assert_same_splits(task.splits(0), task.splits(0))
    other = task.splits(1)
    assert not torch.equal(task.splits(0).train.x, other.train.x)
    pinned = dataclasses.replace(task, data_seed=7)
    assert_same_splits(pinned.splits(0), pinned.splits(3))


def test_splits_leave_the_global_random_generators_alone():
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    for task in (DigitsShift(shift="noise"), SpuriousCue(), LabelShift(prior="dirichlet")):
        task.splits(0)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


@pytest.mark.parametrize("held_out, message", [
    ((4,), r"held_out index 4 is out of range: valid domain indices are 0\.\.3 \(0=rot0"),
    ((-1,), r"out of range: valid domain indices are 0\.\.3"),
    ((0, 1, 2, 3), "leaves no training domain: hold out at most 3 of the 4"),
    ((), "at least one test domain"),
    ((1, 1), "twice"),
    ((0.5,), "must be domain indices"),
])
def test_held_out_is_validated(held_out, message):
    with pytest.raises(ValueError, match=message):
        DigitsShift(held_out=held_out)


@pytest.mark.parametrize("make, message", [
    (lambda: DigitsShift(strengths=(0.0,)), "at least 2"),
    (lambda: DigitsShift(strengths=(30.0, 30.0)), "distinct"),
    (lambda: MNIST1DShift(strengths=(0.0, 2.5)), "whole positions"),
    (lambda: DigitsShift(shift="noise", strengths=(0.0, -1.0)), "sigma"),
    (lambda: SpuriousCue(cue_agreement=(0.9, 1.5)), "cue_agreement"),
    (lambda: LabelShift(imbalance=0.0), "imbalance"),
    (lambda: DigitsShift(val_fraction=0.5, test_fraction=0.5), "leave training data"),
])
def test_bad_suite_parameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_suites_are_registered_and_configurable():
    for name, cls in [("mnist1d_shift", MNIST1DShift), ("digits_shift", DigitsShift),
                      ("spurious", SpuriousCue), ("label_shift", LabelShift),
                      ("image_folder_domains", ImageFolderDomains),
                      ("table_domains", TableDomains)]:
        entry = TASKS.get(name)
        assert entry.cls is cls and cls.__dataclass_params__.frozen
        assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls))
        assert entry.defaults()["held_out"] == ((2,) if name == "spurious" else (0,))
        assert any("2007.01434" in ref for ref in entry.references)
    assert any("1907.02893" in ref for ref in TASKS.get("spurious").references)
    cfg = parse_overrides(RunConfig(), ["task=digits_shift", "task.held_out=1,3",
                                        "task.shift=noise"])
    assert cfg.task.params["held_out"] == (1, 3)
    assert TASKS.build("digits_shift", **cfg.task.params).splits(0).test.groups.unique().tolist(
    ) == [1, 3]
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        parse_overrides(RunConfig(), ["task=digits_shift", "task.held_out=7"])


# ------------------------------------------------------------------------- image loader


def write_tree(root, suffix=".npy"):
    """photo/{cat,dog} and sketch/{cat,emu}: 4 constant images per class of differing sizes;
    photo/dog holds RGB arrays. Returns the expected grey value of each file by domain."""
    expected = {}
    for d, (domain, classes) in enumerate([("photo", ("cat", "dog")), ("sketch", ("cat", "emu"))]):
        for class_name in classes:
            folder = root / domain / class_name
            folder.mkdir(parents=True)
            for j in range(4):
                level = 20 * d + 7 * len(class_name) + 30 * j + (class_name == "emu") * 11
                shape = (6 + j, 5 + 2 * j)
                if domain == "photo" and class_name == "dog":
                    rgb = np.array([level, level + 40, level // 2], dtype=np.uint8)
                    array = np.broadcast_to(rgb, (*shape, 3)).copy()
                    grey = float(rgb @ np.array([0.299, 0.587, 0.114])) / 255
                else:
                    array, grey = np.full(shape, level, dtype=np.uint8), level / 255
                save(folder / f"{j}{suffix}", array)
                expected.setdefault(domain, []).append((class_name, grey))
    return expected


def save(path, array):
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        from PIL import Image

        Image.fromarray(array).save(path)


def test_image_folder_reads_domains_classes_and_resizes(tmp_path):
    expected = write_tree(tmp_path)
    task = ImageFolderDomains(root=str(tmp_path), size=4, held_out=(1,))
    assert task.domain_names() == ("photo", "sketch")
    assert task.class_names() == ("cat", "dog", "emu")  # sorted union, same ids everywhere
    assert task.input.shape == (16,) and task.num_classes == 3
    for name, domain in zip(task.domain_names(), task.domains(0), strict=True):
        assert domain.x.shape == (len(expected[name]), 16)
        got = sorted((task.class_names()[int(y)], round(float(x.mean()), 5))
                     for x, y in zip(domain.x, domain.y, strict=True))
        assert got == sorted((c, round(g, 5)) for c, g in expected[name])
        assert torch.allclose(domain.x, domain.x[:, :1].expand(-1, 16), atol=1e-6)  # constant
    check_convention(task)
    rgb = ImageFolderDomains(root=str(tmp_path), size=3, color="rgb")
    x = rgb.domains(0)[1].x.reshape(-1, 3, 3, 3)
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 1], x[:, 2])  # grey as RGB


def test_image_folder_upsamples_bilinearly(tmp_path):
    for domain in ("a", "b"):
        (tmp_path / domain / "k").mkdir(parents=True)
        np.save(tmp_path / domain / "k" / "ramp.npy", np.array([[0.0, 1.0], [0.0, 1.0]]))
    x = ImageFolderDomains(root=str(tmp_path), size=4).domains(0)[0].x.reshape(4, 4)
    assert torch.allclose(x, torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(4, 4))


def test_image_folder_png_equals_npy(tmp_path):
    pytest.importorskip("PIL", reason="Pillow is not installed: PNG/JPEG reading is optional")
    write_tree(tmp_path / "npy")
    write_tree(tmp_path / "png", suffix=".png")
    for color in ("grayscale", "rgb"):
        a = ImageFolderDomains(root=str(tmp_path / "npy"), size=5, color=color).domains(0)
        b = ImageFolderDomains(root=str(tmp_path / "png"), size=5, color=color).domains(0)
        for da, db in zip(a, b, strict=True):
            assert torch.equal(da.y, db.y)
            assert torch.allclose(da.x, db.x, atol=1 / 255)  # Pillow rounds grey to 8 bits


def test_image_folder_reads_lazily_and_caches_per_path(tmp_path, monkeypatch):
    write_tree(tmp_path)
    loaders._load_tree.cache_clear()
    reads = []
    original = loaders._read_array
    monkeypatch.setattr(loaders, "_read_array", lambda path: reads.append(path) or original(path))
    task = ImageFolderDomains(root=str(tmp_path), size=4)
    assert not reads  # building the task reads nothing
    task.splits(0)
    first = len(reads)
    assert first == 16
    task.splits(1)
    ImageFolderDomains(root=str(tmp_path), size=4, held_out=(1,)).splits(0)
    assert len(reads) == first  # cached
    changed = tmp_path / "photo" / "cat" / "0.npy"
    np.save(changed, np.full((3, 3), 255, dtype=np.uint8))
    os.utime(changed, ns=(1, 10**18))
    assert task.domains(0)[0].x.max() == pytest.approx(1.0)  # a changed file is read again
    assert len(reads) == 2 * first


def test_image_folder_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="needs root"):
        ImageFolderDomains().splits(0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDomains(root=str(tmp_path / "nowhere")).splits(0)
    write_tree(tmp_path / "ok")
    with pytest.raises(ValueError, match=r"out of range: valid domain indices are 0\.\.1"):
        ImageFolderDomains(root=str(tmp_path / "ok"), held_out=(2,)).splits(0)
    (tmp_path / "empty" / "a" / "cat").mkdir(parents=True)
    np.save(tmp_path / "empty" / "a" / "cat" / "0.npy", np.zeros((2, 2)))
    (tmp_path / "empty" / "b" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="domain 'b' .* has no image files"):
        ImageFolderDomains(root=str(tmp_path / "empty")).splits(0)
    (tmp_path / "empty" / "b" / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"unknown image file type; accepted: \.npy, \.png"):
        ImageFolderDomains(root=str(tmp_path / "empty")).splits(0)
    (tmp_path / "flat" / "a").mkdir(parents=True)
    np.save(tmp_path / "flat" / "a" / "0.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="expected only class folders"):
        ImageFolderDomains(root=str(tmp_path / "flat")).splits(0)
    (tmp_path / "shape" / "a" / "c").mkdir(parents=True)
    (tmp_path / "shape" / "b" / "c").mkdir(parents=True)
    np.save(tmp_path / "shape" / "a" / "c" / "0.npy", np.zeros((2, 2, 5)))
    np.save(tmp_path / "shape" / "b" / "c" / "0.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 5\)"):
        ImageFolderDomains(root=str(tmp_path / "shape")).splits(0)


# -------------------------------------------------------------------------- table loader

SITES = ("north", "south", "east")


def write_csv(path, labels=("cat", "dog", "emu"), rows_per_site=30):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["site", "species", "height", "weight", "note"])
        for i in range(rows_per_site * len(SITES)):
            writer.writerow([SITES[i % 3], labels[(i // 3) % len(labels)], i, 2.5 * i, f"n{i}"])


def test_table_reads_domains_string_labels_and_numeric_features(tmp_path):
    path = tmp_path / "data.csv"
    write_csv(path)
    task = TableDomains(path=str(path), domain_column="site", label_column="species",
                        held_out=(1,))
    assert task.domain_names() == ("east", "north", "south")
    assert task.class_names() == ("cat", "dog", "emu")
    assert task.feature_names() == ("height", "weight")  # "note" is not numeric
    assert task.input.shape == (2,) and task.num_classes == 3
    for name, domain in zip(task.domain_names(), task.domains(0), strict=True):
        i = domain.x[:, 0].long()
        assert all(SITES[k % 3] == name for k in i.tolist())
        assert torch.equal(domain.x[:, 1], 2.5 * domain.x[:, 0])
        assert torch.equal(domain.y, (i // 3) % 3)
    check_convention(task)
    assert_same_splits(task.splits(0), task.splits(0))
    assert not torch.equal(task.splits(0).train.x, task.splits(1).train.x)  # the seed splits
    chosen = TableDomains(path=str(path), domain_column="site", label_column="species",
                          feature_columns=("weight",))
    assert torch.equal(chosen.domains(0)[0].x[:, 0], task.domains(0)[0].x[:, 1])


def test_table_sorts_numeric_labels_numerically(tmp_path):
    path = tmp_path / "numbers.csv"
    write_csv(path, labels=("10", "9", "2"))
    task = TableDomains(path=str(path), domain_column="site", label_column="species")
    assert task.class_names() == ("2", "9", "10")


def test_table_caches_per_path_and_rereads_a_changed_file(tmp_path):
    path = tmp_path / "data.csv"
    write_csv(path)
    loaders._read_table.cache_clear()
    task = TableDomains(path=str(path), domain_column="site", label_column="species")
    task.splits(0)
    task.splits(1)
    assert loaders._read_table.cache_info().misses == 1
    write_csv(path, labels=("a", "b"))
    os.utime(path, ns=(1, 10**18))
    assert task.class_names() == ("a", "b")
    assert loaders._read_table.cache_info().misses == 2


def test_table_errors_name_the_available_columns(tmp_path):
    path = tmp_path / "data.csv"
    write_csv(path)
    with pytest.raises(ValueError, match="label_column 'label' is not a column .*available "
                                         "columns: site, species, height, weight, note"):
        TableDomains(path=str(path), domain_column="site").splits(0)
    with pytest.raises(ValueError, match="domain_column 'domain' .*available columns: site"):
        TableDomains(path=str(path), label_column="species").splits(0)
    with pytest.raises(ValueError, match="feature column 'age' is not a column .*available"):
        TableDomains(path=str(path), domain_column="site", label_column="species",
                     feature_columns=("height", "age")).splits(0)
    with pytest.raises(ValueError, match="feature column 'note' .* not numeric: data row 1"):
        TableDomains(path=str(path), domain_column="site", label_column="species",
                     feature_columns=("note",)).splits(0)
    with pytest.raises(ValueError, match="needs path"):
        TableDomains().splits(0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TableDomains(path=str(tmp_path / "missing.csv")).splits(0)
    with pytest.raises(ValueError, match=r"unknown table file type; accepted: \.csv, \.parquet"):
        TableDomains(path=str(tmp_path / "data.xlsx")).splits(0)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("domain,label,x\na,1,2\nb,1\n")
    with pytest.raises(ValueError, match="row 3: 2 cells, but the header has 3"):
        TableDomains(path=str(ragged)).splits(0)
    single = tmp_path / "single.csv"
    single.write_text("domain,label,x\na,1,2\na,0,3\n")
    with pytest.raises(ValueError, match="leaves no training domain"):
        TableDomains(path=str(single)).splits(0)


def test_table_parquet_equals_csv(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: Parquet is optional")
    parquet = pytest.importorskip("pyarrow.parquet")
    csv_path = tmp_path / "data.csv"
    write_csv(csv_path)
    with open(csv_path, newline="") as file:
        records = list(csv.DictReader(file))
    table = pa.table({
        "site": [r["site"] for r in records],
        "species": [r["species"] for r in records],
        "height": [int(r["height"]) for r in records],
        "weight": [float(r["weight"]) for r in records],
        "note": [r["note"] for r in records],
    })
    parquet.write_table(table, tmp_path / "data.parquet")
    a = TableDomains(path=str(csv_path), domain_column="site", label_column="species")
    b = TableDomains(path=str(tmp_path / "data.parquet"), domain_column="site",
                     label_column="species")
    assert a.domain_names() == b.domain_names() and a.class_names() == b.class_names()
    assert a.feature_names() == b.feature_names()
    assert_same_splits(a.splits(0), b.splits(0))
