"""Gradient coherence (#10): how much the per-example gradients of a sample agree.

Per-example gradients come from ``torch.func`` (``functional_call`` + ``vmap(grad)``) in
memory-bounded chunks, never from a Python loop over examples: :func:`per_example_gradients`
(the ``(n, P)`` matrix) and :func:`iter_per_example_gradients` (its rows chunk by chunk) are
public building blocks; the opposing-signals gradient check reuses them, and the empirical
NTK (:mod:`heldout.measures.kernel`) shares the eval-mode and parameter handling. Coherence
needs only Σ g_i and Σ ‖g_i‖²: on MLPs it gets them from one batched backward and the
per-layer norm identity, without forming any per-example gradient (~36x faster than a loop
in ``bench/per_example_grads.py``, against ~2x for chunks of vmap(grad)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import vmap

from heldout.core.bounds import Annotated, Ge
from heldout.core.measure import EvalContext, Measure, eval_mode
from heldout.core.per_example import (
    LossFn,
    differentiable_parameters,
    gradient_chunks,
    iter_per_example_gradients,
    per_example_gradients,
    per_example_loss,
)
from heldout.core.sampling import sample_indices
from heldout.registry import MEASURES

__all__ = [
    "Coherence",
    "GradientCoherence",
    "coherence",
    "iter_per_example_gradients",
    "layerwise_m_coherence",
    "m_coherence",
    "per_example_gradients",
    "per_example_loss",
]

# --------------------------------------------------------------------------- coherence


@dataclass(frozen=True)
class Coherence:
    """Coherence of the gradients g_1..g_m of a sample of ``m`` examples.

    ``alpha`` = ‖Σ_i g_i‖² / (m Σ_i ‖g_i‖²) = ‖mean g‖² / mean ‖g‖² ∈ [0, 1]: 1 when all
    gradients are identical, 1/m when they are mutually orthogonal (NaN when every g_i = 0).
    """

    alpha: float  # ‖Σ g_i‖² / (m Σ ‖g_i‖²)
    m: int  # sample size

    @property
    def m_coherence(self) -> float:
        """m·α = ‖Σ g_i‖² / Σ ‖g_i‖² ∈ [0, m]: 1 for orthogonal, m for identical gradients;
        "how many examples of the sample a small step along one example's gradient helps"."""
        return self.m * self.alpha

    @property
    def off_diagonal(self) -> float:
        """(m·α − 1)/(m − 1): the mean pairwise g_i·g_j over the mean ‖g_i‖², i ≠ j only."""
        return (self.m_coherence - 1.0) / (self.m - 1) if self.m > 1 else float("nan")


def _from_sums(sum_norm2: float, squares: float, m: int) -> Coherence:
    """From ‖Σ g_i‖² and Σ ‖g_i‖² (NaN when every gradient is zero)."""
    if m == 0 or squares == 0.0:
        return Coherence(float("nan"), m)
    return Coherence(sum_norm2 / (m * squares), m)


def coherence(gradients: Tensor) -> Coherence:
    """:class:`Coherence` of the rows of an ``(m, P)`` matrix of per-example gradients.

    Example:
        >>> coherence(torch.eye(4)).m_coherence  # orthogonal: each helps only itself
        1.0
        >>> coherence(torch.ones(4, 3)).alpha  # identical
        1.0
    """
    g = gradients.reshape(len(gradients), -1).double()
    return _from_sums(float(g.sum(0).square().sum()), float(g.square().sum()), len(g))


def _module_groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names per module ("linear1": ["linear1.weight", "linear1.bias"])."""
    groups: dict[str, list[str]] = {}
    for name in differentiable_parameters(model):
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(name)
    return groups


GHOST_CHUNK = 1024  # examples per batched pass of the per-layer norm path (activations only)


def _linear_sums(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn
) -> tuple[dict[str, Tensor], dict[str, float]] | None:
    """S = Σ g_i and Q = Σ ‖g_i‖² per parameter without any per-example gradient, for models
    whose parameters all sit in ``nn.Linear`` layers (:class:`TokenLinear` included) applied
    once per forward to (batch, features) inputs — the MLPs; None for any other model.

    One batched backward of Σ_i ℓ_i gives S and, at each layer's output, δ_i = ∂ℓ_i/∂z_i (in
    eval mode the examples do not interact). Example i's gradient of a layer z = W a + b is
    δ_i a_iᵀ for W and δ_i for b, so ‖g_i‖² = ‖δ_i‖²·‖a_i‖² + ‖δ_i‖² — the per-layer norm
    identity of Goodfellow, "Efficient Per-Example Gradient Computations" (arXiv:1510.01799).
    A token layer adds one weight column per position (distinct columns), so ‖δ_i‖² times
    the number of positions."""
    from heldout.models.layers import TokenLinear

    named = dict(model.named_parameters())
    layers: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        if not isinstance(module, nn.Linear):
            return None
        layers[name] = module
    owned = {f"{m}.{p}" if m else p for m, layer in layers.items()
             for p, _ in layer.named_parameters(recurse=False)}
    if owned != set(named) or not all(p.requires_grad for p in named.values()):
        return None
    seen: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def remember(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        seen.setdefault(module, []).append((args[0], output))

    def one(output: Tensor, target: Tensor) -> Tensor:
        return loss_fn(output.unsqueeze(0), target.unsqueeze(0))

    totals: dict[str, Tensor] = {}
    squares: dict[str, float] = {}
    handles = [layer.register_forward_hook(remember) for layer in layers.values()]
    try:
        for start in range(0, len(inputs), GHOST_CHUNK):
            x, y = inputs[start : start + GHOST_CHUNK], targets[start : start + GHOST_CHUNK]
            seen.clear()
            with eval_mode(model), torch.enable_grad():
                total = vmap(one)(model(x), y).sum()
            calls = [seen.get(layer, []) for layer in layers.values()]
            if any(len(c) != 1 or c[0][0].dim() != 2 or c[0][1].dim() != 2 for c in calls):
                return None  # a layer shared, unused or applied to sequences
            outputs = [c[0][1] for c in calls]
            grads = torch.autograd.grad(total, [*named.values(), *outputs])
            for name, g in zip(named, grads, strict=False):
                part = g.reshape(-1).double()
                totals[name] = totals[name] + part if name in totals else part
            for (name, layer), (a, _), delta in zip(layers.items(), (c[0] for c in calls),
                                                    grads[len(named):], strict=True):
                d2 = delta.double().square().sum(1)
                if isinstance(layer, TokenLinear) and not a.is_floating_point():
                    a2 = torch.full_like(d2, float(layer.n_positions))
                else:
                    a2 = a.detach().double().square().sum(1)
                prefix = f"{name}." if name else ""
                squares[prefix + "weight"] = squares.get(prefix + "weight", 0.0) + float(
                    (d2 * a2).sum())
                if layer.bias is not None:
                    squares[prefix + "bias"] = squares.get(prefix + "bias", 0.0) + float(
                        d2.sum())
    finally:
        for handle in handles:
            handle.remove()
    return totals, squares


def _chunk_sums(
    model: nn.Module, inputs: Tensor, targets: Tensor, chunk_size: int, loss_fn: LossFn
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """S = Σ g_i and Q = Σ ‖g_i‖² per parameter from chunks of ``vmap(grad)`` gradients."""
    totals: dict[str, Tensor] = {}
    squares: dict[str, float] = {}
    for _, grads in gradient_chunks(model, inputs, targets, chunk_size, loss_fn):
        for name, g in grads.items():
            g = g.reshape(len(g), -1)
            part = g.sum(0).double()
            totals[name] = totals[name] + part if name in totals else part
            # square().sum() sums pairwise (~1e-7 relative); a float32 vector_norm of a few
            # million entries was off by up to 1e-3
            squares[name] = squares.get(name, 0.0) + float(g.square().sum())
    return totals, squares


def _accumulate(
    model: nn.Module, inputs: Tensor, targets: Tensor, chunk_size: int,
    loss_fn: LossFn | None, groups: dict[str, list[str]] | None = None,
) -> dict[str, tuple[float, float]]:
    """(‖Σ g_i‖², Σ ‖g_i‖²) per group of parameters (default: one group "" of all), in O(P)
    memory: a running sum S = Σ g_i and a scalar Q = Σ ‖g_i‖² per parameter tensor, never
    the m gradients at once. MLPs take the per-layer norm path (:func:`_linear_sums`: no
    per-example gradient at all); other models reduce chunks of ``vmap(grad)`` gradients,
    each in its own dtype (a float64 copy of a chunk would cost more than the gradients
    themselves). S and Q accumulate in float64."""
    if len(inputs) != len(targets):
        raise ValueError(f"inputs has {len(inputs)} rows but targets has {len(targets)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    loss_fn = loss_fn or per_example_loss("auto", targets)
    fast = _linear_sums(model, inputs, targets, loss_fn)
    totals, squares = fast if fast is not None else _chunk_sums(
        model, inputs, targets, chunk_size, loss_fn)
    if groups is None:
        groups = {"": list(differentiable_parameters(model))}
    return {
        group: (sum(float(totals[n].square().sum()) for n in names if n in totals),
                sum(squares.get(n, 0.0) for n in names))
        for group, names in groups.items()
    }


def m_coherence(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 64,
    loss_fn: LossFn | None = None,
) -> Coherence:
    """Coherence of the per-example loss gradients of the sample ``(inputs, targets)``.

    α = E_{z,z'}[g_z·g_z'] / E_z[g_z·g_z] with z, z' drawn independently and uniformly from
    the m examples, i.e. α = ‖Σ_i g_i‖² / (m Σ_i ‖g_i‖²), and m-coherence = m·α. Computed in
    O(P) memory from the running sum Σ g_i and the scalar Σ ‖g_i‖² — on MLPs from one
    batched backward and each layer's output gradients (:func:`_linear_sums`), otherwise over
    chunks of per-example gradients (vmap(grad), as in :func:`iter_per_example_gradients`) —
    in eval mode; the sums are kept in float64 (a float32 model gives α to ~1e-6 relative;
    3e-8 against a float64 loop at α ≈ 8e-4 in ``bench/per_example_grads.py`` by the vmap
    path). m-coherence grows with m, so always report m;
    it also collapses as the loss (hence ‖g_i‖) goes to 0.

    Verified against the abstracts: m-coherence is "the number of examples in the sample that
    benefit from a small step along the gradient of any one example on average", close to 1
    for independent (orthogonal) gradients, computable in O(m) (arXiv:2008.01217).

    References:
        On the Generalization Mystery in Deep Learning (arXiv:2203.10036).
        Making Coherence Out of Nothing At All: Measuring the Evolution of Gradient Alignment
        (arXiv:2008.01217).

    Example:
        >>> net = torch.nn.Linear(4, 3, bias=False)
        >>> x = torch.eye(4)  # one-hot inputs: the per-example gradients are orthogonal
        >>> round(m_coherence(net, x, torch.zeros(4, dtype=torch.long)).m_coherence, 6)
        1.0
    """
    return _from_sums(*_accumulate(model, inputs, targets, chunk_size, loss_fn)[""], len(inputs))


def layerwise_m_coherence(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 64,
    loss_fn: LossFn | None = None,
) -> dict[str, Coherence]:
    """:func:`m_coherence` per module, the gradients restricted to that module's parameters
    (keys are module names: ``"linear1"`` covers ``linear1.weight`` and ``linear1.bias``).
    One pass over the sample serves every module.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
        >>> sorted(layerwise_m_coherence(net, torch.randn(6, 4), torch.zeros(6, dtype=torch.long)))
        ['0', '2']
    """
    sums = _accumulate(model, inputs, targets, chunk_size, loss_fn, _module_groups(model))
    return {name: _from_sums(*pair, len(inputs)) for name, pair in sums.items()}


# --------------------------------------------------------------------------- adapter


@MEASURES.register(
    "gradient_coherence",
    summary="Coherence of per-example gradients on a fixed sample: alpha and m-coherence "
    "(1 = orthogonal, m = identical).",
    papers=(10,),
    references=(
        "Making Coherence Out of Nothing At All: Measuring the Evolution of Gradient "
        "Alignment (arXiv:2008.01217)",
    ),
)
@dataclass
class GradientCoherence(Measure):
    """:func:`m_coherence` on a fixed random sample of each listed split.

    Reports ``gradient_coherence`` (α ∈ [0, 1]), ``m_coherence`` (m·α ∈ [0, m]) and
    ``coherence_sample_size`` (m); with ``per_layer`` also ``m_coherence.<module>``. The sample
    is drawn once per split from ``seed`` (the same examples at every evaluation, as the
    method asks: not the training minibatch). [recon] m = 1024: the spec suggests 256-4096;
    the papers' own sample sizes were not checked.

    References:
        On the Generalization Mystery in Deep Learning (arXiv:2203.10036).

    Example:
        >>> from heldout.core import evaluate
        >>> net = torch.nn.Linear(4, 3)
        >>> data = (torch.randn(20, 4), torch.randint(0, 3, (20,)))
        >>> sorted(evaluate(net, {"train": data}, [GradientCoherence(sample_size=8)]))
        ['train/coherence_sample_size', 'train/gradient_coherence', 'train/m_coherence']
    """

    # m: examples drawn (without replacement) from the split
    sample_size: Annotated[int, Ge(2)] = 1024
    # examples per vmap(grad) call (non-MLP models): memory ~ chunk x #params
    chunk_size: Annotated[int, Ge(1)] = 64
    seed: int = 0  # seed of the sample draw
    loss: Literal["auto", "cross_entropy", "mse"] = "auto"  # auto: by the targets' dtype
    per_layer: bool = False  # also m-coherence restricted to each module's parameters
    splits: tuple[str, ...] = ("train",)  # where to compute it (expensive)

    def __post_init__(self) -> None:
        if self.loss not in ("auto", "cross_entropy", "mse"):
            raise ValueError(f"loss must be auto, cross_entropy or mse, got {self.loss!r}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        index = sample_indices(len(y), self.sample_size, self.seed).to(y.device)
        x, y = x[index], y[index]
        loss_fn = per_example_loss(self.loss, y)
        groups = _module_groups(ctx.model) if self.per_layer else None
        sums = _accumulate(ctx.model, x, y, self.chunk_size, loss_fn, groups)
        # the whole gradient's sums are the sums over the modules' (disjoint column ranges)
        overall = _from_sums(sum(s for s, _ in sums.values()),
                             sum(q for _, q in sums.values()), len(y))
        out = {
            "gradient_coherence": overall.alpha,
            "m_coherence": overall.m_coherence,
            "coherence_sample_size": float(overall.m),
        }
        if self.per_layer:
            out.update({f"m_coherence.{name}": _from_sums(*pair, len(y)).m_coherence
                        for name, pair in sums.items()})
        return out
