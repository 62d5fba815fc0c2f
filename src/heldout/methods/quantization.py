"""Fake quantization and post-training quantization (PTQ) of Linear and Conv layers.

Uniform quantization maps a real x to an integer on a grid of 2^b levels and back:

    q = clamp(round(x / s) + z, q_min, q_max),    x̂ = s · (q − z)

with step size (scale) s and zero point z. *Affine* (asymmetric) quantization uses the unsigned
grid [0, 2^b − 1] and a zero point that makes 0.0 exact; *symmetric* quantization uses the
signed grid [−2^(b−1), 2^(b−1) − 1] with z = 0 and s = max|x| / (2^(b−1) − 1). Rounding is to
the nearest integer, ties to even (``torch.round``, IEEE round-half-even).

:func:`fake_quantize` computes x̂ in floating point (the "fake" or simulated quantization used to
study a quantized model without integer kernels). Its gradient is the straight-through estimator
(STE): ∂x̂/∂x = 1 where round(x/s) + z lies inside the grid and 0 where it is clipped; its
gradient in s is the learned-step-size one (round(x/s) − x/s inside, q_min − z or q_max − z
outside), so the same function serves quantization-aware training and step-size learning.

:func:`quantize_model` wraps every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` of a copy of a
model in a :class:`QuantizedLayer` that fake-quantizes its weight (symmetric, per output channel
or per tensor) and its input activation (affine, per tensor). Activation ranges come from a
calibration set (:func:`calibrate`: inputs collected with forward hooks, ranges by min/max,
percentile or MSE-optimal clipping); :func:`post_training_quantize` does both, and
:func:`learn_step_sizes` then tunes the step sizes so that the quantized model's outputs match
the float model's on the calibration set (the reconstruction step of PTQ methods such as
Genie-M, here on the whole network's outputs and without learned rounding).

BatchNorm after a convolution is not folded: with per-channel symmetric weight scales,
quantizing w_c and then scaling by γ_c/σ_c gives the same grid as quantizing the folded weight
(the step scales with the channel), up to the asymmetric end of the signed grid.

References:
    Jacob et al. Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
    Only Inference. arXiv:1712.05877.
    Esser et al. Learned Step Size Quantization. arXiv:1902.08153.
    Nagel et al. A White Paper on Neural Network Quantization. arXiv:2106.08295.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = [
    "FakeQuant",
    "QuantizedLayer",
    "RangeMethod",
    "activation_range",
    "affine_qparams",
    "calibrate",
    "calibration_inputs",
    "fake_quantize",
    "learn_step_sizes",
    "output_distance",
    "post_training_quantize",
    "quant_grid",
    "quantization_error",
    "quantize_model",
    "quantized_layers",
    "step_sizes",
    "symmetric_qparams",
]

RangeMethod = Literal["minmax", "percentile", "mse"]
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _check_bits(name: str, bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ValueError(f"{name} must be an integer in [2, 32], got {bits!r}")
    return bits


def quant_grid(bits: int, signed: bool = False) -> tuple[int, int]:
    """``(q_min, q_max)`` of the b-bit grid: [0, 2^b − 1], or [−2^(b−1), 2^(b−1) − 1] signed.

    Example:
        >>> quant_grid(4), quant_grid(4, signed=True)
        ((0, 15), (-8, 7))
    """
    _check_bits("bits", bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _along(param: Tensor | float, x: Tensor, axis: int | None) -> Tensor:
    """``param`` as a tensor broadcastable against ``x``: per channel along ``axis``."""
    t = torch.as_tensor(param, dtype=x.dtype, device=x.device)
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def fake_quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | float = 0,
                  bits: int = 8, *, signed: bool = False, axis: int | None = None) -> Tensor:
    """x̂ = s · (clamp(round(x/s) + z, q_min, q_max) − z) on the b-bit grid (:func:`quant_grid`),
    rounding to nearest with ties to even; per channel along ``axis`` when ``scale`` and
    ``zero_point`` are vectors. Gradients: straight-through in x (1 inside the grid, 0 where
    clipped) and learned-step-size in ``scale``. Above 16 bits the arithmetic runs in float64
    (a float32 x/s + z would lose the low bits) and the result is cast back.

    Example:
        >>> fake_quantize(torch.tensor([0.24, 0.25, 0.26, 0.75, 9.0]), 0.5, 0, bits=4)
        tensor([0.0000, 0.0000, 0.5000, 1.0000, 7.5000])
    """
    q_min, q_max = quant_grid(bits, signed)
    dtype = x.dtype
    work = x.double() if bits > 16 else x
    s = _along(scale, work, axis)
    z = _along(zero_point, work, axis).detach()
    v = work / s
    if not v.requires_grad:  # the same ops in place: one buffer (inference speed)
        return v.round_().add_(z).clamp_(q_min, q_max).sub_(z).mul_(s).to(dtype)
    rounded = v + (torch.round(v) - v).detach()  # round, with a straight-through gradient
    q = torch.clamp(rounded + z, q_min, q_max)
    return ((q - z) * s).to(dtype)


def symmetric_qparams(x: Tensor, bits: int, axis: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric scale s = max|x| / (2^(b−1) − 1) (per channel along ``axis``: max over the
    other dimensions) and zero point 0; an all-zero channel gets s = 1.

    Example:
        >>> symmetric_qparams(torch.tensor([[1.0, -3.5], [0.7, 0.1]]), 4, axis=0)[0]
        tensor([0.5000, 0.1000])
    """
    _check_bits("bits", bits)
    a = x.detach().abs()
    if axis is None:
        peak = a.max()
    else:
        peak = a.transpose(0, axis).reshape(a.shape[axis], -1).max(dim=1).values
    scale = peak / (2 ** (bits - 1) - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.zeros_like(scale)


def affine_qparams(low: Tensor | float, high: Tensor | float, bits: int
                   ) -> tuple[Tensor, Tensor]:
    """Affine scale and zero point of the range [low, high] on [0, 2^b − 1]: the range is first
    widened to hold 0, s = (high − low) / (2^b − 1), z = round(−low / s) (0.0 is exact).

    Example:
        >>> affine_qparams(-1.0, 2.0, 2)
        (tensor(1.), tensor(1.))
    """
    _check_bits("bits", bits)
    lo = torch.clamp(torch.as_tensor(low, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(high, dtype=torch.float32), min=0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-lo / scale), 0, 2 ** bits - 1)
    return scale, zero_point


def quantization_error(x: Tensor, low: float | Tensor, high: float | Tensor, bits: int) -> Tensor:
    """Mean squared error of affine fake quantization of ``x`` with the range [low, high]."""
    scale, zero_point = affine_qparams(low, high, bits)
    return (fake_quantize(x, scale.to(x.device), zero_point.to(x.device), bits) - x).pow(2).mean()


def _kth(values: Tensor, fraction: float) -> Tensor:
    """The ``fraction``-quantile of ``values``: the order statistic at 0-based index
    round(fraction · (n − 1)) (numpy's ``method="nearest"``; no size limit, unlike
    ``torch.quantile``)."""
    return values.kthvalue(round(fraction * (values.numel() - 1)) + 1).values


def activation_range(values: Tensor, bits: int, method: RangeMethod = "minmax",
                     percentile: float = 99.99, grid: int = 64) -> tuple[float, float]:
    """The clipping range ``(low, high)`` of an activation tensor (all its entries together):

    - ``"minmax"``: the smallest and largest value;
    - ``"percentile"``: the (100 − p)-th and p-th percentiles;
    - ``"mse"``: min/max shrunk by the factor α ∈ {1/grid, 2/grid, …, 1} that minimizes the
      mean squared error of b-bit affine fake quantization (:func:`quantization_error`).

    Example:
        >>> activation_range(torch.tensor([0.0, 1.0, 2.0, 100.0]), 8)
        (0.0, 100.0)
    """
    _check_bits("bits", bits)
    flat = values.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("values is empty: no activations to choose a range from")
    if method == "minmax":
        return float(flat.min()), float(flat.max())
    if method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        return float(_kth(flat, 1 - percentile / 100)), float(_kth(flat, percentile / 100))
    if method == "mse":
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        low, high = flat.min(), flat.max()
        alphas = torch.arange(1, grid + 1, dtype=torch.float32) / grid
        errors = torch.stack([quantization_error(flat, a * low, a * high, bits) for a in alphas])
        best = alphas[int(errors.argmin())]
        return float(best * low), float(best * high)
    raise ValueError(f"method must be 'minmax', 'percentile' or 'mse', got {method!r}")


class QuantizedLayer(nn.Module):
    """A Linear, Conv1d or Conv2d layer that fake-quantizes its weight (symmetric; per output
    channel or per tensor, scale from max|w|) and its input (affine per tensor, once
    :func:`calibrate` has set the range). ``weight_bits`` / ``act_bits`` of ``None`` leave that
    side in float. The step sizes are buffers (``weight_scale``, ``act_scale``,
    ``act_zero_point``), so :func:`learn_step_sizes` can tune them with ``functional_call``.

    Example:
        >>> layer = QuantizedLayer(nn.Linear(3, 2), weight_bits=8, act_bits=None)
        >>> layer(torch.ones(1, 3)).shape
        torch.Size([1, 2])
    """

    def __init__(self, layer: nn.Module, weight_bits: int | None = 8, act_bits: int | None = 8,
                 per_channel: bool = True) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"QuantizedLayer wraps nn.Linear, nn.Conv1d or nn.Conv2d, got "
                            f"{type(layer).__name__}")
        for name, bits in (("weight_bits", weight_bits), ("act_bits", act_bits)):
            if bits is not None:
                _check_bits(name, bits)
        self.layer = layer
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.per_channel = per_channel
        scale = (symmetric_qparams(layer.weight, weight_bits, 0 if per_channel else None)[0]
                 if weight_bits is not None else torch.ones(()))
        self.register_buffer("weight_scale", scale.to(layer.weight.device))
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self._cache: tuple[tuple[int, ...], Tensor] | None = None  # see quantized_weight

    def set_activation_range(self, low: float, high: float) -> None:
        """Set the input's affine grid from the clipping range [low, high]."""
        if self.act_bits is None:
            return
        scale, zero_point = affine_qparams(low, high, self.act_bits)
        device = self.layer.weight.device
        self.act_scale, self.act_zero_point = scale.to(device), zero_point.to(device)

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight; without gradients it is computed once and reused until
        the weight or its scale changes (in place or replaced)."""
        w, scale = self.layer.weight, cast(Tensor, self.weight_scale)
        if self.weight_bits is None:
            return w
        tracked = torch.is_grad_enabled() and (w.requires_grad or scale.requires_grad)
        key = (w.data_ptr(), w._version, scale.data_ptr(), scale._version)
        if not tracked and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        out = fake_quantize(w, scale, 0, self.weight_bits, signed=True,
                            axis=0 if self.per_channel else None)
        self._cache = None if tracked else (key, out)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.act_bits is not None and self.act_scale is not None:
            x = fake_quantize(x, self.act_scale, self.act_zero_point, self.act_bits)
        layer, weight = self.layer, self.quantized_weight()
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantizedLayer]]:
    """The ``(name, layer)`` pairs of the :class:`QuantizedLayer` modules of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            yield name, module


def _replace(module: nn.Module, weight_bits: int | None, act_bits: int | None,
             per_channel: bool) -> None:
    for name, child in module.named_children():
        # exact types: subclasses (a token lookup such as TokenLinear) keep their own forward
        if type(child) in QUANTIZABLE:
            setattr(module, name, QuantizedLayer(child, weight_bits, act_bits, per_channel))
        else:
            _replace(child, weight_bits, act_bits, per_channel)


def quantize_model(model: nn.Module, weight_bits: int | None = 8, act_bits: int | None = 8,
                   per_channel: bool = True) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layers (exact
    types, not subclasses) are :class:`QuantizedLayer` s. Weights are quantized at once;
    activations once :func:`calibrate` has set their ranges (until then they stay float).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> q = quantize_model(net, weight_bits=4, act_bits=4)
        >>> [name for name, _ in quantized_layers(q)]
        ['0', '2']
    """
    for name, bits in (("weight_bits", weight_bits), ("act_bits", act_bits)):
        if bits is not None:
            _check_bits(name, bits)
    quantized = copy.deepcopy(model)
    if type(quantized) in QUANTIZABLE:
        return QuantizedLayer(quantized, weight_bits, act_bits, per_channel)
    _replace(quantized, weight_bits, act_bits, per_channel)
    return quantized


def _batches(data: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, len(data), batch_size):
        yield data[start:start + batch_size]


@torch.no_grad()
def calibrate(quantized: nn.Module, data: Tensor, method: RangeMethod = "minmax",
              percentile: float = 99.99, batch_size: int = 512) -> nn.Module:
    """Set the activation range of every :class:`QuantizedLayer` of ``quantized`` from the
    inputs it receives on the calibration set ``data`` (collected with forward pre-hooks, with
    activation quantization off so that every layer sees float inputs, model in eval mode),
    by :func:`activation_range`. Returns ``quantized``."""
    layers = dict(quantized_layers(quantized))
    if not layers:
        raise ValueError("calibrate: the model has no QuantizedLayer (use quantize_model first)")
    if len(data) == 0:
        raise ValueError("calibrate: the calibration set is empty")
    seen: dict[str, list[Tensor]] = {name: [] for name in layers}
    saved = {name: (layer.act_bits, layer.weight_bits) for name, layer in layers.items()}
    handles = []
    for name, layer in layers.items():
        layer.act_bits, layer.weight_bits = None, None
        handles.append(layer.register_forward_pre_hook(
            lambda _module, args, name=name: seen[name].append(args[0].detach())))
    was_training = quantized.training
    quantized.eval()
    device = next(quantized.parameters()).device
    try:
        for batch in _batches(data, batch_size):
            quantized(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        for name, layer in layers.items():
            layer.act_bits, layer.weight_bits = saved[name]
        quantized.train(was_training)
    for name, layer in layers.items():
        if layer.act_bits is not None:
            low, high = activation_range(torch.cat(seen[name]), layer.act_bits, method,
                                         percentile)
            layer.set_activation_range(low, high)
    return quantized


def post_training_quantize(model: nn.Module, calibration: Tensor, weight_bits: int | None = 8,
                           act_bits: int | None = 8, per_channel: bool = True,
                           method: RangeMethod = "minmax", percentile: float = 99.99
                           ) -> nn.Module:
    """Post-training quantization: :func:`quantize_model` then :func:`calibrate` on the
    calibration inputs; returns the quantized copy in eval mode (``model`` is unchanged).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(64, 4)
        >>> q = post_training_quantize(net, x, weight_bits=8, act_bits=8)
        >>> bool((q(x) - net(x)).abs().max() < 0.05)
        True
    """
    quantized = quantize_model(model, weight_bits, act_bits, per_channel)
    return calibrate(quantized, calibration, method, percentile).eval()


def step_sizes(quantized: nn.Module) -> dict[str, Tensor]:
    """The learnable step sizes of ``quantized``: each quantized weight's and calibrated input's
    scale buffer, by its name in ``quantized.named_buffers()``."""
    out: dict[str, Tensor] = {}
    for name, layer in quantized_layers(quantized):
        prefix = f"{name}." if name else ""
        if layer.weight_bits is not None:
            out[prefix + "weight_scale"] = cast(Tensor, layer.weight_scale)
        if layer.act_bits is not None and layer.act_scale is not None:
            out[prefix + "act_scale"] = cast(Tensor, layer.act_scale)
    return out


def output_distance(quantized_logits: Tensor, float_logits: Tensor) -> Tensor:
    """Mean squared distance between the quantized and float model's outputs (per example, the
    squared norm of the difference, averaged over the batch)."""
    return (quantized_logits - float_logits).pow(2).sum(dim=-1).mean()


def learn_step_sizes(quantized: nn.Module, model: nn.Module, data: Tensor, steps: int = 100,
                     lr: float = 1e-3, batch_size: int = 128,
                     generator: torch.Generator | None = None) -> nn.Module:
    """Tune the step sizes (:func:`step_sizes`) of a calibrated ``quantized`` copy of ``model``
    so that its outputs match the float model's on ``data``: Adam on the log step sizes, the
    loss :func:`output_distance`, ``steps`` minibatches of ``batch_size`` drawn with
    ``generator``; weights and zero points stay fixed. ``model`` runs in eval mode (its mode
    is restored after). Returns ``quantized`` (eval mode)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    quantized.eval()
    was_training = model.training
    model.eval()  # restored at the end: the float model may be a run's training model
    log_scales = {k: v.detach().log().clone().requires_grad_() for k, v in
                  step_sizes(quantized).items()}
    if not log_scales:
        raise ValueError("learn_step_sizes: nothing to learn (no quantized layer)")
    optimizer = torch.optim.Adam(log_scales.values(), lr=lr)
    device = next(quantized.parameters()).device
    for _ in range(steps):
        index = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        x = data[index].to(device)
        with torch.no_grad():
            target = model(x)
        scales = {k: v.exp() for k, v in log_scales.items()}
        loss = output_distance(functional_call(quantized, scales, (x,)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    store_scales(quantized, log_scales)
    model.train(was_training)
    return quantized


def store_scales(quantized: nn.Module, log_scales: dict[str, Tensor]) -> None:
    """Write learned step sizes (their logs, keyed by buffer name) into ``quantized``."""
    buffers = dict(quantized.named_buffers())
    with torch.no_grad():
        for k, v in log_scales.items():
            buffers[k].copy_(v.exp())


@TECHNIQUES.register(
    "fake_quant",
    summary="Evaluate a post-training fake-quantized copy of the model (per-channel weights, "
    "activations calibrated on training inputs).",
    search_space={"weight_bits": ("choice", [2, 4, 8]), "act_bits": ("choice", [4, 8])},
    references=("Quantization and Training of Neural Networks for Efficient Integer-"
                "Arithmetic-Only Inference (arXiv:1712.05877)",
                "A White Paper on Neural Network Quantization (arXiv:2106.08295)"),
)
@dataclass
class FakeQuant(Technique):
    """Measures see :func:`post_training_quantize` of the current model: weights at
    ``weight_bits`` (symmetric), layer inputs at ``act_bits`` (affine, ranges by ``method``
    from the first ``calibration_size`` training inputs). Training itself is unchanged; the
    quantized copy is rebuilt at every evaluation. Needs the training set as tensors
    (``state.train_data``)."""

    weight_bits: Annotated[int, Interval(2, 32)] = 8  # bits of each weight
    act_bits: Annotated[int, Interval(2, 32)] = 8  # bits of each Linear/Conv input
    per_channel: bool = True  # one weight scale per output channel (else per tensor)
    method: RangeMethod = "minmax"  # activation ranges: minmax, percentile or mse
    calibration_size: Annotated[int, Ge(1)] = 256  # training inputs used to calibrate

    touches = frozenset({"eval_model"})

    def __post_init__(self) -> None:
        _check_bits("weight_bits", self.weight_bits)
        _check_bits("act_bits", self.act_bits)
        if self.method not in ("minmax", "percentile", "mse"):
            raise ValueError(f"method must be 'minmax', 'percentile' or 'mse', got "
                             f"{self.method!r}")
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be >= 1, got {self.calibration_size}")

    def eval_model(self, state: Any) -> nn.Module | None:
        return post_training_quantize(state.model, calibration_inputs(state, self.name,
                                                                      self.calibration_size),
                                      self.weight_bits, self.act_bits, self.per_channel,
                                      self.method)


def calibration_inputs(state: Any, technique: str, size: int) -> Tensor:
    """The first ``size`` training inputs of a run (``state.train_data``), for calibration."""
    if state.train_data is None:
        raise ValueError(f"{technique} calibrates on the training inputs, but this run's "
                         "training set is not given as tensors (state.train_data is None)")
    return state.train_data[0][:size]
