"""BatchNorm statistics for averaged weights: an average of weights does not come with the
statistics of its own activations, so recompute them with one pass over training data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["has_batchnorm", "recompute_batchnorm_stats"]


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer that tracks running statistics."""
    return bool(_batchnorms(model))


def _input_batches(data: Any, batch_size: int | None) -> Iterator[Tensor]:
    if isinstance(data, Tensor):
        x = data
    elif hasattr(data, "x"):  # a heldout Split
        x = data.x
    elif isinstance(data, tuple) and len(data) in (2, 3) and isinstance(data[0], Tensor):
        x = data[0]  # (inputs, targets[, indices]); a list is a sequence of batches
    else:  # an iterable of batches, e.g. a DataLoader
        if batch_size is not None:
            raise ValueError("batch_size applies to tensor data; a loader sets its own")
        for item in data:
            yield item[0] if isinstance(item, tuple | list) else item
        return
    yield from ([x] if batch_size is None else x.split(batch_size))


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, data: Any,
                              batch_size: int | None = None) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them over ``data``.

    One pass in training mode under ``no_grad`` with ``momentum=None``, so each running
    statistic is the cumulative mean over batches of that batch's mean and unbiased variance
    (each batch counts equally; a last, smaller batch counts as much as the others). The
    modules' train/eval modes and momenta are restored afterwards. ``data``: an input tensor,
    a tuple ``(x, y)``, a ``Split``, or any other iterable of input batches (a list of
    tensors, a ``DataLoader``; ``batch_size`` must then be None). ``batch_size=None`` on
    tensors uses one batch. Dropout, if any, is active during the pass, as in
    training. A model without BatchNorm is returned unchanged.

    The official SWA code weights each batch by its size instead (momentum b/(n+b)); the two
    agree for batches of equal size.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> _ = recompute_batchnorm_stats(net, torch.randn(64, 3), batch_size=16)
        >>> int(net[1].num_batches_tracked)
        4

    References:
        Averaging Weights Leads to Wider Optima and Better Generalization (Izmailov et al.,
        UAI 2018; arXiv:1803.05407); as ``torch.optim.swa_utils.update_bn``.
    """
    layers = _batchnorms(model)
    if not layers:
        return model
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(layer, layer.momentum) for layer in layers]
    reference = next(iter(layers[0].buffers()))
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    seen = 0
    try:
        for x in _input_batches(data, batch_size):
            model(x.to(reference.device))
            seen += 1
    finally:
        for layer, momentum in momenta:
            layer.momentum = momentum
        for module, mode in modes:
            module.training = mode
    if seen == 0:
        raise ValueError("recompute_batchnorm_stats got no data; the statistics were reset")
    return model
