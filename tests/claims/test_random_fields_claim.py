"""Claim #77 (random-fields-beat-global-affine) at ci scale: the protocol runs end to end
through the store and its verdict follows its rule. The ci verdict itself is not asserted:
60 training steps are a smoke test, not evidence (the full-scale verdict is in the report)."""

from __future__ import annotations

import math

from heldout.claims.random_fields import MULTIPLIERS
from heldout.registry import CLAIMS


def test_ci_scale_verdict_follows_the_rule(store):
    verdict = CLAIMS.build("random-fields-beat-global-affine").run([0], store, scale="ci")
    assert verdict.scale == "ci"
    seed = verdict.numbers["seed0"]
    assert set(seed["accuracy"]) == {"rotation", "noise"}  # ci leaves the corruption suite out
    for suite, row in seed["accuracy"].items():
        assert set(row) == {"erm", "global_affine", "random_fields"}
        for accuracy in row.values():
            # over all 449 images of the held-out domain, not its 90-image test part
            assert 0.0 <= accuracy <= 1.0 and math.isclose(accuracy * 449, round(accuracy * 449))
        assert seed["wins"][suite] == (row["random_fields"] > row["global_affine"])
    assert seed["pass"] == all(seed["wins"].values())
    assert verdict.verdict == ("holds" if seed["pass"] else "does not hold")
    chosen = seed["selected"]
    for suite in ("rotation", "noise"):
        for method in ("global_affine", "random_fields"):
            assert chosen[suite][method]["multiplier"] in MULTIPLIERS
        assert chosen["wins"][suite] == (chosen[suite]["random_fields"]["accuracy"]
                                         > chosen[suite]["global_affine"]["accuracy"])
    assert verdict.numbers["selected_verdict"] == (
        "holds" if all(chosen["wins"].values()) else "does not hold")
    # 6 runs at the fixed budget, 8 more at the other two multipliers: all stored, no repeat
    assert len(verdict.run_ids) == 14 and len(set(verdict.run_ids)) == 14
    assert store.claim_results("random-fields-beat-global-affine")[0]["verdict"] \
        == verdict.verdict
