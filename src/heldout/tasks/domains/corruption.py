"""Corruption suites: digits and MNIST-1D under Gaussian noise, blur, contrast and brightness
at five severities, in the manner of CIFAR-10-C (the model trains on clean data; corrupted
copies of examples it never saw are the test domains).

Provenance is the point of these suites: the source examples are split once (seeded) into a
*clean pool* (the ``clean`` domain, whose train / val / test parts follow
:class:`~heldout.tasks.domains.base.DomainSuite`) and a *corruption pool*; every corrupted
domain is the corruption pool under one (corruption, severity). The corruption pool is split
once into test / val / train parts shared by all corrupted domains, so no example that any
training split holds (clean or corrupted) appears, corrupted or not, in a held-out domain's
test part, whichever domains are held out.

References:
    Hendrycks, Dietterich. Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations. arXiv:1903.12261.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.bounds import Annotated, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.domains.base import DomainData, DomainSuite, source_arrays
from heldout.tasks.splitting import check_range, resolve_seed, stratified_partition

__all__ = ["CORRUPTIONS", "DigitsCorruption", "MNIST1DCorruption", "corrupt", "gaussian_blur"]

CORRUPTIONS = ("gaussian_noise", "blur", "contrast", "brightness")
_REFERENCES = ("Benchmarking Neural Network Robustness to Common Corruptions and Perturbations "
               "(arXiv:1903.12261)",)


def gaussian_blur(x: Tensor, sigma: float, dims: int) -> Tensor:
    """Blur the last ``dims`` (1 or 2) axes of ``x`` with a normalized Gaussian kernel of
    std ``sigma`` (radius ``ceil(3 sigma)``), separably, replicating the border values.

    Example:
        >>> gaussian_blur(torch.ones(2, 8, 8), 1.0, dims=2).allclose(torch.ones(2, 8, 8))
        True
    """
    if dims not in (1, 2):
        raise ValueError(f"gaussian_blur: dims must be 1 or 2, got {dims}")
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    shape = x.shape
    out = x.reshape(-1, 1, *shape[-dims:])
    for axis in range(dims):  # one 1-D pass along each blurred axis
        out = out.transpose(-1, -1 - axis)
        rows = out.reshape(-1, 1, out.shape[-1])
        rows = F.conv1d(F.pad(rows, (radius, radius), mode="replicate"), kernel.view(1, 1, -1))
        out = rows.reshape(out.shape).transpose(-1, -1 - axis)
    return out.reshape(shape)


def corrupt(x: Tensor, corruption: str, level: float, *, image_side: int | None = None,
            noise: Tensor | None = None, clip: tuple[float, float] | None = None) -> Tensor:
    """Apply one corruption at strength ``level`` to clean inputs ``x`` (rows).

    * ``gaussian_noise``: ``x + level * noise`` (``noise``: standard normal, same shape);
    * ``blur``: Gaussian blur of std ``level`` (2-D on ``image_side``-square images given
      flattened, else 1-D along the signal);
    * ``contrast``: ``m + level * (x − m)``, ``m`` each row's mean (``level`` < 1 shrinks);
    * ``brightness``: ``x + level``.

    ``clip``: the data range the result is clipped to (digits' pixels: ``(0, 1)``).

    Example:
        >>> corrupt(torch.tensor([[0.0, 1.0]]), "contrast", 0.5).tolist()
        [[0.25, 0.75]]
    """
    if corruption == "gaussian_noise":
        if noise is None:
            raise ValueError("gaussian_noise needs the standard normal draws (noise=...)")
        out = x + level * noise
    elif corruption == "blur":
        if image_side is None:
            out = gaussian_blur(x, level, dims=1)
        else:
            images = x.reshape(-1, image_side, image_side)
            out = gaussian_blur(images, level, dims=2).reshape(x.shape)
    elif corruption == "contrast":
        mean = x.mean(dim=-1, keepdim=True)
        out = mean + level * (x - mean)
    elif corruption == "brightness":
        out = x + level
    else:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}, "
                         f"got {corruption!r}")
    return out if clip is None else out.clamp(*clip)


class _CorruptionSuite(DomainSuite):
    """What the digits and MNIST-1D corruption suites share (fields are declared on each)."""

    _LEVELS: ClassVar[dict[str, tuple[float, ...]]]  # each corruption's strength at 1..5
    _CLIP: ClassVar[tuple[float, float] | None] = None
    _IMAGE_SIDE: ClassVar[int | None] = None
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    pool_fraction: float
    pool_test_fraction: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "corruptions", tuple(self.corruptions))
        object.__setattr__(self, "severities", tuple(int(s) for s in self.severities))
        if not self.corruptions or len(set(self.corruptions)) != len(self.corruptions):
            raise ValueError(f"corruptions must be distinct and at least one, got "
                             f"{self.corruptions}")
        for name in self.corruptions:
            if name not in CORRUPTIONS:
                raise ValueError(f"corruptions: unknown {name!r}; valid: "
                                 f"{', '.join(CORRUPTIONS)}")
        if not self.severities or len(set(self.severities)) != len(self.severities):
            raise ValueError(f"severities must be distinct and at least one, got "
                             f"{self.severities}")
        for severity in self.severities:
            check_range("severities", severity, 1, 5)
        if self.pool_test_fraction + self.val_fraction >= 1:
            raise ValueError(f"pool_test_fraction + val_fraction must be < 1, got "
                             f"{self.pool_test_fraction} + {self.val_fraction}")
        if self.held_out is None:  # default: every corrupted domain (train on clean)
            object.__setattr__(self, "held_out", tuple(range(1, len(self.domain_names()))))
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return ("clean", *(f"{c}{s}" for c in self.corruptions for s in self.severities))

    def severity_level(self, corruption: str, severity: int) -> float:
        """The strength of ``corruption`` at ``severity`` (1..5; monotone in severity)."""
        return self._LEVELS[corruption][severity - 1]

    @property
    def num_classes(self) -> int:
        return 10

    def _source_data(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _domains(self, seed: int) -> list[DomainData]:
        x, y = self._source_data()
        pool, clean = self._pools(y, seed)
        out = [DomainData(x[clean], y[clean], index=clean)]
        originals = x[pool]
        for corruption in self.corruptions:
            # one draw per corruption, scaled by severity: the noise grows monotonically
            noise = torch.randn(originals.shape, dtype=originals.dtype,
                                generator=stream_generator(seed, f"noise@{corruption}"))
            for severity in self.severities:
                corrupted = corrupt(originals, corruption, self.severity_level(corruption,
                                                                               severity),
                                    image_side=self._IMAGE_SIDE, noise=noise, clip=self._CLIP)
                out.append(DomainData(corrupted, y[pool], index=pool))
        return out

    def domain_parts(self, seed: int, domains: Sequence[DomainData] | None = None
                     ) -> list[tuple[Tensor, ...]]:
        """Per domain, the rows (into its :class:`DomainData`) of its test, val and train
        parts: the clean domain split by the :class:`DomainSuite` fractions, the corrupted
        domains all by one split of the corruption pool (``pool_test_fraction``,
        ``val_fraction``, the rest), so provenance stays clean whichever are held out."""
        seed = resolve_seed(seed, self.data_seed)
        _, y = self._source_data()
        pool_rows, clean_rows = self._pools(y, seed)
        clean = stratified_partition(y[clean_rows], (self.test_fraction, self.val_fraction),
                                     stream_generator(seed, "split@clean"))
        pool = stratified_partition(y[pool_rows], (self.pool_test_fraction, self.val_fraction),
                                    stream_generator(seed, "split@corrupted"))
        return [tuple(clean), *(tuple(pool) for _ in self.domain_names()[1:])]

    def _pools(self, y: Tensor, seed: int) -> tuple[Tensor, ...]:
        """The source rows of the corruption pool and of the clean pool (stratified)."""
        return stratified_partition(y, (self.pool_fraction,),
                                    stream_generator(seed, "corruption_pool"))


@TASKS.register(
    "digits_corruption",
    summary="scikit-learn's 8x8 digits: train on clean, test on Gaussian noise, blur, "
    "contrast and brightness at 5 severities (CIFAR-10-C style).",
    references=_REFERENCES,
)
@dataclass(frozen=True)
class DigitsCorruption(_CorruptionSuite):
    """scikit-learn's digits (pixels / 16, in ``[0, 1]``) and corrupted copies of held-apart
    images, one domain per (corruption, severity).

    Severity scales (1..5), all clipped to ``[0, 1]``: ``gaussian_noise`` std
    0.08/0.12/0.18/0.26/0.36 (one standard-normal draw per image and corruption, scaled);
    ``blur`` 2-D Gaussian std 0.4/0.5/0.6/0.7/0.8 pixels; ``contrast`` factor
    0.9/0.85/0.8/0.75/0.7 toward the image's mean; ``brightness`` +0.05/0.08/0.12/0.16/0.2.
    The scales were set by the source model's accuracy alone (a cnn2d with BatchNorm trained
    on the clean images, 94% clean test accuracy): about 90% at severity 1 down to 20–45% at
    severity 5, as a ResNet on CIFAR-10-C (the 8x8 images break at far milder corruption
    than CIFAR's 32x32 ones; a contrast factor of 0.6 already leaves it at chance). The
    default ``pool_fraction`` 0.4 keeps 719 images apart, 431 of them in each corrupted
    domain's test part; the clean domain keeps 1,078 (646 train).

    Domains: ``clean`` (index 0), then ``gaussian_noise1`` ... ``brightness5`` in the order of
    ``corruptions`` x ``severities``. ``held_out`` defaults to every corrupted domain.

    References:
        Hendrycks, Dietterich. Benchmarking Neural Network Robustness to Common Corruptions
        and Perturbations. arXiv:1903.12261.

    Example:
        >>> task = DigitsCorruption(corruptions=("blur",), severities=(1, 5))
        >>> task.domain_names(), task.held_out
        (('clean', 'blur1', 'blur5'), (1, 2))
    """

    held_out: tuple[int, ...] | None = None  # type: ignore[assignment]  # None: all corrupted
    corruptions: tuple[str, ...] = CORRUPTIONS  # which corruptions make domains
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)  # which severities (1..5) make domains
    # share of the images kept apart (stratified) for the corrupted domains
    pool_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.4
    # share of the kept-apart images in each corrupted domain's test part
    pool_test_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.6

    _LEVELS: ClassVar[dict[str, tuple[float, ...]]] = {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.36),
        "blur": (0.4, 0.5, 0.6, 0.7, 0.8),
        "contrast": (0.9, 0.85, 0.8, 0.75, 0.7),
        "brightness": (0.05, 0.08, 0.12, 0.16, 0.2),
    }
    _CLIP: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    _IMAGE_SIDE: ClassVar[int | None] = 8

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64,))

    def _source_data(self) -> tuple[Tensor, Tensor]:
        return source_arrays("digits", 0, 0)


@TASKS.register(
    "mnist1d_corruption",
    summary="MNIST-1D: train on clean signals, test on Gaussian noise, blur, contrast and "
    "brightness at 5 severities (CIFAR-10-C style).",
    references=_REFERENCES,
)
@dataclass(frozen=True)
class MNIST1DCorruption(_CorruptionSuite):
    """MNIST-1D signals (std ~1, unbounded, not clipped) and corrupted copies of held-apart
    signals, one domain per (corruption, severity).

    Severity scales (1..5): ``gaussian_noise`` std 0.2/0.3/0.4/0.5/0.7; ``blur`` 1-D Gaussian
    std 0.5/0.75/1/1.25/1.5 positions; ``contrast`` factor 0.8/0.7/0.6/0.55/0.5 toward the
    signal's mean; ``brightness`` +0.25/0.5/0.75/1/1.5. Set, as the digits' scales, by the
    source model's accuracy alone (a cnn1d with BatchNorm, 1,500 steps, 87% clean test
    accuracy): about 80% at severity 1 down to 30–50% at severity 5. Domains and splits as
    :class:`DigitsCorruption`.

    References:
        Greydanus, Kobak. Scaling down Deep Learning with MNIST-1D. arXiv:2011.14439.
        Hendrycks, Dietterich. arXiv:1903.12261.

    Example:
        >>> MNIST1DCorruption(corruptions=("contrast",), severities=(3,)).domain_names()
        ('clean', 'contrast3')
    """

    held_out: tuple[int, ...] | None = None  # type: ignore[assignment]  # None: all corrupted
    corruptions: tuple[str, ...] = CORRUPTIONS  # which corruptions make domains
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)  # which severities (1..5) make domains
    # share of the signals kept apart (stratified) for the corrupted domains
    pool_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.4
    # share of the kept-apart signals in each corrupted domain's test part
    pool_test_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.6
    num_samples: int = 4000  # MNIST-1D examples generated (train and test parts together)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42  # seed of the MNIST-1D generator

    _LEVELS: ClassVar[dict[str, tuple[float, ...]]] = {
        "gaussian_noise": (0.2, 0.3, 0.4, 0.5, 0.7),
        "blur": (0.5, 0.75, 1.0, 1.25, 1.5),
        "contrast": (0.8, 0.7, 0.6, 0.55, 0.5),
        "brightness": (0.25, 0.5, 0.75, 1.0, 1.5),
    }

    def __post_init__(self) -> None:
        check_range("num_samples", self.num_samples, 100)
        super().__post_init__()

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def _source_data(self) -> tuple[Tensor, Tensor]:
        return source_arrays("mnist1d", self.num_samples, self.dataset_seed)
