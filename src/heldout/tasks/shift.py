"""Shift suites: multi-domain tasks built from MNIST-1D and scikit-learn's digits.

Every multi-domain task derives from :class:`DomainSuite`, which turns the per-domain arrays a
subclass generates into heldout's splits by one convention (the sweep, model selection and the
report rely on it):

* ``held_out`` lists the indices (into :meth:`DomainSuite.domain_names`) of the test domains;
  the others are training domains. At least one of each is required.
* Each domain is split on its own, stratified by label and seeded per domain name: a
  ``test_fraction`` and a ``val_fraction`` of its examples; the rest is its train part.
* ``train`` / ``val``: the training domains' train / val parts, concatenated in domain order;
  ``test``: the held-out domains' test parts. ``groups`` is each example's domain index, except
  on ``test`` when the suite gives its own groups (the spurious-cue suite: label x cue).
* ``extra``: ``"val@<domain>"`` and ``"test@<domain>"`` for every domain, training or held out,
  with ``groups`` = the domain index.

References:
    Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.
    Arjovsky, Bottou, Gulrajani, Lopez-Paz. Invariant Risk Minimization. arXiv:1907.02893.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks._common import (
    check_range,
    random_partition,
    resolve_seed,
    split_counts,
    stratified_partition,
)
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.digits import digits_arrays
from heldout.tasks.mnist1d import mnist1d_arrays

__all__ = [
    "DigitsShift",
    "DomainData",
    "DomainSuite",
    "LabelShift",
    "MNIST1DShift",
    "SpuriousCue",
    "rotate_images",
]

_REFERENCES = (
    "In Search of Lost Domain Generalization (arXiv:2007.01434)",
    "Invariant Risk Minimization (arXiv:1907.02893)",
)


# ------------------------------------------------------------------------------- the convention


@dataclass(frozen=True)
class DomainData:
    """All examples of one domain, before it is split.

    ``groups`` (optional) are the groups its examples get in the ``test`` split when the domain
    is held out (default: the domain index); ``clean_y`` the labels before label noise;
    ``index`` the row of each example in the source data (provenance, for checks).
    """

    x: Tensor
    y: Tensor
    groups: Tensor | None = None
    clean_y: Tensor | None = None
    index: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("y", "groups", "clean_y", "index"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.x):
                raise ValueError(f"domain data: {name} has {len(value)} rows but x has "
                                 f"{len(self.x)}")

    def __len__(self) -> int:
        return len(self.y)


def _concatenate(parts: Sequence[Split]) -> Split:
    """One split from several (the clean labels of a part without them are its labels)."""
    if not parts:
        raise ValueError("nothing to concatenate")  # the convention guarantees >= 1 domain
    with_clean = any(p.clean_y is not None for p in parts)
    return Split(
        x=torch.cat([p.x for p in parts]),
        y=torch.cat([p.y for p in parts]),
        clean_y=torch.cat([p.y if p.clean_y is None else p.clean_y for p in parts])
        if with_clean else None,
        groups=torch.cat([p.groups for p in parts if p.groups is not None]),
    )


@dataclass(frozen=True)
class DomainSuite(Task):
    """Base of the multi-domain tasks: splits per-domain data by the module's convention.

    A subclass gives :meth:`domain_names`, :attr:`input`, :attr:`num_classes` and
    :meth:`_domains` (one :class:`DomainData` per domain, built from the seed with named random
    streams only). It checks its own fields in ``__post_init__`` and then calls
    ``super().__post_init__()``, which checks the shared ones, including ``held_out`` against
    the domain names when they are known without reading data (``domains_known_upfront``).

    Example:
        >>> task = DigitsShift(shift="rotation", held_out=(3,))
        >>> splits = task.splits(seed=0)
        >>> task.domain_names(), sorted(splits.extra)[:2]
        (('rot0', 'rot30', 'rot60', 'rot90'), ['test@rot0', 'test@rot30'])
        >>> splits.test.groups.unique().tolist(), splits.train.groups.unique().tolist()
        ([3], [0, 1, 2])
    """

    held_out: tuple[int, ...] = (0,)  # indices of the test domains; the others are for training
    val_fraction: float = 0.2  # fraction of each domain (per class) in its val part
    test_fraction: float = 0.2  # fraction of each domain (per class) in its test part
    data_seed: int | None = None  # if set, builds and splits the data instead of the run's seed

    # False where the domains are only known by reading files (held_out checked in splits())
    domains_known_upfront: ClassVar[bool] = True

    def __post_init__(self) -> None:
        held = self.held_out if isinstance(self.held_out, list | tuple) else (self.held_out,)
        if any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in held):
            raise ValueError(f"held_out must be domain indices (ints), got {self.held_out!r}")
        held = tuple(int(i) for i in held)
        object.__setattr__(self, "held_out", held)  # lists from YAML stay hashable
        if not held:
            raise ValueError("held_out must name at least one test domain, got ()")
        if len(set(held)) != len(held):
            raise ValueError(f"held_out lists a domain twice: {held}")
        check_range("val_fraction", self.val_fraction, 0, 1, high_open=True)
        check_range("test_fraction", self.test_fraction, 0, 1, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if self.data_seed is not None:
            check_range("data_seed", self.data_seed, 0)
        if self.domains_known_upfront:
            self._check_held_out(self.domain_names())

    # -- what a subclass provides

    def domain_names(self) -> tuple[str, ...]:
        """The domains' names, in index order; stable for fixed parameters."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def _domains(self, seed: int) -> Sequence[DomainData]:
        raise NotImplementedError

    # -- the convention

    def _check_held_out(self, names: Sequence[str]) -> None:
        count = len(names)
        listing = ", ".join(f"{i}={name}" for i, name in enumerate(names))
        for index in self.held_out:
            if not 0 <= index < count:
                raise ValueError(
                    f"held_out index {index} is out of range: valid domain indices are "
                    f"0..{count - 1} ({listing})"
                )
        if len(self.held_out) >= count:
            raise ValueError(
                f"held_out {self.held_out} leaves no training domain: hold out at most "
                f"{count - 1} of the {count} domains ({listing})"
            )
        if len(set(names)) != count:
            raise ValueError(f"domain names must be distinct, got {tuple(names)}")

    def training_domains(self) -> tuple[int, ...]:
        """Indices of the training domains: every domain not in ``held_out``."""
        names = self.domain_names()
        self._check_held_out(names)
        return tuple(i for i in range(len(names)) if i not in self.held_out)

    def domains(self, seed: int) -> tuple[DomainData, ...]:
        """Every domain's examples before splitting, built from ``seed`` (or ``data_seed``)."""
        seed = resolve_seed(seed, self.data_seed)
        names = self.domain_names()
        data = tuple(self._domains(seed))
        if len(data) != len(names):
            raise ValueError(f"{type(self).__name__} built {len(data)} domains for "
                             f"{len(names)} names")
        for name, domain in zip(names, data, strict=True):
            if tuple(domain.x.shape[1:]) != self.input.shape:
                raise ValueError(f"domain {name}: inputs of shape {tuple(domain.x.shape[1:])}, "
                                 f"expected {self.input.shape}")
            if not len(domain):
                raise ValueError(f"domain {name} has no examples")
        return data

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        names = self.domain_names()
        self._check_held_out(names)
        train, val, test, held_out_test = [], [], [], {}
        for index, (name, domain) in enumerate(zip(names, self.domains(seed), strict=True)):
            test_rows, val_rows, train_rows = stratified_partition(
                domain.y, (self.test_fraction, self.val_fraction),
                stream_generator(seed, f"split@{name}"),
            )
            train.append(_subset(domain, train_rows, index))
            val.append(_subset(domain, val_rows, index))
            test.append(_subset(domain, test_rows, index))
            if index in self.held_out and domain.groups is not None:  # the suite's own groups
                held_out_test[index] = _subset(domain, test_rows, domain.groups[test_rows])
        training = [i for i in range(len(names)) if i not in self.held_out]
        extra = {}
        for index, name in enumerate(names):
            extra[f"val@{name}"] = val[index]
            extra[f"test@{name}"] = test[index]
        return Splits(
            train=_concatenate([train[i] for i in training]),
            val=_concatenate([val[i] for i in training]),
            test=_concatenate([held_out_test.get(i, test[i]) for i in sorted(self.held_out)]),
            input=self.input,
            num_classes=self.num_classes,
            extra=extra,
        )


def _subset(domain: DomainData, rows: Tensor, groups: Tensor | int) -> Split:
    """The examples ``rows`` of a domain; ``groups``: theirs, or one id (the domain index)."""
    if isinstance(groups, int):
        groups = torch.full((len(rows),), groups)
    clean = None if domain.clean_y is None else domain.clean_y[rows]
    return Split(domain.x[rows], domain.y[rows], clean, groups.long())


# ------------------------------------------------------------------------------- source data


def _strength_name(value: float) -> str:
    """``0.25 -> "0p25"``, ``-5 -> "m5"``: domain names without '.', '-' or '/'."""
    return f"{value:g}".replace(".", "p").replace("-", "m")


def _source(source: str, num_samples: int, dataset_seed: int) -> tuple[Tensor, Tensor]:
    """All examples (x, digit) of a source data set: MNIST-1D's train and test parts together,
    or the 1,797 digits images (pixels / 16, flattened)."""
    if source == "digits":
        features, labels = digits_arrays()
        return torch.tensor(features), torch.tensor(labels)
    arrays = mnist1d_arrays(num_samples, dataset_seed)
    x = torch.tensor(np.concatenate([arrays["x"], arrays["x_test"]]))
    return x, torch.tensor(np.concatenate([arrays["y"], arrays["y_test"]]))


def _equal_domains(total: int, count: int, seed: int) -> tuple[Tensor, ...]:
    """``count`` disjoint random subsets of ``range(total)`` of (nearly) equal size."""
    sizes = split_counts(total, [1 / count] * (count - 1))
    return random_partition(total, sizes, stream_generator(seed, "domains"))


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
        return tuple(f"{prefix}{_strength_name(s)}" for s in self.domain_strengths())

    @property
    def num_classes(self) -> int:
        return 10

    def _source_data(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _domains(self, seed: int) -> list[DomainData]:
        x, y = self._source_data()
        strengths = self.domain_strengths()
        out = []
        for rows, name, strength in zip(_equal_domains(len(y), len(strengths), seed),
                                         self.domain_names(), strengths, strict=True):
            noise = stream_generator(seed, f"noise@{name}")
            shifted = _shift_domain(x[rows], self.shift, strength, noise)
            out.append(DomainData(shifted, y[rows], index=rows))
        return out


_MNIST1D_STRENGTHS = {
    "translation": (0.0, 5.0, 10.0, 15.0),  # circular shift, positions (of 40)
    "noise": (0.0, 0.25, 0.5, 1.0),  # added Gaussian noise std (the signals have std ~1)
    "scale": (1.0, 0.75, 0.5, 0.25),  # amplitude factor
}
_MNIST1D_PREFIX = {"translation": "shift", "noise": "noise", "scale": "scale"}


@TASKS.register(
    "mnist1d_shift",
    summary="MNIST-1D in 4 domains under translation, noise or amplitude-scale shift.",
    references=_REFERENCES,
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
    dataset_seed: int = 42  # seed of the MNIST-1D generator

    _STRENGTHS: ClassVar[dict[str, tuple[float, ...]]] = _MNIST1D_STRENGTHS
    _PREFIXES: ClassVar[dict[str, str]] = _MNIST1D_PREFIX
    _INTEGER: ClassVar[str | None] = "translation"  # circular shifts by whole positions

    def __post_init__(self) -> None:
        self._check_shift()
        check_range("num_samples", self.num_samples, 10 * len(self.domain_strengths()))
        check_range("dataset_seed", self.dataset_seed, 0, 2**32 - 1)
        super().__post_init__()

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (40,))

    def _source_data(self) -> tuple[Tensor, Tensor]:
        return _source("mnist1d", self.num_samples, self.dataset_seed)


_DIGITS_STRENGTHS = {
    "rotation": (0.0, 30.0, 60.0, 90.0),  # degrees, counter-clockwise
    "noise": (0.0, 0.1, 0.2, 0.4),  # added Gaussian noise std (pixels lie in [0, 1])
    "scale": (1.0, 0.75, 0.5, 0.25),  # intensity (contrast) factor
}
_DIGITS_PREFIX = {"rotation": "rot", "noise": "noise", "scale": "scale"}


@TASKS.register(
    "digits_shift",
    summary="scikit-learn's 8x8 digits in 4 domains under rotation, noise or intensity shift.",
    references=_REFERENCES,
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
        return _source("digits", 0, 0)


# --------------------------------------------------------------------------- spurious cue


@TASKS.register(
    "spurious",
    summary="ColoredMNIST-style cue: agrees with the label 90%/80% in training, 10% in test.",
    references=_REFERENCES,
)
@dataclass(frozen=True)
class SpuriousCue(DomainSuite):
    """A binary task with a cue that predicts the label in the training domains only.

    As ColoredMNIST (IRM, arXiv:1907.02893), on digits or MNIST-1D: the examples are dealt at
    random into one domain per entry of ``cue_agreement``. The clean label is 1 for digits 0-4
    and 0 for 5-9; the label ``y`` flips with probability ``label_noise`` (0.25), so the shape
    predicts ``y`` 75% of the time in every domain. The cue (the "colour") equals ``y`` with
    probability ``p_e`` of its domain (independent Bernoulli draws) and ``1 - y`` otherwise;
    it is appended to the features as one more feature, ``+1`` for cue 1 and ``-1`` for cue 0.
    Defaults as ColoredMNIST: ``p_e`` = 0.9, 0.8 in the training domains and 0.1 in the test
    domain (``held_out=(2,)``), so the cue beats the shape in training and is anti-correlated
    with the label in test. Domain names: ``agree90``, ``agree80``, ``agree10``.

    The ``test`` split's ``groups`` are ``2 * y + agrees`` (0: y=0 cue disagrees, 1: y=0 cue
    agrees, 2: y=1 disagrees, 3: y=1 agrees), so worst-group accuracy is meaningful;
    elsewhere groups are domain indices. ``clean_y`` holds the labels before the flips.

    References:
        Arjovsky, Bottou, Gulrajani, Lopez-Paz. Invariant Risk Minimization. arXiv:1907.02893.
        Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.

    Example:
        >>> task = SpuriousCue()
        >>> task.domain_names(), task.input.shape
        (('agree90', 'agree80', 'agree10'), (65,))
    """

    held_out: tuple[int, ...] = (2,)  # the test domain: cue agreement 0.1 by default
    source: Literal["digits", "mnist1d"] = "digits"  # the shapes: 8x8 digits or MNIST-1D
    cue_agreement: tuple[float, ...] = (0.9, 0.8, 0.1)  # P(cue = label) in each domain
    label_noise: float = 0.25  # probability that a label is flipped (ColoredMNIST: 0.25)
    num_samples: int = 4000  # MNIST-1D examples generated (source="mnist1d" only)
    dataset_seed: int = 42  # seed of the MNIST-1D generator (source="mnist1d" only)

    def __post_init__(self) -> None:
        if self.source not in ("digits", "mnist1d"):
            raise ValueError(f"source must be 'digits' or 'mnist1d', got {self.source!r}")
        object.__setattr__(self, "cue_agreement", tuple(self.cue_agreement))
        if len(self.cue_agreement) < 2:
            raise ValueError(f"cue_agreement needs at least 2 domains, got {self.cue_agreement}")
        for p in self.cue_agreement:
            check_range("cue_agreement", p, 0, 1)
        check_range("label_noise", self.label_noise, 0, 1)
        check_range("num_samples", self.num_samples, 10 * len(self.cue_agreement))
        check_range("dataset_seed", self.dataset_seed, 0, 2**32 - 1)
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return tuple(f"agree{_strength_name(100 * p)}" for p in self.cue_agreement)

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (65 if self.source == "digits" else 41,))

    @property
    def num_classes(self) -> int:
        return 2

    def _domains(self, seed: int) -> list[DomainData]:
        x, digit = _source(self.source, self.num_samples, self.dataset_seed)
        out = []
        for rows, name, p in zip(_equal_domains(len(digit), len(self.cue_agreement), seed),
                                 self.domain_names(), self.cue_agreement, strict=True):
            clean = (digit[rows] < 5).long()
            flips = torch.rand(len(rows), generator=stream_generator(seed, f"label@{name}"))
            y = torch.where(flips < self.label_noise, 1 - clean, clean)
            draws = torch.rand(len(rows), generator=stream_generator(seed, f"cue@{name}"))
            agrees = (draws < p).long()
            cue = torch.where(agrees.bool(), y, 1 - y)
            features = torch.cat([x[rows], (2 * cue - 1).to(x.dtype)[:, None]], dim=1)
            out.append(DomainData(
                features, y, groups=2 * y + agrees,
                clean_y=clean if self.label_noise > 0 else None, index=rows,
            ))
        return out


# ---------------------------------------------------------------------------- label shift


def _largest_remainder(total: int, proportions: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``total * proportions`` (Hamilton)."""
    exact = total * proportions
    counts = np.floor(exact).astype(np.int64)
    missing = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")  # ties: the lower class first
    counts[order[:missing]] += 1
    return counts


@TASKS.register(
    "label_shift",
    summary="Digits or MNIST-1D in domains with different class distributions (subsampled).",
    references=_REFERENCES,
)
@dataclass(frozen=True)
class LabelShift(DomainSuite):
    """The same inputs in ``num_domains`` domains that differ only in their class distribution.

    Each domain ``d`` declares class proportions ``pi[d]`` (:meth:`class_proportions`):

    * ``prior="step"``: domain ``d`` favours the ``C // 2`` classes starting at ``d * C //
      num_domains`` (cyclically) with weight 1; the other classes get weight ``imbalance``.
    * ``prior="dirichlet"``: ``pi[d] ~ Dirichlet(concentration, ..., concentration)``, drawn
      from the seed's ``class_prior`` stream.

    Every domain gets the same size ``n`` (``domain_size``, or the largest that the source data
    allows); its count of class ``c`` is ``n * pi[d, c]`` rounded by largest remainders, and
    its examples are drawn without replacement, disjoint across domains. Splits (stratified
    per domain, so each part keeps its domain's class mix) follow :class:`DomainSuite`.
    Domain names: ``prior0``, ``prior1``, ...

    References:
        Lipton, Wang, Smola. Detecting and Correcting for Label Shift with Black Box
        Predictors. arXiv:1802.03916.
        Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.

    Example:
        >>> LabelShift().class_proportions(0)[0, :6].round(3).tolist()
        [0.182, 0.182, 0.182, 0.182, 0.182, 0.018]
    """

    source: Literal["digits", "mnist1d"] = "digits"  # the inputs: 8x8 digits or MNIST-1D
    num_domains: int = 4  # number of domains
    prior: Literal["step", "dirichlet"] = "step"  # how each domain's class mix is declared
    imbalance: float = 0.1  # step: weight of a disfavoured class relative to a favoured one
    concentration: float = 1.0  # dirichlet: the concentration of every class
    domain_size: int | None = None  # examples per domain; None: the largest the data allows
    num_samples: int = 4000  # MNIST-1D examples generated (source="mnist1d" only)
    dataset_seed: int = 42  # seed of the MNIST-1D generator (source="mnist1d" only)

    def __post_init__(self) -> None:
        if self.source not in ("digits", "mnist1d"):
            raise ValueError(f"source must be 'digits' or 'mnist1d', got {self.source!r}")
        if self.prior not in ("step", "dirichlet"):
            raise ValueError(f"prior must be 'step' or 'dirichlet', got {self.prior!r}")
        check_range("num_domains", self.num_domains, 2)
        check_range("imbalance", self.imbalance, 0, 1, low_open=True)
        check_range("concentration", self.concentration, 0, low_open=True)
        if self.domain_size is not None:
            check_range("domain_size", self.domain_size, 1)
        check_range("num_samples", self.num_samples, 10)
        check_range("dataset_seed", self.dataset_seed, 0, 2**32 - 1)
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return tuple(f"prior{d}" for d in range(self.num_domains))

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (64 if self.source == "digits" else 40,))

    @property
    def num_classes(self) -> int:
        return 10

    def class_proportions(self, seed: int) -> np.ndarray:
        """The declared class distribution of each domain, ``(num_domains, 10)``."""
        seed = resolve_seed(seed, self.data_seed)
        classes, domains = self.num_classes, self.num_domains
        if self.prior == "dirichlet":
            draw = stream_generator(seed, "class_prior")
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=draw)))
            return rng.dirichlet([self.concentration] * classes, size=domains)
        weights = np.full((domains, classes), self.imbalance)
        for d in range(domains):
            start = d * classes // domains
            weights[d, [(start + j) % classes for j in range(classes // 2)]] = 1.0
        return weights / weights.sum(axis=1, keepdims=True)

    def class_counts(self, seed: int) -> np.ndarray:
        """How many examples of each class each domain gets, ``(num_domains, 10)``."""
        seed = resolve_seed(seed, self.data_seed)
        _, digit = _source(self.source, self.num_samples, self.dataset_seed)
        available = np.bincount(digit.numpy(), minlength=self.num_classes)
        proportions = self.class_proportions(seed)

        def counts(size: int) -> np.ndarray:
            return np.stack([_largest_remainder(size, row) for row in proportions])

        demand = proportions.sum(axis=0)
        largest = int(np.min(available[demand > 0] / demand[demand > 0]))
        while largest > 0 and (counts(largest).sum(axis=0) > available).any():
            largest -= 1
        size = largest if self.domain_size is None else self.domain_size
        if size > largest or size < 1:
            raise ValueError(
                f"domain_size {size}: the {len(digit)} {self.source} examples allow at most "
                f"{largest} per domain for these class proportions"
            )
        return counts(size)

    def _domains(self, seed: int) -> list[DomainData]:
        x, digit = _source(self.source, self.num_samples, self.dataset_seed)
        counts = self.class_counts(seed)
        generator = stream_generator(seed, "domains")
        chosen: list[list[Tensor]] = [[] for _ in range(self.num_domains)]
        for c in range(self.num_classes):
            members = torch.nonzero(digit == c).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            for d, chunk in enumerate(torch.split(members[: counts[:, c].sum()],
                                                  counts[:, c].tolist())):
                chosen[d].append(chunk)
        out = []
        for parts in chosen:
            rows = torch.cat(parts)
            rows = rows[torch.randperm(len(rows), generator=generator)]
            out.append(DomainData(x[rows], digit[rows], index=rows))
        return out
