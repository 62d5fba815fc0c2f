"""RGB → RAW → RGB through a toy camera pipeline, as a defensive preprocessing module (#76).

All You Need is RAW maps an input RGB image to a Bayer RAW capture and back to RGB through a
camera image signal processor (ISP), before the classifier: the round trip projects the input
onto images a camera can produce, which removes much of an adversarial perturbation that is
not of that form. Each stage here is a pure function on ``(N, 3, H, W)`` images in ``[0, 1]``:

* inverse ISP (RGB → RAW), the analytic "unprocessing" of Brooks et al.: inverse tone curve
  (smoothstep ``3x² − 2x³`` inverted: ``½ − sin(asin(1 − 2y) / 3)``), inverse gamma
  (``y^γ``), inverse colour-correction matrix (camera ← sRGB, ``CCM⁻¹``), inverse white
  balance (divide by the channel gains), mosaicing to one RGGB Bayer plane (each site keeps
  the channel its colour filter passes), clipped to ``[0, 1]`` like a saturating sensor;
* forward ISP (RAW → RGB): white balance (multiply each site by its channel's gain),
  bilinear demosaicing (normalized convolution: at a site of its own colour a channel keeps
  the measured value, elsewhere it is the weighted mean of the nearest sites of that colour,
  so a constant colour is reconstructed exactly up to the border), CCM, gamma
  (``x^(1/γ)``), tone curve, clipped to ``[0, 1]``.

Exactness: the colour stages are exact inverses (up to float rounding) on values in range;
mosaicing a demosaiced plane gives the plane back exactly; so RGB → RAW → RGB reproduces a
constant-colour image (whose RAW stays in ``[0, 1]``) and, with no clipping on the way, the
pipeline is idempotent (``p(p(x)) = p(x)``): it is a projection onto the Bayer-consistent
images. Everything is differentiable, so attacks see end-to-end gradients.

What is a stand-in: the paper *learns* the RGB→RAW map and the RAW→RGB ISP (and a second
RAW→RGB path) from real RAW captures; here both are the fixed analytic pipeline, with the
camera's parameters (gains, CCM, gamma) as hyper-parameters, and no sensor noise model.

References:
    Zhang, Dong, Heide. All You Need is RAW: Defending Against Adversarial Attacks with
    Camera Image Pipelines. arXiv:2112.09219.
    Brooks, Mildenhall, Xue, Chen, Sharlet, Barron. Unprocessing Images for Learned Raw
    Denoising. arXiv:1811.11127.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = [
    "CAMERA_CCM",
    "RawPipeline",
    "RawPipelineDefense",
    "apply_ccm",
    "bayer_masks",
    "camera_ccm",
    "demosaic",
    "gamma_compress",
    "gamma_expand",
    "inverse_isp",
    "inverse_tone_map",
    "isp",
    "mosaic",
    "raw_round_trip",
    "tone_map",
    "white_balance",
]

# camera RGB -> sRGB, rows summing to 1 (gray stays gray); a mild matrix of the kind of Brooks
# et al.'s sampled camera matrices, whose inverse has non-negative entries
CAMERA_CCM = ((1.6, -0.4, -0.2), (-0.3, 1.5, -0.2), (0.0, -0.5, 1.5))
_TINY = 1e-8  # keeps x^(1/γ) differentiable at 0


def _check_images(name: str, images: Tensor) -> None:
    if not images.is_floating_point():
        raise ValueError(f"{name}: needs float RGB images, got {images.dtype} inputs")
    if images.dim() != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < 2:
        raise ValueError(f"{name}: images must be (N, 3, H, W) with H, W >= 2, got shape "
                         f"{tuple(images.shape)}")


def tone_map(x: Tensor) -> Tensor:
    """The smoothstep tone curve ``3x² − 2x³`` on ``[0, 1]``."""
    x = x.clamp(0, 1)
    return 3 * x**2 - 2 * x**3


def inverse_tone_map(y: Tensor) -> Tensor:
    """The inverse of :func:`tone_map` on ``[0, 1]``: ``½ − sin(asin(1 − 2y) / 3)``.

    Example:
        >>> x = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
        >>> torch.allclose(inverse_tone_map(tone_map(x)), x)
        True
    """
    y = y.clamp(0, 1)
    return 0.5 - torch.sin(torch.asin((1 - 2 * y).clamp(-1, 1)) / 3)


def gamma_compress(x: Tensor, gamma: float = 2.2) -> Tensor:
    """Linear → display: ``max(x, 1e-8)^(1/γ)``."""
    return x.clamp(min=_TINY) ** (1 / gamma)


def gamma_expand(y: Tensor, gamma: float = 2.2) -> Tensor:
    """Display → linear: ``max(y, 0)^γ``, the inverse of :func:`gamma_compress`."""
    return y.clamp(min=0) ** gamma


def apply_ccm(images: Tensor, ccm: Tensor) -> Tensor:
    """Each pixel's colour times a 3x3 matrix: ``out[c] = Σ_d ccm[c, d] · images[d]``."""
    return torch.einsum("cd,nd...->nc...", ccm.to(images.dtype), images)


def white_balance(images: Tensor, gains: Tensor) -> Tensor:
    """Multiply channel ``c`` of ``(N, 3, H, W)`` images by ``gains[c]`` (divide: pass
    ``1 / gains``)."""
    return images * gains.to(images.dtype)[:, None, None]


def bayer_masks(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """``(3, H, W)`` 0/1 masks of the RGGB Bayer pattern: red at (even row, even column),
    blue at (odd, odd), green at the other two sites.

    Example:
        >>> bayer_masks(2, 2).argmax(dim=0).tolist()  # channel index of each site
        [[0, 1], [1, 2]]
    """
    rows = torch.arange(height, device=device)[:, None] % 2
    cols = torch.arange(width, device=device)[None, :] % 2
    red = (rows == 0) & (cols == 0)
    blue = (rows == 1) & (cols == 1)
    return torch.stack([red, ~(red | blue), blue]).to(dtype)


def mosaic(images: Tensor) -> Tensor:
    """The RGGB Bayer plane ``(N, H, W)`` of ``(N, 3, H, W)`` images: each site keeps the
    channel of its colour filter (:func:`bayer_masks`)."""
    _check_images("mosaic", images)
    masks = bayer_masks(*images.shape[-2:], dtype=images.dtype, device=images.device)
    return (images * masks).sum(dim=1)


_RED_BLUE_KERNEL = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))
_GREEN_KERNEL = ((0.0, 1.0, 0.0), (1.0, 4.0, 1.0), (0.0, 1.0, 0.0))


def demosaic(raw: Tensor) -> Tensor:
    """Bilinear demosaicing of an RGGB plane ``(N, H, W)`` into ``(N, 3, H, W)``.

    Each channel is the normalized convolution ``conv(raw · mask) / conv(mask)`` with the
    bilinear kernels (``[1 2 1]ᵀ[1 2 1] / 4`` for red and blue, the plus-shaped one for
    green): at a site of its own colour a channel keeps the measured value exactly, between
    sites it is the mean of the nearest sites of its colour (the classical bilinear
    interpolation inside the image, renormalized at the border).
    """
    if raw.dim() != 3 or min(raw.shape[-2:]) < 2:
        raise ValueError(f"demosaic: raw must be (N, H, W) with H, W >= 2, got shape "
                         f"{tuple(raw.shape)}")
    masks = bayer_masks(*raw.shape[-2:], dtype=raw.dtype, device=raw.device)
    kernels = torch.tensor((_RED_BLUE_KERNEL, _GREEN_KERNEL, _RED_BLUE_KERNEL),
                           dtype=raw.dtype, device=raw.device)[:, None]
    sparse = raw[:, None] * masks  # (N, 3, H, W), zero off each channel's sites
    numerator = F.conv2d(sparse, kernels, padding=1, groups=3)
    denominator = F.conv2d(masks[None], kernels, padding=1, groups=3)
    return numerator / denominator


def camera_ccm(strength: float = 1.0) -> Tensor:
    """The camera → sRGB matrix ``(1 − s)·I + s·CAMERA_CCM`` (``s = 0``: no colour
    correction)."""
    return (1 - strength) * torch.eye(3, dtype=torch.float64) + strength * torch.tensor(
        CAMERA_CCM, dtype=torch.float64)


def inverse_isp(images: Tensor, ccm: Tensor, gains: Tensor, gamma: float = 2.2,
                tone_curve: bool = True) -> Tensor:
    """RGB ``(N, 3, H, W)`` in ``[0, 1]`` → RGGB RAW plane ``(N, H, W)`` in ``[0, 1]``:
    inverse tone curve, inverse gamma, inverse CCM, inverse white balance, mosaic, clip."""
    _check_images("inverse_isp", images)
    linear = inverse_tone_map(images) if tone_curve else images.clamp(0, 1)
    linear = gamma_expand(linear, gamma)
    camera = apply_ccm(linear, torch.linalg.inv(ccm.double()))
    return mosaic(white_balance(camera, 1 / gains.double())).clamp(0, 1)


def isp(raw: Tensor, ccm: Tensor, gains: Tensor, gamma: float = 2.2,
        tone_curve: bool = True) -> Tensor:
    """RGGB RAW plane ``(N, H, W)`` → RGB ``(N, 3, H, W)`` in ``[0, 1]``: white balance,
    demosaic, CCM, gamma, tone curve, clip."""
    masks = bayer_masks(*raw.shape[-2:], dtype=raw.dtype, device=raw.device)
    balanced = raw * (gains.to(raw.dtype)[:, None, None] * masks).sum(dim=0)
    rgb = apply_ccm(demosaic(balanced), ccm).clamp(0, 1)
    rgb = gamma_compress(rgb, gamma)
    return (tone_map(rgb) if tone_curve else rgb).clamp(0, 1)


def raw_round_trip(images: Tensor, ccm: Tensor | None = None, gains: Tensor | None = None,
                   gamma: float = 2.2, tone_curve: bool = True) -> Tensor:
    """``isp(inverse_isp(images))``: RGB → RAW → RGB (defaults: :func:`camera_ccm`, gains
    red 2.0, green 1, blue 1.7).

    Example:
        >>> x = torch.full((1, 3, 4, 4), 0.4, dtype=torch.float64)
        >>> x[:, 0] = 0.6  # a constant colour comes back exactly
        >>> torch.allclose(raw_round_trip(x), x)
        True
    """
    ccm = camera_ccm() if ccm is None else ccm
    gains = torch.tensor([2.0, 1.0, 1.7]) if gains is None else gains
    raw = inverse_isp(images, ccm, gains, gamma, tone_curve)
    return isp(raw, ccm, gains, gamma, tone_curve).to(images.dtype)


class RawPipeline(nn.Module):
    """:func:`raw_round_trip` as a module placed before a classifier.

    Takes ``(N, 3, H, W)`` images or the same flattened to ``(N, 3·H·W)`` (channel-major, the
    layout of ``digits_color``; square images unless ``height`` is given) and returns the
    same layout. No trainable parameters: the camera (``ccm``, ``gains``) is in buffers.
    """

    ccm: Tensor
    gains: Tensor

    def __init__(self, gamma: float = 2.2, red_gain: float = 2.0, blue_gain: float = 1.7,
                 ccm_strength: float = 1.0, tone_curve: bool = True,
                 height: int | None = None) -> None:
        super().__init__()
        self.gamma, self.tone_curve, self.height = gamma, tone_curve, height
        self.register_buffer("ccm", camera_ccm(ccm_strength).float())
        self.register_buffer("gains", torch.tensor([red_gain, 1.0, blue_gain]))

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            raise ValueError(f"raw_pipeline: needs float RGB images, got {x.dtype} inputs "
                             "(use an image task such as digits_color)")
        images = x if x.dim() == 4 else self._unflatten(x)
        ccm, gains = self.ccm.double(), self.gains.double()
        out = raw_round_trip(images, ccm, gains, self.gamma, self.tone_curve)
        return out.reshape(x.shape)

    def _unflatten(self, x: Tensor) -> Tensor:
        features = math.prod(x.shape[1:])
        pixels, rest = divmod(features, 3)
        height = self.height or math.isqrt(pixels)
        if rest or pixels % height or (self.height is None and height * height != pixels):
            raise ValueError(f"raw_pipeline: cannot read inputs of shape {tuple(x.shape)} as "
                             f"3-channel images (height={self.height}); give (N, 3, H, W) "
                             "or 3·H·W features with the right height")
        return x.reshape(len(x), 3, height, pixels // height)


@TECHNIQUES.register(
    "raw_pipeline",
    summary="RGB -> Bayer RAW -> RGB through a toy camera pipeline before the classifier, in "
    "training and evaluation (defensive preprocessing).",
    papers=(76,),
    search_space={"gamma": ("uniform", 1.8, 2.6), "ccm_strength": ("uniform", 0.0, 1.0)},
    references=("All You Need is RAW: Defending Against Adversarial Attacks with Camera Image "
                "Pipelines (arXiv:2112.09219)",
                "Unprocessing Images for Learned Raw Denoising (arXiv:1811.11127)"),
)
@dataclass
class RawPipelineDefense(Technique):
    """Wrap the model as ``classifier(RawPipeline(x))`` (:class:`RawPipeline`): training and
    evaluation both see the RGB → RAW → RGB round trip, and an attack on the wrapped model
    differentiates through it. Needs float RGB inputs (``(N, 3, H, W)`` or flattened, e.g.
    ``digits_color``); token inputs raise a ValueError at the first forward pass.

    References:
        Zhang, Dong, Heide. All You Need is RAW. arXiv:2112.09219.

    Example:
        >>> net = RawPipelineDefense().transform_model(nn.Linear(192, 10))
        >>> net(torch.rand(5, 192)).shape
        torch.Size([5, 10])
    """

    gamma: Annotated[float, Gt(0)] = 2.2  # display gamma of the camera (sRGB-like)
    red_gain: Annotated[float, Gt(0)] = 2.0  # white-balance gain of red (Brooks: 1.9-2.4)
    blue_gain: Annotated[float, Gt(0)] = 1.7  # white-balance gain of blue (Brooks: 1.5-1.9)
    ccm_strength: Annotated[float, Interval(0, 1)] = 1.0  # 0: no colour correction
    tone_curve: bool = True  # apply the smoothstep tone curve (and its inverse)
    height: Annotated[int | None, Ge(2)] = None  # image height of flat inputs; None: square

    touches: ClassVar[frozenset[str]] = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        pipeline = RawPipeline(self.gamma, self.red_gain, self.blue_gain, self.ccm_strength,
                               self.tone_curve, self.height)
        return nn.Sequential(OrderedDict(raw_pipeline=pipeline, classifier=model))
