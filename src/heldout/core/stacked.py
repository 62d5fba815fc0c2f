"""Stacked rules: how a technique acts on K copies of one model trained together.

Vectorized seeds (:mod:`heldout.vectorize`) train K runs that differ only in seed and in a few
hyper-parameters as one stacked model: the copies' parameters are the rows of one (K, P) tensor
(row k holds copy k's parameters flattened, in ``named_parameters`` order; :data:`Layout` says
which columns hold which parameter). A technique opts in, as an optax transform does, by
declaring on its class

* ``vectorizable``: the hyper-parameters in which the copies may differ (a frozenset, possibly
  empty); ``None`` (the default) means the technique does not vectorize;
* ``stacked_rule(copies, stack)``: a classmethod that takes the K copies' technique objects and
  the :class:`Stack`, and returns a :class:`StackedRule` (or ``None`` when the technique acts
  only through what the stacked optimizer already reads, such as weight decay).

A rule's hooks are pure functions of stacked tensors: the per-copy loss, the ascent of a
two-pass step, an update after each step, the weights evaluation uses, and the transfer of the
rule's state to and from each copy's own technique (so a copy's checkpoint is the run alone's).
Every op must be elementwise over the copies, or reduce within a copy only, so that copy k of
the stack computes what run k alone computes.

Example:
    >>> import torch
    >>> per_copy([0.1, 0.1], torch.zeros(2, 3))  # shared: a Python float, as in torch
    0.1
    >>> per_copy([0.1, 0.2], torch.zeros(2, 3)).shape  # differing: a (K, 1) float64 column
    torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Layout", "Stack", "StackedRule", "cast", "per_copy"]

Layout = Sequence[tuple[str, int, int, torch.Size]]
"""Per parameter (in ``named_parameters`` order): its name, its first and last column + 1 in the
(K, P) tensor, and its shape."""


def per_copy(values: Sequence[float], like: Tensor) -> float | Tensor:
    """A Python float when every copy has the same value (then each op is torch's own, with the
    same scalar), else a float64 (K, 1) column, cast where torch casts its scalar."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=torch.float64, device=like.device).unsqueeze(1)


def cast(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A per-copy value in ``like``'s dtype (a Python float is left alone)."""
    return value if isinstance(value, float) else value.to(like.dtype)


@dataclass
class Stack:
    """What a stacked rule sees of the K copies when it is built."""

    flat: Tensor  # (K, P): the copies' parameters, row k = copy k's, flattened
    layout: Layout
    models: Sequence[nn.Module]  # each copy's own module (as built, before training)

    def params(self, flat: Tensor) -> dict[str, Tensor]:
        """The stacked parameters (K, *shape) as views of ``flat``'s columns."""
        return {name: flat[:, start:end].view(-1, *shape)
                for name, start, end, shape in self.layout}


class StackedRule:
    """A technique's action on the (K, P) stack; every hook is optional."""

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor | None:
        """Each copy's training loss, (K, batch, C) logits → (K,); ``None``: not a loss rule."""
        return None

    def ascent(self, flat: Tensor, grad: Tensor) -> Tensor | None:
        """The perturbation e (K, P) at whose point ``w + e`` the step's gradient is taken
        (SAM-like two-pass steps); ``None``: not an ascent rule."""
        return None

    def after_step(self, flat: Tensor) -> None:
        """Act after every optimizer step on the updated weights (e.g. an average)."""

    def eval_weights(self, flat: Tensor) -> Tensor | None:
        """The (K, P) weights evaluation uses instead of ``flat``; ``None``: the weights."""
        return None

    def load(self, copies: Sequence[Any], models: Sequence[nn.Module]) -> None:
        """Take the state of the copies' techniques after they loaded their checkpoints."""

    def export(self, index: int, technique: Any, model: nn.Module) -> None:
        """Write copy ``index``'s state into its own technique (before an evaluation or a
        checkpoint of that copy), in the technique's own checkpoint format."""
