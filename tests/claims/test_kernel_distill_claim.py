"""Claim #73 (optimal ground-truth weighting in KRR self-distillation) at ci scale: the protocol
runs end to end, records a verdict, and its numbers obey the rule and the closed forms."""

import pytest

from heldout.registry import CLAIMS, implementations


def test_kernel_self_distillation_ci_scale(store):
    claim = CLAIMS.build("kernel-self-distillation-weighting")
    verdict = claim.run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold")
    assert "ci scale" in verdict.summary
    numbers = verdict.numbers["seed0"]
    assert len(numbers["weights"]) == claim.rounds - 1
    assert numbers["regularization"] == pytest.approx(claim.regularization_factor
                                                      * numbers["lambda_tuned"])
    last = {name: numbers[name]["closed_form"][-1] for name in
            ("optimal", "ground_truth", "teacher")}
    # ξ = 1 is plain KRR at every round; the greedy optimum never loses to it
    assert len(set(numbers["ground_truth"]["closed_form"])) == 1
    assert all(o <= g + 1e-12 for o, g in zip(numbers["optimal"]["closed_form"],
                                              numbers["ground_truth"]["closed_form"],
                                              strict=True))
    # the rule, recomputed from the numbers
    beats = last["optimal"] <= (1 - claim.margin) * min(last["ground_truth"], last["teacher"])
    agrees = all(abs(numbers[n]["simulated"][-1] - last[n])
                 <= claim.tolerance_se * numbers[n]["standard_error"][-1] for n in last)
    assert numbers["beats_extremes"] == beats and numbers["matches_simulation"] == agrees
    assert numbers["pass"] == (beats and agrees) == (verdict.verdict == "holds")
    assert store.claim_results("kernel-self-distillation-weighting")[0]["verdict"] == \
        verdict.verdict
    assert "claim:kernel-self-distillation-weighting" in implementations(73)
