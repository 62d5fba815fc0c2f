"""Upsampling layers (#56): exact output sizes, the large-context sum, the factory."""

import pytest
import torch

from heldout.methods.upsampling import (
    BilinearUpsampler,
    LargeContextUpsampler,
    make_upsampler,
    transposed_upsampler,
)


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("kind", ["bilinear", "transposed", "large_context"])
def test_every_upsampler_scales_the_size_exactly(kind, factor):
    options = {"kernel_size": 7} if kind == "large_context" else {}
    layer = make_upsampler(kind, 3, 5, factor, **options)
    assert layer(torch.zeros(2, 3, 4, 7)).shape == (2, 5, 4 * factor, 7 * factor)


def test_large_context_is_the_sum_of_a_large_and_a_small_transposed_convolution():
    torch.manual_seed(0)
    layer = LargeContextUpsampler(2, 3, kernel_size=11, small_kernel_size=3)
    assert layer.large.kernel_size == (11, 11) and layer.small.kernel_size == (3, 3)
    x = torch.randn(1, 2, 5, 5)
    # hand-built: zero-insertion upsampling, then a full correlation with the flipped kernel,
    # cropped by the padding, is the transposed convolution
    up = torch.zeros(1, 2, 9, 9)
    up[..., ::2, ::2] = x
    expected = torch.zeros(1, 3, 10, 10)
    for conv in (layer.large, layer.small):
        k, p = conv.kernel_size[0], conv.padding[0]
        full = torch.nn.functional.conv2d(up, conv.weight.flip(-1, -2).transpose(0, 1),
                                          padding=k - 1)
        expected += full[..., p : p + 10, p : p + 10]
    expected += layer.large.bias[None, :, None, None]
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_bilinear_upsampler_interpolates_then_convolves():
    layer = BilinearUpsampler(1, 1, kernel_size=1)
    with torch.no_grad():
        layer.conv.weight.fill_(2.0)
        layer.conv.bias.zero_()
    x = torch.tensor([[[[0.0, 4.0]]]])
    # bilinear, half-pixel centres, clamped at the border: 0, 1, 3, 4 (rows repeated)
    assert torch.allclose(layer(x)[0, 0, 0], 2 * torch.tensor([0.0, 1.0, 3.0, 4.0]))


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="factor"):
        transposed_upsampler(2, 2, factor=1)
    with pytest.raises(ValueError, match="kernel_size"):
        transposed_upsampler(2, 2, factor=3, kernel_size=2)
    assert transposed_upsampler(2, 2, factor=3).kernel_size == (3, 3)  # default: factor
    with pytest.raises(ValueError, match="small_kernel_size"):
        LargeContextUpsampler(2, 2, kernel_size=3, small_kernel_size=5)
    with pytest.raises(ValueError, match="in_channels"):
        BilinearUpsampler(0, 2)
    with pytest.raises(ValueError, match="kind"):
        make_upsampler("nearest", 2, 2)
