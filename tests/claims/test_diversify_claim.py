"""Claim #45 (diversify-head-beats-erm) at ci scale: it runs end to end through the store,
records a verdict and reports the numbers its rule reads."""

from __future__ import annotations

from heldout.claims.diversify import MARGIN_OVER_CORRELATED, MARGIN_OVER_ERM
from heldout.registry import CLAIMS


def test_diversify_claim_ci_scale(store):
    verdict = CLAIMS.build("diversify-head-beats-erm").run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold")
    numbers = verdict.numbers["seed0"]
    for target in ("independent", "correlated"):
        row = numbers[target]
        assert len(row["wga"]) == 2 and all(0.0 <= a <= 1.0 for a in row["wga"])
        assert numbers["best"][target] == max(row["wga"])
        assert row["chosen_by_labels"] in (0, 1) and row["chosen_by_entropy"] in (0, 1)
    best = numbers["best"]
    assert numbers["pass"] == (
        best["independent"] >= numbers["erm"]["wga"] + MARGIN_OVER_ERM
        and best["independent"] >= best["correlated"] + MARGIN_OVER_CORRELATED)
    assert len(verdict.run_ids) == 3 and len(set(verdict.run_ids)) == 3  # all stored runs
    assert store.claim_results("diversify-head-beats-erm")[0]["verdict"] == verdict.verdict
