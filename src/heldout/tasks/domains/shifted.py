"""Shift suites: MNIST-1D and scikit-learn's digits under rotation, noise, scale and other
covariate shifts, one domain per strength (see :mod:`heldout.tasks.domains.base` for the
convention)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.domains.base import (
    DOMAIN_REFERENCES,
    DomainData,
    DomainSuite,
    equal_domains,
    source_arrays,
    strength_name,
)
from heldout.tasks.splitting import (
    check_range,
)

__all__ = ["DigitsShift", "MNIST1DShift", "rotate_images"]


def rotate_images(images: Tensor, degrees: float) -> Tensor:
    """Rotate images ``(..., H, W)`` counter-clockwise by ``degrees`` about their centre.

    Each output pixel takes the bilinear interpolation of the input at its rotated-back
    position (zero outside the image). Source positions are snapped to 1e-9 pixels, so
    multiples of 90 degrees move pixels exactly: ``rotate_images(x, 90)`` equals
    ``np.rot90(x, axes=(-2, -1))``.

    Example:
        >>> image = torch.arange(4.0).reshape(2, 2)
        >>> rotate_images(image, 90).tolist()
        [[1.0, 3.0], [0.0, 2.0]]
    """
    height, width = images.shape[-2:]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    rows = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    source_r = torch.round((cos * r + sin * c + (height - 1) / 2) * 1e9) / 1e9
    source_c = torch.round((-sin * r + cos * c + (width - 1) / 2) * 1e9) / 1e9
    r0, c0 = torch.floor(source_r), torch.floor(source_c)
    fr, fc = source_r - r0, source_c - c0
    values = images.to(torch.float64)
    out = torch.zeros_like(values)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = (r0 + dr).long(), (c0 + dc).long()
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        picked = values[..., rr.clamp(0, height - 1), cc.clamp(0, width - 1)]
        out += torch.where(inside & (weight > 0), weight, 0.0) * picked
    return out.to(images.dtype)


def _check_strengths(shift: str, strengths: tuple[float, ...], integer: bool = False) -> None:
    if len(strengths) < 2:
        raise ValueError(f"{shift}: needs at least 2 strengths (domains), got {strengths}")
    if len(set(strengths)) != len(strengths):
        raise ValueError(f"{shift}: strengths must be distinct, got {strengths}")
    for value in strengths:
        if integer and value != int(value):
            raise ValueError(f"{shift}: strengths are whole positions, got {value!r}")
        if shift == "noise":
            check_range("noise strength (sigma)", value, 0)
        if shift == "scale":
            check_range("scale strength", value, 0, low_open=True)


def _shift_domain(x: Tensor, shift: str, strength: float, generator: torch.Generator) -> Tensor:
    """Apply one domain's shift to clean inputs ``x`` (signals, or flattened 8x8 images)."""
    if shift == "translation":
        return torch.roll(x, int(strength), dims=-1)
    if shift == "rotation":
        side = math.isqrt(x.shape[-1])
        return rotate_images(x.reshape(-1, side, side), strength).reshape(x.shape)
    if shift == "noise":
        return x + strength * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x * strength  # scale


# ------------------------------------------------------------------------------ shift suites

class _ShiftedSource:
    """What the suites made of one source shifted per domain share: the shift's validation,
    the strengths (given or the shift's defaults), the domain names and the domains. A
    subclass sets the tables below, has ``shift`` and ``strengths`` fields and gives
    :meth:`_source_data`."""

    _STRENGTHS: ClassVar[dict[str, tuple[float, ...]]]  # each shift's default strengths
    _PREFIXES: ClassVar[dict[str, str]]  # each shift's domain-name prefix
    _INTEGER: ClassVar[str | None] = None  # the shift whose strengths must be whole numbers
    shift: str
    strengths: tuple[float, ...] | None

    def _check_shift(self) -> None:
        if self.shift not in self._STRENGTHS:
            raise ValueError(f"shift must be one of {', '.join(self._STRENGTHS)}, "
                             f"got {self.shift!r}")
        if self.strengths is not None:
            object.__setattr__(self, "strengths", tuple(self.strengths))
        _check_strengths(self.shift, self.domain_strengths(), self.shift == self._INTEGER)

    def domain_strengths(self) -> tuple[float, ...]:
        """The strength of each domain's shift, in domain order."""
        return self.strengths if self.strengths is not None else self._STRENGTHS[self.shift]

    def domain_names(self) -> tuple[str, ...]:
        prefix = self._PREFIXES[self.shift]
        return tuple(f"{prefix}{strength_name(s)}" for s in self.domain_strengths())

    @property
    def num_classes(self) -> int:
        return 10

    def _source_data(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _domains(self, seed: int) -> list[DomainData]:
        x, y = self._source_data()
        strengths = self.domain_strengths()
        out = []
        for rows, name, strength in zip(equal_domains(len(y), len(strengths), seed),
                                         self.domain_names(), strengths, strict=True):
            noise = stream_generator(seed, f"noise@{name}")
            shifted = _shift_domain(x[rows], self.shift, strength, noise)
            out.append(DomainData(shifted, y[rows], index=rows))
        return out


_MNIST1D_STRENGTHS: dict[str, tuple[float, ...]] = {
    "translation": (0.0, 5.0, 10.0, 15.0),  # circular shift, positions (of 40)
    "noise": (0.0, 0.25, 0.5, 1.0),  # added Gaussian noise std (the signals have std ~1)
    "scale": (1.0, 0.75, 0.5, 0.25),  # amplitude factor
}
_MNIST1D_PREFIX = {"translation": "shift", "noise": "noise", "scale": "scale"}


@TASKS.register(
    "mnist1d_shift",
    summary="MNIST-1D in 4 domains under translation, noise or amplitude-scale shift.",
    references=DOMAIN_REFERENCES,
)
@dataclass(frozen=True)
class MNIST1DShift(_ShiftedSource, DomainSuite):
    """MNIST-1D signals split into disjoint random domains, each shifted by its own strength.

    All ``num_samples`` generated signals (the generator's train and test parts) are dealt at
    random into ``len(strengths)`` equal domains. Domain ``k`` is then transformed with
    strength ``s_k``: ``translation`` rolls each signal circularly by ``s_k`` positions
    (default 0/5/10/15), ``noise`` adds Gaussian noise of std ``s_k`` (0/0.25/0.5/1), ``scale``
    multiplies it by ``s_k`` (1/0.75/0.5/0.25). Domain names: ``shift5``, ``noise0p25``,
    ``scale0p5``, ... Splits follow :class:`DomainSuite`.

    References:
        Greydanus, Kobak. Scaling down Deep Learning with MNIST-1D. arXiv:2011.14439.
        Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.

    Example:
        >>> MNIST1DShift(shift="noise").domain_names()
        ('noise0', 'noise0p25', 'noise0p5', 'noise1')
    """

    shift: Literal["translation", "noise", "scale"] = "translation"  # what differs per domain
    strengths: tuple[float, ...] | None = None  # per-domain strength; None: the shift's defaults
    num_samples: int = 4000  # MNIST-1D examples generated, dealt into the domains
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42  # seed of the MNIST-1D generator

    _STRENGTHS: ClassVar[dict[str, tuple[float, ...]]] = _MNIST1D_STRENGTHS
    _PREFIXES: ClassVar[dict[str, str]] = _MNIST1D_PREFIX
    _INTEGER: ClassVar[str | None] = "translation"  # circular shifts by whole positions

    def __post_init__(self) -> None:
        self._check_shift()
        check_range("num_samples", self.num_samples, 10 * len(self.domain_strengths()))
        super().__post_init__()

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def _source_data(self) -> tuple[Tensor, Tensor]:
        return source_arrays("mnist1d", self.num_samples, self.dataset_seed)


_DIGITS_STRENGTHS: dict[str, tuple[float, ...]] = {
    "rotation": (0.0, 30.0, 60.0, 90.0),  # degrees, counter-clockwise
    "noise": (0.0, 0.1, 0.2, 0.4),  # added Gaussian noise std (pixels lie in [0, 1])
    "scale": (1.0, 0.75, 0.5, 0.25),  # intensity (contrast) factor
}
_DIGITS_PREFIX = {"rotation": "rot", "noise": "noise", "scale": "scale"}


@TASKS.register(
    "digits_shift",
    summary="scikit-learn's 8x8 digits in 4 domains under rotation, noise or intensity shift.",
    references=DOMAIN_REFERENCES,
)
@dataclass(frozen=True)
class DigitsShift(_ShiftedSource, DomainSuite):
    """scikit-learn's digits split into disjoint random domains, each shifted by its strength.

    The 1,797 images (pixels / 16, in ``[0, 1]``) are dealt at random into ``len(strengths)``
    equal domains. Domain ``k`` is transformed with strength ``s_k``: ``rotation`` turns each
    8x8 image counter-clockwise by ``s_k`` degrees about its centre (bilinear,
    :func:`rotate_images`; default 0/30/60/90, the Rotated-MNIST angles of DomainBed up to 90),
    ``noise`` adds Gaussian noise of std ``s_k`` (0/0.1/0.2/0.4, not clipped), ``scale``
    multiplies the intensities by ``s_k`` (1/0.75/0.5/0.25). Images are flattened to 64
    features. Domain names: ``rot30``, ``noise0p1``, ``scale0p5``, ...

    References:
        Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.

    Example:
        >>> DigitsShift().domain_names()
        ('rot0', 'rot30', 'rot60', 'rot90')
    """

    shift: Literal["rotation", "noise", "scale"] = "rotation"  # what differs per domain
    strengths: tuple[float, ...] | None = None  # per-domain strength; None: the shift's defaults

    _STRENGTHS: ClassVar[dict[str, tuple[float, ...]]] = _DIGITS_STRENGTHS
    _PREFIXES: ClassVar[dict[str, str]] = _DIGITS_PREFIX

    def __post_init__(self) -> None:
        self._check_shift()
        super().__post_init__()

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64,))

    def _source_data(self) -> tuple[Tensor, Tensor]:
        return source_arrays("digits", 0, 0)


