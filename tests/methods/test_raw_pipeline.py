"""RAW pipeline (#76): each ISP stage against its inverse or a hand-computed case, the round
trip's exact cases, and the technique in the Trainer on colour digits."""

import pytest
import torch
from torch import nn

from heldout.methods.raw_pipeline import (
    RawPipeline,
    RawPipelineDefense,
    apply_ccm,
    bayer_masks,
    camera_ccm,
    demosaic,
    gamma_compress,
    gamma_expand,
    inverse_isp,
    inverse_tone_map,
    isp,
    mosaic,
    raw_round_trip,
    tone_map,
    white_balance,
)
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import assert_resume_is_exact, tiny_config

GAINS = torch.tensor([2.0, 1.0, 1.7], dtype=torch.float64)


def images(seed=0, n=3, size=6, low=0.45, high=0.55):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)


def test_tone_gamma_ccm_and_gains_are_exact_inverses_in_range():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(inverse_tone_map(tone_map(x)), x, atol=1e-12)
    assert torch.allclose(tone_map(torch.tensor([0.5, 0.25])), torch.tensor([0.5, 0.15625]))
    assert torch.allclose(gamma_expand(gamma_compress(x[1:], 2.2), 2.2), x[1:], atol=1e-12)
    assert torch.allclose(gamma_compress(torch.tensor([0.25]), 2.0), torch.tensor([0.5]))
    rgb = images()
    ccm = camera_ccm()
    back = apply_ccm(apply_ccm(rgb, torch.linalg.inv(ccm)), ccm)
    assert torch.allclose(back, rgb, atol=1e-12)
    assert torch.allclose(white_balance(white_balance(rgb, GAINS), 1 / GAINS), rgb)
    # hand-computed: a pixel (1, 0, 0) through the CCM is the CCM's first column
    red = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    red[:, 0] = 1
    assert torch.allclose(apply_ccm(red, ccm)[0, :, 0, 0], ccm[:, 0])
    assert torch.allclose(ccm.sum(dim=1), torch.ones(3, dtype=torch.float64))  # gray stays gray


def test_mosaic_picks_the_filter_channel_at_each_bayer_site():
    rgb = torch.arange(3 * 4 * 4, dtype=torch.float64).reshape(1, 3, 4, 4)
    raw = mosaic(rgb)[0]
    for r in range(4):
        for c in range(4):
            channel = 0 if (r % 2, c % 2) == (0, 0) else 2 if (r % 2, c % 2) == (1, 1) else 1
            assert raw[r, c] == rgb[0, channel, r, c]
    assert bayer_masks(3, 3).sum(dim=0).eq(1).all()  # one filter per site


def test_demosaic_keeps_measured_sites_interpolates_bilinearly_and_is_exact_on_constants():
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(2, 6, 8, generator=g, dtype=torch.float64)
    rgb = demosaic(raw)
    assert torch.equal(mosaic(rgb), raw)  # mosaic(demosaic(r)) = r exactly
    # inside the image, hand-computed bilinear values: green at the red site (2, 2) is the mean
    # of its 4 neighbours; red at the blue site (3, 3) the mean of its 4 diagonal neighbours;
    # red at the green site (2, 3) the mean of its left and right neighbours
    r = raw[0]
    assert torch.isclose(rgb[0, 1, 2, 2], (r[1, 2] + r[3, 2] + r[2, 1] + r[2, 3]) / 4)
    assert torch.isclose(rgb[0, 0, 3, 3], (r[2, 2] + r[2, 4] + r[4, 2] + r[4, 4]) / 4)
    assert torch.isclose(rgb[0, 0, 2, 3], (r[2, 2] + r[2, 4]) / 2)
    constant = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)[None, :, None, None]
    constant = constant.expand(1, 3, 5, 7)
    assert torch.allclose(demosaic(mosaic(constant)), constant, atol=1e-15)  # border too


def test_round_trip_is_exact_on_constant_colours_and_a_projection_in_range():
    colour = torch.tensor([0.3, 0.55, 0.4], dtype=torch.float64)[None, :, None, None]
    flat = colour.expand(2, 3, 6, 6).clone()
    assert torch.allclose(raw_round_trip(flat), flat, atol=1e-12)
    x = images()
    raw = inverse_isp(x, camera_ccm(), GAINS)
    assert raw.min() > 0 and raw.max() < 1  # no clipping on the way in
    once = isp(raw, camera_ccm(), GAINS)
    assert torch.allclose(once, raw_round_trip(x))
    assert (once - x).abs().max() > 0.05  # lossy on a non-constant image ...
    assert torch.allclose(raw_round_trip(once), once, atol=1e-12)  # ... but idempotent
    out = raw_round_trip(torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0)))
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == torch.float32


def test_round_trip_is_differentiable_end_to_end():
    x = images().requires_grad_()
    raw_round_trip(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_module_takes_flat_or_image_layouts_and_refuses_bad_inputs():
    module = RawPipeline()
    x = images(n=2, size=8).float()
    assert torch.allclose(module(x.reshape(2, 192)), module(x).reshape(2, 192))
    assert RawPipeline(height=4)(torch.rand(2, 3 * 4 * 6)).shape == (2, 72)
    assert not list(module.parameters())
    with pytest.raises(ValueError, match="raw_pipeline"):
        module(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="raw_pipeline"):
        module(torch.rand(2, 100))
    with pytest.raises(ValueError, match="images must be"):
        raw_round_trip(torch.rand(2, 1, 4, 4))


def test_technique_wraps_the_model_so_it_sees_the_round_trip():
    classifier = nn.Linear(192, 10)
    wrapped = RawPipelineDefense(ccm_strength=0.5).transform_model(classifier)
    x = torch.rand(4, 192)
    expected = classifier(raw_round_trip(x.reshape(4, 3, 8, 8), camera_ccm(0.5)).reshape(4, 192))
    assert torch.allclose(wrapped(x), expected, atol=1e-6)


def _color_config(*extra):
    return tiny_config("task=digits_color", "model.hidden=[16]", "model.batch_norm=true",
                       "batch_size=16", "techniques=raw_pipeline", *extra)


def test_technique_trains_deterministically_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = _color_config()
    first = execute(cfg, Store(tmp_path / "a"))
    second = execute(cfg, Store(tmp_path / "b"))
    assert first.status == "done" and first.metrics == second.metrics
    assert_resume_is_exact(cfg, tmp_path / "resume", monkeypatch)
