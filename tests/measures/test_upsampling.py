"""Spectral artifacts of upsampling (#56): zero for bilinear upsampling of a constant map, the
closed-form spectrum of a tiled 2x2 transposed-convolution kernel, scale invariance, and the
measure on a model with an upsampling layer."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heldout.core.measure import EvalContext
from heldout.measures.upsampling import (
    SpectralArtifacts,
    find_upsamplers,
    spectral_artifacts,
    upsampled_maps,
)
from heldout.methods.upsampling import BilinearUpsampler, LargeContextUpsampler


def test_bilinear_upsampling_of_a_constant_map_has_no_artifact():
    constant = torch.full((2, 3, 5, 6), 0.7)
    for mode in ("bilinear", "nearest"):
        up = F.interpolate(constant, scale_factor=2, mode=mode)
        shares = spectral_artifacts(up, 2)
        assert shares["high_frequency_share"] < 1e-20 and shares["alias_share"] < 1e-20
    assert spectral_artifacts(torch.zeros(4, 4), 2) == {"high_frequency_share": 0.0,
                                                         "alias_share": 0.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transposed_convolution_of_a_constant_tiles_the_kernel_with_its_closed_form_spectrum(
        seed):
    g = torch.Generator().manual_seed(seed)
    a, b, c, d = torch.randn(4, generator=g, dtype=torch.float64).tolist()
    kernel = torch.tensor([[a, b], [c, d]], dtype=torch.float64)[None, None]
    out = F.conv_transpose2d(torch.ones(1, 1, 4, 6, dtype=torch.float64), kernel, stride=2)
    dc, row, col, checker = ((a + b + c + d) ** 2, (a + b - c - d) ** 2, (a - b + c - d) ** 2,
                             (a - b - c + d) ** 2)
    shares = spectral_artifacts(out, 2)
    expected = (row + col + checker) / (dc + row + col + checker)
    assert shares["alias_share"] == pytest.approx(expected, rel=1e-12)
    assert shares["high_frequency_share"] == pytest.approx(expected, rel=1e-12)
    # the checkerboard peak sits at the Nyquist frequency (H/2, W/2) with power (a-b-c+d)^2
    # times (number of 2x2 tiles = 4 * 6)^2
    power = torch.fft.fft2(out[0, 0]).abs().square()
    assert power[4, 6] == pytest.approx(checker * 24**2, rel=1e-12)


def test_zero_insertion_puts_three_quarters_of_the_power_at_the_aliases_and_scale_is_free():
    maps = torch.randn(2, 3, 4, 4).abs() + 1
    zero_inserted = torch.zeros(2, 3, 8, 8)
    zero_inserted[..., ::2, ::2] = torch.ones(4, 4)  # a constant map, zero-inserted
    assert spectral_artifacts(zero_inserted, 2)["alias_share"] == pytest.approx(0.75)
    up = F.conv_transpose2d(maps, torch.randn(3, 1, 4, 4), stride=2, padding=1)
    assert spectral_artifacts(up, 2) == pytest.approx(spectral_artifacts(37.5 * up, 2))


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="factor"):
        spectral_artifacts(torch.ones(4, 4), 1)
    with pytest.raises(ValueError, match="factor 3"):
        spectral_artifacts(torch.ones(4, 4), 3)
    with pytest.raises(ValueError, match="feature_maps"):
        spectral_artifacts(torch.ones(4), 2)


class Decoder(nn.Module):
    """64 features -> 1x8x8 -> 4x4 (average) -> upsample to 8x8 -> pooled logits."""

    def __init__(self, upsampler: nn.Module):
        super().__init__()
        self.down = nn.AvgPool2d(2)
        self.up = upsampler
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 64, 10))

    def forward(self, x):
        return self.head(self.up(self.down(x.reshape(-1, 1, 8, 8))))


def test_measure_finds_the_upsampler_and_reports_its_shares():
    torch.manual_seed(0)
    x, y = torch.rand(20, 64), torch.randint(0, 10, (20,))
    lctc = Decoder(LargeContextUpsampler(1, 2, kernel_size=7))
    assert find_upsamplers(lctc, x[:1]) == {"up": 2}  # once, not its two parts
    assert find_upsamplers(Decoder(BilinearUpsampler(1, 2)), x[:1]) == {"up": 2}
    out = SpectralArtifacts(max_points=8).compute(EvalContext(lctc, "test", (x, y)))
    expected = spectral_artifacts(upsampled_maps(lctc, x[:8], "up"), 2)
    assert out["spectral_artifacts/up/alias_share"] == expected["alias_share"]
    assert out["spectral_artifacts/high_frequency_share"] == expected["high_frequency_share"]
    mlp = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    assert SpectralArtifacts().compute(EvalContext(mlp, "test", (x, y))) == {}
    assert SpectralArtifacts().compute(EvalContext(lctc, "train", (x, y))) == {}
    with pytest.raises(ValueError, match="head"):
        SpectralArtifacts(layers=("head",)).compute(EvalContext(lctc, "test", (x, y)))
