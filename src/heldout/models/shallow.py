"""Two-layer networks with a fixed readout, the model of theory papers on benign overfitting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.inputs import InputSpec
from heldout.models.base import ModelSpec
from heldout.registry import MODELS

__all__ = ["FixedReadoutNetwork", "FixedReadoutReLU", "ScaledQuadratic", "ScaledQuadraticNetwork"]


class FixedReadoutNetwork(nn.Module):
    """f(x) = Σ_j a_j ReLU(w_j · x) with a trained first layer and a fixed readout a_j = ±1/√m
    (half of each sign). For two classes it returns the logits ``[0, f(x)]``, so softmax
    cross-entropy on labels {0, 1} is exactly the logistic loss log(1 + exp(−y f(x))) on
    labels y = ±1."""

    readout: Tensor  # a buffer, registered in __init__

    def __init__(self, in_features: int, width: int, init_std: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, width, bias=False)
        nn.init.normal_(self.hidden.weight, std=init_std)
        signs = torch.ones(width)
        signs[width // 2:] = -1.0
        self.register_buffer("readout", signs / math.sqrt(width))

    def forward(self, x: Tensor) -> Tensor:
        f = torch.relu(self.hidden(x.flatten(1))) @ self.readout
        return torch.stack([torch.zeros_like(f), f], dim=-1)


@MODELS.register(
    "fixed_readout",
    summary="Two-layer ReLU net with a fixed ±1/sqrt(m) readout and small Gaussian init "
    "(binary).",
    papers=(15,),
)
@dataclass(frozen=True)
class FixedReadoutReLU(ModelSpec):
    """The network of Xu et al. (2024), "Benign Overfitting and Grokking in ReLU Networks for
    XOR Cluster Data" (arXiv:2310.02541): f(x) = Σ_j a_j ReLU(w_j·x), a_j = ±1/√m fixed, first
    layer initialized N(0, init_std²) and trained (full-batch GD on the logistic loss)."""

    width: Annotated[int, Ge(2)] = 200  # m, the number of hidden units (half with a_j > 0)
    # standard deviation of the first layer's initialization
    init_std: Annotated[float, Gt(0)] = 1e-6

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        if input.kind != "continuous":
            raise ValueError("fixed_readout takes continuous inputs, not token inputs")
        if num_classes != 2:
            raise ValueError(f"fixed_readout is a binary classifier; the task has "
                             f"{num_classes} classes")
        return FixedReadoutNetwork(math.prod(input.shape), self.width, self.init_std)


class ScaledQuadraticNetwork(nn.Module):
    """f(x) = α · (1/N) Σ_i φ(w_i · x / √D), φ(h) = h + (ε/2) h², with w_i ~ N(0, I) trained
    and no readout weights: the output scale α sets how lazy training is."""

    def __init__(self, in_features: int, width: int, alpha: float, epsilon: float,
                 outputs: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, width * outputs, bias=False)
        nn.init.normal_(self.hidden.weight, std=1.0)
        self.alpha, self.epsilon, self.width, self.outputs = alpha, epsilon, width, outputs
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x.flatten(1)) * self.scale
        phi = h + 0.5 * self.epsilon * h * h
        return self.alpha * phi.view(len(x), self.outputs, self.width).mean(dim=-1)


@MODELS.register(
    "scaled_quadratic",
    summary="Two-layer net f = α·mean_i φ(w_i·x/√D), φ(h) = h + εh²/2: α sets lazy vs rich "
    "training.",
    papers=(11,),
)
@dataclass(frozen=True)
class ScaledQuadratic(ModelSpec):
    """The model of Kumar et al., "Grokking as the Transition from Lazy to Rich Training
    Dynamics" (arXiv:2310.06110), as in their notebooks: a large output scale α keeps training
    near the initial kernel (lazy); a small one forces the features to move (rich). Train it
    with learning rate ∝ N/α² so that the function moves at the same speed for every α."""

    width: Annotated[int, Ge(1)] = 500  # N, hidden units
    alpha: Annotated[float, Gt(0)] = 1.0  # α, the output scale
    epsilon: float = 0.25  # ε, the weight of the quadratic part of φ

    def build(self, input: InputSpec, num_classes: int) -> nn.Module:
        if input.kind != "continuous":
            raise ValueError("scaled_quadratic takes continuous inputs, not token inputs")
        return ScaledQuadraticNetwork(math.prod(input.shape), self.width, self.alpha,
                                      self.epsilon, num_classes)
