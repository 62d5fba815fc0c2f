"""The shape of one example, which tasks declare and models are built for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["InputSpec"]


@dataclass(frozen=True)
class InputSpec:
    """The shape of one example.

    ``kind="tokens"``: integer tokens of shape ``shape`` (e.g. ``(2,)`` for ``a ∘ b``), each in
    ``range(vocab)``. ``kind="continuous"``: float features of shape ``shape`` (``(40,)`` for
    MNIST-1D, ``(64,)`` for digits).
    """

    kind: Literal["tokens", "continuous"]
    shape: tuple[int, ...]
    vocab: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))  # lists from YAML stay hashable
        if self.kind == "tokens" and not self.vocab:
            raise ValueError("a token input needs a vocabulary size")
