"""Claim #63 (adv-style-beats-mixstyle) at ci scale: it runs end to end through the store,
records a verdict and reports the numbers its rule reads."""

from __future__ import annotations

from heldout.registry import CLAIMS


def test_adv_style_claim_ci_scale(store):
    verdict = CLAIMS.build("adv-style-beats-mixstyle").run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold")
    row = verdict.numbers["seed0"]
    accuracy = row["test_accuracy"]
    assert set(accuracy) == {"erm", "mixstyle", "adv_style"}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert row["pass"] == (accuracy["adv_style"] > accuracy["mixstyle"])
    assert verdict.verdict == ("holds" if row["pass"] else "does not hold")
    assert len(set(verdict.run_ids)) == 3  # three distinct stored runs
    assert store.claim_results("adv-style-beats-mixstyle")[0]["verdict"] == verdict.verdict
