"""Oracle tests of Kendall's τ, the granulated Ψ and the CMI score (heldout.measures.ranking):
small populations of runs worked out by hand, and τ-b against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from heldout.measures.ranking import (
    conditional_mi_score,
    granulated_kendall,
    kendall_tau,
    rank_measures,
)


def test_kendall_tau_on_four_runs_by_hand():
    mu = [1.0, 2.0, 3.0, 4.0]
    gap = [0.1, 0.3, 0.2, 0.4]
    # pairs (0,1) (0,2) (0,3) (1,3) (2,3) concordant, (1,2) discordant: (5 − 1)/6
    assert kendall_tau(mu, gap) == pytest.approx(4 / 6)
    assert kendall_tau(mu, gap, variant="b") == pytest.approx(4 / 6)  # no ties: τ-b = τ-a
    assert kendall_tau(mu, [-g for g in gap]) == pytest.approx(-4 / 6)


def test_kendall_tau_ties_by_hand():
    mu = [1.0, 1.0, 2.0, 3.0]
    gap = [1.0, 2.0, 2.0, 3.0]
    # (0,1) tied in μ, (1,2) tied in g, the other 4 pairs concordant
    assert kendall_tau(mu, gap, variant="a") == pytest.approx(4 / 6)
    assert kendall_tau(mu, gap, variant="b") == pytest.approx(4 / math.sqrt(5 * 5))
    assert math.isnan(kendall_tau([1.0, 1.0], [1.0, 2.0], variant="b"))  # all tied in μ
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_kendall_tau_b_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 60).astype(float)  # many ties
    y = x + rng.integers(0, 3, 60)
    expected = stats.kendalltau(x, y).statistic
    assert kendall_tau(x, y, variant="b") == pytest.approx(expected, rel=1e-12)
    assert abs(kendall_tau(x, y, variant="a")) < abs(expected)  # ties shrink τ-a


def _grid() -> list[dict]:
    # 2 × 2 grid over lr and width:
    #   width 1: lr 1 (μ 1, g 1), lr 2 (μ 2, g 2)   -> τ over lr = +1
    #   width 2: lr 1 (μ 3, g 4), lr 2 (μ 4, g 3)   -> τ over lr = −1   => ψ_lr = 0
    #   lr 1: width 1 (1, 1), width 2 (3, 4)         -> +1
    #   lr 2: width 1 (2, 2), width 2 (4, 3)         -> +1              => ψ_width = 1
    return [
        {"lr": 1, "width": 1, "mu": 1.0, "gap": 1.0},
        {"lr": 2, "width": 1, "mu": 2.0, "gap": 2.0},
        {"lr": 1, "width": 2, "mu": 3.0, "gap": 4.0},
        {"lr": 2, "width": 2, "mu": 4.0, "gap": 3.0},
    ]


def test_granulated_kendall_on_a_two_by_two_grid_by_hand():
    psi, per_axis = granulated_kendall(_grid(), "mu", "gap", ["lr", "width"])
    assert per_axis == {"lr": pytest.approx(0.0), "width": pytest.approx(1.0)}
    assert psi == pytest.approx(0.5)
    assert kendall_tau([r["mu"] for r in _grid()], [r["gap"] for r in _grid()]) == \
        pytest.approx(4 / 6)


def test_granulated_kendall_skips_groups_without_a_pair():
    runs = _grid()[:3]  # width 2 has only lr 1 left; lr 2 has only width 1
    psi, per_axis = granulated_kendall(runs, "mu", "gap", ["lr", "width"])
    assert per_axis == {"lr": pytest.approx(1.0), "width": pytest.approx(1.0)}
    assert psi == pytest.approx(1.0)
    with pytest.raises(ValueError, match="axes"):
        granulated_kendall([{"mu": 1.0, "gap": 1.0}], "mu", "gap", ["lr"])


def test_cmi_unconditional_by_hand():
    # μ = (1, 2, 3), g = (1, 3, 2); ordered pairs (V_g, V_μ): (0,0)×2, (1,1)×2, (1,0), (0,1)
    # H(V_g) = H(V_μ) = 1 bit, H(joint) = (2/3) log₂3 + (1/3) log₂6
    runs = [{"a": 0, "mu": m, "gap": g} for m, g in ((1.0, 1.0), (2.0, 3.0), (3.0, 2.0))]
    expected = 2 - (2 / 3 * math.log2(3) + 1 / 3 * math.log2(6))
    assert conditional_mi_score(runs, "mu", "gap", ["a"]) == pytest.approx(expected)


def test_cmi_exposes_a_measure_that_only_tracks_one_hyper_parameter():
    runs = [{"lr": a, "width": b, "depth": c, "gap": a + b + c, "spurious": float(a),
             "good": math.exp(a + b + c)} for a in (1, 2, 3) for b in (1, 2, 3)
            for c in (1, 2)]
    assert kendall_tau([r["spurious"] for r in runs], [r["gap"] for r in runs]) > 0.4
    axes = ["lr", "width", "depth"]
    assert conditional_mi_score(runs, "spurious", "gap", axes) == pytest.approx(0.0)
    assert conditional_mi_score(runs, "good", "gap", axes) == pytest.approx(1.0)


def test_rank_measures_table():
    runs = _grid()
    for run in runs:
        run["neg"] = -run["gap"]  # perfectly anti-correlated
        run["noise"] = float(run["lr"] == run["width"])
    runs.append({"lr": 3, "width": 3, "mu": 5.0, "gap": None, "neg": 0.0, "noise": 0.0})
    table = rank_measures(runs, ["noise", "mu", "neg"], "gap", axes=["lr", "width"], cmi=True)
    assert [row["measure"] for row in table] == ["neg", "mu", "noise"]  # by |τ|
    by_name = {row["measure"]: row for row in table}
    assert by_name["neg"]["tau"] == pytest.approx(-1.0)
    assert by_name["mu"]["tau"] == pytest.approx(4 / 6)
    assert by_name["mu"]["psi"] == pytest.approx(0.5)
    assert by_name["mu"]["psi/lr"] == pytest.approx(0.0)
    assert all(row["n_runs"] == 4 for row in table)  # the run without a gap is dropped
    assert "cmi" in by_name["mu"]
