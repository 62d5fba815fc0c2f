"""Random Field Augmentations (#77): oracles for the fields (exact and sampled covariance
against the squared-exponential kernel, the ℓ → ∞ limit), the transforms (the global affine
map of ``affine_grid``, ``torch.roll``, ``rotate_images``, the colour formula), zero
amplitude, and the generator discipline (seeded draws, untouched global RNG, exact resume)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.engine.trainer import Trainer
from heldout.methods.augment.random_fields import (
    GlobalAffine,
    RandomFields,
    apply_fields,
    embedding_size,
    field_from_white_noise,
    gaussian_random_field,
    noise_shape,
    random_field_augment,
    recolour_by_fields,
    sample_fields,
    warp_by_fields,
)
from heldout.registry import TECHNIQUES
from heldout.tasks.base import Split
from heldout.tasks.domains.shifted import rotate_images

ALL_ON = {"translation": 0.7, "rotation": 20.0, "scale": 0.15, "brightness": 0.1,
          "contrast": 0.2, "gain": 0.1}


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kernel(height: int, width: int, length_scale: float) -> torch.Tensor:
    """exp(−d²/(2ℓ²)) between every pair of the H·W pixels (row-major), float64."""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    points = torch.stack((r.flatten(), c.flatten()), 1).double()
    return torch.exp(-torch.cdist(points, points) ** 2 / (2 * length_scale ** 2))


# ----------------------------------------------------------------------------- the fields
@pytest.mark.parametrize(("height", "width", "length_scale"),
                         [(10, 10, 2.5), (6, 12, 1.0), (9, 9, 8.0)])
def test_exact_covariance_of_the_synthesis_is_the_kernel(height, width, length_scale):
    """The synthesis is linear in the noise: feeding it the unit vectors gives the matrix A
    with fields = noise · A, so Cov = AᵀA exactly, which must be the kernel up to the
    wrap-around bound e^{-8} (ℓ ≤ n)."""
    rows, cols = noise_shape(height, width, length_scale)
    assert rows <= embedding_size(height, length_scale)
    basis = torch.eye(rows * cols, dtype=torch.float64).reshape(-1, rows, cols)
    a = field_from_white_noise(basis, height, width, length_scale).reshape(rows * cols, -1)
    covariance = a.T @ a
    assert torch.allclose(covariance.diagonal(), torch.ones(height * width, dtype=torch.float64))
    assert (covariance - kernel(height, width, length_scale)).abs().max() < math.exp(-8)


def test_sampled_fields_have_the_requested_covariance():
    """Monte-Carlo check of gaussian_random_field: the empirical covariance at pixel pairs in
    the middle of the image matches σ²·exp(−d²/(2ℓ²)), within 5 standard errors of a
    product-moment estimate from n fields (the mean is known to be 0)."""
    n, sigma, ell = 20000, 0.7, 3.0
    fields = gaussian_random_field(n, 16, 16, length_scale=ell, amplitude=sigma,
                                   generator=gen(1), dtype=torch.float64)
    assert abs(fields.mean()) < 5 * sigma / math.sqrt(n)
    centre = (6, 6)
    for dr, dc in [(0, 0), (0, 1), (1, 1), (0, 3), (2, 2), (3, -4), (0, 7)]:
        a, b = fields[:, centre[0], centre[1]], fields[:, centre[0] + dr, centre[1] + dc]
        rho = math.exp(-(dr ** 2 + dc ** 2) / (2 * ell ** 2))
        standard_error = sigma ** 2 * math.sqrt((1 + rho ** 2) / n)
        assert abs(float((a * b).mean()) - sigma ** 2 * rho) < 5 * standard_error, (dr, dc)


def test_a_huge_length_scale_tends_to_one_value_per_image():
    fields = gaussian_random_field(2000, 8, 8, length_scale=1e4, amplitude=0.5,
                                   generator=gen(2), dtype=torch.float64)
    spread_in_image = (fields - fields.mean(dim=(1, 2), keepdim=True)).abs().max()
    assert spread_in_image < 1e-3
    assert abs(float(fields[:, 0, 0].var()) - 0.25) < 5 * 0.25 * math.sqrt(2 / 2000)
    assert gaussian_random_field(3, 8, 8, length_scale=math.inf, amplitude=0.5,
                                 generator=gen(2)).shape == (3, 1, 1)


# ----------------------------------------------------------------------------- oracles
def affine_grid_reference(x: torch.Tensor, fields: dict) -> torch.Tensor:
    """The global transform built independently: the affine map in normalized coordinates
    (align_corners=True) through F.affine_grid, then the colour formula by hand."""
    batch, channels, height, width = x.shape
    aw, ah = (width - 1) / 2, (height - 1) / 2
    tx, ty, th, ls = (fields[k].reshape(batch).double() for k in
                      ("translation_x", "translation_y", "rotation", "log_scale"))
    s, cos, sin = torch.exp(ls), torch.cos(th), torch.sin(th)
    theta = torch.stack([
        torch.stack([cos / s, -sin * ah / (s * aw), (-cos * tx + sin * ty) / (s * aw)], 1),
        torch.stack([sin * aw / (s * ah), cos / s, (-sin * tx - cos * ty) / (s * ah)], 1),
    ], 1)
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=True)
    warped = F.grid_sample(x.double(), grid, align_corners=True, padding_mode="zeros")
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    k = torch.exp(fields["log_contrast"].double()).reshape(batch, 1, 1, 1)
    b = fields["brightness"].double().reshape(batch, 1, 1, 1)
    gain = torch.exp(fields["log_gain"].double()).reshape(batch, channels, 1, 1)
    return ((mean + k * (warped - mean) + b) * gain).float()


@pytest.mark.parametrize("channels", [1, 3])
def test_infinite_length_scale_is_the_global_affine_and_colour_transform(channels):
    x = images(6, channels, 9, 7)
    fields = sample_fields(6, channels, 9, 7, length_scale=None, generator=gen(3), **ALL_ON)
    assert all(f.shape[-2:] == (1, 1) for f in fields.values()) and len(fields) == 7
    expected = affine_grid_reference(x, fields)
    for length_scale in (None, math.inf):
        out, _ = RandomFields(length_scale=length_scale, **ALL_ON)(x, torch.zeros(6),
                                                                   generator=gen(3))
        assert torch.allclose(out, expected, atol=1e-5)
        # ... and bit for bit the baseline technique with the same draws
        baseline, _ = GlobalAffine(**ALL_ON)(x, torch.zeros(6), generator=gen(3))
        assert torch.equal(out, baseline)


def test_integer_translation_is_a_roll_inside_the_image():
    x = images(3, 2, 8, 8)
    shift = {"translation_x": torch.full((3, 1, 1), 2.0),
             "translation_y": torch.full((3, 1, 1), -3.0)}
    rolled = torch.roll(x, shifts=(-3, 2), dims=(-2, -1))
    zeros = warp_by_fields(x, **shift)
    assert torch.allclose(zeros[..., :5, 2:], rolled[..., :5, 2:], atol=1e-6)
    # what moved in from outside: zeros, or the edge pixels with border padding
    assert zeros[..., 5:, :].abs().max() < 1e-6 and zeros[..., :, :2].abs().max() < 1e-6
    border = warp_by_fields(x, **shift, padding="border")
    assert torch.allclose(border[..., :5, 2:], rolled[..., :5, 2:], atol=1e-6)
    assert torch.allclose(border[..., :5, 0], x[..., 3:, 0], atol=1e-6)
    assert torch.allclose(border[..., 7, 2:], x[..., 7, :6], atol=1e-6)


def test_a_constant_rotation_field_is_rotate_images():
    x = images(2, 1, 8, 8)
    for degrees in (90.0, 30.0, -45.0):
        field = torch.full((2, 1, 1), math.radians(degrees))
        assert torch.allclose(warp_by_fields(x, rotation=field), rotate_images(x, degrees),
                              atol=1e-5)
    quarter = warp_by_fields(x, rotation=torch.full((2, 1, 1), math.pi / 2))
    assert torch.allclose(quarter, torch.rot90(x, dims=(-2, -1)), atol=1e-5)


def test_pixel_wise_fields_act_pixel_by_pixel():
    """A field that is constant on each half of the image acts there as the global
    transform with that half's value (rows far from the seam, brightness and contrast)."""
    x = images(2, 1, 8, 8)
    log_contrast = torch.zeros(2, 8, 8)
    log_contrast[:, :, 4:] = math.log(2.0)
    brightness = torch.zeros(2, 8, 8)
    brightness[:, :4] = 0.5
    out = recolour_by_fields(x, brightness=brightness, log_contrast=log_contrast)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    expected = mean + torch.where(torch.arange(8) >= 4, 2.0, 1.0) * (x - mean) \
        + torch.where(torch.arange(8)[:, None] < 4, 0.5, 0.0)
    assert torch.allclose(out, expected, atol=1e-6)


# ----------------------------------------------------------------------------- identity, RNG
def test_zero_amplitude_is_the_identity_exactly():
    x = images(4, 64)
    zero = {k: 0.0 for k in ALL_ON}
    g = gen(0)
    out, _ = RandomFields(**zero)(x, torch.zeros(4), generator=g)
    assert torch.equal(out, x)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=gen(0)))  # no draw
    assert apply_fields(x.reshape(4, 1, 8, 8), {}) is not None
    assert torch.equal(apply_fields(x.reshape(4, 1, 8, 8), {}), x.reshape(4, 1, 8, 8))


def test_every_draw_comes_from_the_generator():
    x = images(8, 1, 12, 12)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    rfa = RandomFields(length_scale=2.0, probability=0.5, **ALL_ON)
    a, _ = rfa(x, torch.zeros(8), seed=5)
    b, _ = rfa(x, torch.zeros(8), generator=torch.Generator().manual_seed(
        int(torch.randint(0, 2**31, (1,), generator=gen(9)))))
    c, _ = rfa(x, torch.zeros(8), seed=5)
    assert torch.equal(a, c) and not torch.equal(a, b)
    torch.manual_seed(123)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was never drawn from


def test_probability_keeps_the_other_images():
    x = images(200, 1, 8, 8)
    out = random_field_augment(x, gen(4), length_scale=2.0, rotation=20.0, probability=0.3)
    kept = (out == x).flatten(1).all(1)
    assert 0.55 < float(kept.double().mean()) < 0.85  # about 70% of 200 kept exactly
    assert not (out[~kept] == x[~kept]).flatten(1).all(1).any()


def test_shapes_come_back_as_they_came_in():
    g = gen(0)
    for shape in [(3, 64), (3, 192), (3, 8, 8), (3, 2, 8, 8), (3, 3, 5, 9)]:
        out = random_field_augment(images(*shape), g, translation=0.5, gain=0.1)
        assert out.shape == shape and out.dtype == torch.float32
    rgb = images(2, 192)  # flattened channel-major 3x8x8: the channels stay apart
    out = random_field_augment(rgb, gen(1), length_scale=None, gain=0.3)
    ratios = (out / rgb).reshape(2, 3, 64)
    assert torch.allclose(ratios, ratios[..., :1].expand(-1, -1, 64), atol=1e-5)


def test_bad_input_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="length_scale"):
        RandomFields(length_scale=0.0)
    with pytest.raises(ValueError, match="rotation"):
        GlobalAffine(rotation=-1.0)
    with pytest.raises(ValueError, match="probability"):
        RandomFields(probability=1.5)
    with pytest.raises(ValueError, match="padding"):
        RandomFields(padding="reflect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square image"):
        random_field_augment(images(2, 10), gen(), rotation=5.0)
    with pytest.raises(ValueError, match="floating-point"):
        random_field_augment(torch.zeros(2, 64, dtype=torch.long), gen(), rotation=5.0)
    with pytest.raises(ValueError, match="noise"):
        field_from_white_noise(torch.zeros(2, 8, 8), 8, 8, 2.0)


def test_registered_with_paper_and_search_space():
    for name in ("random_fields", "global_affine"):
        entry = TECHNIQUES.get(name)
        assert entry.papers == (77,) and "rotation" in entry.search_space
    assert "length_scale" in TECHNIQUES.get("random_fields").search_space
    assert "length_scale" not in TECHNIQUES.get("global_affine").defaults()


# ----------------------------------------------------------------------------- Trainer
def trainer(techniques, max_steps=10, path=None, checkpoint_every=None) -> Trainer:
    g = gen(0)
    data = Split(torch.rand(48, 64, generator=g), torch.arange(48) % 3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    return Trainer(model, lambda p: torch.optim.SGD(p, lr=0.1), data, max_steps=max_steps,
                   batch_size=8, techniques=techniques, measures=[], eval_every=100,
                   checkpoint_every=checkpoint_every, checkpoint_path=path, seed=3)


def test_a_resumed_run_is_bit_identical(tmp_path):
    straight = trainer([RandomFields(**ALL_ON)])
    straight.fit()
    path = tmp_path / "ckpt.pt"
    trainer([RandomFields(**ALL_ON)], max_steps=5, path=path, checkpoint_every=5).fit()
    resumed = trainer([RandomFields(**ALL_ON)], path=path, checkpoint_every=5)
    assert resumed.resume() == 5
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    plain = trainer([])
    plain.fit()
    assert not torch.equal(next(plain.model.parameters()), next(straight.model.parameters()))
