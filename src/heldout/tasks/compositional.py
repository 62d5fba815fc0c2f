"""A small compositional-generalization task: (subject, relation, object) triples whose rare
compositions are held out (the stand-in structured data of catalog #53)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.domains.base import DOMAIN_REFERENCES, DomainData, DomainSuite

__all__ = ["Compositional", "composition_label", "rare_pairs"]

SGG = "Generative Compositional Augmentations for Scene Graph Prediction (arXiv:2007.05756)"


def composition_label(triples: Tensor, n_objects: int, num_classes: int) -> Tensor:
    """The label of token triples ``(s, n_objects + r, o)``: ``(s + r + o) mod num_classes``
    (objects equal mod ``num_classes`` are interchangeable).

    Example:
        >>> composition_label(torch.tensor([[1, 12, 2], [3, 14, 3]]), 12, 4).tolist()
        [3, 0]
    """
    relation = triples[:, 1] - n_objects
    return (triples[:, 0] + relation + triples[:, 2]) % num_classes


def rare_pairs(n_objects: int, fraction: float, generator: torch.Generator) -> Tensor:
    """A boolean ``(n_objects, n_objects)`` mask of the rare (subject, object) pairs: about
    ``fraction`` of all pairs, drawn at random, skipping any pair whose removal would leave
    an object without a common pair as subject or as object (every object stays seen in
    training; only its compositions are new).

    Example:
        >>> mask = rare_pairs(6, 0.3, torch.Generator().manual_seed(0))
        >>> int(mask.sum()), bool((~mask).any(dim=0).all() and (~mask).any(dim=1).all())
        (11, True)
    """
    mask = torch.zeros(n_objects, n_objects, dtype=torch.bool)
    target = round(fraction * n_objects ** 2)
    for flat in torch.randperm(n_objects ** 2, generator=generator).tolist():
        if int(mask.sum()) >= target:
            break
        s, o = divmod(flat, n_objects)
        if int((~mask[s]).sum()) > 1 and int((~mask[:, o]).sum()) > 1:
            mask[s, o] = True
    return mask


@TASKS.register(
    "compositional",
    summary="(subject, relation, object) token triples labelled by their composition; the "
    "rare (subject, object) compositions form the held-out domain.",
    references=(SGG, *DOMAIN_REFERENCES),
)
@dataclass(frozen=True)
class Compositional(DomainSuite):
    """Triples of tokens ``(s, n_objects + r, o)``: subject and object among ``n_objects``
    objects, relation among ``n_relations``; label :func:`composition_label`,
    ``(s + r + o) mod num_classes``, a function of the whole composition. A random
    ``rare_fraction`` of the (subject, object) pairs (:func:`rare_pairs`, stream
    ``rare-pairs``) is *rare*: domain ``common`` draws ``samples_per_domain`` triples
    uniformly over the other pairs and the relations, domain ``rare`` over the rare pairs.
    With the default ``held_out=(1,)`` the rare compositions never appear in training
    (zero-shot compositions; each object does), as in the long tail of scene graphs.

    References:
        Knyazev et al. Generative Compositional Augmentations for Scene Graph Prediction.
        arXiv:2007.05756.

    Example:
        >>> task = Compositional()
        >>> task.domain_names(), task.input.vocab
        (('common', 'rare'), 15)
    """

    held_out: tuple[int, ...] = (1,)  # the rare compositions are the test domain
    n_objects: Annotated[int, Ge(2)] = 12  # object tokens 0..n_objects-1
    n_relations: Annotated[int, Ge(1)] = 3  # relation tokens n_objects..n_objects+n_relations-1
    classes: Annotated[int, Ge(2)] = 4  # labels (s + r + o) mod classes
    rare_fraction: Annotated[float, Interval(0, 1, closed="neither")] = 0.25  # of the pairs
    samples_per_domain: Annotated[int, Ge(20)] = 1500  # triples drawn per domain

    def domain_names(self) -> tuple[str, ...]:
        return ("common", "rare")

    @property
    def input(self) -> InputSpec:
        return InputSpec("tokens", (3,), vocab=self.n_objects + self.n_relations)

    @property
    def num_classes(self) -> int:
        return self.classes

    def _domains(self, seed: int) -> list[DomainData]:
        rare = rare_pairs(self.n_objects, self.rare_fraction, stream_generator(seed, "rare-pairs"))
        out = []
        for name, mask in (("common", ~rare), ("rare", rare)):
            pairs = mask.nonzero()  # (P, 2): subject, object
            g = stream_generator(seed, f"triples@{name}")
            pick = torch.randint(len(pairs), (self.samples_per_domain,), generator=g)
            relation = torch.randint(self.n_relations, (self.samples_per_domain,), generator=g)
            x = torch.stack([pairs[pick, 0], self.n_objects + relation, pairs[pick, 1]], dim=1)
            out.append(DomainData(x, composition_label(x, self.n_objects, self.classes)))
        return out
