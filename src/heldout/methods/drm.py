"""Domain-specific Risk Minimization (DRM, catalog #13), its training half: one classifier head
per source domain on a shared featurizer, each head trained on its own domain's examples.

For K source domains with examples (x, y, d), features f(x) and heads h_1..h_K, DRM's
training risk is the sum of the domain-specific risks,

    L = (1/B) Σ_i ℓ(h_{d_i}(f(x_i)), y_i)          (:func:`domain_specific_risk`)

so head k only sees the distribution of domain k, and the featurizer serves all heads. At
test time the heads are ensembled per test sample by the entropy of their predictions (the
paper's estimate of the adaptivity gap) and steered online: :mod:`heldout.adapt.drm`.

References:
    Zhang, Wang, Jin, Tan, Zhao, Wang. Domain-Specific Risk Minimization for
    Out-of-Distribution Generalization. KDD 2023. arXiv:2208.08661.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import split_head
from heldout.core.bounds import Annotated, Ge
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = ["DRM", "DomainHeads", "domain_specific_risk"]

REFERENCE = ("Domain-Specific Risk Minimization for Out-of-Distribution Generalization "
             "(arXiv:2208.08661)")


def domain_specific_risk(head_logits: Tensor, targets: Tensor, domains: Tensor) -> Tensor:
    """Mean cross-entropy of each example under its own domain's head.

    ``head_logits`` is (B, K, C): every head's logits for every example; ``domains`` (B,)
    holds each example's head index in ``[0, K)``. Only ``head_logits[i, domains[i]]`` enters
    the loss, so a head gets gradient from its own domain's examples only.

    Example:
        >>> logits = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # one example, two heads
        >>> round(float(domain_specific_risk(logits, torch.tensor([1]), torch.tensor([0]))), 4)
        0.6931
    """
    if head_logits.dim() != 3:
        raise ValueError(f"head_logits must be (B, K, C), got {tuple(head_logits.shape)}")
    if domains.shape != (len(head_logits),):
        raise ValueError(f"domains must be (B,) = ({len(head_logits)},), got "
                         f"{tuple(domains.shape)}")
    k = head_logits.shape[1]
    if len(domains) and not (int(domains.min()) >= 0 and int(domains.max()) < k):
        raise ValueError(f"domains must be head indices in [0, {k}), got "
                         f"{sorted(domains.unique().tolist())}")
    own = head_logits[torch.arange(len(domains), device=domains.device), domains.long()]
    return F.cross_entropy(own.float(), targets)


class DomainHeads(nn.Module):
    """A featurizer with K linear heads. ``heads[0]`` is the model's own head (so with one
    domain the network is the original model); the others are copies of it re-initialized
    with ``reset_parameters``. In training mode ``forward`` returns every head's logits,
    (B, K, C), for :func:`domain_specific_risk`; in eval mode the log-probabilities of the
    head with the lowest prediction entropy per example (DRM's selection without the online
    adaptation of :class:`heldout.adapt.drm.DRMAdapter`)."""

    def __init__(self, model: nn.Module, num_domains: int) -> None:
        super().__init__()
        self.features, head = split_head(model)
        extra = [copy.deepcopy(head) for _ in range(num_domains - 1)]
        for fresh in extra:
            fresh.reset_parameters()
        self.heads = nn.ModuleList([head, *extra])

    def head_logits(self, x: Tensor) -> Tensor:
        z = self.features(x)
        return torch.stack([head(z) for head in self.heads], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head_logits(x)
        if self.training:
            return logits
        log_p = logits.log_softmax(dim=-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1)  # (B, K)
        best = entropy.argmin(dim=1)
        return log_p[torch.arange(len(x), device=x.device), best]


@TECHNIQUES.register(
    "drm",
    summary="Domain-specific risk minimization: one classifier head per training domain, each "
    "trained on its own domain (adapt with the drm adapter).",
    papers=(13,),
    references=(REFERENCE,),
)
@dataclass
class DRM(Technique):
    """Train K heads on a shared featurizer (:class:`DomainHeads`), each on the examples of
    its own training domain (:func:`domain_specific_risk`). The loss needs each example's
    domain: the Trainer gives the training split's domain indices (``State.train_groups``,
    from ``Split.groups``) and each batch's dataset indices select them; in a loop of your
    own, call :meth:`use_groups` with them. With ``num_domains = 1`` no groups are needed and
    DRM is ERM exactly (same initialization, same logits).
    """

    num_domains: Annotated[int, Ge(1)] = 1  # K: training domains, one head each

    touches = frozenset({"model", "loss"})

    def __post_init__(self) -> None:
        self._domains: Tensor | None = None  # dataset index → head index

    def use_groups(self, groups: Tensor) -> DRM:
        """Set the training examples' domain ids (any K distinct values, in dataset order);
        they are mapped to heads in sorted order."""
        values, heads = torch.as_tensor(groups).unique(sorted=True, return_inverse=True)
        if len(values) != self.num_domains:
            raise ValueError(f"drm has num_domains={self.num_domains} heads but the groups "
                             f"hold {len(values)} domains ({values.tolist()})")
        self._domains = heads
        return self

    def transform_model(self, model: nn.Module) -> nn.Module:
        return DomainHeads(model, self.num_domains)

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        if logits.dim() != 3:
            raise ValueError("drm's loss needs every head's logits (B, K, C): train the model "
                             "that drm's transform_model returns, in training mode")
        if self.num_domains == 1:
            domains = torch.zeros(len(targets), dtype=torch.long, device=targets.device)
        else:
            indices = state.batch[2] if state.batch is not None else None
            if self._domains is None and state.train_groups is not None:
                self.use_groups(state.train_groups)
            if self._domains is None or indices is None:
                raise ValueError("drm with several domains needs each training example's "
                                 "domain: call use_groups(train_split.groups) before fit(), "
                                 "with batches that carry dataset indices")
            domains = self._domains.to(indices.device)[indices]
        return domain_specific_risk(logits, targets, domains)
