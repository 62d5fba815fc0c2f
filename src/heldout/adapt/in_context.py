"""A k-NN in-context learner on a frozen encoder: ``k`` labelled examples (the context) and
the queries are embedded by the encoder, and each query takes the cosine-similarity-weighted
vote of its nearest context examples.

It stands in for in-context learning of a large multimodal model: GPT-4V is shown a few
labelled examples of the target distribution in its prompt and then classifies a query
(Han et al., section "in-context learning"). Offline, the "model" is a frozen pre-trained
encoder (all-MiniLM-L6-v2 through :class:`heldout.models.pretrained.PretrainedTextClassifier`,
whose ``features`` are the mean-pooled sentence embeddings) and the in-context step is a k-NN
vote over the context's embeddings, so changing the context changes the predictions without
any gradient step.

The math is in plain functions (:func:`cosine_knn_scores`, :func:`sample_context`); the
registered adapter (``knn_in_context``) only extracts the features (``split_head(net)[0]``).

References:
    Han et al. How Well Does GPT-4V(ision) Adapt to Distribution Shifts? A
    Preliminary Investigation. arXiv:2312.07424 (catalog #14).
    Reimers, Gurevych. Sentence-BERT. arXiv:1908.10084 (cosine similarity of pooled
    embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from heldout.core.adapter import Adapter, Source, split_head
from heldout.core.bounds import Annotated, Ge
from heldout.registry import ADAPTERS

__all__ = ["KNNInContext", "cosine_knn_scores", "sample_context"]

Weighting = Literal["similarity", "uniform"]


def cosine_knn_scores(context: Tensor, context_y: Tensor, query: Tensor, k: int, *,
                      num_classes: int | None = None,
                      weighting: Weighting = "similarity") -> Tensor:
    """``(Q, C)`` class votes of the queries from their ``k`` nearest context examples by
    cosine similarity: ``s_qc = Σ_{j ∈ N_k(q)} w_qj · 1[y_j = c]`` with
    ``w_qj = cos(f_q, f_j)`` (``similarity``) or ``1`` (``uniform``). The prediction is
    ``argmax_c s_qc``. ``num_classes`` defaults to ``max(context_y) + 1``; ``k`` larger than
    the context is clipped to it.

    Example:
        >>> ctx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
        >>> cosine_knn_scores(ctx, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.1]]), 1)
        tensor([[0.0000, 0.9952]])
    """
    if context.dim() != 2 or query.dim() != 2 or context.shape[1] != query.shape[1]:
        raise ValueError(f"context and query must be (K, D) and (Q, D) features, got "
                         f"{tuple(context.shape)} and {tuple(query.shape)}")
    if context_y.dim() != 1 or len(context_y) != len(context) or len(context) == 0:
        raise ValueError(f"context_y must hold one label per context row ({len(context)} >= 1),"
                         f" got shape {tuple(context_y.shape)}")
    if context_y.is_floating_point() or int(context_y.min()) < 0:
        raise ValueError("context_y must be non-negative integer labels")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if weighting not in ("similarity", "uniform"):
        raise ValueError(f"weighting must be 'similarity' or 'uniform', got {weighting!r}")
    classes = int(context_y.max()) + 1 if num_classes is None else int(num_classes)
    if classes <= int(context_y.max()):
        raise ValueError(f"num_classes ({classes}) must exceed the largest context label "
                         f"({int(context_y.max())})")
    unit = torch.nn.functional.normalize
    similarity = unit(query, dim=1) @ unit(context, dim=1).T  # (Q, K)
    top = similarity.topk(min(int(k), len(context)), dim=1)
    weights = top.values if weighting == "similarity" else torch.ones_like(top.values)
    scores = torch.zeros(len(query), classes, dtype=similarity.dtype, device=query.device)
    return scores.scatter_add_(1, context_y[top.indices], weights)


def sample_context(labels: Tensor, shots: int, generator: torch.Generator, *,
                   per_class: bool = True) -> Tensor:
    """Indices of a context drawn from ``labels`` with ``generator`` (deterministic for a
    seeded generator): ``shots`` examples of every class present (``per_class``; a class with
    fewer gives all it has), or ``shots`` examples in all. Sorted, without repeats.

    Example:
        >>> y = torch.tensor([0, 0, 0, 1, 1, 2])
        >>> idx = sample_context(y, 1, torch.Generator().manual_seed(0))
        >>> sorted(y[idx].tolist())
        [0, 1, 2]
    """
    if int(shots) != shots or shots < 1:
        raise ValueError(f"shots must be an int >= 1, got {shots!r}")
    if labels.dim() != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape "
                         f"{tuple(labels.shape)}")
    labels = labels.cpu()
    if not per_class:
        return torch.randperm(len(labels), generator=generator)[:shots].sort().values
    chosen = []
    for label in torch.unique(labels):
        rows = torch.nonzero(labels == label).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:shots]])
    return torch.cat(chosen).sort().values


@ADAPTERS.register(
    "knn_in_context",
    summary="In-context learning stand-in: cosine k-NN vote over frozen-encoder embeddings of "
    "k labelled context examples.",
    papers=(14,),
    references=("Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks "
                "(arXiv:1908.10084)",),
)
@dataclass(eq=False)
class KNNInContext(Adapter):
    """The k-NN in-context learner (a stand-in for GPT-4V's in-context examples, Han et al.,
    arXiv:2312.07424): ``transduce(query_x, support_x=..., support_y=...)`` embeds the
    context (the supports) and the queries with the bound model's featurizer
    (``split_head(net)[0]``: the pooled sentence features of MiniLM, or the penultimate layer
    of any heldout classifier) and returns the cosine k-NN votes (:func:`cosine_knn_scores`).
    The encoder stays frozen; nothing is learned. Each query is classified on its own, so the
    scores of a query do not depend on the others in its batch.

    Example:
        >>> net = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
        >>> learner = KNNInContext(net, neighbours=1)
        >>> ctx, ctx_y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> learner(torch.tensor([[0.2, 0.9]]), support_x=ctx, support_y=ctx_y).argmax(1)
        tensor([1])
    """

    mode: ClassVar[Literal["online", "transductive"]] = "transductive"
    changes: ClassVar[frozenset[str]] = frozenset({"nothing"})
    needs_support: ClassVar[bool] = True

    neighbours: Annotated[int, Ge(1)] = 5  # k of the vote (clipped to the context's size)
    weighting: Weighting = "similarity"  # each neighbour's vote: its cosine, or 1
    num_classes: Annotated[int | None, Ge(1)] = None  # score width; default max label + 1

    def __post_init__(self, model: nn.Module | None = None) -> None:
        if self.weighting not in ("similarity", "uniform"):
            raise ValueError(f"weighting must be 'similarity' or 'uniform', got "
                             f"{self.weighting!r}")
        super().__post_init__(model)

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        self.featurizer = split_head(net)[0]

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.featurizer(x).flatten(1)

    def transduce(self, x: Tensor, **kwargs: Any) -> Tensor:
        if set(kwargs) != {"support_x", "support_y"}:
            raise TypeError(f"adapter {self.name} takes transduce(query_x, support_x=..., "
                            f"support_y=...); got keywords {sorted(kwargs)}")
        return cosine_knn_scores(self.features(kwargs["support_x"]), kwargs["support_y"],
                                 self.features(x), self.neighbours,
                                 num_classes=self.num_classes, weighting=self.weighting)
