"""Per-example gradients with ``torch.func`` (``functional_call`` + ``vmap(grad)``) in
memory-bounded chunks, never a Python loop over examples.

:func:`per_example_gradients` gives the ``(n, P)`` matrix and :func:`iter_per_example_gradients`
its rows chunk by chunk; gradient coherence, the opposing-signals check, the empirical NTK and the
robust-mean gradient estimators build on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from heldout.core.functional import functional_call
from heldout.core.measure import eval_mode

__all__ = [
    "LossFn",
    "check_batch_norm",
    "differentiable_parameters",
    "gradient_chunks",
    "iter_per_example_gradients",
    "per_example_gradients",
    "per_example_loss",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def per_example_loss(name: Literal["auto", "cross_entropy", "mse"], targets: Tensor) -> LossFn:
    """The loss of one example as ``loss(output, target) -> scalar``, both with a batch of 1.

    ``"cross_entropy"`` for class indices, ``"mse"`` (mean over output entries of the squared
    error) for real-valued targets; ``"auto"`` picks by the dtype of ``targets``.
    """
    if name == "auto":
        name = "mse" if targets.is_floating_point() else "cross_entropy"
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mse":
        return _mse
    raise ValueError(f"unknown loss {name!r}; valid losses: auto, cross_entropy, mse")


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output.reshape(target.shape), target.to(output.dtype))


def differentiable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters (detached), or every floating one for a frozen copy (an EMA)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        params = {n: p.detach() for n, p in model.named_parameters() if p.is_floating_point()}
    if not params:
        raise ValueError(f"{type(model).__name__} has no floating-point parameters")
    return params


def check_batch_norm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and not module.track_running_stats:
            raise ValueError(
                f"BatchNorm {name!r} keeps no running statistics, so a single example has no "
                "eval-mode normalization; per-example gradients need track_running_stats=True"
            )


def iter_per_example_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 64,
    loss_fn: LossFn | None = None,
) -> Iterator[Tensor]:
    """Yield the per-example gradients ∇_θ ℓ(f_θ(x_i), y_i) in chunks of ``(c, P)`` rows.

    Rows follow the examples, columns the flattened parameters in ``named_parameters`` order
    (the trainable ones; every floating one for a frozen copy). Each chunk is one
    ``vmap(grad(...))`` over ``functional_call`` with the model's buffers, so memory is about
    ``chunk_size × P`` numbers plus one chunk's activations. The model is evaluated in eval
    mode (BatchNorm uses its running statistics, so one example's gradient does not depend on
    the others; dropout is off) and left exactly as it was: parameters, ``.grad``, buffers and
    train/eval flags. ``loss_fn(output, target)`` gets one example with a batch dimension of
    1; the default is cross-entropy for integer targets and MSE for real-valued ones.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> y = torch.tensor([0, 1, 0, 1, 1])
        >>> chunks = iter_per_example_gradients(net, torch.randn(5, 3), y, chunk_size=2)
        >>> [tuple(c.shape) for c in chunks]
        [(2, 8), (2, 8), (1, 8)]
    """
    for _, grads in gradient_chunks(model, inputs, targets, chunk_size, loss_fn):
        yield torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1)


def gradient_chunks(
    model: nn.Module, inputs: Tensor, targets: Tensor, chunk_size: int, loss_fn: LossFn | None
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """(first row, {parameter name: (c, *shape) gradients}) per chunk of examples."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs has {len(inputs)} rows but targets has {len(targets)}")
    check_batch_norm(model)
    loss_fn = loss_fn or per_example_loss("auto", targets)
    params = differentiable_parameters(model)
    buffers = dict(model.named_buffers())

    def loss_of_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        output = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(output, y.unsqueeze(0))

    per_example = vmap(grad(loss_of_one), in_dims=(None, 0, 0))
    for start in range(0, len(inputs), chunk_size):
        x, y = inputs[start : start + chunk_size], targets[start : start + chunk_size]
        with eval_mode(model), torch.enable_grad():  # the mode is restored between chunks
            grads = per_example(params, x, y)
        yield start, {name: grads[name] for name in params}


def per_example_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 64,
    loss_fn: LossFn | None = None,
) -> Tensor:
    """All per-example gradients as one ``(n, P)`` matrix (see :func:`iter_per_example_gradients`,
    which yields the same rows chunk by chunk without holding all ``n × P`` numbers). Each
    chunk's gradients are copied once, straight into their rows and columns.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> per_example_gradients(net, torch.randn(5, 3), torch.zeros(5, dtype=torch.long)).shape
        torch.Size([5, 8])
    """
    params = list(differentiable_parameters(model).values())
    out = torch.empty(len(inputs), sum(p.numel() for p in params), dtype=params[0].dtype,
                      device=params[0].device)
    for start, grads in gradient_chunks(model, inputs, targets, chunk_size, loss_fn):
        column = 0
        for g in grads.values():
            width = g[0].numel()
            out[start : start + len(g), column : column + width].copy_(g.reshape(len(g), -1))
            column += width
    return out
