"""Naive loss minimization (#9): how well the negative gradient aligns with the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = ["GradientWeightAlignment", "gradient_weight_cosine"]


def gradient_weight_cosine(
    model: nn.Module, inputs: Tensor, targets: Tensor, dtype: torch.dtype = torch.float32
) -> float:
    """cos(−∇L(θ), θ) over all trainable parameters, with L the mean cross-entropy in ``dtype``.

    Near 1, the gradient mostly scales the weights up ("naive loss minimization"): for a
    positively homogeneous network that only sharpens the softmax, which ends in Softmax
    Collapse. The model's gradients are left as they were. The parameters are those that
    require gradients, or all of them for a frozen copy (the weights an EMA evaluates).

    References:
        Grokking at the Edge of Numerical Stability (arXiv:2501.04697), section 4.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = not params  # a frozen copy (an EMA average, say): differentiate all its weights
    if frozen:
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(inputs).to(dtype), targets)
            grads = torch.autograd.grad(loss, params)
    finally:
        model.train(was_training)
        if frozen:
            for p in params:
                p.requires_grad_(False)
    g = torch.cat([gr.reshape(-1) for gr in grads]).double()
    w = torch.cat([p.detach().reshape(-1) for p in params]).double()
    return float(torch.dot(-g, w) / (g.norm() * w.norm()).clamp_min(1e-300))


@MEASURES.register(
    "nlm_alignment",
    summary="Cosine between the negative full gradient and the weights (naive loss "
    "minimization).",
    papers=(9,),
)
@dataclass
class GradientWeightAlignment(Measure):
    """:func:`gradient_weight_cosine` on the listed splits (by default the training split)."""

    targets = "classes"

    splits: tuple[str, ...] = ("train",)  # where to compute it (one gradient per split)
    dtype: Literal["float32", "float64"] = "float32"  # precision of the loss

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        cosine = gradient_weight_cosine(ctx.model, x, y, getattr(torch, self.dtype))
        return {"nlm_alignment": cosine}
