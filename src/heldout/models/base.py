"""The interface of heldout's model zoo: a frozen dataclass of hyper-parameters that builds an
``nn.Module`` for a task's input spec and class count."""

from __future__ import annotations

from torch import nn

from heldout.core.inputs import InputSpec

__all__ = ["ModelSpec"]


class ModelSpec:
    """Base of the registered models. ``build`` uses the global torch RNG for initialization,
    so the caller seeds it (the runner does) to get the same weights for the same seed."""

    registry_name: str

    def __post_init__(self) -> None:
        """Subclasses (dataclasses) check their parameters here; bounds declared on the
        fields (:mod:`heldout.core.bounds`) are checked before, by the registry."""

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        raise NotImplementedError
