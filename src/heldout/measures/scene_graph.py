"""Triplet recall and the weighted triplet recall of scene-graph generation (#44)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge
from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["TripletRecall", "predicate_ranks", "weighted_triplet_recall"]


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


@MEASURES.register(
    "triplet_recall",
    summary="Triplet recall@k, the inverse-frequency weighted triplet recall and zero-shot "
    "recall on scene-graph splits.",
    papers=(44,),
)
@dataclass
class TripletRecall(Measure):
    """:func:`weighted_triplet_recall` on every split that carries ``triplet_counts`` (the
    ``scene_graph`` task's splits; others give nothing). Keys ``triplet_recall_top<k>``,
    ``weighted_triplet_recall_top<k>`` and ``zero_shot_recall_top<k>``."""

    targets = "classes"

    k: Annotated[int, Ge(1)] = 1  # a predicate counts when among the top k

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        counts = getattr(ctx.data, "triplet_counts", None)
        if counts is None:
            return {}
        recall = weighted_triplet_recall(ctx.logits, ctx.targets, counts.to(ctx.targets.device),
                                         self.k)
        return {f"{key}_top{self.k}": value for key, value in recall.items()}
