"""The model zoo: frozen dataclasses of hyper-parameters that build ``nn.Module``s for a task.

Importing this package registers the built-in models in :data:`heldout.registry.MODELS`.
"""

from heldout.models.base import ModelSpec
from heldout.models.cnn import CNN1D, CNN1DNetwork, cnn1d_network
from heldout.models.layers import TokenLinear, activation_module
from heldout.models.mlp import MLP, MLPNetwork, mlp_network
from heldout.models.shallow import (
    FixedReadoutNetwork,
    FixedReadoutReLU,
    ScaledQuadratic,
    ScaledQuadraticNetwork,
)
from heldout.models.transformer import (
    MultiHeadSelfAttention,
    Transformer,
    TransformerBlock,
    TransformerNetwork,
)

__all__ = [
    "CNN1D",
    "MLP",
    "CNN1DNetwork",
    "FixedReadoutNetwork",
    "FixedReadoutReLU",
    "MLPNetwork",
    "ModelSpec",
    "MultiHeadSelfAttention",
    "ScaledQuadratic",
    "ScaledQuadraticNetwork",
    "TokenLinear",
    "Transformer",
    "TransformerBlock",
    "TransformerNetwork",
    "activation_module",
    "cnn1d_network",
    "mlp_network",
]
