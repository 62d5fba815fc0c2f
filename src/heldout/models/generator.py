"""A classifier with a latent code and a decoder of that code: the generator G of Plug & Play
Generative Networks (#46) for small continuous inputs (8x8 digits, 1-D signals).

The network is E (an MLP encoder to a latent code h), a linear classifier head on h, and
G (an MLP decoder with h → x̂). Its forward pass is the classifier, so a heldout run trains E
and the head with the run's loss like any model; G is then fitted to invert the trained E
(:func:`heldout.methods.ppgn.fit_decoder`), as PPGN's generator inverts the fixed feature
layer of a pretrained classifier. :mod:`heldout.methods.ppgn` samples in h.

References:
    Plug & Play Generative Networks: Conditional Iterative Generation of Images in Latent
    Space (Nguyen, Clune, Bengio, Dosovitskiy, Yosinski; arXiv:1612.00005).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.inputs import InputSpec
from heldout.models.base import ModelSpec
from heldout.registry import MODELS

__all__ = ["LatentAutoencoder", "LatentAutoencoderNetwork"]


class LatentAutoencoderNetwork(nn.Module):
    """``encoder`` E: x → h, ``head``: h → logits, ``decoder`` G: h → x̂ (of x's shape).

    ``forward(x)`` is the classifier ``head(E(x))``; ``encode`` and ``decode`` expose E and
    G. The decoder ends in a sigmoid when ``bounded`` (inputs in [0, 1], such as the digits).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128,
                 latent: int = 16, bounded: bool = True) -> None:
        super().__init__()
        self.input_shape, self.latent = tuple(input_shape), latent
        features = math.prod(self.input_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, latent))
        self.head = nn.Linear(latent, num_classes)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, features),
                                     *([nn.Sigmoid()] if bounded else []))

    def encode(self, x: Tensor) -> Tensor:
        """h = E(x), shape (batch, latent)."""
        return torch.as_tensor(self.encoder(x))

    def decode(self, h: Tensor) -> Tensor:
        """x̂ = G(h), shape (batch, *input_shape)."""
        return torch.as_tensor(self.decoder(h)).view(len(h), *self.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        return torch.as_tensor(self.head(self.encode(x)))


@MODELS.register(
    "autoencoder",
    summary="Classifier on a latent code with a decoder of that code (PPGN's generator).",
    papers=(46,),
)
@dataclass(frozen=True)
class LatentAutoencoder(ModelSpec):
    """An MLP encoder E to a ``latent``-dimensional code h, a linear classifier on h and an
    MLP decoder G(h) ≈ x (:class:`LatentAutoencoderNetwork`). Trained as a classifier by a
    run; :func:`heldout.methods.ppgn.fit_decoder` fits G to invert E afterwards. Continuous
    inputs only.

    References:
        Plug & Play Generative Networks (arXiv:1612.00005): G inverts a classifier's
        feature layer h.

    Example:
        >>> net = LatentAutoencoder(hidden=8, latent=4).build(InputSpec("continuous", (64,)), 10)
        >>> net(torch.zeros(3, 64)).shape, net.decode(torch.zeros(3, 4)).shape
        (torch.Size([3, 10]), torch.Size([3, 64]))
    """

    hidden: Annotated[int, Ge(1)] = 128  # width of the encoder's and decoder's hidden layer
    latent: Annotated[int, Ge(1)] = 16  # size of the code h
    bounded: bool = True  # sigmoid on the decoder's output (inputs in [0, 1])

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        if input.kind != "continuous":
            raise ValueError(f"autoencoder (model) takes continuous inputs, got {input.kind} "
                             f"inputs")
        return LatentAutoencoderNetwork(input.shape, num_classes, self.hidden, self.latent,
                                        self.bounded)
