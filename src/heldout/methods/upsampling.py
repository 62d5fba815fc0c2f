"""Upsampling layers for pixel-wise decoders (#56): large-context transposed convolution and
the two usual baselines, bilinear resize-convolution and a plain transposed convolution.

Agnihotri et al. find that upsampling with little spatial context (a 2x2 or 3x3 transposed
convolution) leaves spectral artifacts (power at the aliasing frequencies of the upsampling
grid, the checkerboard), which make pixel-wise predictions unstable under attack; giving the
upsampling a large context, a transposed convolution with a large kernel (7x7 or 11x11) plus
a parallel small (3x3) one, reduces those artifacts even with all filter weights learned.
:func:`~heldout.measures.upsampling.spectral_artifacts` measures them.

Our reading of the paper's "Large Context Transposed Convolution" (LCTC): the outputs of the
large and the small transposed convolution, both with stride ``factor`` and padded to exactly
``factor``-times the input size, are summed. heldout's registered models hold no upsampling
layer, so these are modules for a user's decoder, not a registered technique.

References:
    Agnihotri, Grabinski, Keuper. Improving Feature Stability during Upsampling -- Spectral
    Artifacts and the Importance of Spatial Context. arXiv:2311.17524.
    Odena, Dumoulin, Olah. Deconvolution and Checkerboard Artifacts. Distill, 2016.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = [
    "UPSAMPLERS",
    "BilinearUpsampler",
    "LargeContextUpsampler",
    "make_upsampler",
    "transposed_upsampler",
]


def _transposed(in_channels: int, out_channels: int, kernel_size: int, factor: int,
                bias: bool = True) -> nn.ConvTranspose2d:
    """A stride-``factor`` transposed convolution whose output is exactly ``factor`` times
    its input in each dimension: ``(H − 1)·s − 2p + k + o = s·H`` with ``o < s``."""
    if kernel_size < factor:
        raise ValueError(f"kernel_size must be >= factor ({factor}) to cover every output "
                         f"position, got {kernel_size}")
    padding = -(-(kernel_size - factor) // 2)
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=factor,
                              padding=padding, output_padding=2 * padding - (kernel_size - factor),
                              bias=bias)


def transposed_upsampler(in_channels: int, out_channels: int, factor: int = 2,
                         kernel_size: int | None = None) -> nn.ConvTranspose2d:
    """The small-context baseline: one stride-``factor`` transposed convolution with a
    ``kernel_size`` kernel (default ``factor``: 2x2 for a factor 2, as in U-Net's decoder)."""
    _check(in_channels, out_channels, factor)
    return _transposed(in_channels, out_channels, kernel_size or factor, factor)


class BilinearUpsampler(nn.Module):
    """The signal-processing baseline: bilinear interpolation by ``factor``, then a
    ``kernel_size`` convolution (resize-convolution).

    Example:
        >>> import torch
        >>> BilinearUpsampler(4, 2)(torch.zeros(1, 4, 5, 6)).shape
        torch.Size([1, 2, 10, 12])
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2,
                 kernel_size: int = 3) -> None:
        super().__init__()
        _check(in_channels, out_channels, factor)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.resize = nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.resize(x))


class LargeContextUpsampler(nn.Module):
    """Large Context Transposed Convolution: ``large(x) + small(x)``, two stride-``factor``
    transposed convolutions with a ``kernel_size`` (11 by default; the paper uses 7 or 11) and
    a ``small_kernel_size`` (3) kernel, each output ``factor`` times the input's size.

    Example:
        >>> import torch
        >>> LargeContextUpsampler(4, 2)(torch.zeros(1, 4, 5, 6)).shape
        torch.Size([1, 2, 10, 12])
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2,
                 kernel_size: int = 11, small_kernel_size: int = 3) -> None:
        super().__init__()
        _check(in_channels, out_channels, factor)
        if small_kernel_size > kernel_size:
            raise ValueError(f"small_kernel_size ({small_kernel_size}) must not exceed "
                             f"kernel_size ({kernel_size})")
        self.large = _transposed(in_channels, out_channels, kernel_size, factor)
        self.small = _transposed(in_channels, out_channels, small_kernel_size, factor,
                                 bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.large(x) + self.small(x)


def _check(in_channels: int, out_channels: int, factor: int) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor}")


UPSAMPLERS: dict[str, Callable[..., nn.Module]] = {
    "bilinear": BilinearUpsampler,
    "transposed": transposed_upsampler,
    "large_context": LargeContextUpsampler,
}


def make_upsampler(kind: str, in_channels: int, out_channels: int, factor: int = 2,
                   **options: int) -> nn.Module:
    """An upsampler of :data:`UPSAMPLERS` by name (``options``: its kernel sizes)."""
    if kind not in UPSAMPLERS:
        raise ValueError(f"kind must be one of {', '.join(UPSAMPLERS)}, got {kind!r}")
    return UPSAMPLERS[kind](in_channels, out_channels, factor, **options)
