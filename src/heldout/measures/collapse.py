"""Softmax Collapse (#9): rows whose softmax rounds to exactly one-hot in the loss precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["SoftmaxCollapse", "softmax_collapse", "softmax_collapse_fraction"]


def softmax_collapse(logits: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Softmax Collapse statistics of ``logits`` evaluated in ``dtype``.

    ``collapse``: share of rows where Σ_j exp(z_j − max z) == 1 exactly, i.e. every non-max
    term underflowed against the max, so the softmax is exactly one-hot. ``zero_loss``: share of
    rows whose cross-entropy against the arg-max class is exactly 0 (no gradient signal left).

    References:
        Grokking at the Edge of Numerical Stability (arXiv:2501.04697), section 3.
    """
    z = logits.to(dtype)
    shifted = z - z.max(dim=-1, keepdim=True).values
    sums = shifted.exp().sum(dim=-1)
    per_row_loss = F.cross_entropy(z, z.argmax(dim=-1), reduction="none")
    return {
        "collapse": float((sums == 1.0).double().mean()),
        "zero_loss": float((per_row_loss == 0).double().mean()),
    }


def softmax_collapse_fraction(logits: Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Share of rows of ``logits`` whose softmax is exactly one-hot in ``dtype``."""
    return softmax_collapse(logits, dtype)["collapse"]


@MEASURES.register(
    "softmax_collapse",
    summary="Share of examples whose softmax is exactly one-hot in the loss precision "
    "(Softmax Collapse).",
    papers=(9,),
)
@dataclass
class SoftmaxCollapse(Measure):
    """``collapse`` and ``zero_loss`` fractions on each split (see :func:`softmax_collapse`)."""

    targets = "classes"

    dtype: Literal["float32", "float64", "float16"] = "float32"  # the loss precision to test

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        return softmax_collapse(ctx.logits, getattr(torch, self.dtype))
