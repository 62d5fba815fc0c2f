"""Inductive bias from the loss distribution of sampled hypotheses (Boopathy et al., #24).

The inductive bias a task requires, relative to a distribution q over hypotheses that fit the
training data, is the information needed to single out one that generalizes to error ε:

    I(ε) = −log P_{h~q}[ e_test(h) ≤ ε ]   (nats; divide by ln 2 for bits).

ε lies far in the left tail of the sampled errors, so P is not counted but extrapolated: the test
losses e_1 … e_N of N sampled hypotheses are fitted by a scaled non-central χ² (location 0,
maximum likelihood), the family of the squared error of a Gaussian random function, and
I(ε) = −log CDF(ε). Where the CDF underflows (I > ~708 nats), the non-central χ² series is
summed in log space (or, to reproduce the paper's numbers, its code's normal approximation).

What follows the authors' code (``FieteLab/Exact-Inductive-Bias``: ``utils.py``,
``kernel_inductive_bias.py``, ``nn_inductive_bias.py``), checked by reading it: the fit
(``scipy.stats.ncx2.fit`` with ``floc=0``), I = −logcdf in nats, the code's fallback where
that underflows (Sankaran's normal score z, returned as z²/2: ``tail="sankaran"``); the
kernel hypothesis space (RBF kernel exp(−‖a − b‖²/(2·bandwidth²)), bandwidth 1,
noise-free Gaussian-process posterior draws f_t = K_tX K_XX⁻¹ Y + (K_tt − K_tX K_XX⁻¹ K_Xt)^{1/2} z
that interpolate the training set, each scored by its test MSE on one-hot targets, 10,000
draws); the neural hypothesis space (N networks trained from different seeds with MSE on
one-hot targets, scored by test MSE: train them with heldout and pass their test losses to
:func:`estimate_inductive_bias`).

Where this module differs, on purpose: the kernel solves are exact (a Cholesky solve and an
eigendecomposition, where the code fits both by 10⁴ epochs of Adam); the default fallback
(``tail="series"``) computes the fitted CDF itself in log space, because the code's z²/2 stays
bounded as ε → 0 (about 40 nats for df = 20, nc = 5 where the series gives hundreds) and so
caps the estimate; and the fit quality (Kolmogorov-Smirnov statistic) is reported.

Assumption, not from the paper: the registered measure's hypothesis samplers around *one*
trained model — Gaussian noise on its weights (relative scale σ·|w_i|, an approximation of
"hypotheses that fit the training data" near the solution) or fresh initializations of its
architecture (the unconditioned hypothesis space) — scored by the MSE of its softmax
probabilities on one-hot targets.

References:
    Towards Exact Computation of Inductive Bias (arXiv:2406.15941).

Example:
    >>> est = estimate_inductive_bias([0.9, 1.1, 1.0, 1.2, 0.8, 1.05, 0.95, 1.15], 0.5)
    >>> est.nats > 0 and abs(est.bits - est.nats / math.log(2)) < 1e-12
    True
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.measure import EvalContext, Measure
from heldout.registry import MEASURES

__all__ = [
    "InductiveBias",
    "InductiveBiasEstimate",
    "estimate_inductive_bias",
    "fit_scaled_ncx2",
    "gp_posterior_losses",
    "ncx2_neg_log_cdf",
    "perturbed_hypothesis_losses",
    "rbf_kernel",
]


def _scipy_stats():
    try:
        from scipy import special, stats
    except ImportError as error:  # scipy is not a hard dependency of heldout
        raise ImportError("the inductive-bias estimate needs scipy: pip install scipy") from error
    return stats, special


def fit_scaled_ncx2(losses: Sequence[float] | np.ndarray | Tensor) -> tuple[float, float, float]:
    """Maximum-likelihood ``(df, nc, scale)`` of a non-central χ² with location 0 fitted to
    ``losses`` (``scipy.stats.ncx2.fit(losses, floc=0)``, as the paper's code)."""
    stats, _ = _scipy_stats()
    values = _as_array(losses)
    if len(values) < 2 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("fit_scaled_ncx2 needs at least two finite, non-negative losses")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        df, nc, _, scale = stats.ncx2.fit(values, floc=0)
    return float(df), float(nc), float(scale)


def _as_array(losses: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(losses, Tensor):
        return losses.detach().double().cpu().numpy().reshape(-1)
    return np.asarray(losses, dtype=np.float64).reshape(-1)


Tail = Literal["series", "sankaran"]


def ncx2_neg_log_cdf(x: float, df: float, nc: float, scale: float,
                     tail: Tail = "series") -> tuple[float, bool]:
    """``(−log P[X ≤ x], fallback_used)`` for X = scale · χ²'(df, nc).

    scipy's ``logcdf`` where it does not underflow. Where it does (P < 1e-308), ``tail``:

    * ``"series"`` (default): the Poisson mixture P = Σ_j Pois(j; nc/2)·P(df/2 + j, x/(2·scale))
      summed in log space, each regularized lower incomplete gamma P(a, z) from its power
      series z^a e^{−z}/Γ(a + 1) · Σ_n z^n/((a + 1)…(a + n)): the same quantity, computed
      without underflow;
    * ``"sankaran"``: the paper's code: Sankaran's normal approximation of
      (X/(scale·(df + nc)))^h, h = 1 − ⅔(df + nc)(df + 3nc)/(df + 2nc)², p = (df + 2nc)/(df +
      nc)², m = (h − 1)(1 − 3h), z = [(x/(scale·(df + nc)))^h − (1 + hp(h − 1 − ½(2 − h)mp))] /
      [h√(2p)(1 + ½mp)], returned as z²/2. It stays bounded as x → 0 (the variable it
      normalizes is bounded below), so deep in the tail it is far below the series value; use
      it only to reproduce the paper's numbers.

    Example:
        >>> value, fallback = ncx2_neg_log_cdf(1.0, 2.0, 0.0, 1.0)  # CDF = 1 − e^{−1/2}
        >>> round(value, 12) == round(-math.log(1 - math.exp(-0.5)), 12), fallback
        (True, False)
    """
    stats, _ = _scipy_stats()
    if not (df > 0 and nc >= 0 and scale > 0):
        raise ValueError(f"need df > 0, nc >= 0, scale > 0, got {df}, {nc}, {scale}")
    if tail not in ("series", "sankaran"):
        raise ValueError(f"tail must be 'series' or 'sankaran', got {tail!r}")
    if x <= 0:
        return math.inf, False
    with np.errstate(all="ignore"):
        log_cdf = float(stats.ncx2.logcdf(x, df, nc, loc=0, scale=scale))
    if math.isfinite(log_cdf):
        return -log_cdf, False
    if tail == "sankaran":
        return float(_sankaran_z(x, df, nc, scale) ** 2 / 2), True
    return -float(_ncx2_log_cdf_series(x / scale, df, nc)), True


def _sankaran_z(x: float, df: float, nc: float, scale: float) -> float:
    """Sankaran's normal score of x under scale · χ²'(df, nc) (see :func:`ncx2_neg_log_cdf`)."""
    total = df + nc
    h = 1 - 2 / 3 * total * (df + 3 * nc) / (df + 2 * nc) ** 2
    p = (df + 2 * nc) / total**2
    m = (h - 1) * (1 - 3 * h)
    return (((x / scale) / total) ** h - (1 + h * p * (h - 1 - 0.5 * (2 - h) * m * p))) / (
        h * math.sqrt(2 * p) * (1 + 0.5 * m * p))


def _log_lower_gamma(a: float, z: float) -> float:
    """log P(a, z), the regularized lower incomplete gamma, from its power series."""
    if z <= 0:
        return -math.inf
    count = int(min(10 * (z + math.sqrt(z)) + 200, 2_000_000))
    n = np.arange(1, count + 1, dtype=np.float64)
    log_terms = np.concatenate([[0.0], np.cumsum(math.log(z) - np.log(a + n))])
    top = log_terms.max()
    log_sum = top + math.log(float(np.exp(log_terms - top).sum()))
    return a * math.log(z) - z - math.lgamma(a + 1) + log_sum


def _ncx2_log_cdf_series(y: float, df: float, nc: float) -> float:
    """log P[χ²'(df, nc) ≤ y] as a Poisson(nc/2) mixture of central χ² CDFs, in log space."""
    half = nc / 2
    logs: list[float] = []
    j = 0
    while True:
        weight = -half + (j * math.log(half) if half > 0 else 0.0) - math.lgamma(j + 1)
        logs.append(weight + _log_lower_gamma(df / 2 + j, y / 2))
        if half == 0 or (j > half and len(logs) > 1 and logs[-1] < logs[-2]
                         and logs[-1] < max(logs) - 60) or j > 1_000_000:
            break
        j += 1
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs))


@dataclass(frozen=True)
class InductiveBiasEstimate:
    """I(ε) in nats and bits, the fitted scaled non-central χ², and the fit's quality."""

    nats: float  # −log P[e ≤ ε] under the fit
    bits: float  # nats / ln 2
    target_error: float  # ε
    df: float  # degrees of freedom of the fit
    nc: float  # non-centrality of the fit
    scale: float  # scale of the fit (location is 0)
    ks_statistic: float  # Kolmogorov-Smirnov distance between the losses and the fit
    empirical_fraction: float  # share of the sampled losses <= ε (0 when ε is in the tail)
    fallback: bool  # True where scipy's CDF underflowed and the tail method gave the value


def estimate_inductive_bias(
    losses: Sequence[float] | np.ndarray | Tensor, target_error: float, tail: Tail = "series"
) -> InductiveBiasEstimate:
    """I(ε) = −log P[e ≤ ε] from sampled hypotheses' test losses, via the scaled non-central
    χ² fit (:func:`fit_scaled_ncx2`, :func:`ncx2_neg_log_cdf`). The losses must be squared
    errors (MSE), the family the fit assumes. When every loss is the same the fit is
    undefined and the empirical answer is returned (0 nats if ε reaches it, else ∞)."""
    stats, _ = _scipy_stats()
    values = _as_array(losses)
    if len(values) < 2:
        raise ValueError("estimate_inductive_bias needs at least two sampled losses")
    if not math.isfinite(target_error):
        raise ValueError(f"target_error must be finite, got {target_error}")
    fraction = float(np.mean(values <= target_error))
    if np.ptp(values) == 0:
        nats = 0.0 if fraction == 1.0 else math.inf
        return InductiveBiasEstimate(nats, nats / math.log(2), target_error, math.nan,
                                     math.nan, math.nan, math.nan, fraction, False)
    df, nc, scale = fit_scaled_ncx2(values)
    nats, fallback = ncx2_neg_log_cdf(target_error, df, nc, scale, tail)
    with np.errstate(all="ignore"):
        ks = float(stats.kstest(values, stats.ncx2(df, nc, loc=0, scale=scale).cdf).statistic)
    return InductiveBiasEstimate(nats, nats / math.log(2), target_error, df, nc, scale, ks,
                                 fraction, fallback)


def rbf_kernel(a: Tensor, b: Tensor, bandwidth: float = 1.0) -> Tensor:
    """exp(−‖a_i − b_j‖²/(2·bandwidth²)) for the rows of ``a`` (n × d) and ``b`` (m × d)."""
    return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2))


def _one_hot(targets: Tensor, num_classes: int | None) -> Tensor:
    if targets.is_floating_point():
        return targets.double().reshape(len(targets), -1)
    k = num_classes if num_classes is not None else int(targets.max()) + 1
    return F.one_hot(targets.long(), k).double()


def gp_posterior_losses(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    num_classes: int | None = None,
    num_samples: int = 10_000,
    bandwidth: float = 1.0,
    jitter: float = 1e-8,
    seed: int = 0,
) -> Tensor:
    """Test MSEs of ``num_samples`` draws from the noise-free RBF Gaussian-process posterior:
    the paper's kernel hypothesis space (hypotheses that interpolate the training set).

    Labels are one-hot encoded (``num_classes``, or float targets taken as they are); each
    output dimension is an independent draw f_t = K_tX K_XX⁻¹ Y + (K_tt − K_tX K_XX⁻¹ K_Xt)^{1/2} z,
    z ~ N(0, I), and scored by the mean of (f_t − Y_t)² over test points and outputs.
    ``jitter`` is added to K_XX's diagonal for the Cholesky solve. Memory: n_test² plus
    n_test × classes × 256 per chunk of draws.

    Example:
        >>> x = torch.tensor([[0.0], [10.0]])
        >>> losses = gp_posterior_losses(x, torch.tensor([0, 1]), x, torch.tensor([0, 1]),
        ...                              num_samples=3)
        >>> bool(losses.max() < 1e-6)  # the posterior interpolates the training points
        True
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    xtr, xte = x_train.double().reshape(len(x_train), -1), x_test.double().reshape(len(x_test), -1)
    k = num_classes
    if k is None and not y_train.is_floating_point():
        k = int(max(int(y_train.max()), int(y_test.max()))) + 1
    ytr, yte = _one_hot(y_train, k), _one_hot(y_test, k)
    k_xx = rbf_kernel(xtr, xtr, bandwidth) + jitter * torch.eye(len(xtr), dtype=torch.float64)
    k_tx = rbf_kernel(xte, xtr, bandwidth)
    chol = torch.linalg.cholesky(k_xx)
    mean = k_tx @ torch.cholesky_solve(ytr, chol)
    half = torch.linalg.solve_triangular(chol, k_tx.T, upper=False)  # L⁻¹ K_Xt
    cov = rbf_kernel(xte, xte, bandwidth) - half.T @ half
    eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
    root = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # root @ root.T = cov
    generator = torch.Generator().manual_seed(seed)
    residual = (mean - yte).unsqueeze(-1)  # n_test × k × 1
    out = []
    for start in range(0, num_samples, 256):
        count = min(256, num_samples - start)
        z = torch.randn(len(xte), yte.shape[1], count, generator=generator, dtype=torch.float64)
        draws = residual + torch.einsum("ab,bcs->acs", root, z)
        out.append(draws.square().mean(dim=(0, 1)))
    return torch.cat(out)


Sampler = Literal["gaussian", "reinit"]
Output = Literal["probabilities", "logits"]


def _split_mse(net: nn.Module, inputs: Tensor, targets: Tensor, output: Output,
               batch_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            out = net(inputs[start:start + batch_size]).double()
            y = targets[start:start + batch_size]
            if y.is_floating_point():
                reference = y.double().reshape(out.shape)
            else:
                if output == "probabilities":
                    out = out.softmax(dim=-1)
                reference = F.one_hot(y.long(), out.shape[-1]).double()
            total += float((out - reference).square().sum())
            count += out.numel()
    return total / count


def perturbed_hypothesis_losses(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    num_samples: int = 1000,
    sampler: Sampler = "gaussian",
    sigma: float = 0.1,
    output: Output = "probabilities",
    seed: int = 0,
    batch_size: int = 8192,
) -> Tensor:
    """MSEs on (``inputs``, ``targets``) of ``num_samples`` hypotheses sampled from ``model``'s
    class, and the MSE of ``model`` itself as the last entry (``out[-1]``).

    ``sampler="gaussian"``: w + u with u_i ~ N(0, (σ·w_i)²) (a relative Gaussian around the
    trained weights); ``"reinit"``: every submodule's ``reset_parameters()`` under a forked,
    seeded RNG (fresh initializations of the architecture; BatchNorm statistics reset too).
    Class targets are scored against one-hot vectors with the softmax probabilities
    (``output="probabilities"``) or the raw outputs (``"logits"``); float targets against the
    raw outputs. The model is evaluated
    in eval mode on private copies. An assumption of heldout, not the paper's sampler.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> losses = perturbed_hypothesis_losses(net, torch.randn(8, 3), torch.randint(0, 2, (8,)),
        ...                                      num_samples=4)
        >>> losses.shape
        torch.Size([5])
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if sampler not in ("gaussian", "reinit"):
        raise ValueError(f"sampler must be 'gaussian' or 'reinit', got {sampler!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    net = copy.deepcopy(model).eval()
    params = [p for p in net.parameters() if p.is_floating_point()]
    base = [p.detach().clone() for p in params]
    own = _split_mse(net, inputs, targets, output, batch_size)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    devices = [p.device for p in params if p.device.type == "cuda"]
    losses = []
    for index in range(num_samples):
        with torch.no_grad():
            if sampler == "gaussian":
                for p, w in zip(params, base, strict=True):
                    noise = torch.randn(w.shape, generator=generator, device=inputs.device,
                                        dtype=w.dtype).to(w.device)
                    p.copy_(w + sigma * w.abs() * noise)
            else:
                with torch.random.fork_rng(devices=devices[:1]):
                    torch.manual_seed(seed * 1_000_003 + index)
                    for module in net.modules():
                        reset = getattr(module, "reset_parameters", None)
                        if callable(reset):
                            reset()
        losses.append(_split_mse(net, inputs, targets, output, batch_size))
    losses.append(own)
    return torch.tensor(losses, dtype=torch.float64)


@MEASURES.register(
    "inductive_bias",
    summary="Inductive bias -log P[loss <= eps] of hypotheses sampled around the model, from a "
    "scaled non-central chi^2 fit (nats).",
    papers=(24,),
)
@dataclass
class InductiveBias(Measure):
    """:func:`estimate_inductive_bias` on the losses of :func:`perturbed_hypothesis_losses`,
    on the listed splits (by default test, where the paper scores its hypotheses).

    ε is ``target_error`` or, by default, the model's own MSE on the split: the information
    needed to pick, from the sampled class, a hypothesis at least as good as the trained one.
    Keys: ``inductive_bias`` (nats), ``inductive_bias_bits``, ``inductive_bias_target`` (ε),
    ``inductive_bias_ks`` (Kolmogorov-Smirnov distance of the fit). Cost: ``num_samples``
    forward passes of the split plus one χ² fit (about 0.5 s for 1,000 losses). Needs scipy.
    """

    # hypotheses sampled (the paper's kernel runs draw 10,000)
    num_samples: Annotated[int, Ge(2)] = 1000
    sampler: Literal["gaussian", "reinit"] = "gaussian"  # around the weights / fresh inits
    # relative noise sd: u_i ~ N(0, (sigma w_i)^2) (gaussian sampler)
    sigma: Annotated[float, Gt(0)] = 0.1
    output: Literal["probabilities", "logits"] = "probabilities"  # scored against one-hot
    # epsilon; None: the model's own MSE on the split
    target_error: Annotated[float | None, Ge(0)] = None
    seed: int = 0  # seeds the noise / the re-initializations
    splits: tuple[str, ...] = ("test",)  # where the hypotheses are scored (expensive)

    def __post_init__(self) -> None:
        if self.sampler not in ("gaussian", "reinit"):
            raise ValueError(f"sampler must be 'gaussian' or 'reinit', got {self.sampler!r}")
        if self.output not in ("probabilities", "logits"):
            raise ValueError(f"output must be 'probabilities' or 'logits', got {self.output!r}")
        if not self.splits:
            raise ValueError("splits must name at least one split")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, y = ctx.tensors()
        if len(y) == 0:
            return {}
        losses = perturbed_hypothesis_losses(
            ctx.model, x, y, num_samples=self.num_samples, sampler=self.sampler,
            sigma=self.sigma, output=self.output, seed=self.seed, batch_size=ctx.batch_size)
        target = float(losses[-1]) if self.target_error is None else self.target_error
        estimate = estimate_inductive_bias(losses[:-1], target)
        return {
            "inductive_bias": estimate.nats,
            "inductive_bias_bits": estimate.bits,
            "inductive_bias_target": estimate.target_error,
            "inductive_bias_ks": estimate.ks_statistic,
        }
