"""A base for optimizer wrappers that follow the ``step(closure)`` contract of torch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["OptimizerWrapper", "base_optimizer"]


def base_optimizer(owner: str, base: torch.optim.Optimizer | Iterable[Any],
                   optimizer_class: type[torch.optim.Optimizer] | None,
                   kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer a wrapper wraps: ``base`` itself when it is an optimizer instance, else
    ``optimizer_class(base, **kwargs)`` with ``base`` the parameters (davda54/sam's
    ``SAM(params, torch.optim.SGD, rho=0.05, lr=0.1)``)."""
    if isinstance(base, torch.optim.Optimizer):
        if optimizer_class is not None or kwargs:
            extra = [] if optimizer_class is None else [repr(optimizer_class)]
            raise TypeError(f"{owner}: got an optimizer instance and also "
                            f"{', '.join(extra + sorted(kwargs))}; pass the wrapper's own "
                            "settings by keyword (rho=0.05), and the optimizer's only with "
                            "parameters and an optimizer class")
        return base
    if not (isinstance(optimizer_class, type)
            and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError(f"{owner} wraps a torch.optim.Optimizer instance, or takes the "
                        f"parameters and an optimizer class, as in {owner}(model.parameters(), "
                        f"torch.optim.SGD, lr=0.1); got {type(base).__name__} and "
                        f"{optimizer_class!r} (pass the wrapper's own settings by keyword)")
    return optimizer_class(base, **kwargs)


class OptimizerWrapper(torch.optim.Optimizer):
    """Wraps a base optimizer: shares its parameter groups (so LR schedulers attached to the
    wrapper or the base both work) and checkpoints the base state with the wrapper's own.

    Subclasses implement ``step`` and, if they keep state across steps, ``_wrapper_state`` and
    ``_load_wrapper_state``. Hyper-parameters go in ``defaults`` and so appear in every param
    group (group-level overrides work as for any torch optimizer).
    """

    def __init__(self, base: torch.optim.Optimizer, defaults: dict[str, Any]) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"{type(self).__name__} wraps a torch.optim.Optimizer, "
                            f"got {type(base).__name__}")
        self.base = base
        super().__init__(base.param_groups, defaults)
        self.param_groups = base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _wrapper_state(self) -> dict[str, Any]:
        return {}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "wrapper": self._wrapper_state(),
                "wrapper_type": type(self).__name__}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("wrapper_type") != type(self).__name__:
            raise ValueError(f"state of a {state_dict.get('wrapper_type', 'plain optimizer')}, "
                             f"not of a {type(self).__name__}")
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups  # torch rebuilds the group dicts on load
        self._load_wrapper_state(state_dict["wrapper"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"
