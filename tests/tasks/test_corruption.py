"""Corruption suites: domain names, clean provenance (no training example reaches a held-out
test part), monotone severities, determinism, the blur against scipy, bad input."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from heldout.registry import TASKS
from heldout.tasks.domains.corruption import (
    CORRUPTIONS,
    DigitsCorruption,
    MNIST1DCorruption,
    corrupt,
    gaussian_blur,
)


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HELDOUT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_domain_names_and_default_held_out():
    task = TASKS.build("digits_corruption")
    names = task.domain_names()
    assert len(names) == 1 + 4 * 5 and names[0] == "clean"
    assert {"gaussian_noise3", "blur5", "contrast1", "brightness2"} <= set(names)
    assert task.held_out == tuple(range(1, 21))  # every corrupted domain; train on clean
    assert task.training_domains() == (0,)


def _source_rows(task, seed):
    """Per domain, the source rows of its (test, val, train) parts, read through
    DomainData.index and checked against the splits' contents."""
    domains, splits = task.domains(seed), task.splits(seed)
    parts = task.domain_parts(seed)
    for index, name in enumerate(task.domain_names()):
        test_rows, val_rows, _ = parts[index]
        assert torch.equal(splits.extra[f"test@{name}"].x, domains[index].x[test_rows])
        assert torch.equal(splits.extra[f"val@{name}"].x, domains[index].x[val_rows])
    training = task.training_domains()
    train_x = torch.cat([domains[i].x[parts[i][2]] for i in training])
    assert torch.equal(splits.train.x, train_x)
    return [[domains[i].index[rows] for rows in parts[i]] for i in range(len(domains))]


@pytest.mark.parametrize("held_out", [None, (3,), (2, 4)])
def test_no_training_example_reaches_a_held_out_test_part(held_out):
    task = DigitsCorruption(corruptions=("gaussian_noise", "blur"), severities=(1, 3),
                            held_out=held_out)
    rows = _source_rows(task, seed=0)
    training = set(task.training_domains())
    seen = set()  # source rows in any training split (train or val of a training domain)
    for index in training:
        seen |= set(rows[index][1].tolist()) | set(rows[index][2].tolist())
    for index in task.held_out:
        assert not seen & set(rows[index][0].tolist()), task.domain_names()[index]
    # the clean pool and the corrupted pool are disjoint, whatever is held out
    clean = set(torch.cat(rows[0]).tolist())
    assert all(not clean & set(torch.cat(r).tolist()) for r in rows[1:])


def test_digits_test_parts_are_large_and_splits_have_every_domain():
    task = DigitsCorruption()
    splits = task.splits(0)
    for name in task.domain_names():
        assert f"test@{name}" in splits.extra and f"val@{name}" in splits.extra
    sizes = {len(splits.extra[f"test@{n}"]) for n in task.domain_names()[1:]}
    assert min(sizes) >= 300
    assert len(splits.test) == 20 * min(sizes)
    assert splits.test.groups.unique().tolist() == list(range(1, 21))
    assert splits.train.groups.unique().tolist() == [0]
    x = torch.cat([splits.extra[f"test@{n}"].x for n in task.domain_names()])
    assert x.min() >= 0 and x.max() <= 1  # clipped to the pixel range


@pytest.mark.parametrize("cls", [DigitsCorruption, MNIST1DCorruption])
def test_severity_moves_the_data_monotonically_away_from_clean(cls):
    kwargs = {"num_samples": 600} if cls is MNIST1DCorruption else {}
    task = cls(**kwargs)
    domains = task.domains(0)
    x_source, _ = task._source_data()
    for corruption in CORRUPTIONS:
        distances = []
        for severity in task.severities:
            index = task.domain_names().index(f"{corruption}{severity}")
            domain = domains[index]
            clean = x_source[domain.index]
            distances.append(float((domain.x - clean).abs().mean()))
        assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), \
            (corruption, distances)
        assert distances[0] > 0


def test_deterministic_per_seed():
    task = DigitsCorruption(corruptions=("gaussian_noise",), severities=(2,))
    a, b, c = task.splits(0), task.splits(0), task.splits(1)
    for name in ("train", "val", "test"):
        assert torch.equal(a[name].x, b[name].x) and torch.equal(a[name].y, b[name].y)
    assert not torch.equal(a.test.x, c.test.x)


def test_mnist1d_suite_builds():
    task = MNIST1DCorruption(num_samples=600, corruptions=("blur", "contrast"), severities=(5,))
    splits = task.splits(0)
    assert task.domain_names() == ("clean", "blur5", "contrast5")
    assert splits.test.x.shape[1:] == (40,)
    # 60% of the 40% kept apart, up to per-class rounding (10 classes)
    assert abs(len(splits.extra["test@blur5"]) - 0.4 * 600 * 0.6) <= 10


def test_blur_matches_scipy():
    images = torch.rand(3, 8, 8, dtype=torch.float64)
    for sigma in (0.5, 0.75, 1.5):
        radius = int(np.ceil(3 * sigma))
        expected = np.stack([gaussian_filter(im, sigma, mode="nearest", radius=radius)
                             for im in images.numpy()])
        np.testing.assert_allclose(gaussian_blur(images, sigma, dims=2).numpy(), expected,
                                   rtol=0, atol=1e-12)
        signal = images.reshape(3, 64)
        expected_1d = np.stack([gaussian_filter(s, sigma, mode="nearest", radius=radius)
                                for s in signal.numpy()])
        np.testing.assert_allclose(gaussian_blur(signal, sigma, dims=1).numpy(), expected_1d,
                                   rtol=0, atol=1e-12)


def test_corruptions_by_hand():
    x = torch.tensor([[0.2, 0.6, 1.0]])
    noise = torch.tensor([[1.0, -1.0, 0.5]])
    assert torch.allclose(corrupt(x, "gaussian_noise", 0.5, noise=noise, clip=(0, 1)),
                          torch.tensor([[0.7, 0.1, 1.0]]))
    assert torch.allclose(corrupt(x, "contrast", 0.5), torch.tensor([[0.4, 0.6, 0.8]]))
    assert torch.allclose(corrupt(x, "brightness", 0.3, clip=(0, 1)),
                          torch.tensor([[0.5, 0.9, 1.0]]))


@pytest.mark.parametrize("kwargs, match", [
    ({"corruptions": ("fog",)}, "corruptions"),
    ({"severities": (0, 6)}, "severities"),
    ({"severities": ()}, "severities"),
    ({"pool_test_fraction": 0.9}, "pool_test_fraction"),
    ({"held_out": tuple(range(21))}, "held_out"),
])
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TASKS.build("digits_corruption", **kwargs)
