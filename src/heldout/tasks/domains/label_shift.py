"""The label-shift suite: the same inputs under different class proportions per domain
(see :mod:`heldout.tasks.domains.base` for the convention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.domains.base import (
    DOMAIN_REFERENCES,
    DomainData,
    DomainSuite,
    source_arrays,
)
from heldout.tasks.splitting import resolve_seed

__all__ = ["LabelShift"]


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
    references=DOMAIN_REFERENCES,
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
    num_domains: Annotated[int, Ge(2)] = 4  # number of domains
    prior: Literal["step", "dirichlet"] = "step"  # how each domain's class mix is declared
    # step: weight of a disfavoured class relative to a favoured one
    imbalance: Annotated[float, Interval(0, 1, closed="right")] = 0.1
    concentration: Annotated[float, Gt(0)] = 1.0  # dirichlet: the concentration of every class
    # examples per domain; None: the largest the data allows
    domain_size: Annotated[int | None, Ge(1)] = None
    # MNIST-1D examples generated (source="mnist1d" only)
    num_samples: Annotated[int, Ge(10)] = 4000
    # seed of the MNIST-1D generator (source="mnist1d" only)
    dataset_seed: Annotated[int, Interval(0, 2**32 - 1)] = 42

    def __post_init__(self) -> None:
        if self.source not in ("digits", "mnist1d"):
            raise ValueError(f"source must be 'digits' or 'mnist1d', got {self.source!r}")
        if self.prior not in ("step", "dirichlet"):
            raise ValueError(f"prior must be 'step' or 'dirichlet', got {self.prior!r}")
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
        _, digit = source_arrays(self.source, self.num_samples, self.dataset_seed)
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
        x, digit = source_arrays(self.source, self.num_samples, self.dataset_seed)
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
