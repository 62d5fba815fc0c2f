"""Multilayer perceptron for token and continuous inputs."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import get_args

from torch import nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.inputs import InputSpec
from heldout.models.base import ModelSpec
from heldout.models.layers import Activation, TokenLinear, activation_module
from heldout.registry import MODELS

__all__ = ["MLP", "MLPNetwork", "mlp_network"]


class MLPNetwork(nn.Sequential):
    """Linear → [BatchNorm1d] → activation per hidden width, then a linear head.

    Built by :func:`mlp_network`. Layers are named ``flatten`` (continuous inputs only),
    ``linear1``, ``norm1``, ``act1``, ..., ``head``, so parameters read ``linear1.weight``. A
    plain ``nn.Sequential`` otherwise: slicing (``net[:-1]``) gives the hidden features.
    """


def mlp_network(
    input: InputSpec,
    num_classes: int,
    hidden: tuple[int, ...] = (200, 200),
    bias: bool = True,
    activation: Activation = "relu",
    batch_norm: bool = False,
) -> MLPNetwork:
    """An :class:`MLPNetwork` for ``input``: token inputs of shape ``(n_positions,)`` enter
    through a :class:`TokenLinear` (the one-hot linear layer as a lookup); continuous inputs
    are flattened."""
    widths = (*hidden, num_classes)
    if input.kind == "tokens":
        if len(input.shape) != 1:
            raise ValueError(f"MLP takes token inputs of shape (n,), got {input.shape}")
        assert input.vocab is not None  # InputSpec guarantees it for tokens
        first: nn.Linear = TokenLinear(input.shape[0], input.vocab, widths[0], bias=bias)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
    else:
        first = nn.Linear(math.prod(input.shape), widths[0], bias=bias)
        layers = OrderedDict(flatten=nn.Flatten())
    for index, width in enumerate(widths):
        is_head = index == len(hidden)
        name = "head" if is_head else f"linear{index + 1}"
        layers[name] = first if index == 0 else nn.Linear(widths[index - 1], width, bias=bias)
        if is_head:
            break
        if batch_norm:
            layers[f"norm{index + 1}"] = nn.BatchNorm1d(width)
        layers[f"act{index + 1}"] = activation_module(activation)
    return MLPNetwork(layers)


@MODELS.register(
    "mlp",
    summary="Multilayer perceptron; token inputs enter through a one-hot linear lookup.",
    papers=(9,),
)
@dataclass(frozen=True)
class MLP(ModelSpec):
    """Fully connected network: ``h_k = act(BN(W_k h_{k-1} + b_k))``, logits ``W h_K + b``.

    Token inputs are one-hot encoded per position and concatenated (computed as a lookup by
    :class:`~heldout.models.layers.TokenLinear`); continuous inputs are flattened. BatchNorm,
    when on, sits after each hidden linear layer and before its activation. Initialization is
    PyTorch's default for ``nn.Linear`` (uniform in ``±1/sqrt(fan_in)``), or N(0, init_std²)
    for every weight with zero biases when ``init_std`` is set.

    References:
        Prieto, Barsbey, Mediano, Birdal. Grokking at the Edge of Numerical Stability.
        arXiv:2501.04697 (hidden (200, 200), bias-free for modular arithmetic).

    Example:
        >>> import torch
        >>> from heldout.tasks.base import InputSpec
        >>> net = MLP(hidden=(8,)).build(InputSpec("tokens", (2,), vocab=5), num_classes=5)
        >>> net(torch.tensor([[1, 2]])).shape
        torch.Size([1, 5])
    """

    # widths of the hidden layers, input side first
    hidden: Annotated[tuple[int, ...], Ge(1)] = (200, 200)
    bias: bool = True  # whether the linear layers have biases (the grokking MLP has none)
    activation: Activation = "relu"  # nonlinearity after each hidden layer
    batch_norm: bool = False  # BatchNorm1d after each hidden linear layer, before activation
    # N(0, init_std²) for every weight (None: torch's default)
    init_std: Annotated[float | None, Gt(0)] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))  # a YAML list becomes a tuple
        if self.activation not in get_args(Activation):
            raise ValueError(
                f"activation must be one of {', '.join(get_args(Activation))}, "
                f"got {self.activation!r}"
            )

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        network = mlp_network(
            input, num_classes, self.hidden, self.bias, self.activation, self.batch_norm
        )
        if self.init_std is not None:  # after the default init, so the RNG use is the same
            for module in network.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=self.init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return network
