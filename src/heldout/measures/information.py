"""Adaptive mutual-information estimators (#6) and the information plane.

For a deterministic network on a finite dataset every input ``x`` is one symbol of a discrete
``X`` (each example has probability 1/N), a hidden layer ``T = T_l(X)`` is a function of ``X``,
and the information plane tracks ``(I(X;T_l), I(T_l;Y))`` per layer over training. The true
``I(X;T)`` of a deterministic network is ``H(X)`` or infinite, so both quantities are
*estimator-dependent diagnostics*: here T is either discretized (adaptive binning) or blurred
with Gaussian noise (adaptive KDE), which is what makes them finite.

* :func:`binned_information`: entropy-based adaptive binning (EBAB). The layer's activations
  are pooled, bin edges are placed so that every bin holds the same number of *distinct*
  activation values (or, with ``binning="mass"``, the same number of samples), each example's
  row of bin indices is one discrete symbol, and plug-in entropies give
  ``I(X;T) = H(T) − H(T|X)`` (``= H(T)`` for distinct inputs) and
  ``I(T;Y) = H(T) − Σ_y p(y) H(T | Y=y)``, in bits.
* :func:`kde_information`: adaptive KDE (aKDE). ``T + N(0, σ²I)`` with σ proportional to the
  layer's activity range; the Kolchinsky–Tracey pairwise-distance bounds on the entropy of the
  Gaussian mixture give ``I(X;T) = −(1/N) Σ_i log (1/N) Σ_j exp(−‖t_i − t_j‖² / (2σ²))``
  (KL upper bound; ``8σ²`` for the Bhattacharyya lower bound) and
  ``I(T;Y) = Ĥ(T) − Σ_y p(y) Ĥ(T | Y=y)``.
* :func:`ksg_mutual_information`: the Kraskov–Stögbauer–Grassberger k-nearest-neighbour
  estimator for *continuous* pairs, the general-purpose path (checked against jointly Gaussian
  variables, whose MI is ``−½ log(1 − ρ²)``).

What is verified. Against the official code (``ivansche/adaptive_estimators``,
``idnns/information/information_process.py`` and ``mutual_information_calculation.py``): per-layer
pooled bins, the lowest value (0 for ReLU: the inactive state) in a bin of its own and
``n_bins`` edges at every ``U/n_bins``-th of the ``U`` sorted distinct values above it, 30 bins,
the conditional-entropy forms of ``I(X;T)`` and ``I(T;Y)``, bits. The KDE bounds follow
Kolchinsky & Tracey's pairwise-distance estimator as the spec describes it. Not verified: the
paper's exact rule for the adaptive noise — its abstract only says the estimators "adapt to
hidden activity"; the official repository hard-codes σ = 0.01. Here σ = ``noise_scale`` × the
layer's largest absolute activation, with ``noise_scale = 0.1`` a heldout choice.

Layers. Unless named explicitly, the hidden layers are the outputs of the model's activation
modules (``nn.ReLU``, ``nn.GELU``, ``nn.Tanh``, ... see :data:`ACTIVATION_TYPES`) in
registration order: for heldout's MLP, ``act1``, ``act2``, ...; the head (logits) is not a
hidden layer. ``layer1`` is the first of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = [
    "ACTIVATION_TYPES",
    "InformationPlane",
    "adaptive_bin_edges",
    "bin_activations",
    "binned_information",
    "discrete_mutual_information",
    "entropy_bits",
    "hidden_layers",
    "kde_information",
    "ksg_mutual_information",
    "layer_activations",
]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)  # the modules whose outputs count as hidden layers (and whose inputs as pre-activations)

Binning = Literal["distinct", "mass"]
Bound = Literal["upper", "lower"]


# ----------------------------------------------------------------------------- layers

def hidden_layers(
    model: nn.Module, names: Sequence[str] = (), *, allow_empty: bool = False
) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are ``model``'s hidden layers: those named in ``names`` (in
    that order), or else every activation module (:data:`ACTIVATION_TYPES`) in registration
    order. Raises ValueError for an unknown name, and for a model without activation modules
    unless ``allow_empty``."""
    modules = dict(model.named_modules())
    if names:
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"layers: no module named {', '.join(map(repr, unknown))}; "
                             f"modules: {', '.join(n for n in modules if n)}")
        return [(n, modules[n]) for n in names]
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)]
    if not found and not allow_empty:
        raise ValueError(f"{type(model).__name__} has no activation modules; name the layers "
                         "to observe explicitly")
    return found


def layer_activations(
    model: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    layers: Sequence[str] = (),
    *,
    capture: Literal["output", "input"] = "output",
    batch_size: int = 8192,
) -> dict[str, Tensor]:
    """Each hidden layer's activations on ``inputs``, flattened to ``(N, units)``, keyed
    ``layer1``, ``layer2``, ... in the order of :func:`hidden_layers`.

    ``capture="input"`` records what enters each module instead (for activation modules: the
    pre-activations). The model runs in eval mode under ``no_grad`` (BatchNorm uses its running
    statistics and updates nothing); the hooks are removed and the train/eval mode restored
    however the forward pass ends. ``inputs`` is a tensor (run in chunks of ``batch_size``) or
    an iterable of input batches. A module called more than once per forward keeps its last
    call.
    """
    chosen = hidden_layers(model, layers)
    keys = [f"layer{i + 1}" for i in range(len(chosen))]
    current: dict[str, Tensor] = {}
    collected: dict[str, list[Tensor]] = {k: [] for k in keys}

    def hook_for(key: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            value = args[0] if capture == "input" else output
            current[key] = value.detach().reshape(len(value), -1)
        return hook

    batches = inputs.split(batch_size) if isinstance(inputs, Tensor) else inputs
    handles = [m.register_forward_hook(hook_for(k)) for k, (_, m) in zip(keys, chosen,
                                                                         strict=True)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                current.clear()
                model(x)
                for k in keys:
                    if k not in current:
                        raise RuntimeError(f"{k} ({chosen[keys.index(k)][0]}) was not called "
                                           "in the forward pass")
                    collected[k].append(current[k])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {k: torch.cat(v) for k, v in collected.items()}


# ----------------------------------------------------------------------------- discrete

def _row_symbols(rows: Tensor) -> Tensor:
    """One integer symbol per row: equal rows share a symbol."""
    flat = rows.reshape(len(rows), -1) if rows.dim() != 1 else rows[:, None]
    return torch.unique(flat, dim=0, return_inverse=True)[1]


def entropy_bits(symbols: Tensor) -> float:
    """Plug-in entropy ``−Σ p log₂ p`` of the empirical distribution of the rows of
    ``symbols`` (a 1-D tensor of symbols, or one symbol per row)."""
    counts = torch.unique(_row_symbols(symbols), return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def discrete_mutual_information(a: Tensor, b: Tensor) -> float:
    """Plug-in ``I(A;B) = H(A) + H(B) − H(A,B)`` in bits; each row of ``a`` and ``b`` is one
    symbol (equivalently ``H(A) − Σ_b p(b) H(A | B=b)``).

    Example:
        >>> discrete_mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 7, 7]))
        1.0
    """
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} rows but b has {len(b)}")
    sa, sb = _row_symbols(a), _row_symbols(b)
    joint = sa * (int(sb.max()) + 1) + sb
    return entropy_bits(sa) + entropy_bits(sb) - entropy_bits(joint)


def adaptive_bin_edges(values: Tensor, n_bins: int = 30, binning: Binning = "distinct") -> Tensor:
    """Left bin edges (ascending, distinct) for the pooled ``values`` of one layer.

    ``"distinct"`` (EBAB): the smallest value gets a bin of its own (for ReLU, the inactive
    state 0), then ``n_bins`` edges at every ``U/n_bins``-th of the ``U`` sorted distinct
    values above it, so each bin holds the same number of distinct activation levels.
    ``"mass"``: edges at the ``k/n_bins`` quantiles, so each bin holds about the same number
    of samples. Fewer edges result when there are fewer distinct values than bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    flat = values.reshape(-1)
    if binning == "distinct":
        distinct = torch.unique(flat)  # sorted
        low, above = distinct[:1], distinct[1:]
        index = (torch.arange(n_bins, dtype=torch.float64) * len(above) / n_bins).long()
        index = index.to(flat.device)
        edges = torch.cat([low, above[index]]) if len(above) else low
    elif binning == "mass":
        ordered = flat.sort().values
        index = (torch.arange(n_bins, dtype=torch.float64) * len(ordered) / n_bins).long()
        edges = ordered[index.to(flat.device)]
    else:
        raise ValueError(f"binning must be one of {get_args(Binning)}, got {binning!r}")
    return torch.unique(edges)


def bin_activations(activations: Tensor, n_bins: int = 30, binning: Binning = "distinct") -> Tensor:
    """The bin index of every activation (same shape), with the layer's pooled
    :func:`adaptive_bin_edges`: bin ``i`` is ``[edge_i, edge_{i+1})``."""
    edges = adaptive_bin_edges(activations, n_bins, binning)
    flat = activations.reshape(-1).contiguous()
    index = torch.searchsorted(edges.contiguous(), flat, right=True) - 1
    return index.reshape(activations.shape)


def binned_information(
    activations: Tensor,
    inputs: Tensor,
    targets: Tensor,
    n_bins: int = 30,
    binning: Binning = "distinct",
) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits for one layer by adaptive binning (EBAB).

    ``activations`` is ``(N, units)``; T is the row of bin indices of each example (bins pooled
    over the layer's units, :func:`bin_activations`); X is the example's input row (equal
    inputs are one symbol, so for distinct inputs and a deterministic net ``I(X;T) = H(T)``);
    Y the target. Both values are bounded by ``log₂ N``: when every example gets its own
    code, ``I(X;T)`` saturates at ``H(X)`` and says nothing.

    References:
        Chelombiev, Houghton, O'Donnell. Adaptive Estimators Show Information Compression in
        Deep Neural Networks. arXiv:1902.09037.

    Example:
        >>> t = torch.tensor([[0.0], [0.0], [1.0], [2.0]])
        >>> binned_information(t, torch.arange(4), torch.tensor([0, 0, 1, 1]), n_bins=2)
        (1.5, 1.0)
    """
    symbols = _row_symbols(bin_activations(activations.reshape(len(activations), -1),
                                           n_bins, binning))
    return (discrete_mutual_information(inputs, symbols),
            discrete_mutual_information(symbols, targets))


# ----------------------------------------------------------------------------- KDE

def _pairwise_entropy_term(sq_dist: Tensor, scale: float) -> float:
    """``−(1/n) Σ_i log (1/n) Σ_j exp(−d²_ij / scale)`` in nats."""
    n = sq_dist.shape[0]
    return float(-(torch.logsumexp(-sq_dist / scale, dim=1) - math.log(n)).mean())


def kde_information(
    activations: Tensor,
    targets: Tensor,
    noise_std: float,
    bound: Bound = "upper",
) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits for ``T + N(0, noise_std² I)`` by the pairwise-distance
    (Kolchinsky–Tracey) bounds on the entropy of a Gaussian mixture.

    With one mixture component per example, ``H(T|X)`` is the noise entropy and cancels:
    ``I(X;T) = −(1/N) Σ_i log (1/N) Σ_j exp(−‖t_i − t_j‖² / c)`` with ``c = 2σ²`` for the KL
    upper bound and ``c = 8σ²`` for the Bhattacharyya lower bound; ``I(T;Y)`` is the same term
    on all examples minus its ``p(y)``-weighted average within each class. Costs ``O(N² d)``.

    References:
        Chelombiev, Houghton, O'Donnell. Adaptive Estimators Show Information Compression in
        Deep Neural Networks. arXiv:1902.09037.
        Kolchinsky, Tracey. Estimating Mixture Entropy with Pairwise Distances.
        arXiv:1706.02419.

    Example:
        >>> t = torch.tensor([[0.0], [0.0], [10.0], [10.0]])
        >>> [round(v, 6) for v in kde_information(t, torch.tensor([0, 0, 1, 1]), 0.1)]
        [1.0, 1.0]
    """
    if noise_std <= 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std}")
    if bound not in get_args(Bound):
        raise ValueError(f"bound must be one of {get_args(Bound)}, got {bound!r}")
    t = activations.reshape(len(activations), -1).double()
    scale = (2.0 if bound == "upper" else 8.0) * noise_std**2
    sq = torch.cdist(t, t).square()
    whole = _pairwise_entropy_term(sq, scale)
    classes, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    conditional = 0.0
    for c in range(len(classes)):
        idx = (inverse == c).nonzero().squeeze(1)
        conditional += float(counts[c]) / len(t) * _pairwise_entropy_term(sq[idx][:, idx], scale)
    return whole / math.log(2), (whole - conditional) / math.log(2)


# ----------------------------------------------------------------------------- continuous

def ksg_mutual_information(a: Tensor, b: Tensor, k: int = 3, chunk: int = 2048) -> float:
    """Kraskov–Stögbauer–Grassberger estimate (their first estimator) of ``I(A;B)`` in bits
    for continuous ``a`` ``(N, d_a)`` and ``b`` ``(N, d_b)``.

    ``I = ψ(k) + ψ(N) − ⟨ψ(n_a + 1) + ψ(n_b + 1)⟩`` where ε_i is the max-norm distance from
    point i to its k-th neighbour in the joint space and ``n_a(i)`` counts the points strictly
    within ε_i in the A-space (likewise ``n_b``). Consistent for continuous distributions;
    ties (discrete values) bias it. Costs ``O(N² (d_a + d_b))`` in row chunks of ``chunk``.

    References:
        Kraskov, Stögbauer, Grassberger. Estimating Mutual Information.
        arXiv:cond-mat/0305641.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 1, generator=g)
        >>> ksg_mutual_information(x, torch.randn(500, 1, generator=g)) < 0.1
        True
    """
    a = a.reshape(len(a), -1).double()
    b = b.reshape(len(b), -1).double()
    n = len(a)
    if len(b) != n:
        raise ValueError(f"a has {n} rows but b has {len(b)}")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    digamma = torch.special.digamma
    total = 0.0
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        da = torch.cdist(a[rows], a, p=float("inf"))
        db = torch.cdist(b[rows], b, p=float("inf"))
        joint = torch.maximum(da, db)
        eps = joint.kthvalue(k + 1, dim=1).values[:, None]  # +1: the point itself at distance 0
        n_a = (da < eps).sum(1) - 1
        n_b = (db < eps).sum(1) - 1
        total += float((digamma(n_a + 1.0) + digamma(n_b + 1.0)).sum())
    nats = float(digamma(torch.tensor(float(k))) + digamma(torch.tensor(float(n)))) - total / n
    return nats / math.log(2)


# ----------------------------------------------------------------------------- adapter

@MEASURES.register(
    "information_plane",
    summary="I(X;T) and I(T;Y) per hidden layer by adaptive binning or adaptive KDE "
    "(the information plane).",
    papers=(6,),
)
@dataclass
class InformationPlane(Measure):
    """Information-plane coordinates of every hidden layer on the listed splits.

    Keys: ``mi_xt/layer<l>`` = I(X;T_l) and ``mi_ty/layer<l>`` = I(T_l;Y) in bits (see
    :func:`binned_information` and :func:`kde_information`), and ``mi_x_entropy`` = H(X), the
    ceiling of ``I(X;T)`` (an ``mi_xt`` at that ceiling is saturated). X is the split's inputs,
    Y its (training) targets, the layers those of :func:`hidden_layers`. With more than
    ``max_examples`` examples a fixed random subset (from ``seed``) is used.

    References:
        Chelombiev, Houghton, O'Donnell. Adaptive Estimators Show Information Compression in
        Deep Neural Networks. arXiv:1902.09037.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
        >>> sorted(InformationPlane().compute(EvalContext(net, "train", (x, y))))
        ['mi_ty/layer1', 'mi_x_entropy', 'mi_xt/layer1']
    """

    estimator: Literal["binning", "kde"] = "binning"  # EBAB (the paper's main one) or aKDE
    # binning: bins per layer above the lowest value (official code: 30)
    n_bins: Annotated[int, Ge(1)] = 30
    binning: Binning = "distinct"  # equal count of distinct values per bin (EBAB) or of samples
    # kde: noise std / the layer's max |activation| (heldout's choice)
    noise_scale: Annotated[float, Gt(0)] = 0.1
    kde_bound: Bound = "upper"  # kde: KL upper bound or Bhattacharyya lower bound
    layers: tuple[str, ...] = ()  # module names to observe; () = every activation module
    # subsample beyond this many examples (KDE is O(N^2))
    max_examples: Annotated[int, Ge(2)] = 4096
    splits: tuple[str, ...] = ("train",)  # where to compute it
    seed: int = 0  # seeds the subsample

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        self.splits = tuple(self.splits)
        if self.estimator not in ("binning", "kde"):
            raise ValueError(f"estimator must be 'binning' or 'kde', got {self.estimator!r}")
        if self.binning not in get_args(Binning):
            raise ValueError(f"binning must be one of {get_args(Binning)}, got {self.binning!r}")
        if self.kde_bound not in get_args(Bound):
            raise ValueError(f"kde_bound must be one of {get_args(Bound)}, "
                             f"got {self.kde_bound!r}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        if len(y) > self.max_examples:
            gen = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(len(y), generator=gen)[: self.max_examples].to(y.device)
            x, y = x[keep], y[keep]
        acts = layer_activations(ctx.model, x, self.layers, batch_size=ctx.batch_size)
        out = {"mi_x_entropy": entropy_bits(x.reshape(len(x), -1))}
        for key, t in acts.items():
            if self.estimator == "binning":
                ixt, ity = binned_information(t, x, y, self.n_bins, self.binning)
            else:
                sigma = self.noise_scale * float(t.abs().max())
                sigma = sigma if sigma > 0 else self.noise_scale  # an all-zero (dead) layer
                ixt, ity = kde_information(t, y, sigma, self.kde_bound)
            out[f"mi_xt/{key}"] = ixt
            out[f"mi_ty/{key}"] = ity
        return out
