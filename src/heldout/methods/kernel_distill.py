"""Iterated self-distillation in kernel ridge regression, with the optimal weighting of ground
truth and teacher (catalog #73).

Round 1 fits kernel ridge regression (KRR) to the labels ``y``; round ``t >= 2`` fits KRR, with
the same kernel and regularization, to the mixed targets ``ξ_t·y + (1 − ξ_t)·ŷ_{t−1}``: the
ground truth weighted by ``ξ_t`` and the previous round's fitted values (the teacher) by
``1 − ξ_t``. In a fixed design (predictions at the training inputs) KRR maps targets ``t`` to
``A t`` with ``A = K (K + λI)⁻¹ = V diag(a) Vᵀ``, ``a_i = d_i / (d_i + λ)`` for the eigen-pairs
``(d_i, v_i)`` of ``K``. So every round is a *spectral filter* of the labels,
``ŷ_t = V diag(p_t) Vᵀ y`` with

    p_1 = a,        p_t = a ⊙ (ξ_t + (1 − ξ_t) p_{t−1}),

(the paper's ``B_t = A((1 − α) B_{t−1} + α I)``, its α being our ξ). ``ξ = 1`` is plain KRR
at every round; ``ξ = 0`` is pure self-distillation, ``p_t = a^t``, which amplifies the
regularization until the fit collapses to zero. With a constant ξ > 0 the rounds converge to
KRR with regularization ``λ/ξ``.

Optimal weighting. With ``y = f* + ε``, ``ε ~ N(0, σ² I)``, and ``β = Vᵀ f*``, the fixed-design
excess risk of a filter ``p`` is ``(1/n) Σ_i [(1 − p_i)² β_i² + σ² p_i²]``. Round t's filter is
affine in ξ_t, ``p_t = u + ξ_t g`` with ``u = a ⊙ p_{t−1}`` and ``g = a ⊙ (1 − p_{t−1})``, so
the risk is a convex quadratic in ξ_t, minimized at

    ξ_t* = Σ_i g_i [(1 − u_i) β_i² − σ² u_i] / Σ_i g_i² (β_i² + σ²),

clipped to ``[0, 1]`` (the minimum of a convex quadratic over an interval). This is the
paper's closed-form optimal weighting of each step, taken in expectation over the label noise
(the paper's Theorem minimizes the distance to the noise-free targets for one draw; given
``f*`` and ``σ²`` the expected version is the one a fixed design allows to evaluate exactly).

References:
    Even your Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by
    Self-Distillation (arXiv:2102.13088).
    Self-Distillation Amplifies Regularization in Hilbert Space (arXiv:2002.05715).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh

__all__ = [
    "KernelEigen",
    "kernel_eigen",
    "optimal_ground_truth_weight",
    "optimal_weights",
    "rbf_kernel",
    "self_distillation_filters",
    "self_distillation_fits",
]


def rbf_kernel(x: np.ndarray, z: np.ndarray | None = None, bandwidth: float = 1.0
               ) -> np.ndarray:
    """The Gaussian (RBF) kernel matrix ``exp(−‖x_i − z_j‖² / (2 h²))`` of the rows of ``x``
    and ``z`` (``z = x`` by default), ``h = bandwidth``.

    Example:
        >>> rbf_kernel(np.array([[0.0], [1.0]]), bandwidth=1.0).round(4)
        array([[1.    , 0.6065],
               [0.6065, 1.    ]])
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    z = x if z is None else np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    squared = (x * x).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2.0 * x @ z.T
    return np.exp(-np.maximum(squared, 0.0) / (2.0 * bandwidth**2))


@dataclass(frozen=True)
class KernelEigen:
    """The eigen-decomposition ``K = V diag(values) Vᵀ`` of a kernel matrix (values >= 0)."""

    values: np.ndarray  # (n,) eigenvalues, ascending, clipped at 0
    vectors: np.ndarray  # (n, n) orthonormal eigenvectors, one per column

    def shrinkage(self, regularization: float) -> np.ndarray:
        """KRR's spectral filter ``a_i = d_i / (d_i + λ)``."""
        _check_regularization(regularization)
        return self.values / (self.values + regularization)

    def coefficients(self, values: np.ndarray) -> np.ndarray:
        """``Vᵀ f``: a function's values at the design points in the eigenbasis."""
        return self.vectors.T @ np.asarray(values, dtype=np.float64)


def kernel_eigen(kernel: np.ndarray) -> KernelEigen:
    """:class:`KernelEigen` of a symmetric positive semi-definite ``kernel`` (``scipy.linalg.eigh``;
    round-off negative eigenvalues are clipped to 0)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square matrix, got shape {kernel.shape}")
    if not np.allclose(kernel, kernel.T, atol=1e-10 * max(1.0, float(np.abs(kernel).max()))):
        raise ValueError("kernel must be symmetric")
    values, vectors = eigh(kernel)
    return KernelEigen(np.clip(values, 0.0, None), vectors)


def _check_regularization(regularization: float) -> None:
    if not regularization > 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")


def _check_weights(weights: Sequence[float]) -> None:
    for weight in weights:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"each ground-truth weight ξ must lie in [0, 1], got {weight}")


def self_distillation_filters(eigen: KernelEigen, regularization: float,
                              weights: Sequence[float]) -> list[np.ndarray]:
    """The spectral filters ``p_1, ..., p_T`` of the rounds (``T = len(weights) + 1``):
    ``p_1 = a`` and ``p_t = a ⊙ (ξ_t + (1 − ξ_t) p_{t−1})`` with ``weights = (ξ_2, ..., ξ_T)``.

    Example:
        >>> eigen = KernelEigen(np.array([1.0, 3.0]), np.eye(2))
        >>> [p.round(4).tolist() for p in self_distillation_filters(eigen, 1.0, [0.0, 1.0])]
        [[0.5, 0.75], [0.25, 0.5625], [0.5, 0.75]]
    """
    _check_weights(weights)
    shrink = eigen.shrinkage(regularization)
    filters = [shrink]
    for weight in weights:
        filters.append(shrink * (weight + (1.0 - weight) * filters[-1]))
    return filters


def self_distillation_fits(kernel: np.ndarray, targets: np.ndarray, regularization: float,
                           weights: Sequence[float]) -> list[np.ndarray]:
    """The fitted values ``ŷ_1, ..., ŷ_T`` at the design points, each round solved directly:
    ``ŷ_t = K (K + λI)⁻¹ (ξ_t y + (1 − ξ_t) ŷ_{t−1})`` (``ŷ_1`` with ``ξ = 1``). ``targets``
    may have several columns (one fit per column).

    Example:
        >>> k = np.array([[2.0, 1.0], [1.0, 2.0]])
        >>> [f.round(4).tolist() for f in self_distillation_fits(k, np.array([1.0, 0.0]), 1.0,
        ...                                                       [0.5])]
        [[0.625, 0.125], [0.5156, 0.1406]]
    """
    _check_regularization(regularization)
    _check_weights(weights)
    kernel = np.asarray(kernel, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if len(targets) != len(kernel):
        raise ValueError(f"targets have {len(targets)} rows but the kernel is {kernel.shape}")
    system = kernel + regularization * np.eye(len(kernel))

    def fit(mixed: np.ndarray) -> np.ndarray:
        return kernel @ np.linalg.solve(system, mixed)

    fits = [fit(targets)]
    for weight in weights:
        fits.append(fit(weight * targets + (1.0 - weight) * fits[-1]))
    return fits


def optimal_ground_truth_weight(eigen: KernelEigen, regularization: float,
                                previous_filter: np.ndarray, true_values: np.ndarray,
                                noise_variance: float) -> float:
    """The ξ in ``[0, 1]`` that minimizes the expected fixed-design excess risk of the next
    round, given the previous round's filter (closed form, see the module docstring).

    Example:
        >>> eigen = KernelEigen(np.array([1.0]), np.eye(1))  # a = 1/2: p(ξ) = 1/4 + ξ/4
        >>> # risk (1 − p)² + 2 p² is least at p = 1/3, i.e. ξ = 1/3
        >>> round(optimal_ground_truth_weight(eigen, 1.0, np.array([0.5]), np.array([1.0]),
        ...                                   2.0), 4)
        0.3333
    """
    if noise_variance < 0:
        raise ValueError(f"noise_variance must be >= 0, got {noise_variance}")
    shrink = eigen.shrinkage(regularization)
    beta2 = eigen.coefficients(true_values) ** 2
    u = shrink * previous_filter
    g = shrink * (1.0 - previous_filter)
    denominator = float(np.sum(g * g * (beta2 + noise_variance)))
    if denominator <= 0.0:  # the teacher equals the ground-truth fit: ξ changes nothing
        return 1.0
    numerator = float(np.sum(g * ((1.0 - u) * beta2 - noise_variance * u)))
    return float(np.clip(numerator / denominator, 0.0, 1.0))


def optimal_weights(eigen: KernelEigen, regularization: float, true_values: np.ndarray,
                    noise_variance: float, rounds: int) -> list[float]:
    """``(ξ_2*, ..., ξ_T*)`` for ``T = rounds``: each round's optimal weight given the rounds
    before it, which themselves used their optimal weights."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    weights: list[float] = []
    current = eigen.shrinkage(regularization)
    shrink = current
    for _ in range(rounds - 1):
        weight = optimal_ground_truth_weight(eigen, regularization, current, true_values,
                                             noise_variance)
        weights.append(weight)
        current = shrink * (weight + (1.0 - weight) * current)
    return weights
