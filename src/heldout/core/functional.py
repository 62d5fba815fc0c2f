"""``torch.func.functional_call`` that leaves every model as it found it.

torch's ``functional_call`` with ``tie_weights=True`` (its default, needed when two modules
share one parameter) does not restore a module registered under two names (``nn.Sequential(
layer, act, layer)``): afterwards that module holds a plain tensor instead of its Parameter,
so the model silently stops training (seen with torch 2.13). One swap of such a module's
attributes already covers both of its uses, so for those models ``tie_weights=False`` is both
correct and safe; every other model keeps torch's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call as _functional_call

__all__ = ["functional_call"]


def _registered_twice(model: nn.Module) -> bool:
    """Whether a module that owns parameters or buffers appears under two names."""
    seen: set[int] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen and (next(module.parameters(recurse=False), None) is not None
                                   or next(module.buffers(recurse=False), None) is not None):
            return True
        seen.add(id(module))
    return False


def functional_call(module: nn.Module,
                    tensors: Mapping[str, Tensor] | tuple[Mapping[str, Tensor], ...],
                    args: Any = (), kwargs: Mapping[str, Any] | None = None) -> Any:
    """``torch.func.functional_call(module, tensors, args, kwargs)``, with ``tie_weights``
    off for models that register one module twice (see the module docstring).

    Example:
        >>> import torch
        >>> layer = nn.Linear(2, 2)
        >>> net = nn.Sequential(layer, nn.Tanh(), layer)
        >>> params = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
        >>> functional_call(net, params, (torch.ones(1, 2),)).tolist()
        [[0.0, 0.0]]
        >>> isinstance(net[2].weight, nn.Parameter)  # still the model's own parameter
        True
    """
    tensors = dict(tensors) if isinstance(tensors, Mapping) else tuple(dict(t) for t in tensors)
    return _functional_call(module, tensors, args, None if kwargs is None else dict(kwargs),
                            tie_weights=not _registered_twice(module))
