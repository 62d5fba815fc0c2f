"""Origin identification: a linear map from the embeddings of generated items to those of
their origins, and retrieval mean average precision.

ID² (Wang et al.) proves that a linear transformation ``W`` brings the (VAE) embedding of a
generated image close to the embedding of its origin, fits it on training pairs and retrieves
each query's origin among all references by similarity after the map. Here the embeddings
are a frozen encoder's (MiniLM's pooled sentence features, :func:`encoder_features`), the
items the generated variants of :mod:`heldout.tasks.origin`, and the map is the closed-form
least-squares (or ridge) solution (:func:`fit_linear_map`) instead of the paper's gradient
training of ``W`` with a contrastive loss [stand-in].

* :func:`fit_linear_map`: ``W = argmin_W ‖X W − Y‖²_F + λ ‖W‖²_F``, i.e.
  ``W = (XᵀX + λI)⁻¹ XᵀY`` for ``λ > 0`` and the minimum-norm least-squares solution
  ``W = X⁺ Y`` for ``λ = 0``.
* :func:`average_precision`: over the gallery ranked by decreasing score,
  ``AP = Σ_n (R_n − R_{n−1}) P_n``, ``R_n`` and ``P_n`` the recall and precision at the
  ``n``-th distinct score (tied items enter together, as scikit-learn's
  ``average_precision_score``); with one relevant item at rank ``r`` (no ties) it is ``1/r``.
* :func:`retrieval_map`: the mean over queries of the AP of ranking the gallery by cosine
  similarity to the query, the relevant item being the query's origin.

References:
    Wang, Sun, Yang, Chen, Jiang. Generalizable Origin Identification for Text-Guided
    Image-to-Image Diffusion Models. arXiv:2501.02376 (catalog #61).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heldout.core.adapter import split_head

__all__ = ["OriginResult", "average_precision", "encoder_features", "fit_linear_map",
           "origin_identification", "retrieval_map"]


def average_precision(scores: Tensor, relevant: Tensor) -> float:
    """Average precision of ranking by decreasing ``scores`` ``(G,)`` with ``relevant``
    ``(G,)`` booleans (at least one true); tied scores count as one threshold.

    Example:
        >>> average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]),
        ...                   torch.tensor([False, True, False, True]))  # (1/2 + 2/4) / 2
        0.5
    """
    if scores.dim() != 1 or relevant.shape != scores.shape:
        raise ValueError(f"scores and relevant must be 1-D of the same length, got "
                         f"{tuple(scores.shape)} and {tuple(relevant.shape)}")
    relevant = relevant.bool()
    total = int(relevant.sum())
    if total == 0:
        raise ValueError("relevant must mark at least one gallery item")
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, hits = scores[order], relevant[order].double()
    true_positives = hits.cumsum(0)
    # the last position of each group of equal scores is where its threshold is read
    last = torch.ones(len(ranked), dtype=torch.bool)
    last[:-1] = ranked[1:] != ranked[:-1]
    tp = true_positives[last]
    precision = tp / (torch.nonzero(last).flatten() + 1).double()
    gained = torch.diff(tp, prepend=tp.new_zeros(1)) / total
    return float((gained * precision).sum())


def retrieval_map(queries: Tensor, gallery: Tensor, targets: Tensor) -> float:
    """Mean average precision of retrieving each query's target row of ``gallery`` by cosine
    similarity: ``queries`` ``(Q, D)``, ``gallery`` ``(G, D)``, ``targets`` ``(Q,)`` indices
    into the gallery (or a ``(Q, G)`` boolean relevance matrix).

    Example:
        >>> g = torch.eye(3)
        >>> retrieval_map(g, g, torch.arange(3))  # each query is its own origin
        1.0
    """
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries and gallery must be (Q, D) and (G, D), got "
                         f"{tuple(queries.shape)} and {tuple(gallery.shape)}")
    if len(queries) == 0:
        raise ValueError("queries: need at least one query")
    if targets.dim() == 1:
        if len(targets) != len(queries) or targets.is_floating_point() or (
                len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(gallery)):
            raise ValueError(f"targets must be {len(queries)} gallery indices in "
                             f"0..{len(gallery) - 1}")
        relevance = torch.zeros(len(queries), len(gallery), dtype=torch.bool)
        relevance[torch.arange(len(queries)), targets.cpu()] = True
    elif targets.shape == (len(queries), len(gallery)):
        relevance = targets.bool().cpu()
    else:
        raise ValueError(f"targets must be (Q,) indices or a (Q, G) relevance matrix, got "
                         f"{tuple(targets.shape)}")
    unit = torch.nn.functional.normalize
    similarity = (unit(queries.double(), dim=1) @ unit(gallery.double(), dim=1).T).cpu()
    return sum(average_precision(s, r) for s, r in zip(similarity, relevance, strict=True)) \
        / len(queries)


def fit_linear_map(source: Tensor, target: Tensor, ridge: float = 0.0) -> Tensor:
    """The ``(D, E)`` linear map ``W`` minimizing ``‖source · W − target‖²_F + ridge·‖W‖²_F``
    in closed form (float64): ``(XᵀX + λI)⁻¹ XᵀY``, or the minimum-norm least-squares
    ``X⁺ Y`` when ``ridge = 0``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> fit_linear_map(x, x @ torch.tensor([[2.0, 0.0], [0.0, 3.0]])).round().tolist()
        [[2.0, 0.0], [0.0, 3.0]]
    """
    if source.dim() != 2 or target.dim() != 2 or len(source) != len(target):
        raise ValueError(f"source and target must be (N, D) and (N, E) with the same N, got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    x, y = source.double(), target.double()
    if ridge == 0:
        return torch.linalg.pinv(x) @ y
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ y)


def encoder_features(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """The frozen features of ``inputs`` from ``model``'s featurizer (``split_head``: the
    pooled sentence embedding of a :class:`~heldout.models.pretrained.PretrainedTextClassifier`),
    in eval mode and without gradients."""
    featurizer = split_head(model)[0]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([featurizer(inputs[i:i + batch_size]).flatten(1)
                              for i in range(0, len(inputs), batch_size)])
    finally:
        model.train(training)


@dataclass(frozen=True)
class OriginResult:
    """Retrieval mAP of the test queries without and with the fitted map, and the map."""

    map_without: float
    map_with: float
    transform: Tensor


def origin_identification(train_generated: Tensor, train_origins: Tensor,
                          test_generated: Tensor, gallery: Tensor, test_targets: Tensor,
                          ridge: float = 1.0) -> OriginResult:
    """ID²'s protocol on embeddings: fit ``W`` on the training pairs (each generated item's
    embedding → its origin's), then retrieve every test query's origin among ``gallery``
    (all origins) by cosine, once on the raw embeddings and once after the map.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> origins = torch.randn(20, 4, generator=g)
        >>> mix = torch.tensor([[0.0, 1.0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
        >>> result = origin_identification(origins @ mix, origins, origins @ mix, origins,
        ...                                torch.arange(20), ridge=0.0)
        >>> result.map_with
        1.0
    """
    transform = fit_linear_map(train_generated, train_origins, ridge)
    return OriginResult(
        map_without=retrieval_map(test_generated, gallery, test_targets),
        map_with=retrieval_map(test_generated.double() @ transform, gallery, test_targets),
        transform=transform,
    )
