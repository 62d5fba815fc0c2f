"""Does a measure rank runs by their generalization gap? Kendall's τ, Jiang et al.'s granulated
Kendall coefficient Ψ and their conditional-mutual-information score, over a population of runs.

A run is a mapping holding its hyper-parameters, its measure values and its gap, e.g.
``{"lr": 0.1, "width": 64, "path_norm": 3.2, "gap": 0.05}``.

* **τ** over all pairs of runs: τ-a = Σ_{i<j} sign(μ_i − μ_j)·sign(g_i − g_j) / (n(n−1)/2),
  Jiang et al.'s definition (a pair tied in μ or g contributes 0 and stays in the denominator);
  τ-b divides instead by √((n₀ − n_μ)(n₀ − n_g)), n_μ and n_g the pairs tied in μ and in g, so
  ties do not shrink it (scipy's default; τ-b = τ-a without ties).
* **Ψ**: for hyper-parameter axis i, ψ_i = the mean, over the settings of the other axes, of τ
  within the group of runs that share those settings (so differ only in axis i); Ψ = the mean of
  the ψ_i. Groups of one run (no pair) and groups where τ is undefined are left out; an axis
  with no group left has ψ_i = NaN and is left out of Ψ. Ψ needs a full grid to mean what it
  says: on a partial grid the groups are whatever runs share the other settings.
* **CMI score** (Jiang et al. section 5; the PGDL scoring): over ordered pairs of distinct runs,
  V_g = 1[g₁ > g₂] and V_μ = 1[μ₁ > μ₂]; for each set S of two axes, the pairs are split into
  cells by the values of S in both runs, and Î(V_μ; V_g | S) / Ĥ(V_g | S) is computed with
  the cells weighted by their share of pairs (the definition of conditional MI; the PGDL code
  weights the cells equally and counts self-pairs, which on a full grid gives the same
  weights). The score is the minimum over S: how much the measure still tells about the gap
  when any two hyper-parameters are held fixed. S has min(2, #axes − 1) axes, so that at
  least one axis still varies inside a cell (Jiang et al. have 7 axes and |S| = 2; with two
  axes S is each single axis, with one axis the ratio is unconditional).

What is verified: τ and the CMI protocol against the research notes' reading of the PGDL code;
Ψ against Jiang et al.'s text as summarized there [recon in the notes: the grouping follows
their equation; not checked against code, none is public].

References:
    Fantastic Generalization Measures and Where to Find Them (arXiv:1912.02178).
    NeurIPS 2020 Competition: Predicting Generalization in Deep Learning (arXiv:2012.07976).

Example:
    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])  # 5 concordant, 1 discordant of 6
    0.6666666666666666
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any, Literal

import numpy as np

__all__ = [
    "conditional_mi_score",
    "granulated_kendall",
    "kendall_tau",
    "rank_measures",
]

Variant = Literal["a", "b"]


def kendall_tau(x: Sequence[float], y: Sequence[float], variant: Variant = "a") -> float:
    """Kendall's τ-a (default, Jiang et al.) or τ-b between ``x`` and ``y``; NaN for fewer than
    two points or, for τ-b, when all of ``x`` or all of ``y`` is tied. O(n²) time, O(n) memory.

    Example:
        >>> round(kendall_tau([1, 1, 2], [1, 2, 3], variant="b"), 6)  # 2 of 3 pairs, 1 x-tie
        0.816497
    """
    if variant not in ("a", "b"):
        raise ValueError(f"variant must be 'a' or 'b', got {variant!r}")
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-D sequences of equal length, got "
                         f"{a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("kendall_tau got NaN values; drop those runs first")
    n = len(a)
    if n < 2:
        return math.nan
    score = ties_x = ties_y = 0
    for i in range(n - 1):
        sx = np.sign(a[i + 1:] - a[i])
        sy = np.sign(b[i + 1:] - b[i])
        score += int((sx * sy).sum())
        ties_x += int((sx == 0).sum())
        ties_y += int((sy == 0).sum())
    pairs = n * (n - 1) // 2
    if variant == "a":
        return score / pairs
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return score / denominator if denominator > 0 else math.nan


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a hyper-parameter value (lists from YAML, dicts)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _usable(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[Mapping[str, Any]]:
    """The runs that hold every key with a value that is not None or NaN."""
    out = []
    for run in runs:
        values = [run.get(k) for k in keys]
        if all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values):
            out.append(run)
    return out


def granulated_kendall(
    runs: Sequence[Mapping[str, Any]],
    measure_key: str,
    gap_key: str,
    axes: Sequence[str],
    variant: Variant = "a",
) -> tuple[float, dict[str, float]]:
    """Jiang et al.'s granulated Kendall coefficient: ``(Ψ, {axis: ψ_axis})``.

    ψ_i averages τ(μ, g) over the groups of runs that agree on every axis but i; Ψ averages the
    ψ_i (see the module docstring for the groups left out). Runs missing the measure or the gap
    are dropped; a run missing an axis raises.

    Example:
        >>> runs = [dict(lr=a, width=b, mu=a + 2 * b, gap=a + b) for a in (1, 2) for b in (1, 2)]
        >>> granulated_kendall(runs, "mu", "gap", ["lr", "width"])
        (1.0, {'lr': 1.0, 'width': 1.0})
    """
    if not axes:
        raise ValueError("granulated_kendall needs at least one hyper-parameter axis")
    usable = _usable(runs, [measure_key, gap_key])
    for run in usable:
        missing = [a for a in axes if a not in run]
        if missing:
            raise ValueError(f"a run has no value for axes {missing}: {dict(run)}")
    per_axis: dict[str, float] = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups: dict[Hashable, list[Mapping[str, Any]]] = defaultdict(list)
        for run in usable:
            groups[tuple(_freeze(run[a]) for a in others)].append(run)
        taus = [kendall_tau([float(r[measure_key]) for r in group],
                            [float(r[gap_key]) for r in group], variant)
                for group in groups.values() if len(group) >= 2]
        taus = [t for t in taus if not math.isnan(t)]
        per_axis[axis] = sum(taus) / len(taus) if taus else math.nan
    defined = [v for v in per_axis.values() if not math.isnan(v)]
    return (sum(defined) / len(defined) if defined else math.nan), per_axis


def _entropy(counts: np.ndarray) -> float:
    """Entropy in bits of a vector of counts."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def conditional_mi_score(
    runs: Sequence[Mapping[str, Any]],
    measure_key: str,
    gap_key: str,
    axes: Sequence[str],
) -> float:
    """min over pairs of axes S of Î(V_μ; V_g | S) / Ĥ(V_g | S) (see the module docstring):
    1 when the measure's pairwise order determines the gap's order in every cell, 0 when it
    carries no information about it once S is fixed. NaN when the gap's order is constant in
    every cell (Ĥ = 0) for every S. O(n²) time, O(n) memory.

    Example:
        >>> runs = [dict(lr=a, width=b, mu=a + 2 * b, gap=a + 2 * b) for a in (1, 2, 3)
        ...         for b in (1, 2, 3)]
        >>> conditional_mi_score(runs, "mu", "gap", ["lr", "width"])
        1.0
    """
    usable = _usable(runs, [measure_key, gap_key])
    n = len(usable)
    if n < 2:
        return math.nan
    mu = np.array([float(r[measure_key]) for r in usable])
    gap = np.array([float(r[gap_key]) for r in usable])
    conditioning = list(combinations(axes, min(2, max(len(axes) - 1, 0))))
    scores = []
    for subset in conditioning:
        codes: dict[Hashable, int] = {}
        cell_of = np.array([codes.setdefault(tuple(_freeze(r[a]) for a in subset), len(codes))
                            for r in usable])
        k = len(codes)
        # counts[cell, v_g, v_mu] over ordered pairs (i, j), i != j; cell = (S of i, S of j)
        counts = np.zeros((k * k, 2, 2), dtype=np.int64)
        for i in range(n):
            others = np.arange(n) != i
            cells = cell_of[i] * k + cell_of[others]
            v_g = (gap[i] > gap[others]).astype(np.int64)
            v_mu = (mu[i] > mu[others]).astype(np.int64)
            np.add.at(counts, (cells, v_g, v_mu), 1)
        total = counts.sum()
        mutual_information = conditional_entropy = 0.0
        for cell in counts:
            size = cell.sum()
            if size == 0:
                continue
            weight = float(size / total)
            h_g = _entropy(cell.sum(axis=1))
            h_mu = _entropy(cell.sum(axis=0))
            h_joint = _entropy(cell.reshape(-1))
            mutual_information += weight * (h_g + h_mu - h_joint)
            conditional_entropy += weight * h_g
        if conditional_entropy > 0:
            scores.append(max(mutual_information, 0.0) / conditional_entropy)
    return float(min(scores)) if scores else math.nan


def rank_measures(
    runs: Sequence[Mapping[str, Any]],
    measure_keys: Sequence[str],
    gap_key: str,
    axes: Sequence[str] = (),
    variant: Variant = "a",
    cmi: bool = False,
) -> list[dict[str, Any]]:
    """One row per measure, sorted by |τ| (largest first, undefined last): ``measure``,
    ``n_runs`` (runs holding the measure and the gap), ``tau`` (:func:`kendall_tau`) and, with
    ``axes``, ``psi`` and ``psi/<axis>`` (:func:`granulated_kendall`) and, with ``cmi``,
    ``cmi`` (:func:`conditional_mi_score`).

    Example:
        >>> runs = [dict(lr=a, mu=a, nu=-a, gap=a) for a in (1, 2, 3)]
        >>> [row["measure"] for row in rank_measures(runs, ["nu", "mu"], "gap")]
        ['nu', 'mu']
    """
    table = []
    for key in measure_keys:
        usable = _usable(runs, [key, gap_key])
        row: dict[str, Any] = {
            "measure": key,
            "n_runs": len(usable),
            "tau": kendall_tau([float(r[key]) for r in usable],
                               [float(r[gap_key]) for r in usable], variant),
        }
        if axes:
            psi, per_axis = granulated_kendall(usable, key, gap_key, axes, variant)
            row["psi"] = psi
            row.update({f"psi/{axis}": value for axis, value in per_axis.items()})
        if cmi:
            row["cmi"] = conditional_mi_score(usable, key, gap_key, axes)
        table.append(row)
    return sorted(table, key=lambda r: (math.isnan(r["tau"]),
                                        -abs(r["tau"]) if not math.isnan(r["tau"]) else 0.0))
