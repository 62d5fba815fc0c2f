"""MetaAug: a learned transformation of the calibration data for post-training quantization,
trained by bi-level (meta) optimization.

A transformation network T_φ modifies the calibration inputs; the quantized model's
parameters θ (here: its step sizes, :func:`~heldout.methods.quantization.step_sizes`) are
learned on the *transformed* inputs, and T_φ is learned so that the quantized model, after
that update, matches the float model f on *original* inputs. Each step, on a training batch
x_t and a validation batch x_v of the calibration set:

1. inner (differentiable) step: θ' = θ − α ∇_θ L_rec(θ; T_φ(x_t)), with
   L_rec(θ; x) = mean_i ‖q_θ(x_i) − f(x_i)‖² (:func:`~heldout.methods.quantization.
   output_distance`);
2. outer step on φ: L_val = KL(softmax(f(x_v)/τ) ‖ softmax(q_θ'(x_v)/τ)) + β·max(0, m −
   mean (T_φ(x_t) − x_t)²) (the margin keeps T from collapsing to the identity), Adam, the
   gradient norm clipped at 0.1 as in the official code;
3. θ takes an Adam step on L_rec(θ; T_φ(x_t)) (T fixed).

Simplifications, documented: T_φ is a residual MLP x + g_φ(x) with a zero-initialized last
layer (the official code uses a U-Net), so it starts at the identity; θ is the step sizes only
(the paper learns rounding and step sizes block by block, BRECQ-style, with a differentiable
Adam inner step); the inner step is plain gradient descent; the feature-correlation (PKT) term
and mixup of the validation loss are left out; training and validation batches are drawn from
the same calibration set with separate random streams.

With T fixed at the identity (``transform_lr = 0``) step 3 is exactly
:func:`~heldout.methods.quantization.learn_step_sizes` on the calibration set: MetaAug reduces
to plain PTQ with learned step sizes.

References:
    Pham, Hoang, Nguyen, et al. MetaAug: Meta-Data Augmentation for Post-Training
    Quantization. ECCV 2024, arXiv:2407.14726.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.technique import Technique
from heldout.methods.quantization import (
    calibration_inputs,
    output_distance,
    post_training_quantize,
    step_sizes,
    store_scales,
)
from heldout.registry import TECHNIQUES

__all__ = ["MetaAug", "ResidualTransform", "metaaug_quantize"]


class ResidualTransform(nn.Module):
    """T(x) = x + g(x), g = Linear → ReLU → Linear on the flattened input; the last layer
    starts at zero, so T starts as the identity (exactly). Parameters drawn from ``generator``.

    Example:
        >>> t = ResidualTransform((4,), hidden=8)
        >>> x = torch.randn(3, 4)
        >>> torch.equal(t(x), x)
        True
    """

    def __init__(self, input_shape: Sequence[int], hidden: int = 64,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        features = math.prod(input_shape)
        first, last = nn.Linear(features, hidden), nn.Linear(hidden, features)
        self.net = nn.Sequential(nn.Flatten(), first, nn.ReLU(), last)
        with torch.no_grad():
            bound = 1 / math.sqrt(features)
            for p in (first.weight, first.bias):
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            last.weight.zero_()
            last.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x).reshape(x.shape)


def _kl_to_float(quantized_logits: Tensor, float_logits: Tensor, temperature: float) -> Tensor:
    return F.kl_div(F.log_softmax(quantized_logits / temperature, dim=-1),
                    F.softmax(float_logits / temperature, dim=-1), reduction="batchmean")


def metaaug_quantize(quantized: nn.Module, model: nn.Module, data: Tensor,
                     transform: nn.Module | None = None, steps: int = 100, lr: float = 1e-3,
                     inner_lr: float = 1e-2, transform_lr: float = 1e-3,
                     margin: float = 1e-3, margin_weight: float = 1.0,
                     temperature: float = 4.0, batch_size: int = 128,
                     generator: torch.Generator | None = None,
                     validation_generator: torch.Generator | None = None
                     ) -> tuple[nn.Module, nn.Module]:
    """MetaAug (see the module docstring) on a calibrated ``quantized`` copy of ``model``:
    learns its step sizes on T(x) and T on the meta objective, ``steps`` times, training
    batches drawn with ``generator`` (as :func:`~heldout.methods.quantization.
    learn_step_sizes` draws them), validation batches with ``validation_generator``. Returns
    ``(quantized, transform)``; ``transform`` defaults to a fresh :class:`ResidualTransform`.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = next(quantized.parameters()).device
    if transform is None:
        transform = ResidualTransform(data.shape[1:], generator=validation_generator)
    transform = transform.to(device)
    quantized.eval().requires_grad_(False)
    was_training = model.training
    model.eval()
    log_scales = {k: v.detach().log().clone().requires_grad_() for k, v in
                  step_sizes(quantized).items()}
    if not log_scales:
        raise ValueError("metaaug_quantize: nothing to learn (no quantized layer)")
    optimizer = torch.optim.Adam(log_scales.values(), lr=lr)
    transform_optimizer = torch.optim.Adam(transform.parameters(), lr=transform_lr)
    size = min(batch_size, len(data))

    def reconstruction(logs: dict[str, Tensor], x: Tensor) -> Tensor:
        with torch.no_grad():
            target = model(x)
        scales = {k: v.exp() for k, v in logs.items()}
        return output_distance(functional_call(quantized, scales, (x,)), target)

    for _ in range(steps):
        x = data[torch.randint(len(data), (size,), generator=generator)].to(device)
        x_val = data[torch.randint(len(data), (size,), generator=validation_generator)]
        x_val = x_val.to(device)
        # (1) + (2): a differentiable inner step on transformed data, judged on original data
        moved = transform(x)
        inner = reconstruction(log_scales, moved)
        grads = torch.autograd.grad(inner, list(log_scales.values()), create_graph=True)
        updated = {k: v - inner_lr * g for (k, v), g in zip(log_scales.items(), grads,
                                                             strict=True)}
        with torch.no_grad():
            float_val = model(x_val)
        quantized_val = functional_call(quantized, {k: v.exp() for k, v in updated.items()},
                                        (x_val,))
        change = (moved - x).pow(2).mean()
        outer = (_kl_to_float(quantized_val, float_val, temperature)
                 + margin_weight * F.relu(margin - change))
        transform_optimizer.zero_grad()
        phi_grads = torch.autograd.grad(outer, list(transform.parameters()), allow_unused=True)
        for p, g in zip(transform.parameters(), phi_grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g
        nn.utils.clip_grad_norm_(transform.parameters(), 0.1)
        transform_optimizer.step()
        # (3): the step sizes learn on the transformed batch
        with torch.no_grad():
            moved = transform(x)
        loss = reconstruction(log_scales, moved)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    store_scales(quantized, log_scales)
    model.train(was_training)
    return quantized, transform


@TECHNIQUES.register(
    "metaaug",
    summary="Evaluate a post-training quantized copy whose step sizes are learned on "
    "calibration data transformed by a meta-learned network.",
    papers=(72,),
    search_space={"transform_lr": ("choice", [1e-4, 1e-3, 1e-2])},
)
@dataclass
class MetaAug(Technique):
    """Measures see :func:`metaaug_quantize` of a copy of the model calibrated (min/max) on the
    first ``calibration_size`` training inputs, rebuilt at every evaluation (seeded by
    ``seed``). Needs continuous inputs given as tensors (``state.train_data``)."""

    weight_bits: Annotated[int, Interval(2, 32)] = 4  # bits of each weight (symmetric)
    act_bits: Annotated[int, Interval(2, 32)] = 4  # bits of each Linear/Conv input
    calibration_size: Annotated[int, Ge(2)] = 256  # training inputs used to calibrate
    steps: Annotated[int, Ge(0)] = 100  # MetaAug steps
    lr: Annotated[float, Ge(0)] = 1e-3  # Adam lr of the log step sizes
    inner_lr: Annotated[float, Ge(0)] = 1e-2  # lr of the differentiable inner step
    transform_lr: Annotated[float, Ge(0)] = 1e-3  # Adam lr of the transformation
    margin: Annotated[float, Ge(0)] = 1e-3  # minimum mean squared change T must make
    seed: int = 0  # seed of the batches and the transformation's initialization

    touches = frozenset({"eval_model"})

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if not 2 <= bits <= 32:
                raise ValueError(f"{name} must be in [2, 32], got {bits}")

    def eval_model(self, state: Any) -> nn.Module | None:
        data = calibration_inputs(state, self.name, self.calibration_size)
        if data.is_floating_point() is False:
            raise ValueError("metaaug transforms continuous inputs; this task's inputs are "
                             f"{data.dtype}")
        quantized = post_training_quantize(state.model, data, self.weight_bits, self.act_bits)
        quantized, _ = metaaug_quantize(
            quantized, state.model, data, steps=self.steps, lr=self.lr, inner_lr=self.inner_lr,
            transform_lr=self.transform_lr, margin=self.margin,
            generator=torch.Generator().manual_seed(self.seed),
            validation_generator=torch.Generator().manual_seed(self.seed + 1))
        return quantized
