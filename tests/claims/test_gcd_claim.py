"""Claim #51 (ProtoGCD balance) at ci scale: the protocol runs end to end and records a
verdict; the numbers are GCD accuracies of both adapters on the unlabeled split."""

import pytest

from heldout.registry import CLAIMS


def test_protogcd_balance_ci_scale(store):
    verdict = CLAIMS.build("protogcd-balance").run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold")
    assert "ci scale" in verdict.summary
    numbers = verdict.numbers["seed0"]
    for name in ("protogcd", "baseline"):
        assert set(numbers[name]) == {"all", "old", "new"}
        assert all(0.0 <= v <= 1.0 for v in numbers[name].values())
        assert numbers["gap"][name] == pytest.approx(abs(numbers[name]["old"]
                                                         - numbers[name]["new"]))
    assert set(numbers["source_head"]) == {"all", "old", "new"}
    # the rule, recomputed from the numbers
    rule = (numbers["gap"]["protogcd"] < numbers["gap"]["baseline"]
            and numbers["protogcd"]["all"] >= numbers["baseline"]["all"] - 0.02)
    assert numbers["pass"] == rule == (verdict.verdict == "holds")
    # GCD clustering on digits features is far above chance (0.1) for both
    assert numbers["protogcd"]["all"] > 0.5 and numbers["baseline"]["all"] > 0.5
    assert store.claim_results("protogcd-balance")[0]["verdict"] == verdict.verdict
