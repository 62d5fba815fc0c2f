"""Triplet recall and the weighted triplet recall of scene-graph generation (#44)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge
from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["TripletRecall", "graph_recall", "predicate_ranks", "weighted_triplet_recall"]


def predicate_ranks(logits: Tensor, labels: Tensor) -> Tensor:
    """For each foreground edge (label > 0): the rank (0 = top) of its true predicate among
    the foreground predicates' scores (column 0, background, is left out), counting the
    predicates scored strictly higher.

    Example:
        >>> predicate_ranks(torch.tensor([[9.0, 1, 3, 2]]), torch.tensor([3]))
        tensor([1])
    """
    if logits.dim() != 2 or logits.shape[1] < 2 or len(logits) != len(labels):
        raise ValueError(f"predicate_ranks: logits must be (M, K >= 2) for M labels, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    foreground = labels > 0
    scores = logits[foreground, 1:]
    true = scores.gather(1, (labels[foreground].long() - 1)[:, None])
    return (scores > true).sum(dim=1)


def weighted_triplet_recall(logits: Tensor, labels: Tensor, counts: Tensor,
                            k: int = 1) -> dict[str, float]:
    """Triplet-level recall@k of the foreground edges, plain and weighted.

    A foreground edge is recalled when its true predicate is among the top ``k`` foreground
    predicates of its pair (:func:`predicate_ranks`). ``triplet_recall`` is the fraction
    recalled; ``weighted_triplet_recall`` weights each edge by w ∝ 1 / (n_t + 1), n_t its
    triplet's frequency in training (``counts``, one per edge), the weights normalized to
    sum to 1, so rare and zero-shot compositions count more. With equal frequencies both
    are the same. ``zero_shot_recall`` is the recall of the edges whose triplet never
    occurred in training (absent when there are none).

    Example:
        >>> logits = torch.tensor([[0.0, 2, 1], [0, 2, 1]])
        >>> weighted_triplet_recall(logits, torch.tensor([1, 2]), torch.tensor([3, 0]))
        {'triplet_recall': 0.5, 'weighted_triplet_recall': 0.2, 'zero_shot_recall': 0.0}

    References:
        Graph Density-Aware Losses for Novel Compositions in Scene Graph Generation
        (arXiv:2005.08230), weighted triplet recall.
    """
    if k < 1:
        raise ValueError(f"weighted_triplet_recall: k must be >= 1, got {k}")
    counts = torch.as_tensor(counts)
    if len(counts) != len(labels):
        raise ValueError(f"weighted_triplet_recall: counts has {len(counts)} rows but labels "
                         f"has {len(labels)}")
    hits = (predicate_ranks(logits, labels) < k).double()
    if not len(hits):
        return {}
    frequency = counts[labels > 0].double().to(hits.device)
    weights = 1.0 / (frequency + 1)
    out = {"triplet_recall": float(hits.mean()),
           "weighted_triplet_recall": float((weights * hits).sum() / weights.sum())}
    zero_shot = frequency == 0
    if bool(zero_shot.any()):
        out["zero_shot_recall"] = float(hits[zero_shot].mean())
    return out


def graph_recall(logits: Tensor, labels: Tensor, graphs: Tensor, counts: Tensor,
                 k: int = 20) -> dict[str, float]:
    """Image-level Recall@k with the graph constraint, plain and weighted.

    In each graph every pair predicts its most likely foreground predicate, scored by that
    predicate's softmax probability (background included in the softmax); the ``k`` best
    scored pairs are kept. A foreground edge is recalled when its pair is kept with the true
    predicate. ``graph_recall`` averages, over the graphs with a foreground edge, the
    fraction recalled; ``weighted_graph_recall`` the recalled share of the inverse-frequency
    weights 1 / (n_t + 1) normalized within each graph (the official code's normalized
    recall).

    Example:
        >>> logits = torch.tensor([[0.0, 3, 0], [0, 0, 2], [5, 0, 0]])
        >>> graph_recall(logits, torch.tensor([1, 1, 0]), torch.zeros(3), torch.tensor([0, 3, 0]),
        ...              k=2)
        {'graph_recall': 0.5, 'weighted_graph_recall': 0.8}

    References:
        Graph Density-Aware Losses for Novel Compositions in Scene Graph Generation
        (arXiv:2005.08230); Lu et al., Visual Relationship Detection with Language Priors
        (arXiv:1608.00187), Recall@K.
    """
    if k < 1:
        raise ValueError(f"graph_recall: k must be >= 1, got {k}")
    if not len(logits) == len(labels) == len(graphs) == len(counts):
        raise ValueError(f"graph_recall: logits, labels, graphs and counts need one row per "
                         f"edge, got {len(logits)}, {len(labels)}, {len(graphs)}, {len(counts)}")
    scores, predicted = logits.double().softmax(dim=-1)[:, 1:].max(dim=-1)
    correct = (predicted + 1 == labels) & (labels > 0)
    plain, weighted = [], []
    for graph in torch.unique(graphs):
        members = torch.nonzero(graphs == graph).flatten()
        foreground = labels[members] > 0
        if not bool(foreground.any()):
            continue
        kept = torch.zeros(len(members), dtype=torch.bool, device=members.device)
        kept[scores[members].argsort(descending=True)[:k]] = True
        hit = (kept & correct[members])[foreground].double()
        weights = 1.0 / (counts[members][foreground].double() + 1)
        plain.append(float(hit.mean()))
        weighted.append(float((weights * hit).sum() / weights.sum()))
    if not plain:
        return {}
    return {"graph_recall": sum(plain) / len(plain),
            "weighted_graph_recall": sum(weighted) / len(weighted)}


@MEASURES.register(
    "triplet_recall",
    summary="Triplet recall@k, the inverse-frequency weighted triplet recall, zero-shot "
    "recall and image-level Recall@K on scene-graph splits.",
    papers=(44,),
)
@dataclass
class TripletRecall(Measure):
    """:func:`weighted_triplet_recall` (keys ``triplet_recall_top<k>``,
    ``weighted_triplet_recall_top<k>``, ``zero_shot_recall_top<k>``) and, where the split
    gives each edge's graph in ``groups``, :func:`graph_recall` (``graph_recall_top<K>``,
    ``weighted_graph_recall_top<K>``) on every split that carries ``triplet_counts`` (the
    ``scene_graph`` task's splits; others give nothing)."""

    targets = "classes"

    k: Annotated[int, Ge(1)] = 1  # a predicate counts when among the top k of its pair
    graph_k: Annotated[int, Ge(1)] = 20  # K of the image-level Recall@K

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        counts = getattr(ctx.data, "triplet_counts", None)
        if counts is None:
            return {}
        recall = weighted_triplet_recall(ctx.logits, ctx.targets, counts.to(ctx.targets.device),
                                         self.k)
        out = {f"{key}_top{self.k}": value for key, value in recall.items()}
        if ctx.groups is not None:
            image = graph_recall(ctx.logits, ctx.targets, ctx.groups,
                                 counts.to(ctx.targets.device), self.graph_k)
            out.update({f"{key}_top{self.graph_k}": value for key, value in image.items()})
        return out
