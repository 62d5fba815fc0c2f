"""Train-test representation divergence per layer (#21).

He & Goldfeld bound the generalization error by how far the law of a layer's representation
``T_k`` of a training example is from that of a fresh example: a KL bound (for sub-Gaussian
losses), which shrinks as ``k`` grows, and a 1-Wasserstein bound (for Lipschitz losses),
which has a minimizing "generalization funnel" layer. This module computes the empirical
proxies of those divergences between the train and the held-out representations of each
hidden layer:

* :func:`sliced_wasserstein`: the mean over random unit directions θ of the exact 1-D
  1-Wasserstein distance between the projected samples (:func:`wasserstein_1d`);
* :func:`gaussian_kl`: ``KL(N(μ_train, Σ_train + σ²I) ‖ N(μ_test, Σ_test + σ²I))`` between
  Gaussians fitted to the two samples, σ a small smoothing (the KL between deterministic
  train and test embeddings is otherwise ill-posed).

These are diagnostics, not certified bounds: the weights are fixed (the bounds average over
the training algorithm's randomness), the Lipschitz constant that scales the W₁ bound is not
applied, and the KL is that of Gaussian fits. Verified: only the bounds' qualitative claims,
from the abstract (arXiv:2404.03176): the KL bound shrinks with depth, the W₁ bound has a
funnel layer. The theorems' exact form and the defaults here (2048 examples per split, PCA to
64 dimensions, 128 slices, σ = 0.01 × the pooled per-coordinate standard deviation) are
heldout's choices, not the paper's (which has no released code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.measure import EvalContext, Measure
from heldout.measures.information import layer_activations
from heldout.registry import MEASURES

__all__ = [
    "RepresentationDivergence",
    "gaussian_kl",
    "representation_divergence",
    "sliced_wasserstein",
    "wasserstein_1d",
]


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """Exact 1-Wasserstein distance between the empirical distributions of ``a`` ``(..., n)``
    and ``b`` ``(..., m)`` along the last dimension: ``∫ |F_a(x) − F_b(x)| dx`` (sizes may
    differ). Returns shape ``(...)``.

    Example:
        >>> float(wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])))
        2.0
    """
    a, b = a.double(), b.double()
    n, m = a.shape[-1], b.shape[-1]
    if n == m:  # matching sorted samples is optimal in 1-D
        return (a.sort(dim=-1).values - b.sort(dim=-1).values).abs().mean(dim=-1)
    grid, order = torch.cat([a, b], dim=-1).sort(dim=-1)
    steps = torch.cat([a.new_full(a.shape, 1 / n), b.new_full(b.shape, -1 / m)], dim=-1)
    cdf_gap = steps.gather(-1, order).cumsum(dim=-1)  # F_a − F_b just right of each point
    return (cdf_gap[..., :-1].abs() * grid.diff(dim=-1)).sum(dim=-1)


def sliced_wasserstein(
    a: Tensor, b: Tensor, n_slices: int = 128, generator: torch.Generator | None = None
) -> float:
    """Sliced 1-Wasserstein distance ``E_θ W₁(⟨θ, A⟩, ⟨θ, B⟩)`` between the rows of ``a``
    ``(n, d)`` and ``b`` ``(m, d)``, θ uniform on the unit sphere, estimated with
    ``n_slices`` directions from ``generator``.

    For isotropic Gaussians whose means differ by ``s`` it is ``E_θ |⟨θ, s⟩| =
    ‖s‖ Γ(d/2) / (√π Γ((d+1)/2))`` (``‖s‖/2`` in 3-D); it never exceeds the W₁ distance.

    Example:
        >>> x = torch.zeros(4, 3)
        >>> round(sliced_wasserstein(x, x + torch.tensor([0.0, 0.0, 2.0]), 4000,
        ...                          torch.Generator().manual_seed(0)), 1)
        1.0
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} features but b has {b.shape[1]}")
    theta = torch.randn(n_slices, a.shape[1], generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(a.device)
    return float(wasserstein_1d((a @ theta.t()).t(), (b @ theta.t()).t()).mean())


def _fit(x: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.t() @ centred / max(len(x) - 1, 1)
    return mean, cov + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)


def gaussian_kl(a: Tensor, b: Tensor, ridge: float = 0.0) -> float:
    """``KL(N(μ_a, Σ_a + ridge·I) ‖ N(μ_b, Σ_b + ridge·I))`` in nats for Gaussians fitted
    (mean, unbiased covariance) to the rows of ``a`` and ``b``:
    ``½ [tr(Σ_b⁻¹ Σ_a) + (μ_b − μ_a)ᵀ Σ_b⁻¹ (μ_b − μ_a) − d + ln det Σ_b − ln det Σ_a]``.
    ``ridge`` (a variance) is the smoothing that keeps a rank-deficient fit invertible.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(20000, 2, generator=g, dtype=torch.float64)
        >>> round(gaussian_kl(x, x + torch.tensor([1.0, 0.0])), 1)  # ½ sᵀ Σ⁻¹ s
        0.5
    """
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} features but b has {b.shape[1]}")
    mean_a, cov_a = _fit(a, ridge)
    mean_b, cov_b = _fit(b, ridge)
    chol_a = torch.linalg.cholesky(cov_a)
    chol_b = torch.linalg.cholesky(cov_b)
    diff = (mean_b - mean_a)[:, None]
    trace = torch.cholesky_solve(cov_a, chol_b).diagonal().sum()
    mahalanobis = (diff * torch.cholesky_solve(diff, chol_b)).sum()
    logdet = 2 * (chol_b.diagonal().log().sum() - chol_a.diagonal().log().sum())
    return float(0.5 * (trace + mahalanobis - a.shape[1] + logdet))


def representation_divergence(
    train: Tensor,
    test: Tensor,
    *,
    n_slices: int = 128,
    pca_dim: int | None = 64,
    smoothing: float = 0.01,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``{"w1": sliced W₁, "kl": Gaussian KL(train ‖ test)}`` between two samples of one
    layer's representation (rows; pass equal sizes, as the bounds compare like with like).

    Both are computed after projecting onto the top ``pca_dim`` principal directions of the
    pooled samples (``None`` or ``>= d``: no projection; a projection never increases W₁).
    The KL smooths both fits with ``σ² I``, ``σ = smoothing`` × the pooled mean
    per-coordinate standard deviation (``smoothing`` itself if that is 0).

    References:
        He, Goldfeld. Information-Theoretic Generalization Bounds for Deep Neural Networks.
        arXiv:2404.03176.
    """
    train, test = train.reshape(len(train), -1).double(), test.reshape(len(test), -1).double()
    pooled = torch.cat([train, test])
    if pca_dim is not None and pca_dim < pooled.shape[1]:
        centre = pooled.mean(dim=0)
        basis = torch.linalg.svd(pooled - centre, full_matrices=False).Vh[:pca_dim]
        train, test = (train - centre) @ basis.t(), (test - centre) @ basis.t()
        pooled = torch.cat([train, test])
    scale = float(pooled.std(dim=0).mean()) if len(pooled) > 1 else 0.0
    sigma = smoothing * scale if scale > 0 else smoothing
    return {"w1": sliced_wasserstein(train, test, n_slices, generator),
            "kl": gaussian_kl(train, test, ridge=sigma**2)}


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when any parameter or buffer is replaced or updated in place."""
    tensors = [*model.parameters(), *model.buffers()]
    return (id(model), tuple((t.data_ptr(), t._version) for t in tensors))


@MEASURES.register(
    "repr_divergence",
    summary="Per-layer sliced 1-Wasserstein and Gaussian KL between train and held-out "
    "representations.",
    papers=(21,),
)
@dataclass
class RepresentationDivergence(Measure):
    """:func:`representation_divergence` of every hidden layer between the ``reference``
    (train) split and each listed held-out split.

    Keys on a listed split: ``repr_w1/layer<l>`` and ``repr_kl/layer<l>``. The layers are
    those of :func:`~heldout.measures.information.hidden_layers` (activation-module outputs).

    **Order.** A split-scope measure sees one split at a time, so the adapter caches the
    reference split's representations when it is called on it and compares when called on a
    listed split; :func:`~heldout.measures.evaluate` visits the splits in insertion order
    (train, val, test), so the reference must come first. Called on a listed split without a
    fresh reference (none yet, or the model changed since), it raises RuntimeError. The cache
    lives only between the calls of one evaluation and is not checkpointed.

    Up to ``max_examples`` examples of each split (fixed random subsets from ``seed``) are
    used, and the two samples are cut to the same size. ``label_weight > 0`` compares the
    joint law of ``(T, Y)`` by appending ``label_weight / √2 · onehot(y)`` to every
    representation (so examples of different classes are ``label_weight`` further apart).

    References:
        He, Goldfeld. Information-Theoretic Generalization Bounds for Deep Neural Networks.
        arXiv:2404.03176.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> train = (torch.randn(50, 3), torch.randint(0, 2, (50,)))
        >>> test = (torch.randn(50, 3) + 1, torch.randint(0, 2, (50,)))
        >>> from heldout.measures import evaluate
        >>> sorted(evaluate(net, {"train": train, "test": test}, [RepresentationDivergence()]))
        ['test/repr_kl/layer1', 'test/repr_w1/layer1']
    """

    n_slices: Annotated[int, Ge(1)] = 128  # random directions of the sliced W1 (heldout's default)
    # project on this many principal directions first; None: off
    pca_dim: Annotated[int | None, Ge(1)] = 64
    # KL smoothing σ as a fraction of the pooled std (heldout's)
    smoothing: Annotated[float, Gt(0)] = 0.01
    # examples per split (a fixed random subset beyond this)
    max_examples: Annotated[int, Ge(2)] = 2048
    # > 0: compare (T, Y) with this distance between classes
    label_weight: Annotated[float, Ge(0)] = 0.0
    layers: tuple[str, ...] = ()  # module names whose outputs are compared; () = activations
    splits: tuple[str, ...] = ("test",)  # held-out splits compared with the reference
    reference: str = "train"  # the split whose representations are cached (must come first)
    seed: int = 0  # seeds the subsets and the slice directions

    def __post_init__(self) -> None:
        self._cache: dict[str, Any] = {}  # the reference split's representations, transient
        self.layers = tuple(self.layers)
        self.splits = tuple(self.splits)
        if self.reference in self.splits:
            raise ValueError(f"splits: the reference split {self.reference!r} cannot also be "
                             "compared with itself")

    def _representations(self, ctx: EvalContext, salt: int) -> tuple[dict[str, Tensor], Tensor]:
        x, y = ctx.tensors()
        if len(y) > self.max_examples:
            gen = torch.Generator().manual_seed(self.seed * 1000003 + salt)
            keep = torch.randperm(len(y), generator=gen)[: self.max_examples].to(y.device)
            x, y = x[keep], y[keep]
        return layer_activations(ctx.model, x, self.layers, batch_size=ctx.batch_size), y

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split == self.reference:
            reps, y = self._representations(ctx, 0)
            self._cache = {"fingerprint": _fingerprint(ctx.model), "reps": reps, "y": y}
            return {}
        if ctx.split not in self.splits:
            return {}
        if not self._cache:
            raise RuntimeError(
                f"repr_divergence on {ctx.split!r} needs the {self.reference!r} split first: "
                f"evaluate the {self.reference!r} split before {ctx.split!r} in the same "
                "evaluate() call (splits are visited in insertion order)")
        if self._cache["fingerprint"] != _fingerprint(ctx.model):
            raise RuntimeError(
                f"repr_divergence on {ctx.split!r}: the cached {self.reference!r} "
                "representations belong to another model or to weights that have changed "
                f"since; evaluate {self.reference!r} again first, in the same evaluate() call")
        reps, y = self._representations(ctx, 1 + self.splits.index(ctx.split))
        ref_reps, ref_y = self._cache["reps"], self._cache["y"]
        gen = torch.Generator().manual_seed(self.seed)
        size = min(len(y), len(ref_y))
        ref_keep = torch.randperm(len(ref_y), generator=gen)[:size].to(ref_y.device)
        keep = torch.randperm(len(y), generator=gen)[:size].to(y.device)
        classes = int(max(int(y.max()), int(ref_y.max()))) + 1
        out = {}
        for key, rep in reps.items():
            a, b = ref_reps[key][ref_keep].double(), rep[keep].double()
            if self.label_weight > 0:
                a = torch.cat([a, self._labels(ref_y[ref_keep], classes)], dim=1)
                b = torch.cat([b, self._labels(y[keep], classes)], dim=1)
            div = representation_divergence(a, b, n_slices=self.n_slices, pca_dim=self.pca_dim,
                                            smoothing=self.smoothing, generator=gen)
            out[f"repr_w1/{key}"] = div["w1"]
            out[f"repr_kl/{key}"] = div["kl"]
        return out

    def _labels(self, y: Tensor, classes: int) -> Tensor:
        return F.one_hot(y.long(), classes).double() * (self.label_weight / math.sqrt(2))
