"""Per-layer gradient norms, and the callback that logs them at every evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heldout.core.callback import Callback
from heldout.registry import CALLBACKS

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = ["GradNormReport", "layer_gradient_norms"]


def layer_gradient_norms(model: nn.Module) -> dict[str, float]:
    """The L2 norm of the gradient of each layer's parameters (all of them flattened together).

    Layers are the transformer blocks of a model with ``.blocks`` (keys ``block0``,
    ``block1``, ...), else the model's direct children that hold parameters (keys are their
    names, e.g. ``linear1``, ``head``). Parameters without a gradient are skipped, and a layer
    none of whose parameters has one is left out.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> net(torch.ones(1, 3)).sum().backward()
        >>> sorted(layer_gradient_norms(net))
        ['0', '2']
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        layers = [(f"block{i}", block) for i, block in enumerate(blocks)]
    else:
        layers = [(name, child) for name, child in model.named_children()
                  if any(True for _ in child.parameters())]
    norms = {}
    for name, layer in layers:
        grads = [p.grad.detach() for p in layer.parameters() if p.grad is not None]
        if grads:
            norms[name] = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
    return norms


@CALLBACKS.register(
    "grad_norm_report",
    summary="Log the gradient norm of each layer (transformer block) at every evaluation.",
    papers=(36,),
)
@dataclass
class GradNormReport(Callback):
    """Record :func:`layer_gradient_norms` after the first backward pass of every step and add
    them to each evaluation's metrics as ``grad_norm/<layer>`` (e.g. ``grad_norm/block0``).

    The gradients are the raw back-propagated ones (before any gradient-changing wrapper) of
    the step that precedes the evaluation; the evaluation at step 0 has none.

    References:
        Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and Post-LN
        (arXiv:2412.13795), whose argument rests on these norms.
    """

    _norms: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _recorded_step: int = field(default=-1, init=False, repr=False)

    def on_after_backward(self, state: State) -> None:
        if state.step != self._recorded_step:  # the first backward of the step (SAM: 2 calls)
            self._norms = layer_gradient_norms(state.model)
            self._recorded_step = state.step

    def on_eval(self, state: State, metrics: dict[str, float]) -> None:
        for layer, norm in self._norms.items():
            metrics[f"grad_norm/{layer}"] = norm

    def state_dict(self) -> dict[str, Any]:
        return {"norms": dict(self._norms), "recorded_step": self._recorded_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._norms = dict(state["norms"])
        self._recorded_step = int(state["recorded_step"])
