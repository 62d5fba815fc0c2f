"""1-D convolutional network for signals such as MNIST-1D."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.inputs import InputSpec
from heldout.models.base import ModelSpec
from heldout.registry import MODELS

__all__ = ["CNN1D", "CNN1DNetwork", "cnn1d_network"]


class CNN1DNetwork(nn.Sequential):
    """Stride-2 Conv1d → [BatchNorm1d] → ReLU blocks, global average pool, linear head.

    Built by :func:`cnn1d_network`. Layers are named ``add_channel`` (inputs of shape ``(L,)``
    only), ``conv1``, ``norm1``, ``act1``, ..., ``pool``, ``flatten``, ``head``. A plain
    ``nn.Sequential`` otherwise: ``net[:-3]`` gives the last feature map.
    """


def cnn1d_network(
    input: InputSpec,
    num_classes: int,
    channels: tuple[int, ...] = (32, 32, 32),
    kernel_size: int = 5,
    batch_norm: bool = False,
    bias: bool = True,
) -> CNN1DNetwork:
    """A :class:`CNN1DNetwork` for continuous inputs of shape ``(L,)`` (one channel) or
    ``(C, L)``; token inputs raise a ValueError."""
    if input.kind != "continuous":
        raise ValueError(
            f"CNN1D needs continuous inputs of shape (L,) or (C, L), got {input.kind} "
            "inputs; use the mlp or transformer model for tokens"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(input.shape) == 1:
        layers["add_channel"] = nn.Unflatten(1, (1, input.shape[0]))
        in_channels = 1
    elif len(input.shape) == 2:
        in_channels = input.shape[0]
    else:
        raise ValueError(f"CNN1D takes inputs of shape (L,) or (C, L), got {input.shape}")
    for index, out_channels in enumerate(channels, start=1):
        layers[f"conv{index}"] = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=2,
            padding=kernel_size // 2,
            bias=bias,
        )
        if batch_norm:
            layers[f"norm{index}"] = nn.BatchNorm1d(out_channels)
        layers[f"act{index}"] = nn.ReLU()
        in_channels = out_channels
    layers["pool"] = nn.AdaptiveAvgPool1d(1)
    layers["flatten"] = nn.Flatten()
    layers["head"] = nn.Linear(in_channels, num_classes, bias=bias)
    return CNN1DNetwork(layers)


@MODELS.register(
    "cnn1d",
    summary="1-D CNN: stride-2 conv + ReLU blocks, global average pooling, linear head.",
)
@dataclass(frozen=True)
class CNN1D(ModelSpec):
    """A small 1-D convolutional classifier.

    Each block is a ``Conv1d`` with stride 2 and padding ``kernel_size // 2`` (halving the
    length), optionally ``BatchNorm1d``, then ReLU; the last feature map is averaged over
    positions and read out by a linear layer. Initialization is PyTorch's default.

    References:
        Greydanus, Kobak. Scaling down Deep Learning with MNIST-1D. arXiv:2011.14439 (a CNN
        with three conv layers separates MNIST-1D from spatially shuffled signals).

    Example:
        >>> import torch
        >>> from heldout.tasks.base import InputSpec
        >>> net = CNN1D(channels=(4, 4)).build(InputSpec("continuous", (40,)), num_classes=10)
        >>> net(torch.zeros(3, 40)).shape
        torch.Size([3, 10])
    """

    channels: Annotated[tuple[int, ...], Ge(1)] = (32, 32, 32)  # output channels of each conv block
    kernel_size: Annotated[int, Ge(1)] = 5  # convolution width (odd keeps the padding symmetric)
    batch_norm: bool = False  # BatchNorm1d after each convolution, before ReLU
    bias: bool = True  # whether the convolutions and the head have biases

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # a YAML list becomes a tuple
        if not self.channels:
            raise ValueError("channels must name at least one conv block, got ()")

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        return cnn1d_network(
            input, num_classes, self.channels, self.kernel_size, self.batch_norm, self.bias
        )
