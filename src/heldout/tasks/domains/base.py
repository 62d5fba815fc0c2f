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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.sampling import stream_generator
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.digits import digits_arrays
from heldout.tasks.mnist1d import mnist1d_arrays
from heldout.tasks.splitting import (
    random_partition,
    resolve_seed,
    split_counts,
    stratified_partition,
)

__all__ = [
    "DOMAIN_REFERENCES",
    "DomainData",
    "DomainSuite",
    "equal_domains",
    "source_arrays",
    "strength_name",
]

DOMAIN_REFERENCES = (
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
    streams only). The bounds its fields declare are checked by the registry first; its
    ``__post_init__`` checks the rest and then calls ``super().__post_init__()``, which checks
    ``held_out`` and the fractions' sum, ``held_out`` against the domain names when they are
    known without reading data (``domains_known_upfront``).

    Example:
        >>> from heldout.tasks.domains import DigitsShift
        >>> task = DigitsShift(shift="rotation", held_out=(3,))
        >>> splits = task.splits(seed=0)
        >>> task.domain_names(), sorted(splits.extra)[:2]
        (('rot0', 'rot30', 'rot60', 'rot90'), ['test@rot0', 'test@rot30'])
        >>> splits.test.groups.unique().tolist(), splits.train.groups.unique().tolist()
        ([3], [0, 1, 2])
    """

    held_out: tuple[int, ...] = (0,)  # indices of the test domains; the others are for training
    # fraction of each domain (per class) in its val part
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.2
    # fraction of each domain (per class) in its test part
    test_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.2
    # if set, builds and splits the data instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

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
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
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

    def domain_parts(self, seed: int, domains: Sequence[DomainData] | None = None
                     ) -> list[tuple[Tensor, ...]]:
        """Per domain, the rows of its test, val and train parts: by default each domain
        split on its own, stratified by label and seeded per domain name (a suite whose
        domains share source examples overrides it to keep provenance clean)."""
        domains = self.domains(seed) if domains is None else domains
        return [stratified_partition(domain.y, (self.test_fraction, self.val_fraction),
                                     stream_generator(seed, f"split@{name}"))
                for name, domain in zip(self.domain_names(), domains, strict=True)]

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        names = self.domain_names()
        self._check_held_out(names)
        train, val, test, held_out_test = [], [], [], {}
        domains = self.domains(seed)
        for index, (domain, (test_rows, val_rows, train_rows)) in enumerate(
                zip(domains, self.domain_parts(seed, domains), strict=True)):
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


def strength_name(value: float) -> str:
    """``0.25 -> "0p25"``, ``-5 -> "m5"``: domain names without '.', '-' or '/'."""
    return f"{value:g}".replace(".", "p").replace("-", "m")


def source_arrays(source: str, num_samples: int, dataset_seed: int) -> tuple[Tensor, Tensor]:
    """All examples (x, digit) of a source data set: MNIST-1D's train and test parts together,
    or the 1,797 digits images (pixels / 16, flattened)."""
    if source == "digits":
        features, labels = digits_arrays()
        return torch.tensor(features), torch.tensor(labels)
    arrays = mnist1d_arrays(num_samples, dataset_seed)
    x = torch.tensor(np.concatenate([arrays["x"], arrays["x_test"]]))
    return x, torch.tensor(np.concatenate([arrays["y"], arrays["y_test"]]))


def equal_domains(total: int, count: int, seed: int) -> tuple[Tensor, ...]:
    """``count`` disjoint random subsets of ``range(total)`` of (nearly) equal size."""
    sizes = split_counts(total, [1 / count] * (count - 1))
    return random_partition(total, sizes, stream_generator(seed, "domains"))
