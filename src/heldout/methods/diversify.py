"""Diversification (catalog #45): K heads that all fit the labelled source data and disagree on
unlabelled target data (DivDis), then choose one head with few or no target labels.

For heads f_1..f_K on a shared featurizer, labelled source batch (x, y) and unlabelled target
batch x', DivDis minimizes

    L = Σ_k CE(f_k(x), y) / K  +  λ_MI Σ_{i<j} I(ŷ_i; ŷ_j)  +  λ_prior Σ_k KL(p̂_k ‖ p(y))

where the joint of two heads' predicted labels over the target batch is the batch mean of the
outer products of their predicted distributions, P(ŷ_i = a, ŷ_j = b) = mean_x' p_i(a|x') p_j(b|x'),
the mutual information is the KL divergence of that joint from the product of its marginals
(:func:`head_mutual_information`, :func:`diversity_loss`), and the optional regularizer pulls
each head's marginal prediction p̂_k on the target batch toward the source label prior
(:func:`prior_loss`), so that no head satisfies the disagreement by predicting one class.
Heads that rely on different cues (a spurious one and the shape) make independent predictions
when the cues are independent on the target data, which is what the MI term rewards; the
catalog paper (#45) shows that this depends on the unlabelled distribution: where the cues
are correlated on the target data the disagreement cannot separate them.

Selection (DivDis's "disambiguate" stage): :func:`select_head_by_labels` (the head most
accurate on m labelled target examples; :func:`disagreement_queries` picks the m examples on
which the heads disagree most, DivDis's active querying) or a label-free rule,
:func:`select_head_by_entropy` (the most confident head on the target data; a heuristic, not
the paper's). :meth:`DiverseHeads.select` makes a head the one that eval-mode predicts with;
:func:`head_model` gives one head as a plain classifier.

Differences from the paper: the cross-entropy is averaged over heads (the paper sums; the
average keeps K=1 equal to ERM), the MI sums over unordered pairs (the paper's ordered pairs
count each twice: a factor λ_MI absorbs), and the defaults below are heldout's choices (the
paper tunes λ per dataset).

References:
    Lee, Yao, Finn. Diversify and Disambiguate: Learning From Underspecified Data. ICLR 2023.
    arXiv:2202.03418.
    Unraveling the Key Components of OOD Generalization via Diversification (catalog #45;
    the study of DivDis's sensitivity to the unlabelled distribution). arXiv:2312.16313.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.sampling import stream_generator
from heldout.core.technique import Technique
from heldout.methods.drm import DomainHeads
from heldout.registry import TASKS, TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = [
    "DiverseHeads",
    "Diversify",
    "disagreement_queries",
    "diversity_loss",
    "head_model",
    "head_mutual_information",
    "prior_loss",
    "select_head_by_entropy",
    "select_head_by_labels",
]

REFERENCES = (
    "Diversify and Disambiguate: Learning From Underspecified Data (arXiv:2202.03418)",
    "Unraveling the Key Components of OOD Generalization via Diversification (arXiv:2312.16313)",
)
_TINY = 1e-12  # keeps log(0) out of empty cells of a joint


def _check_probs(name: str, probs: Tensor, dims: int) -> None:
    if probs.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(probs.shape)}")


def head_mutual_information(probs_i: Tensor, probs_j: Tensor) -> Tensor:
    """I(ŷ_i; ŷ_j) in nats for two heads' predicted distributions ``(N, C)`` on the same N
    unlabelled examples: the KL divergence of the joint P(a, b) = mean_n p_i(a|x_n) p_j(b|x_n)
    from the product of its marginals.

    Example:
        >>> a = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
        >>> round(float(head_mutual_information(a, a)), 4)  # identical: H(ŷ) = log 2
        0.6931
        >>> b = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
        >>> round(float(head_mutual_information(a, b)), 4)  # independent
        0.0
    """
    _check_probs("probs_i", probs_i, 2)
    if probs_j.shape != probs_i.shape:
        raise ValueError(f"probs_j has shape {tuple(probs_j.shape)}, probs_i "
                         f"{tuple(probs_i.shape)}")
    joint = probs_i.T @ probs_j / len(probs_i)  # (C, C)
    product = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    return (joint * ((joint + _TINY).log() - (product + _TINY).log())).sum()


def diversity_loss(head_probs: Tensor) -> Tensor:
    """Σ_{i<j} I(ŷ_i; ŷ_j) over the K heads' predicted distributions ``(N, K, C)`` on an
    unlabelled batch (0 for one head)."""
    _check_probs("head_probs", head_probs, 3)
    k = head_probs.shape[1]
    total = head_probs.new_zeros(())
    for i in range(k):
        for j in range(i + 1, k):
            total = total + head_mutual_information(head_probs[:, i], head_probs[:, j])
    return total


def prior_loss(head_probs: Tensor, prior: Tensor) -> Tensor:
    """Σ_k KL(p̂_k ‖ prior): each head's mean predicted distribution p̂_k over the unlabelled
    batch ``(N, K, C)`` against the label prior ``(C,)`` (DivDis's regularizer)."""
    _check_probs("head_probs", head_probs, 3)
    if prior.shape != head_probs.shape[-1:]:
        raise ValueError(f"prior must have shape ({head_probs.shape[-1]},), got "
                         f"{tuple(prior.shape)}")
    marginal = head_probs.mean(0)  # (K, C)
    return (marginal * ((marginal + _TINY).log() - (prior + _TINY).log())).sum()


def select_head_by_labels(head_logits: Tensor, targets: Tensor) -> int:
    """The head most accurate on a few labelled target examples (``(M, K, C)`` logits, ``(M,)``
    labels); ties go to the lowest index."""
    _check_probs("head_logits", head_logits, 3)
    if targets.shape != head_logits.shape[:1]:
        raise ValueError(f"targets must have shape ({len(head_logits)},), got "
                         f"{tuple(targets.shape)}")
    correct = (head_logits.argmax(-1) == targets[:, None]).sum(0)
    return int(correct.argmax())


def select_head_by_entropy(head_logits: Tensor) -> int:
    """Label-free: the head with the lowest mean predictive entropy on the target inputs
    ``(N, K, C)`` (the most confident one; a heuristic, not DivDis's rule)."""
    _check_probs("head_logits", head_logits, 3)
    log_p = head_logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean(0)  # (K,)
    return int(entropy.argmin())


def disagreement_queries(head_logits: Tensor, m: int) -> Tensor:
    """Indices of the ``m`` target examples on which the heads disagree most (the sum over
    pairs of heads of the total-variation distance between their predicted distributions):
    the examples whose labels DivDis's active querying asks for."""
    _check_probs("head_logits", head_logits, 3)
    if not 1 <= m <= len(head_logits):
        raise ValueError(f"m must be in [1, {len(head_logits)}], got {m}")
    probs = head_logits.softmax(-1)
    gaps = (probs[:, :, None] - probs[:, None, :]).abs().sum(-1) / 2  # (N, K, K)
    return gaps.sum((1, 2)).topk(m).indices


class DiverseHeads(DomainHeads):
    """A featurizer with K linear heads (``heads[0]`` is the model's own head; the others are
    re-initialized copies). In training mode ``forward`` returns every head's logits
    ``(B, K, C)``; in eval mode the logits of the selected head (:meth:`select`, head 0 until
    then; the choice is a buffer, so it is checkpointed)."""

    def __init__(self, model: nn.Module, num_heads: int) -> None:
        super().__init__(model, num_heads)
        self.selected: Tensor
        self.register_buffer("selected", torch.zeros((), dtype=torch.long))

    def select(self, head: int) -> DiverseHeads:
        if not 0 <= head < len(self.heads):
            raise ValueError(f"head must be in [0, {len(self.heads)}), got {head}")
        self.selected.fill_(head)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.head_logits(x)
        return self.heads[int(self.selected)](self.features(x))


class _OneHead(nn.Module):
    def __init__(self, net: DiverseHeads, head: int) -> None:
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: Tensor) -> Tensor:
        return self.net.heads[self.head](self.net.features(x))


def head_model(net: DiverseHeads, head: int) -> nn.Module:
    """Head ``head`` of ``net`` as a plain classifier (shares ``net``'s weights)."""
    if not 0 <= head < len(net.heads):
        raise ValueError(f"head must be in [0, {len(net.heads)}), got {head}")
    return _OneHead(net, head)


@TECHNIQUES.register(
    "diversify",
    summary="DivDis: K heads fit the source labels and disagree (mutual information) on "
    "unlabelled target data; pick a head with few or no target labels.",
    papers=(45,),
    search_space={"diversity_weight": ("log_uniform", 0.1, 100.0),
                  "prior_weight": ("log_uniform", 0.01, 10.0)},
    references=REFERENCES,
)
@dataclass
class Diversify(Technique):
    """Train :class:`DiverseHeads` with DivDis's loss (module docstring).

    The unlabelled target inputs: in a plain loop, :meth:`use_target` with them. From a
    config, ``target_task`` names a registered task and ``target_params`` its parameters (a
    YAML/JSON mapping, e.g. ``{cue_agreement: [0.9, 0.8, 0.5]}``); at the start of training
    the technique builds that task's splits with the run's seed and takes the inputs of its
    split ``target_split`` (labels never read). With neither, the unlabelled set is the
    training inputs themselves (``State.train_data``): the source distribution, the
    no-shift end of the catalog paper's study, under which the heads can only disagree where
    the source data leave the label undetermined. Each step draws ``target_batch_size`` of them
    with a generator seeded by (run seed, step), so a resumed run draws what the unbroken one
    drew. The target forward pass runs in training mode: BatchNorm layers update their
    running statistics with target batches too.

    With ``num_heads = 1`` and both weights 0 it is ERM exactly (no target data needed).
    """

    num_heads: Annotated[int, Ge(1)] = 2  # K heads on the shared featurizer
    diversity_weight: Annotated[float, Ge(0)] = 10.0  # λ_MI on Σ_{i<j} I(ŷ_i; ŷ_j)
    prior_weight: Annotated[float, Ge(0)] = 1.0  # λ_prior on Σ_k KL(p̂_k ‖ source label prior)
    target_batch_size: Annotated[int, Ge(1)] = 128  # unlabelled target examples per step
    # registered task giving the target inputs ("": use_target, else the training inputs)
    target_task: str = ""
    target_params: str = "{}"  # that task's parameters, a YAML/JSON mapping
    target_split: str = "test"  # the split of that task whose inputs are the target

    touches = frozenset({"model", "loss"})

    def __post_init__(self) -> None:
        self._target: Tensor | None = None
        params = yaml.safe_load(self.target_params)
        if not isinstance(params, dict):
            raise ValueError(f"target_params must be a mapping, got {self.target_params!r}")
        self._target_params: dict[str, Any] = params
        if self.target_task:
            if self.target_task not in TASKS:
                raise ValueError(f"target_task: unknown task {self.target_task!r}; valid "
                                 f"tasks: {', '.join(TASKS.names())}")
        elif params:
            raise ValueError("target_params given without target_task")

    @property
    def needs_target(self) -> bool:
        return self.diversity_weight > 0 or self.prior_weight > 0

    def use_target(self, x: Tensor) -> Diversify:
        """Set the unlabelled target inputs (N, ...)."""
        if len(x) == 0:
            raise ValueError("use_target: no target inputs")
        self._target = x
        return self

    def transform_model(self, model: nn.Module) -> nn.Module:
        return DiverseHeads(model, self.num_heads)

    def on_fit_start(self, state: State) -> None:
        if self._target is not None or not self.needs_target:
            return
        if self.target_task:
            task = TASKS.build(self.target_task, **self._target_params)
            self.use_target(task.splits(state.seed)[self.target_split].x)
        elif state.train_data is not None:
            self.use_target(state.train_data[0])

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        if logits.dim() != 3:
            raise ValueError("diversify's loss needs every head's logits (B, K, C): train the "
                             "model that its transform_model returns, in training mode")
        k, c = logits.shape[1:]
        fit = F.cross_entropy(logits.float().reshape(-1, c), targets.repeat_interleave(k))
        if not self.needs_target:
            return fit
        if self._target is None:
            raise ValueError("diversify needs unlabelled target inputs: call use_target(x), "
                             "set target_task (and target_params, target_split), or train "
                             "on tensors (the training inputs are the default)")
        net = state.model
        if not isinstance(net, DiverseHeads):
            raise ValueError("diversify's loss needs the DiverseHeads model its transform_model "
                             f"returns, got {type(net).__name__}")
        generator = stream_generator(state.seed, f"diversify/target/{state.step}")
        rows = torch.randint(len(self._target), (self.target_batch_size,), generator=generator)
        device = logits.device
        probs = net.head_logits(self._target[rows].to(device)).float().softmax(-1)
        labels = state.train_data[1] if state.train_data is not None else targets
        prior = torch.bincount(labels.to(device), minlength=c)[:c].float()
        prior = prior / prior.sum()
        return (fit + self.diversity_weight * diversity_loss(probs)
                + self.prior_weight * prior_loss(probs, prior))
