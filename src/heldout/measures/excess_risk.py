"""The exact fixed-design excess risk of a linear smoother (kernel ridge regression and its
self-distilled rounds, catalog #73).

In a fixed design the labels are ``y = f* + ε`` at n given inputs, ``ε ~ N(0, σ² I)``, and a
linear smoother predicts ``ŷ = S y`` there. Its excess risk, averaged over the design points
and in expectation over the noise, is the bias-variance sum

    R(S) = E (1/n) ‖S y − f*‖² = (1/n) [‖(S − I) f*‖² + σ² tr(SᵀS)].

For a symmetric smoother ``S = V diag(p) Vᵀ`` (a *spectral filter* of the kernel's
eigenvectors, e.g. kernel ridge regression ``p_i = d_i / (d_i + λ)``) with ``β = Vᵀ f*`` this is
``(1/n) Σ_i [(1 − p_i)² β_i² + σ² p_i²]``. These are pure functions: the risk needs the true
function and the noise level, which only a generated task knows.

References:
    Even your Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by
    Self-Distillation (arXiv:2102.13088).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh

__all__ = ["kernel_ridge_excess_risk", "smoother_excess_risk", "spectral_excess_risk"]


def _check_noise(noise_variance: float) -> None:
    if not noise_variance >= 0:
        raise ValueError(f"noise_variance must be >= 0, got {noise_variance}")


def smoother_excess_risk(smoother: np.ndarray, true_values: np.ndarray,
                         noise_variance: float) -> float:
    """``(1/n)[‖(S − I) f*‖² + σ² tr(SᵀS)]`` for any ``(n, n)`` linear smoother ``S``.

    Example:
        >>> smoother_excess_risk(np.eye(3), np.ones(3), 0.5)  # interpolation: pure variance
        0.5
        >>> smoother_excess_risk(np.zeros((2, 2)), np.array([1.0, 3.0]), 9.0)  # pure bias
        5.0
    """
    _check_noise(noise_variance)
    smoother = np.asarray(smoother, dtype=np.float64)
    true_values = np.asarray(true_values, dtype=np.float64)
    n = len(true_values)
    if smoother.shape != (n, n):
        raise ValueError(f"smoother must be ({n}, {n}) for {n} true values, got "
                         f"{smoother.shape}")
    bias = smoother @ true_values - true_values
    return float((bias @ bias + noise_variance * np.sum(smoother * smoother)) / n)


def spectral_excess_risk(filter_values: np.ndarray, coefficients: np.ndarray,
                         noise_variance: float) -> float:
    """``(1/n) Σ_i [(1 − p_i)² β_i² + σ² p_i²]`` for the smoother ``V diag(p) Vᵀ``, given
    ``p = filter_values`` and the true function's coefficients ``β = Vᵀ f*``.

    Example:
        >>> spectral_excess_risk(np.array([0.5, 1.0]), np.array([2.0, 1.0]), 1.0)
        1.125
    """
    _check_noise(noise_variance)
    p = np.asarray(filter_values, dtype=np.float64)
    beta = np.asarray(coefficients, dtype=np.float64)
    if p.shape != beta.shape or p.ndim != 1:
        raise ValueError(f"filter_values {p.shape} and coefficients {beta.shape} must be "
                         "vectors of the same length")
    return float(np.mean((1.0 - p) ** 2 * beta**2 + noise_variance * p**2))


def kernel_ridge_excess_risk(kernel: np.ndarray, regularization: float,
                             true_values: np.ndarray, noise_variance: float) -> float:
    """The fixed-design excess risk of kernel ridge regression ``ŷ = K (K + λI)⁻¹ y``, from
    the eigen-decomposition of ``K`` (``scipy.linalg.eigh``).

    Example:
        >>> kernel_ridge_excess_risk(np.eye(2), 1.0, np.array([2.0, 0.0]), 1.0)  # p = 1/2
        0.75
    """
    if not regularization > 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square matrix, got shape {kernel.shape}")
    values, vectors = eigh(kernel)
    values = np.clip(values, 0.0, None)
    coefficients = vectors.T @ np.asarray(true_values, dtype=np.float64)
    return spectral_excess_risk(values / (values + regularization), coefficients,
                                noise_variance)
