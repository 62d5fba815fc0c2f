"""Norm, margin and flatness measures of "Fantastic Generalization Measures" (Jiang et al.),
BatchNorm folding, and distance from initialization (#3).

Every function works on any ``nn.Module``: it reads a private (and, where it says so,
BatchNorm-folded) copy, so the model's parameters, gradients, buffers and training mode are left
exactly as they were, and it draws its randomness from a local ``torch.Generator``.

Conventions (Jiang et al.'s equation numbers in brackets):

* **Folding first.** Every BatchNorm that directly follows a ``Linear``/``Conv`` in an
  ``nn.Sequential`` is folded into it (:func:`fold_batch_norm`); the same is done to the initial
  weights w⁰. The norms then see the function the network computes in eval mode.
* **Weight matrices.** The norms use only the parameters with two or more dimensions (the
  weights of linear, convolutional and embedding layers; no biases, no normalization scales),
  each reshaped to ``(shape[0], -1)``: W_1 … W_d; ω = their number of entries.
* **Margin.** γ = the ⌊m/10⌋-th smallest margin z_y − max_{j≠y} z_j over the m training
  examples (the 10th percentile), its absolute value taken in the margin-normalized measures.

What was checked, and against what: the definitions, the log forms, the margin percentile, the
path norm (squared parameters, biases included, all-ones input), the PAC-Bayes search (bisection
on [0, 2], depth 15, 10 Monte-Carlo draws, target deviation 0.1, tolerance 0.01, magnitude
ε = 1e-3) and the bound shapes were read in the port of the paper's measures by Dziugaite et al.
(``nitarshan/robust-generalization-measures``, ``data/generation/measures.py``, which keeps
the paper's equation numbers and credits the script it adapts the σ′ search from); the paper's
own text was not available here. Where this module differs from that port, on purpose: (i) the
noise has standard deviation σ, and √(σ²w_i² + ε²) magnitude-aware (the port passes σ², resp.
σ²w_i² + ε², as the standard deviation: a known bug); (ii) the search uses the signed *rise* of
the error (the port uses |change|, which also counts an improvement); (iii) the magnitude-aware
"orig" bound uses w_i, not w_i − w⁰_i, in its denominator (the port keeps w − w⁰ there).

Assumptions, not verified against the paper's text ([recon] in the research notes): the
worst-case sharpness radius α′ (projected sign-gradient ascent on the cross-entropy, from a
uniform random start in the box, 20 steps of 2.5·r/steps, the error rise then compared with
0.1; the same bisection as σ′) and the "sharpness_init/orig" bound shapes
‖v‖²·log(2ω)/(4α′²) + log(m/α′) + 10.

References:
    Fantastic Generalization Measures and Where to Find Them (arXiv:1912.02178).
    Train longer, generalize better: closing the generalization gap in large batch training of
    neural networks (arXiv:1705.08741): ‖w_t − w_0‖ grows like log t.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.diag(torch.tensor([3.0, 1.0])))
    ...     _ = net[2].weight.fill_(1.0)
    >>> path_norm(net, (2,))  # 1·9 + 1·1
    10.0
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Interval
from heldout.core.measure import EvalContext, Measure, check_splits, is_classification
from heldout.models.layers import TokenLinear
from heldout.registry import MEASURES

__all__ = [
    "DistanceFromInit",
    "Margin",
    "Norms",
    "distance_from_init",
    "fold_batch_norm",
    "log_growth_fit",
    "margin_quantile",
    "margins",
    "norm_measures",
    "path_norm",
    "weight_matrices",
]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_JIANG = "Fantastic Generalization Measures and Where to Find Them (arXiv:1912.02178)"


# --------------------------------------------------------------------------- BatchNorm folding


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, in eval mode, with each foldable BatchNorm folded away.

    A ``BatchNorm{1,2,3}d`` with running statistics that directly follows a ``Linear`` or
    ``Conv{1,2,3}d`` inside an ``nn.Sequential`` is folded into that layer and replaced by
    ``nn.Identity``: with s = γ/√(running_var + eps), the layer's weight rows (output channels)
    are multiplied by s and its bias becomes s·(b − running_mean) + β (b = 0 when the layer
    had none; a bias is then created). The copy computes exactly the eval-mode function of
    ``model``. Other BatchNorms (after a pooling, in a custom ``forward``, without running
    statistics) are left as they are.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> type(fold_batch_norm(net)[1]).__name__
        'Identity'
    """
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for module in list(folded.modules()):
            if isinstance(module, nn.Sequential):
                _fold_sequential(module)
    return folded.eval()


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for before, after in zip(names, names[1:], strict=False):
        layer, norm = seq._modules[before], seq._modules[after]
        if (isinstance(layer, _FOLDABLE) and isinstance(norm, _BATCH_NORMS)
                and norm.running_mean is not None and norm.running_var is not None
                and norm.num_features == layer.weight.shape[0]):
            _fold_into(layer, norm)
            seq._modules[after] = nn.Identity()


def _fold_into(layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d,
               norm: nn.modules.batchnorm._BatchNorm) -> None:
    assert norm.running_mean is not None and norm.running_var is not None
    weight = layer.weight
    scale = (norm.running_var + norm.eps).rsqrt().to(weight.dtype)
    shift = torch.zeros_like(scale)
    if norm.affine:
        scale = scale * norm.weight.to(weight.dtype)
        shift = norm.bias.to(weight.dtype)
    weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
    new_bias = scale * (bias - norm.running_mean.to(weight.dtype)) + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


# --------------------------------------------------------------------------- norms


def weight_matrices(model: nn.Module) -> list[Tensor]:
    """The parameters of ``model`` with two or more dimensions, each reshaped to
    ``(shape[0], -1)`` and detached: the W_i of the norm measures (a conv kernel becomes
    out × (in·k·k)). Fold BatchNorm first (:func:`fold_batch_norm`) where the model has it."""
    return [p.detach().reshape(p.shape[0], -1) for p in model.parameters() if p.dim() >= 2]


def _spectral_norm(matrix: Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.double(), ord=2))


def norm_measures(
    weights: Sequence[Tensor],
    initial_weights: Sequence[Tensor] | None = None,
    margin: float | None = None,
) -> dict[str, float]:
    """The spectral, Frobenius and distance measures of Jiang et al. from the matrices W_i.

    With ‖·‖₂ the largest singular value, ‖·‖_F the Frobenius norm, d = len(weights) and
    γ = |margin| (see :func:`margin_quantile`):

    * ``log_prod_of_spec`` (32) = Σ_i log ‖W_i‖₂²; ``log_sum_of_spec`` (35) = log d + (32)/d;
    * ``fro_over_spec`` (33) = Σ_i ‖W_i‖_F²/‖W_i‖₂²;
    * ``log_prod_of_fro`` (37) = Σ_i log ‖W_i‖_F²; ``log_sum_of_fro`` (39) = log d + (37)/d;
    * ``param_norm`` (42) = Σ_i ‖W_i‖_F²;
    * with ``initial_weights`` W⁰_i: ``fro_dist`` (40) = Σ_i ‖W_i − W⁰_i‖_F²,
      ``dist_spec_init`` (41) = Σ_i ‖W_i − W⁰_i‖₂²;
    * with ``margin``: ``log_prod_of_spec_over_margin`` (31) = (32) − 2 log γ,
      ``log_sum_of_spec_over_margin`` (34) = log d + (31)/d, ``log_spec_orig`` (30) =
      (31) + log (33), ``log_prod_of_fro_over_margin`` (36) = (37) − 2 log γ,
      ``log_sum_of_fro_over_margin`` (38) = log d + (36)/d; with both, ``log_spec_init`` (29) =
      (31) + log Σ_i ‖W_i − W⁰_i‖_F²/‖W_i‖₂².

    Returns ``{}`` for an empty ``weights``.

    Example:
        >>> out = norm_measures([torch.diag(torch.tensor([2.0, 1.0]))])
        >>> round(out["log_prod_of_spec"], 6) == round(math.log(4.0), 6)
        True
    """
    if not weights:
        return {}
    d = len(weights)
    spec = [_spectral_norm(w) ** 2 for w in weights]
    fro = [float(w.double().square().sum()) for w in weights]
    log_prod_spec = sum(math.log(s) for s in spec)
    log_prod_fro = sum(math.log(f) for f in fro)
    fro_over_spec = sum(f / s for f, s in zip(fro, spec, strict=True))
    out = {
        "log_prod_of_spec": log_prod_spec,
        "log_sum_of_spec": math.log(d) + log_prod_spec / d,
        "fro_over_spec": fro_over_spec,
        "log_prod_of_fro": log_prod_fro,
        "log_sum_of_fro": math.log(d) + log_prod_fro / d,
        "param_norm": sum(fro),
    }
    dist_fro: list[float] | None = None
    if initial_weights is not None:
        if len(initial_weights) != d:
            raise ValueError(f"initial_weights has {len(initial_weights)} matrices, weights {d}")
        deltas = [w.double() - w0.to(w.device).double().reshape(w.shape)
                  for w, w0 in zip(weights, initial_weights, strict=True)]
        dist_fro = [float(v.square().sum()) for v in deltas]
        out["fro_dist"] = sum(dist_fro)
        out["dist_spec_init"] = sum(_spectral_norm(v) ** 2 for v in deltas)
    if margin is not None:
        log_gamma_sq = 2.0 * math.log(abs(margin)) if margin != 0 else -math.inf
        spec_over_margin = log_prod_spec - log_gamma_sq
        fro_over_margin = log_prod_fro - log_gamma_sq
        out["log_prod_of_spec_over_margin"] = spec_over_margin
        out["log_sum_of_spec_over_margin"] = math.log(d) + spec_over_margin / d
        out["log_spec_orig"] = spec_over_margin + math.log(fro_over_spec)
        out["log_prod_of_fro_over_margin"] = fro_over_margin
        out["log_sum_of_fro_over_margin"] = math.log(d) + fro_over_margin / d
        if dist_fro is not None:
            ratio = sum(f / s for f, s in zip(dist_fro, spec, strict=True))
            out["log_spec_init"] = spec_over_margin + (math.log(ratio) if ratio > 0
                                                       else -math.inf)
    return out


def path_norm(model: nn.Module, input_shape: Sequence[int], fold: bool = True) -> float:
    """Σ_j f_{w²}(1)_j: the network with every parameter squared (biases included), run in
    eval mode on one all-ones input of ``input_shape``, its outputs summed (Jiang et al. (44)).

    For a ReLU network (linear layers, ReLU, average pooling) that is the sum over all
    input-output paths of the product of the squared weights along the path. BatchNorm is
    folded first (``fold``); a BatchNorm that cannot be folded stays in the copy, its
    parameters squared like the rest. A model whose first layer is a :class:`TokenLinear`
    takes its all-ones input as a float vector of the one-hot width (``(in_features,)``).

    Example:
        >>> lin = nn.Linear(3, 1, bias=False)
        >>> _ = nn.init.constant_(lin.weight, 2.0)
        >>> path_norm(lin, (3,))  # 3 paths of weight 2² each
        12.0
    """
    net = fold_batch_norm(model) if fold else copy.deepcopy(model).eval()
    params = list(net.parameters())
    with torch.no_grad():
        for p in params:
            p.pow_(2)
        ref = next((p for p in params if p.is_floating_point()), None)
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        out = net(torch.ones((1, *input_shape), device=device, dtype=dtype))
    return float(out.double().sum())


def _all_ones_shape(model: nn.Module, x: Tensor) -> tuple[int, ...] | None:
    """The input shape of the path norm: that of one example, or the one-hot width of a
    :class:`TokenLinear` first layer; ``None`` for other token models (embeddings)."""
    if x.is_floating_point():
        return tuple(x.shape[1:])
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)), None)
    return (first.in_features,) if isinstance(first, TokenLinear) else None


# --------------------------------------------------------------------------- margins


def margins(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example margin z_y − max_{j≠y} z_j (negative where the example is misclassified)."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"margins need (n, classes >= 2) logits, got {tuple(logits.shape)}")
    z = logits.double()
    correct = z.gather(1, targets.long().view(-1, 1)).squeeze(1)
    others = z.scatter(1, targets.long().view(-1, 1), -math.inf)
    return correct - others.max(dim=1).values


def margin_quantile(logits: Tensor, targets: Tensor, percentile: float = 10.0) -> float:
    """The k-th smallest margin with k = max(1, ⌊m·percentile/100⌋): for the default 10, the
    (m/10)-th smallest of m margins, Jiang et al.'s γ (signed here; the measures take |γ|).

    Example:
        >>> logits = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 0.5]])
        >>> margin_quantile(logits, torch.tensor([0, 1, 0]), percentile=50.0)  # sorted .5, 2, 2
        0.5
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    values = margins(logits, targets)
    k = max(1, math.floor(len(values) * percentile / 100))
    return float(values.kthvalue(k).values)


# --------------------------------------------------------------------------- distance


def distance_from_init(model: nn.Module, initial_state: Mapping[str, Tensor]) -> float:
    """‖w − w⁰‖₂ over all floating-point parameters of ``model`` (by name in
    ``initial_state``, the state_dict before training), with no folding: the quantity whose
    logarithmic growth in the number of updates Hoffer et al. (#3) report.

    Example:
        >>> lin = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.constant_(lin.weight, 1.0)
        >>> distance_from_init(lin, {"weight": torch.tensor([[4.0]])})
        3.0
    """
    total = torch.zeros((), dtype=torch.float64)
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        if name not in initial_state:
            raise ValueError(f"initial_state has no entry {name!r}")
        w0 = initial_state[name].detach().to(p.device, torch.float64)
        total += (p.detach().double() - w0).square().sum().cpu()
    return float(total.sqrt())


def log_growth_fit(steps: Sequence[float], distances: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of distance ≈ a + b·log t over the points with t > 0: the "ultra-slow
    diffusion" of Hoffer et al. (#3). Returns ``slope`` b, ``intercept`` a and ``r2``.

    Example:
        >>> fit = log_growth_fit([1, 10, 100], [1.0, 3.0, 5.0])
        >>> round(fit["slope"] * math.log(10), 6), round(fit["r2"], 6)
        (2.0, 1.0)
    """
    pairs = [(math.log(t), d) for t, d in zip(steps, distances, strict=True) if t > 0]
    if len(pairs) < 2:
        raise ValueError("log_growth_fit needs at least two points with t > 0")
    xs, ys = zip(*pairs, strict=True)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("log_growth_fit needs at least two distinct steps")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in pairs) / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in pairs)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2}


# --------------------------------------------------------------------------- adapters


@MEASURES.register(
    "norms",
    summary="Jiang et al.'s norm measures: spectral, Frobenius, path norm, distance from init "
    "(BatchNorm folded; log forms).",
    references=(_JIANG,),
)
@dataclass
class Norms(Measure):
    """:func:`norm_measures` and :func:`path_norm` on the BatchNorm-folded model, with the
    margin γ of the split (by default train) for the margin-normalized forms.

    Keys: those of :func:`norm_measures` (``fro_dist``, ``dist_spec_init``, ``log_spec_init``
    only when the initial state is known), ``num_params`` (20: ω, entries of the W_i),
    ``path_norm`` (44) and ``path_norm_over_margin`` (43) = (44)/γ² (path norm only where
    the input can be all ones: continuous inputs or a :class:`TokenLinear` first layer; the
    margin forms only for class-label targets).
    """

    fold_batch_norm: bool = True  # fold BatchNorm into the preceding layer first (the paper)
    # the margin γ is this percentile of the split's margins
    percentile: Annotated[float, Interval(0, 100, closed="right")] = 10.0
    splits: tuple[str, ...] = ("train",)  # where to compute it (one SVD per layer)

    def __post_init__(self) -> None:
        check_splits(self.splits)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        model = ctx.model
        net = fold_batch_norm(model) if self.fold_batch_norm else copy.deepcopy(model).eval()
        weights = weight_matrices(net)
        initial = None
        init_net = ctx.initial_model()  # None when the initial state is unknown
        if init_net is not None:
            init_net = fold_batch_norm(init_net) if self.fold_batch_norm else init_net
            initial = weight_matrices(init_net)
        gamma = None
        if is_classification(ctx.targets) and ctx.logits.dim() == 2:
            gamma = abs(margin_quantile(ctx.logits, ctx.targets, self.percentile))
        out = norm_measures(weights, initial, gamma)
        out["num_params"] = float(sum(w.numel() for w in weights))
        x, _ = next(iter(ctx.batches()))
        shape = _all_ones_shape(model, x)
        if shape is not None:
            out["path_norm"] = path_norm(model, shape, fold=self.fold_batch_norm)
            if gamma is not None:
                out["path_norm_over_margin"] = (out["path_norm"] / gamma**2 if gamma > 0
                                                else math.inf)
        return out


@MEASURES.register(
    "margin",
    summary="10th-percentile output margin z_y - max_{j!=y} z_j and Jiang et al.'s 1/gamma^2.",
    references=(_JIANG,),
)
@dataclass
class Margin(Measure):
    """:func:`margin_quantile` on every split with class-label targets: ``margin`` (signed γ)
    and ``inverse_margin`` = 1/γ² (Jiang et al. (22)). Cheap: it reads the shared logits."""

    # γ is this percentile of the margins (the paper: 10)
    percentile: Annotated[float, Interval(0, 100, closed="right")] = 10.0

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if not is_classification(ctx.targets) or ctx.logits.dim() != 2:
            return {}
        gamma = margin_quantile(ctx.logits, ctx.targets, self.percentile)
        return {"margin": gamma, "inverse_margin": 1 / gamma**2 if gamma != 0 else math.inf}


@MEASURES.register(
    "distance_from_init",
    summary="Distance of the weights from their initialization, ||w - w0|| (grows like log t).",
    papers=(3,),
    references=(_JIANG,),
)
@dataclass
class DistanceFromInit(Measure):
    """:func:`distance_from_init` over all parameters (unfolded): ``distance_from_init``
    ‖w − w⁰‖ and ``relative_distance_from_init`` ‖w − w⁰‖/‖w⁰‖. Needs the initial state
    (the Trainer passes it); without it the measure returns nothing. Fit the logged values
    against the step with :func:`log_growth_fit` to check Hoffer et al.'s log t growth."""

    splits: tuple[str, ...] = ("train",)  # it does not depend on the data: compute it once

    def __post_init__(self) -> None:
        check_splits(self.splits)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits or ctx.initial_state is None:
            return {}
        distance = distance_from_init(ctx.model, ctx.initial_state)
        initial_norm = math.sqrt(sum(
            float(ctx.initial_state[name].double().square().sum())
            for name, p in ctx.model.named_parameters() if p.is_floating_point()))
        relative = distance / initial_norm if initial_norm > 0 else math.inf
        return {"distance_from_init": distance, "relative_distance_from_init": relative}
