"""2-D convolutional network with BatchNorm for small images such as the 8x8 digits."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.inputs import InputSpec
from heldout.models.base import ModelSpec
from heldout.registry import MODELS

__all__ = ["CNN2D", "CNN2DNetwork", "cnn2d_network"]


class CNN2DNetwork(nn.Sequential):
    """Conv2d 3x3 → [BatchNorm2d] → ReLU [→ MaxPool2d] blocks, global average pool, linear
    head. Built by :func:`cnn2d_network`; layers are named ``to_image`` (flat or channel-less
    inputs only), ``conv1``, ``norm1``, ``act1``, ``pool1``, ..., ``pool``, ``flatten``,
    ``head``, so :func:`heldout.core.adapter.split_head` splits it."""


def _image_shape(input: InputSpec) -> tuple[int, int, int]:
    """``(C, H, W)`` of the model's inputs: ``(H*W,)`` square flattened, ``(H, W)`` or
    ``(C, H, W)``."""
    if input.kind != "continuous":
        raise ValueError(f"cnn2d needs continuous image inputs, got {input.kind} inputs")
    shape = tuple(input.shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"cnn2d: a flat input of {shape[0]} features is not a square "
                             "image; give the input shape as (H, W) or (C, H, W)")
        return 1, side, side
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    raise ValueError(f"cnn2d takes inputs of shape (H*W,), (H, W) or (C, H, W), got {shape}")


def cnn2d_network(
    input: InputSpec,
    num_classes: int,
    channels: tuple[int, ...] = (16, 32),
    batch_norm: bool = True,
    pool_every: int = 0,
) -> CNN2DNetwork:
    """A :class:`CNN2DNetwork`; ``pool_every = k > 0`` halves the resolution (2x2 max pool)
    after every ``k``-th block while it is at least 2 pixels."""
    in_channels, height, width = _image_shape(input)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(input.shape) == 1:  # (H*W,) -> (1, H, W)
        layers["to_image"] = nn.Unflatten(1, (1, height, width))
    elif len(input.shape) == 2:  # (H, W) -> (1, H, W)
        layers["to_image"] = nn.Unflatten(1, (1, height))
    for index, out_channels in enumerate(channels, start=1):
        layers[f"conv{index}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1,
                                           bias=not batch_norm)
        if batch_norm:
            layers[f"norm{index}"] = nn.BatchNorm2d(out_channels)
        layers[f"act{index}"] = nn.ReLU()
        if pool_every and index % pool_every == 0 and min(height, width) >= 2:
            layers[f"pool{index}"] = nn.MaxPool2d(2)
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["head"] = nn.Linear(in_channels, num_classes)
    return CNN2DNetwork(layers)


@MODELS.register(
    "cnn2d",
    summary="2-D CNN: 3x3 conv + BatchNorm + ReLU blocks, global average pooling, linear head.",
)
@dataclass(frozen=True)
class CNN2D(ModelSpec):
    """A small 2-D convolutional classifier for image inputs, with BatchNorm by default (the
    layer test-time adapters such as BN adaptation, α-BN and Tent act through).

    Each block is a 3x3 ``Conv2d`` (padding 1, no bias when BatchNorm follows), optionally
    ``BatchNorm2d``, then ReLU, and every ``pool_every``-th block a 2x2 max pool; the last
    feature map is averaged over positions and read out by a linear layer named ``head``.
    Flat inputs of ``H*W`` features (the digits' 64) are read as one-channel square images.

    References:
        Ioffe, Szegedy. Batch Normalization: Accelerating Deep Network Training by Reducing
        Internal Covariate Shift. arXiv:1502.03167.

    Example:
        >>> import torch
        >>> net = CNN2D(channels=(4, 8)).build(InputSpec("continuous", (64,)), num_classes=10)
        >>> net(torch.zeros(3, 64)).shape
        torch.Size([3, 10])
    """

    channels: Annotated[tuple[int, ...], Ge(1)] = (16, 32)  # output channels of each conv block
    batch_norm: bool = True  # BatchNorm2d after each convolution, before ReLU
    pool_every: Annotated[int, Ge(0)] = 0  # 2x2 max pool after every k-th block; 0: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # a YAML list becomes a tuple
        if not self.channels:
            raise ValueError("channels must name at least one conv block, got ()")

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        return cnn2d_network(input, num_classes, self.channels, self.batch_norm,
                             self.pool_every)
