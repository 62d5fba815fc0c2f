"""The spurious-cue suite: a label-correlated cue whose correlation changes across domains
(see :mod:`heldout.tasks.domains.base` for the convention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

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

__all__ = ["SpuriousCue"]


# --------------------------------------------------------------------------- spurious cue


@TASKS.register(
    "spurious",
    summary="ColoredMNIST-style cue: agrees with the label 90%/80% in training, 10% in test.",
    references=DOMAIN_REFERENCES,
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
    # P(cue = label) in each domain
    cue_agreement: Annotated[tuple[float, ...], Interval(0, 1)] = (0.9, 0.8, 0.1)
    # probability that a label is flipped (ColoredMNIST: 0.25)
    label_noise: Annotated[float, Interval(0, 1)] = 0.25
    num_samples: int = 4000  # MNIST-1D examples generated (source="mnist1d" only)
    # seed of the MNIST-1D generator (source="mnist1d" only)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42

    def __post_init__(self) -> None:
        if self.source not in ("digits", "mnist1d"):
            raise ValueError(f"source must be 'digits' or 'mnist1d', got {self.source!r}")
        object.__setattr__(self, "cue_agreement", tuple(self.cue_agreement))
        if len(self.cue_agreement) < 2:
            raise ValueError(f"cue_agreement needs at least 2 domains, got {self.cue_agreement}")
        check_range("num_samples", self.num_samples, 10 * len(self.cue_agreement))
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return tuple(f"agree{strength_name(100 * p)}" for p in self.cue_agreement)

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (65 if self.source == "digits" else 41,))

    @property
    def num_classes(self) -> int:
        return 2

    def _domains(self, seed: int) -> list[DomainData]:
        x, digit = source_arrays(self.source, self.num_samples, self.dataset_seed)
        out = []
        for rows, name, p in zip(equal_domains(len(digit), len(self.cue_agreement), seed),
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


