"""Random Field Augmentations (#77): affine and colour transforms whose parameters vary from
pixel to pixel as independent Gaussian random fields.

The paper (Mansfield et al.) gives the idea, not the construction (abstract only, no public
code); the construction here is ours:

1. **Fields.** Each parameter is a stationary Gaussian random field over the pixel grid with
   the squared-exponential kernel ``k(d) = σ² exp(−d² / (2ℓ²))`` (``d`` in pixels). It is
   sampled by spectral synthesis on a circulant embedding: the kernel is periodized over a
   larger periodic grid of ``M = n + min(⌈4ℓ⌉, 4n)`` pixels per axis (its spectrum, taken
   by FFT, is positive, so no eigenvalue is clipped), white noise is coloured by the square
   root of that spectrum, and the top-left ``H × W`` window is kept. The kernel is
   separable, so the synthesis is written per axis in the real Fourier basis of the
   embedding, ``L_rows · Z · L_colsᵀ``, and only the frequencies that carry weight get a
   draw (:func:`field_from_white_noise`; on 28×28 images with ℓ = 4 px, 27×27 draws instead
   of 44×44, and two small matrix products instead of two FFTs: 3× faster on CPU). Inside
   the window the covariance is the kernel up to the wrap-around term ``k(M − d) ≤ σ² e^{−8}``
   when ``ℓ ≤ n`` (for ``ℓ > n`` the field is nearly constant and its variance is kept at
   σ²). ``length_scale = None`` (or ``inf``) is the limit: one value per image
   (:func:`gaussian_random_field`).
2. **Geometry** (:func:`warp_by_fields`). With pixel coordinates ``p`` about the image centre,
   local translation ``t(p)``, rotation ``θ(p)`` and log-scale ``λ(p)``, the output pixel
   ``p`` takes the input at ``R(θ(p)) · (p − t(p)) · e^{−λ(p)}``: with constant fields this is
   the global affine map that scales by ``e^λ``, rotates counter-clockwise by ``θ`` (as
   :func:`heldout.tasks.domains.shifted.rotate_images`) and moves the content by ``t``.
   Sampling is bilinear (``grid_sample``, ``align_corners=True``, pixel centres on the grid);
   positions outside the image read zero (``padding="zeros"``) or the nearest edge pixel
   (``"border"``).
3. **Colour** (:func:`recolour_by_fields`): ``x ← m + e^{κ(p)} (x − m) + b(p)`` with ``m``
   the image's mean over channels and pixels (contrast field κ, brightness field b), then,
   per channel, ``x_c ← e^{γ_c(p)} x_c`` (gain fields γ_c, one per channel: colour jitter for
   RGB). Values are not clipped.

Geometry acts first, then colour. A kind whose amplitude is 0 is off: it draws nothing and
computes nothing, so all-zero amplitudes return the input itself. :class:`RandomFields`
registers the transform as ``random_fields``; :class:`GlobalAffine` (``global_affine``) is
the same transform with one parameter value per image (``ℓ = ∞``), its baseline. Inputs are
images ``(B, C, H, W)``, ``(B, H, W)`` or flattened square images ``(B, H·W)`` (1 channel)
or ``(B, 3·H·W)`` (3 channels, channel-major), returned in the shape they came in.

References:
    Mansfield, Afkanpour, Morningstar, Singhal. Random Field Augmentations for
    Self-Supervised Representation Learning. arXiv:2311.03629.
    Dietrich, Newsam. Fast and Exact Simulation of Stationary Gaussian Processes through
    Circulant Embedding of the Covariance Matrix. SIAM J. Sci. Comput. 18(4), 1997.

Example:
    >>> import torch
    >>> x = torch.rand(4, 1, 8, 8)
    >>> y, _ = RandomFields(length_scale=2.0)(x, torch.zeros(4), seed=0)
    >>> y.shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.augment import Augmentation
from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.registry import TECHNIQUES

__all__ = [
    "FIELD_KINDS",
    "GlobalAffine",
    "RandomFields",
    "apply_fields",
    "embedding_size",
    "field_from_white_noise",
    "noise_shape",
    "gaussian_random_field",
    "random_field_augment",
    "recolour_by_fields",
    "sample_fields",
    "warp_by_fields",
]

REFERENCE = "Random Field Augmentations for Self-Supervised Representation Learning " \
    "(arXiv:2311.03629)"
# The fields, in the order they are drawn; rotation is in radians, the scales are logarithms
FIELD_KINDS = ("translation_x", "translation_y", "rotation", "log_scale", "brightness",
               "log_contrast", "log_gain")
Padding = Literal["zeros", "border"]


# ----------------------------------------------------------------------------- fields
def _is_global(length_scale: float | None) -> bool:
    if length_scale is None or math.isinf(length_scale):
        return True
    if not length_scale > 0:
        raise ValueError(f"length_scale must be > 0 (or None / inf), got {length_scale}")
    return False


def embedding_size(n: int, length_scale: float) -> int:
    """Side of the periodic grid a field over ``n`` pixels is synthesized on: ``n`` plus
    ``⌈4ℓ⌉`` (at most ``4n``), so the wrap-around adds at most ``e^{−8}`` of the variance to
    any covariance inside the image when ``ℓ ≤ n``.

    Example:
        >>> embedding_size(8, 2.0), embedding_size(8, 100.0)
        (16, 40)
    """
    if n < 1:
        raise ValueError(f"the field's side must be >= 1 pixel, got {n}")
    _is_global(length_scale)
    return n + min(math.ceil(4 * length_scale), 4 * n)


def _axis_spectrum(size: int, length_scale: float) -> Tensor:
    """Eigenvalues (DFT, float64) of the unit-variance Gaussian kernel periodized over
    ``size`` pixels: all positive (Poisson summation), so no eigenvalue is clipped."""
    offsets = torch.arange(size, dtype=torch.float64)
    offsets = torch.minimum(offsets, size - offsets)  # symmetric: an exactly real spectrum
    images = math.ceil(6 * length_scale / size) + 1  # further copies are below e^-18
    shifts = torch.arange(-images, images + 1, dtype=torch.float64) * size
    kernel = torch.exp(-(offsets[:, None] + shifts) ** 2 / (2 * length_scale ** 2)).sum(1)
    kernel = kernel / kernel[0]  # the field's variance stays 1 however much wraps around
    return torch.fft.fft(kernel).real.clamp_min(0)


@functools.lru_cache(maxsize=64)
def _axis_factor(n: int, length_scale: float, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """``L`` (n × K) with ``L Lᵀ`` the periodized kernel over the first ``n`` of the
    ``embedding_size(n, ℓ)`` pixels: the real Fourier basis of the periodic grid (cosines
    and sines, orthonormal, the circulant's eigenvectors) cropped to the image, times the
    square roots of the eigenvalues, keeping the K frequencies whose eigenvalue exceeds
    1e-12 of the largest (the rest change no covariance by more than ~1e-12)."""
    size = embedding_size(n, length_scale)
    spectrum = _axis_spectrum(size, length_scale)
    positions = torch.arange(n, dtype=torch.float64)[:, None]
    columns, weights = [torch.full((n, 1), size ** -0.5, dtype=torch.float64)], [spectrum[0]]
    for k in range(1, size // 2 + 1):
        angle = 2 * math.pi * k * positions / size
        if 2 * k == size:  # the Nyquist frequency has one real basis vector
            columns.append(torch.cos(angle) * size ** -0.5)
            weights.append(spectrum[k])
        else:
            columns += [torch.cos(angle) * (2 / size) ** 0.5, torch.sin(angle) * (2 / size) ** 0.5]
            weights += [spectrum[k], spectrum[k]]
    basis, eigenvalues = torch.cat(columns, dim=1), torch.stack(weights)
    kept = eigenvalues > 1e-12 * eigenvalues.max()
    return (basis[:, kept] * eigenvalues[kept].sqrt()).to(dtype=dtype, device=device)


def noise_shape(height: int, width: int, length_scale: float) -> tuple[int, int]:
    """The shape ``(K_rows, K_cols)`` of the white noise one field of ``height × width``
    pixels is synthesized from (:func:`field_from_white_noise`): the number of frequencies of
    the embedding grid that carry weight along each axis, fewer the smoother the field.

    Example:
        >>> noise_shape(28, 28, 4.0), noise_shape(28, 28, 0.5)
        ((27, 27), (30, 30))
    """
    return (_axis_factor(height, length_scale, torch.float64, torch.device("cpu")).shape[1],
            _axis_factor(width, length_scale, torch.float64, torch.device("cpu")).shape[1])


def field_from_white_noise(noise: Tensor, height: int, width: int,
                           length_scale: float) -> Tensor:
    """Unit-variance Gaussian random fields ``(..., height, width)`` with the
    squared-exponential kernel of length scale ``length_scale`` (pixels), from standard white
    noise ``(..., K_rows, K_cols)`` (:func:`noise_shape`): ``L_rows · noise · L_colsᵀ``, the
    spectral synthesis on the circulant embedding written in the real Fourier basis (the
    kernel is separable, so the 2-D circulant is the product of the two axes'; the noise's
    coordinates in an orthonormal basis are white noise again, so only the frequencies that
    carry weight need a draw). A linear map: its exact covariance can be read off by feeding
    it the unit vectors.

    Example:
        >>> noise = torch.randn(3, *noise_shape(8, 8, 2.0))
        >>> field_from_white_noise(noise, 8, 8, 2.0).shape
        torch.Size([3, 8, 8])
    """
    expected = noise_shape(height, width, length_scale)
    if tuple(noise.shape[-2:]) != expected:
        raise ValueError(f"noise must end in {expected} for a {height}x{width} field with "
                         f"length_scale {length_scale}, got {tuple(noise.shape)}")
    rows = _axis_factor(height, length_scale, noise.dtype, noise.device)
    cols = _axis_factor(width, length_scale, noise.dtype, noise.device)
    return rows @ noise @ cols.T


def gaussian_random_field(count: int, height: int, width: int, *,
                          length_scale: float | None, amplitude: float,
                          generator: torch.Generator, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """``count`` independent fields ``amplitude · f`` with ``f`` a unit-variance Gaussian
    random field over ``height × width`` pixels (kernel ``σ² exp(−d²/(2ℓ²))``, see
    :func:`field_from_white_noise`), every draw from ``generator``. ``length_scale`` None or
    ``inf``: one standard-normal value per field, shape ``(count, 1, 1)`` (broadcasts over
    the pixels): the ``ℓ → ∞`` limit.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> gaussian_random_field(2, 8, 8, length_scale=3.0, amplitude=0.5, generator=g).shape
        torch.Size([2, 8, 8])
        >>> gaussian_random_field(2, 8, 8, length_scale=None, amplitude=0.5, generator=g).shape
        torch.Size([2, 1, 1])
    """
    if amplitude < 0:
        raise ValueError(f"amplitude must be >= 0, got {amplitude}")
    device = generator.device if device is None else torch.device(device)
    if _is_global(length_scale):
        return amplitude * torch.randn(count, 1, 1, generator=generator, device=device,
                                       dtype=dtype)
    assert length_scale is not None  # narrowed by _is_global
    shape = (count, *noise_shape(height, width, length_scale))
    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return amplitude * field_from_white_noise(noise, height, width, length_scale)


def sample_fields(batch: int, channels: int, height: int, width: int, *,
                  length_scale: float | None, generator: torch.Generator,
                  translation: float = 0.0, rotation: float = 0.0, scale: float = 0.0,
                  brightness: float = 0.0, contrast: float = 0.0, gain: float = 0.0,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The parameter fields of one batch, keyed by :data:`FIELD_KINDS` (those with a
    non-zero amplitude only), drawn in that order. Amplitudes (standard deviations):
    ``translation`` pixels (for both ``translation_x`` and ``translation_y``), ``rotation``
    degrees (the field is in radians), ``scale`` / ``contrast`` / ``gain`` of the logarithm
    of the factor, ``brightness`` in intensity units. Fields are ``(B, H, W)`` (``(B, 1, 1)``
    when global); ``log_gain`` is ``(B, C, H, W)`` (``(B, C, 1, 1)``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sorted(sample_fields(2, 1, 8, 8, length_scale=2.0, generator=g, rotation=10.0))
        ['rotation']
    """
    amplitudes = {"translation_x": translation, "translation_y": translation,
                  "rotation": math.radians(rotation), "log_scale": scale,
                  "brightness": brightness, "log_contrast": contrast, "log_gain": gain}
    fields = {}
    for kind in FIELD_KINDS:
        if amplitudes[kind] < 0:
            raise ValueError(f"the amplitude of {kind} must be >= 0, got {amplitudes[kind]}")
        if amplitudes[kind] == 0:
            continue
        count = batch * channels if kind == "log_gain" else batch
        field = gaussian_random_field(count, height, width, length_scale=length_scale,
                                      amplitude=amplitudes[kind], generator=generator,
                                      device=device, dtype=dtype)
        fields[kind] = field.reshape(batch, channels, *field.shape[1:]) \
            if kind == "log_gain" else field
    return fields


# ----------------------------------------------------------------------------- transforms
def warp_by_fields(images: Tensor, translation_x: Tensor | None = None,
                   translation_y: Tensor | None = None, rotation: Tensor | None = None,
                   log_scale: Tensor | None = None, padding: Padding = "zeros") -> Tensor:
    """Images ``(B, C, H, W)`` warped pixel by pixel: output pixel ``p`` (coordinates about
    the image centre, x to the right, y down) reads the input at
    ``R(θ(p)) (p − t(p)) e^{−λ(p)}`` by bilinear interpolation, where
    ``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]`` (counter-clockwise on screen, as
    :func:`~heldout.tasks.domains.shifted.rotate_images`). Each field is ``(B, H, W)`` or
    broadcasts to it (``(B, 1, 1)``: the global affine map); ``None`` is the identity.
    ``padding``: what is read outside the image, ``"zeros"`` or ``"border"`` (edge pixel).

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 2, 4)
        >>> moved = warp_by_fields(x, translation_x=torch.ones(1, 1, 1))  # content one pixel right
        >>> [round(v, 4) for v in moved[0, 0, 0].tolist()]
        [0.0, 0.0, 1.0, 2.0]
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if padding not in ("zeros", "border"):
        raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")
    if translation_x is None and translation_y is None and rotation is None \
            and log_scale is None:
        return images
    batch, _, height, width = images.shape
    if height < 2 or width < 2:
        raise ValueError(f"a geometric field needs images of at least 2x2 pixels, got "
                         f"{height}x{width}")
    half_w, half_h = (width - 1) / 2, (height - 1) / 2
    u = (torch.arange(width, device=images.device, dtype=images.dtype) - half_w)[None, None, :]
    v = (torch.arange(height, device=images.device, dtype=images.dtype) - half_h)[None, :, None]
    if translation_x is not None:
        u = u - translation_x
    if translation_y is not None:
        v = v - translation_y
    if log_scale is not None:
        shrink = torch.exp(-log_scale)
        u, v = u * shrink, v * shrink
    if rotation is not None:
        cos, sin = torch.cos(rotation), torch.sin(rotation)
        u, v = cos * u - sin * v, sin * u + cos * v
    u, v = torch.broadcast_tensors(u / half_w, v / half_h)
    grid = torch.stack((u, v), dim=-1).expand(batch, height, width, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding,
                         align_corners=True)


def recolour_by_fields(images: Tensor, brightness: Tensor | None = None,
                       log_contrast: Tensor | None = None,
                       log_gain: Tensor | None = None) -> Tensor:
    """Images ``(B, C, H, W)`` recoloured pixel by pixel:
    ``x ← m + e^{κ(p)} (x − m) + b(p)`` (``m`` each image's mean over channels and pixels;
    ``brightness`` b and ``log_contrast`` κ are ``(B, H, W)`` or broadcast to it), then
    ``x_c ← e^{γ_c(p)} x_c`` (``log_gain`` γ is ``(B, C, H, W)`` or broadcasts to it).
    ``None`` leaves that part out.

    Example:
        >>> x = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
        >>> recolour_by_fields(x, log_contrast=torch.tensor(math.log(2)).reshape(1, 1, 1),
        ...                    brightness=torch.full((1, 1, 1), 0.25)).flatten().tolist()
        [-0.25, 1.75]
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    out = images
    if log_contrast is not None:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = mean + torch.exp(log_contrast).unsqueeze(1) * (out - mean)
    if brightness is not None:
        out = out + brightness.unsqueeze(1)
    if log_gain is not None:
        out = out * torch.exp(log_gain)
    return out


def apply_fields(images: Tensor, fields: dict[str, Tensor], padding: Padding = "zeros"
                 ) -> Tensor:
    """Images ``(B, C, H, W)`` under the fields of :func:`sample_fields`: the warp, then the
    colour transform."""
    unknown = set(fields) - set(FIELD_KINDS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; valid: {', '.join(FIELD_KINDS)}")
    warped = warp_by_fields(images, fields.get("translation_x"), fields.get("translation_y"),
                            fields.get("rotation"), fields.get("log_scale"), padding)
    return recolour_by_fields(warped, fields.get("brightness"), fields.get("log_contrast"),
                              fields.get("log_gain"))


def _as_images(x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``x`` as ``(B, C, H, W)`` images and the function that restores its shape."""
    if x.dim() == 4:
        return x, lambda images: images
    if x.dim() == 3:
        return x.unsqueeze(1), lambda images: images.squeeze(1)
    if x.dim() == 2:
        features = x.shape[1]
        for channels in (1, 3):
            side = math.isqrt(features // channels)
            if features % channels == 0 and side * side * channels == features:
                return x.reshape(len(x), channels, side, side), lambda images: images.reshape(
                    x.shape)
        raise ValueError(f"x of {features} features is not a flattened square image "
                         "(H·H or 3·H·H values); pass images as (B, C, H, W)")
    raise ValueError(f"x must be images (B, C, H, W), (B, H, W) or flattened square images "
                     f"(B, H·W), got shape {tuple(x.shape)}")


def random_field_augment(x: Tensor, generator: torch.Generator, *,
                         length_scale: float | None = 2.0, translation: float = 0.0,
                         rotation: float = 0.0, scale: float = 0.0, brightness: float = 0.0,
                         contrast: float = 0.0, gain: float = 0.0, probability: float = 1.0,
                         padding: Padding = "zeros") -> Tensor:
    """A batch of images under fresh random-field transforms (:func:`sample_fields` with
    these amplitudes, then :func:`apply_fields`); each image is transformed with
    ``probability`` (one uniform draw per image, after the fields) and kept otherwise.
    ``x``: ``(B, C, H, W)``, ``(B, H, W)`` or flattened square images, floating point;
    returned in its shape.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(5, 64)
        >>> random_field_augment(x, g, rotation=15.0, brightness=0.1).shape
        torch.Size([5, 64])
    """
    if not x.dtype.is_floating_point:
        raise ValueError(f"random-field augmentation needs floating-point images, got "
                         f"{x.dtype} inputs")
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    images, restore = _as_images(x)
    batch, channels, height, width = images.shape
    fields = sample_fields(batch, channels, height, width, length_scale=length_scale,
                           generator=generator, translation=translation, rotation=rotation,
                           scale=scale, brightness=brightness, contrast=contrast, gain=gain,
                           device=x.device, dtype=x.dtype)
    if not fields:
        return x
    out = apply_fields(images, fields, padding)
    if probability < 1:
        chosen = torch.rand(batch, generator=generator, device=x.device) < probability
        out = torch.where(chosen[:, None, None, None], out, images)
    return restore(out)


# ----------------------------------------------------------------------------- techniques
_SEARCH = {
    "translation": ("uniform", 0.0, 1.5),
    "rotation": ("uniform", 0.0, 30.0),
    "scale": ("uniform", 0.0, 0.2),
    "brightness": ("uniform", 0.0, 0.2),
    "contrast": ("uniform", 0.0, 0.3),
    "probability": ("choice", [0.5, 1.0]),
}


@dataclass
class _FieldTransform(Augmentation):
    """The amplitudes both techniques share (standard deviations of the parameter fields;
    0 turns a kind off). Defaults are mild transforms for 8x8 digits."""

    translation: Annotated[float, Ge(0)] = 0.5  # pixels, for x and y each
    rotation: Annotated[float, Ge(0)] = 10.0  # degrees
    scale: Annotated[float, Ge(0)] = 0.1  # of the log scale factor
    brightness: Annotated[float, Ge(0)] = 0.05  # additive, intensity units
    contrast: Annotated[float, Ge(0)] = 0.1  # of the log contrast factor
    gain: Annotated[float, Ge(0)] = 0.0  # of each channel's log gain (colour jitter)
    probability: Annotated[float, Interval(0, 1)] = 1.0  # chance an image is transformed
    padding: Padding = "zeros"  # read outside the image: "zeros" or "border" (edge pixel)

    def __post_init__(self) -> None:
        if self.padding not in ("zeros", "border"):
            raise ValueError(f"padding must be 'zeros' or 'border', got {self.padding!r}")

    def _length_scale(self) -> float | None:
        raise NotImplementedError

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return random_field_augment(
            x, generator, length_scale=self._length_scale(), translation=self.translation,
            rotation=self.rotation, scale=self.scale, brightness=self.brightness,
            contrast=self.contrast, gain=self.gain, probability=self.probability,
            padding=self.padding), y


@TECHNIQUES.register(
    "random_fields",
    summary="Random Field Augmentations: affine and colour transforms whose parameters are "
    "Gaussian random fields over the pixels.",
    papers=(77,),
    search_space={"length_scale": ("log_uniform", 1.0, 8.0), **_SEARCH},
    references=(REFERENCE,),
)
@dataclass
class RandomFields(_FieldTransform):
    """:func:`random_field_augment` on every training batch: translation, rotation, scale,
    brightness, contrast (and per-channel gain) fields of length scale ``length_scale``
    pixels (``None``: one value per image, i.e. :class:`GlobalAffine`)."""

    length_scale: Annotated[float | None, Gt(0)] = 2.0  # ℓ, pixels

    def _length_scale(self) -> float | None:
        return self.length_scale


@TECHNIQUES.register(
    "global_affine",
    summary="Global affine and colour augmentation: random_fields with one parameter value "
    "per image (infinite length scale); its baseline.",
    papers=(77,),
    search_space=_SEARCH,
    references=(REFERENCE,),
)
@dataclass
class GlobalAffine(_FieldTransform):
    """:func:`random_field_augment` with ``length_scale=None``: each image gets one
    translation, rotation, scale, brightness, contrast (and per-channel gain), drawn
    ``N(0, σ²)`` with the same amplitudes as :class:`RandomFields`."""

    def _length_scale(self) -> float | None:
        return None
