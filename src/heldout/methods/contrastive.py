"""Contrastive learning on paired views (#69): InfoNCE (CLIP's objective), InfoLOOB, modern
Hopfield retrieval and CLOOB, plus :class:`TwoViewModel`, which lets the Trainer train any
heldout model on pairs.

**How the Trainer consumes pairs.** A paired task (``paired_views``) gives flat inputs of
shape ``(N, 2·D)``: view 0 in the first D features, view 1 in the next D. The model is built
for that input; the techniques here wrap it (``transform_model``) in a :class:`TwoViewModel`,
which encodes each view on its own with the model's featurizer (``split_head``) and, in
training mode, returns the embeddings ``(N, 2, E)`` that the replacement loss reads (the
"logits" the loss hook receives). In eval mode it returns the linear head's logits of the
view-averaged features, so the usual measures still run; the head is not trained by a
contrastive loss, so judge the representation with the ``linear_probe`` measure.

A featurizer built for a pair encodes one view ``v`` by reading the pair ``(v, v)``: a
function of ``v`` alone and the same for both views, so the encoder is shared (for a first
layer that is linear in the input, as in the MLP and the CNNs, this is exactly a one-view
encoder whose first weight is the sum of the two view slots' weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import split_head
from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = [
    "CLOOB",
    "InfoNCE",
    "SharedViewEncoder",
    "TwoViewModel",
    "cloob_loss",
    "hopfield_retrieve",
    "info_loob",
    "info_nce",
]

REFERENCE = ("Fürst, Rumetshofer, Lehner, Tran, Tang, Ramsauer, Kreil, Kopp, Klambauer, "
             "Bitto-Nemling, Hochreiter. CLOOB: Modern Hopfield Networks with InfoLOOB "
             "Outperform CLIP. arXiv:2110.11316.")


def _check_pair(fn: str, u: Tensor, v: Tensor, tau: float, least: int) -> None:
    if u.dim() != 2 or u.shape != v.shape:
        raise ValueError(f"{fn}: u and v must be (N, d) embeddings of the same shape, got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    if len(u) < least:
        raise ValueError(f"{fn}: needs at least {least} pairs in the batch, got {len(u)}")
    if not tau > 0:
        raise ValueError(f"{fn}: tau must be > 0, got {tau}")


def _nce_term(anchors: Tensor, candidates: Tensor, tau: float) -> Tensor:
    """mean_i [log Σ_j exp(a_i·c_j/τ) − a_i·c_i/τ]: anchor i against every candidate."""
    logits = anchors @ candidates.T / tau
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def _loob_term(anchors: Tensor, candidates: Tensor, tau: float) -> Tensor:
    """mean_i [log Σ_{j≠i} exp(a_i·c_j/τ) − a_i·c_i/τ]: the positive left out of the sum."""
    logits = anchors @ candidates.T / tau
    eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    negatives = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(negatives, dim=1) - logits.diagonal()).mean()


def info_nce(u: Tensor, v: Tensor, tau: float = 0.07) -> Tensor:
    """The symmetric InfoNCE loss of CLIP on N pairs ``(u_i, v_i)`` of embeddings:

    L = −(1/N) Σ_i ln [exp(u_i·v_i/τ) / Σ_j exp(u_i·v_j/τ)]
        −(1/N) Σ_i ln [exp(u_i·v_i/τ) / Σ_j exp(u_j·v_i/τ)].

    The embeddings are used as given (CLIP L2-normalizes them first).

    Example:
        >>> u = torch.eye(2)
        >>> round(float(info_nce(u, u, tau=1.0)), 4)  # 2·ln(1 + e^-1)
        0.6265

    References:
        CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP (arXiv:2110.11316),
        the InfoNCE objective; Radford et al., Learning Transferable Visual Models From
        Natural Language Supervision (arXiv:2103.00020).
    """
    _check_pair("info_nce", u, v, tau, 1)
    return _nce_term(u, v, tau) + _nce_term(v, u, tau)


def info_loob(u: Tensor, v: Tensor, tau: float = 1 / 30) -> Tensor:
    """The symmetric InfoLOOB (leave-one-out bound) loss: InfoNCE with the positive pair
    removed from each denominator,

    L = −(1/N) Σ_i ln [exp(u_i·v_i/τ) / Σ_{j≠i} exp(u_i·v_j/τ)]
        −(1/N) Σ_i ln [exp(u_i·v_i/τ) / Σ_{j≠i} exp(u_j·v_i/τ)].

    Needs N >= 2 pairs (with one pair the denominator is empty).

    Example:
        >>> u = torch.eye(2)
        >>> round(float(info_loob(u, u, tau=1.0)), 4)  # 2·(0 − 1)
        -2.0

    References:
        CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP (arXiv:2110.11316),
        the InfoLOOB objective.
    """
    _check_pair("info_loob", u, v, tau, 2)
    return _loob_term(u, v, tau) + _loob_term(v, u, tau)


def hopfield_retrieve(queries: Tensor, memory: Tensor, beta: float = 14.3) -> Tensor:
    """One update of a modern Hopfield network: each query ξ retrieves
    ``normalize(Mᵀ softmax(β M ξ))`` from the stored patterns M (rows of ``memory``).

    β = 0 retrieves the normalized mean of the memory; β → ∞ the stored pattern of largest
    inner product with the query (normalized).

    Example:
        >>> memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hopfield_retrieve(torch.tensor([[0.9, 0.1]]), memory, beta=0.0)
        tensor([[0.7071, 0.7071]])

    References:
        CLOOB (arXiv:2110.11316), the retrieval U_x = U softmax(β Uᵀ x); Ramsauer et al.,
        Hopfield Networks is All You Need (arXiv:2008.02217).
    """
    if queries.dim() != 2 or memory.dim() != 2 or queries.shape[1] != memory.shape[1]:
        raise ValueError(f"hopfield_retrieve: queries (N, d) and memory (M, d) must share d, "
                         f"got {tuple(queries.shape)} and {tuple(memory.shape)}")
    if not beta >= 0:
        raise ValueError(f"hopfield_retrieve: beta must be >= 0, got {beta}")
    attention = torch.softmax(beta * queries @ memory.T, dim=-1)
    return F.normalize(attention @ memory, dim=-1)


def cloob_loss(u: Tensor, v: Tensor, tau: float = 1 / 30, beta: float = 14.3) -> Tensor:
    """The CLOOB loss: both views retrieve from both memories, then InfoLOOB.

    With U = (u_1, ..., u_N) and V = (v_1, ..., v_N) the batch's embeddings as memories,
    U_u = retrieve(u, U), U_v = retrieve(v, U), V_u = retrieve(u, V), V_v = retrieve(v, V)
    (:func:`hopfield_retrieve`), and

    L = −(1/N) Σ_i ln [exp(U_{u_i}·U_{v_i}/τ) / Σ_{j≠i} exp(U_{u_i}·U_{v_j}/τ)]
        −(1/N) Σ_i ln [exp(V_{u_i}·V_{v_i}/τ) / Σ_{j≠i} exp(V_{u_j}·V_{v_i}/τ)].

    ``u`` and ``v`` are L2-normalized embeddings (as in the paper). The defaults τ = 1/30 and
    β = 14.3 are the official code's.

    Example:
        >>> u = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
        >>> cloob_loss(u, u).shape
        torch.Size([])

    References:
        CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP (arXiv:2110.11316),
        the CLOOB objective (Section 3).
    """
    _check_pair("cloob_loss", u, v, tau, 2)
    u_from_u, v_from_u = hopfield_retrieve(u, u, beta), hopfield_retrieve(v, u, beta)
    u_from_v, v_from_v = hopfield_retrieve(u, v, beta), hopfield_retrieve(v, v, beta)
    return _loob_term(u_from_u, v_from_u, tau) + _loob_term(v_from_v, u_from_v, tau)


class SharedViewEncoder(nn.Module):
    """Encode each of the ``views`` views of a flat ``(N, views·D)`` batch with one featurizer
    built for the whole input: view ``x_v`` is read as the input ``(x_v, ..., x_v)``.
    ``encode`` gives ``(N, views, E)``; calling the module gives the view-averaged ``(N, E)``."""

    def __init__(self, pair_features: nn.Module, views: int = 2) -> None:
        super().__init__()
        self.pair_features = pair_features
        self.views = views

    def encode(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] % self.views:
            raise ValueError(f"SharedViewEncoder: inputs must be (N, {self.views}·D), got "
                             f"{tuple(x.shape)}")
        n = len(x)
        single = x.reshape(n * self.views, -1)  # (N·V, D), view by view
        return self.pair_features(single.repeat(1, self.views)).reshape(n, self.views, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x).mean(dim=1)


class TwoViewModel(nn.Module):
    """A model of flat pair inputs ``(N, 2·D)`` with a shared per-view encoder.

    ``features`` is a :class:`SharedViewEncoder` of the model's featurizer and ``head`` its
    linear head (so ``split_head`` splits this model as well). Training mode returns the
    per-view features ``(N, 2, E)`` for a contrastive loss; eval mode the head's logits of
    the view-averaged features ``(N, C)`` (the pattern of ``DomainHeads`` in ``drm``).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
        >>> model = TwoViewModel(net)
        >>> model(torch.zeros(5, 6)).shape, model.eval()(torch.zeros(5, 6)).shape
        (torch.Size([5, 2, 4]), torch.Size([5, 3]))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        pair_features, self.head = split_head(model)
        self.features = SharedViewEncoder(pair_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.features.encode(x)
        return self.head(self.features(x))


@dataclass
class _PairedContrastive(Technique):
    """Shared adapter: wrap the model in :class:`TwoViewModel`, normalize both views'
    features and replace the loss by :meth:`objective` (the labels are not used)."""

    touches = frozenset({"model", "loss"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        return TwoViewModel(model)

    def objective(self, u: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        if logits.dim() != 3 or logits.shape[1] != 2:
            raise ValueError(f"{self.name} needs the two views' features (N, 2, E): train on a "
                             f"paired task (task=paired_views) with the TwoViewModel that "
                             f"{self.name}'s transform_model returns, got {tuple(logits.shape)}")
        features = F.normalize(logits.float(), dim=-1)
        return self.objective(features[:, 0], features[:, 1])


@TECHNIQUES.register(
    "infonce",
    summary="Contrastive training on paired views with CLIP's symmetric InfoNCE loss (the "
    "CLOOB paper's baseline).",
    papers=(69,),
    search_space={"tau": ("log_uniform", 0.01, 0.5)},
    references=(REFERENCE,),
)
@dataclass
class InfoNCE(_PairedContrastive):
    """Train a shared encoder on paired views with :func:`info_nce` of the L2-normalized
    view features (labels unused). τ = 0.07 is CLIP's initial temperature (CLIP learns it;
    here it is fixed)."""

    tau: Annotated[float, Gt(0)] = 0.07  # softmax temperature τ

    def objective(self, u: Tensor, v: Tensor) -> Tensor:
        return info_nce(u, v, self.tau)


@TECHNIQUES.register(
    "cloob",
    summary="CLOOB: modern-Hopfield retrieval of both views from both memories, then the "
    "InfoLOOB loss, on paired views.",
    papers=(69,),
    search_space={"tau": ("log_uniform", 0.01, 0.5), "beta": ("log_uniform", 1.0, 50.0)},
    references=(REFERENCE,),
)
@dataclass
class CLOOB(_PairedContrastive):
    """Train a shared encoder on paired views with :func:`cloob_loss` of the L2-normalized
    view features (labels unused); the batch is the Hopfield memory. Defaults τ = 1/30,
    β = 14.3 are the official code's (fixed here, not learned).

    References:
        CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP (arXiv:2110.11316).
    """

    tau: Annotated[float, Gt(0)] = 1 / 30  # InfoLOOB temperature τ (inverse 30)
    beta: Annotated[float, Ge(0)] = 14.3  # Hopfield inverse temperature β

    def objective(self, u: Tensor, v: Tensor) -> Tensor:
        return cloob_loss(u, v, self.tau, self.beta)
