"""Genie: calibration data for zero-shot post-training quantization, synthesized from the
BatchNorm statistics of the float model.

Genie-D (data distillation) optimizes a small generator G and its latent codes z *together* so
that the batch x = G(z) reproduces, at every BatchNorm layer l of the float model (in eval
mode), the layer's running statistics:

    L_BNS(x) = Σ_l ( ‖μ_l(x) − μ_l^BN‖² + ‖σ_l(x) − sqrt(var_l^BN + ε)‖² ) / C_l

where μ_l(x), σ_l(x) are the per-channel mean and (unbiased) standard deviation of the layer's
*input* over the batch (and positions), and C_l its channel count. z and G have their own Adam
optimizers (the official code: lr 0.1 for the latents, 0.01 for the generator, the latter
decayed by 0.95 every 100 steps); each batch gets a fresh generator and fresh latents. The
synthesized inputs then calibrate post-training quantization
(:func:`~heldout.methods.quantization.post_training_quantize`); the baseline is calibration on
Gaussian noise.

Deviations from the paper, for the toolkit's small flat or image inputs: the generator is an
MLP (Linear → BatchNorm1d → LeakyReLU(0.2) → Linear, reshaped to the input shape) without the
official generator's Tanh + affine-free BatchNorm output (heldout's inputs are not
standardized, so the model's first BatchNorm decides their scale); there is no input-prior term
(mean 0, std 1 per image channel) and no swing convolution (heldout's conv models have no
strided convolutions); the latents' plateau schedule is left out. Genie-M (learned rounding and
step sizes by block reconstruction) is replaced by
:func:`~heldout.methods.quantization.learn_step_sizes` (step sizes only, whole-network outputs).

References:
    Jeon, Lee, Kim. Genie: Show Me the Data for Quantization. CVPR 2023, arXiv:2212.04780.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.technique import Technique
from heldout.methods.quantization import (
    RangeMethod,
    calibration_inputs,
    learn_step_sizes,
    post_training_quantize,
)
from heldout.registry import TECHNIQUES

__all__ = [
    "Genie",
    "GenieGenerator",
    "batchnorm_layers",
    "bns_loss",
    "genie_synthesize",
    "gaussian_calibration",
]

_BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)
            and m.running_mean is not None and m.running_var is not None]


def bns_loss(model: nn.Module, x: Tensor) -> Tensor:
    """Genie's BatchNorm-statistics loss of the batch ``x``: over the BatchNorm layers of
    ``model``, Σ_l (‖μ_l(x) − μ_l^BN‖² + ‖σ_l(x) − sqrt(var_l^BN + ε_l)‖²) / C_l, with
    μ_l(x), σ_l(x) the per-channel mean and unbiased standard deviation of the layer's input
    (over the batch and all positions). ``model`` runs as it is (put it in eval mode so that
    its running statistics stay fixed); gradients flow to ``x``.

    Example:
        >>> bn = nn.BatchNorm1d(2).eval()  # running mean 0, running var 1
        >>> x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # mean 0, unbiased std sqrt(2)
        >>> round(float(bns_loss(bn, x)), 4)  # (2 (sqrt(2) - 1)^2) / 2, ε = 1e-5
        0.1716
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("bns_loss needs a model with BatchNorm layers that track running "
                         "statistics (e.g. cnn2d, or mlp with batch_norm: true)")
    inputs: list[Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
               for layer in layers]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    loss = x.new_zeros(())
    for layer, h in zip(layers, inputs, strict=True):
        dims = [d for d in range(h.dim()) if d != 1]
        std, mean = torch.std_mean(h, dim=dims)
        running_mean, running_var = cast(Tensor, layer.running_mean), cast(Tensor,
                                                                          layer.running_var)
        target_std = torch.sqrt(running_var + cast(float, layer.eps))
        channels = mean.numel()
        loss = loss + ((mean - running_mean).pow(2).sum()
                       + (std - target_std).pow(2).sum()) / channels
    return loss


class GenieGenerator(nn.Module):
    """z ↦ Linear → BatchNorm1d → LeakyReLU(0.2) → Linear, reshaped to ``output_shape``;
    parameters drawn from ``generator`` (uniform ±1/sqrt(fan_in), as PyTorch's Linear)."""

    def __init__(self, latent_dim: int, output_shape: Sequence[int], hidden: int = 128,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.BatchNorm1d(hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, math.prod(output_shape)))
        with torch.no_grad():
            for module in self.net:
                if isinstance(module, nn.Linear):
                    bound = 1 / math.sqrt(module.in_features)
                    for p in (module.weight, module.bias):
                        p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(len(z), *self.output_shape)


def genie_synthesize(model: nn.Module, input_shape: Sequence[int], num_samples: int = 256,
                     batch_size: int = 128, steps: int = 500, latent_dim: int = 32,
                     hidden: int = 128, lr_latent: float = 0.1, lr_generator: float = 0.01,
                     generator: torch.Generator | None = None) -> Tensor:
    """Genie-D: ``num_samples`` inputs of shape ``input_shape`` synthesized from the BatchNorm
    statistics of ``model`` (left unchanged). Per batch of ``batch_size``: a fresh
    :class:`GenieGenerator` and latents z ~ N(0, I) (drawn from ``generator``) are optimized
    together for ``steps`` Adam steps on :func:`bns_loss` (latents at ``lr_latent``, generator
    at ``lr_generator`` × 0.95 every 100 steps); the batch is G(z) after the last step.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        >>> genie_synthesize(net, (4,), num_samples=10, batch_size=5, steps=3).shape
        torch.Size([10, 4])
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("latent_dim", latent_dim), ("hidden", hidden)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch statistics), got {batch_size}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    if not batchnorm_layers(frozen):
        raise ValueError("genie_synthesize needs a model with BatchNorm layers (e.g. cnn2d, "
                         "or mlp with batch_norm: true)")
    device = next(frozen.parameters()).device
    batches = []
    for start in range(0, num_samples, batch_size):
        n = max(2, min(batch_size, num_samples - start))
        g = GenieGenerator(latent_dim, input_shape, hidden, generator).to(device)
        z = torch.randn(n, latent_dim, generator=generator).to(device).requires_grad_()
        opt_z = torch.optim.Adam([z], lr=lr_latent)
        opt_g = torch.optim.Adam(g.parameters(), lr=lr_generator)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=0.95)
        for step in range(steps):
            loss = bns_loss(frozen, g(z))
            opt_z.zero_grad()
            opt_g.zero_grad()
            loss.backward()
            opt_z.step()
            opt_g.step()
            if (step + 1) % 100 == 0:
                decay.step()
        with torch.no_grad():
            batches.append(g(z))
    return torch.cat(batches)[:num_samples]


def gaussian_calibration(num_samples: int, input_shape: Sequence[int],
                         generator: torch.Generator | None = None) -> Tensor:
    """The baseline calibration set of zero-shot quantization: N(0, 1) noise inputs."""
    return torch.randn(num_samples, *input_shape, generator=generator)


@TECHNIQUES.register(
    "genie",
    summary="Evaluate a post-training quantized copy calibrated on data synthesized from the "
    "model's BatchNorm statistics (zero-shot: no training data).",
    papers=(12,),
    search_space={"weight_bits": ("choice", [4, 8]), "act_bits": ("choice", [4, 8])},
)
@dataclass
class Genie(Technique):
    """Measures see a post-training quantized copy of the model whose activation ranges come
    from :func:`genie_synthesize` (no training inputs are read: only their shape), optionally
    followed by :func:`~heldout.methods.quantization.learn_step_sizes` on the same synthetic
    data. The synthesis is seeded by ``seed`` and rebuilt at every evaluation; the model needs
    BatchNorm layers and continuous inputs."""

    weight_bits: Annotated[int, Interval(2, 32)] = 4  # bits of each weight (symmetric)
    act_bits: Annotated[int, Interval(2, 32)] = 8  # bits of each Linear/Conv input
    per_channel: bool = True  # one weight scale per output channel
    method: RangeMethod = "mse"  # activation ranges from the synthetic data
    num_samples: Annotated[int, Ge(2)] = 256  # synthesized calibration inputs
    batch_size: Annotated[int, Ge(2)] = 128  # inputs synthesized together
    steps: Annotated[int, Ge(0)] = 500  # Adam steps per synthesized batch
    lr_latent: Annotated[float, Gt(0)] = 0.1  # Adam lr of the latent codes
    lr_generator: Annotated[float, Gt(0)] = 0.01  # Adam lr of the generator
    reconstruct_steps: Annotated[int, Ge(0)] = 0  # learn_step_sizes steps after calibration
    seed: int = 0  # seed of the latents and generator

    touches = frozenset({"eval_model"})

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if not 2 <= bits <= 32:
                raise ValueError(f"{name} must be in [2, 32], got {bits}")
        if self.method not in ("minmax", "percentile", "mse"):
            raise ValueError(f"method must be 'minmax', 'percentile' or 'mse', got "
                             f"{self.method!r}")

    def eval_model(self, state: Any) -> nn.Module | None:
        shape = calibration_inputs(state, self.name, 1).shape[1:]
        generator = torch.Generator().manual_seed(self.seed)
        data = genie_synthesize(state.model, shape, self.num_samples, self.batch_size,
                                self.steps, lr_latent=self.lr_latent,
                                lr_generator=self.lr_generator, generator=generator)
        quantized = post_training_quantize(state.model, data, self.weight_bits, self.act_bits,
                                           self.per_channel, self.method)
        if self.reconstruct_steps:
            learn_step_sizes(quantized, state.model, data, self.reconstruct_steps,
                             generator=generator)
        return quantized
