"""Colour digits (digits_color): shapes, per-domain colours, determinism, names, bad input."""

import pytest
import torch

from heldout.registry import TASKS
from heldout.tasks.digits import digits_arrays
from heldout.tasks.domains.color import COLORINGS, DigitsColor, colorize


def test_colorize_mixes_background_and_foreground_by_intensity():
    s = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    fg, bg = torch.tensor([1.0, 0.2, 0.0]), torch.tensor([0.0, 0.4, 1.0])
    out = colorize(s, fg, bg)
    assert out.shape == (1, 3, 2, 2)
    for c in range(3):  # hand-computed: bg + (fg - bg) * s per channel
        assert torch.allclose(out[0, c], bg[c] + (fg[c] - bg[c]) * s[0])
    with pytest.raises(ValueError, match="intensity"):
        colorize(torch.zeros(4, 4), fg, bg)


def test_domains_are_the_digits_painted_in_their_colours_without_jitter():
    task = DigitsColor(jitter=0.0)
    features, labels = digits_arrays()
    intensity = torch.tensor(features).reshape(-1, 8, 8)
    for name, domain in zip(task.domain_names(), task.domains(0), strict=True):
        assert domain.x.shape == (len(domain), 192)
        fg, bg = (torch.tensor(c) for c in COLORINGS[name])
        expected = colorize(intensity[domain.index], fg, bg).reshape(len(domain), 192)
        assert torch.allclose(domain.x, expected)
        assert torch.equal(domain.y, torch.tensor(labels)[domain.index])
    gray = task.domains(0)[0]  # gray: the original image in every channel
    images = gray.x.reshape(-1, 3, 8, 8)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])


def test_domains_differ_in_colour_statistics_and_stay_in_range():
    domains = DigitsColor().domains(0)
    means = torch.stack([d.x.reshape(-1, 3, 64).mean(dim=(0, 2)) for d in domains])
    assert all(float(d.x.min()) >= 0 and float(d.x.max()) <= 1 for d in domains)
    gray, red, green, yellow_on_blue = means
    assert red[0] > 2 * red[1] and green[1] > 2 * green[0]  # the dominant channel
    # blue channel of yellow_on_blue: 0.5 (1 - s) + 0.25 s, s's mean read off the gray domain
    assert abs(yellow_on_blue[2] - (0.5 - 0.25 * gray[2])) < 0.02
    assert abs(gray[0] - gray[2]) < 0.02  # gray has equal channels up to the jitter
    indices = torch.cat([d.index for d in domains])
    assert len(indices.unique()) == len(indices) == 1797  # disjoint domains cover the data


def test_jitter_has_the_declared_std_and_splits_are_deterministic():
    task = DigitsColor(jitter=0.1)
    red = task.domains(0)[1].x.reshape(-1, 3, 64)
    background_pixels = red[:, 2].min(dim=1).values  # background of blue channel: 0 + noise
    # clipped at 0: the positive half of N(0, 0.1) has mean 0.1 * sqrt(2/pi) / 2 over all
    expected = 0.1 * (2 / torch.pi) ** 0.5 / 2
    assert abs(float(background_pixels.mean()) - expected) < 0.01
    a, b, c = task.splits(0), task.splits(0), task.splits(1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert a.input.shape == (192,) and a.num_classes == 10
    assert sorted(a.extra) == sorted(f"{s}@{n}" for s in ("val", "test")
                                     for n in task.domain_names())


def test_names_registry_and_bad_input():
    task = TASKS.build("digits_color", colorings=("gray", "inverted"), held_out=(1,))
    assert task.domain_names() == ("gray", "inverted")
    with pytest.raises(ValueError, match="colorings"):
        DigitsColor(colorings=("gray", "purple"))
    with pytest.raises(ValueError, match="colorings"):
        DigitsColor(colorings=("gray",), held_out=(0,))
    with pytest.raises(ValueError, match="held_out"):
        DigitsColor(held_out=(4,))
