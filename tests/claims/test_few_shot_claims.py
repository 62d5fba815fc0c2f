"""The few-shot claims (#52, #31) at ci scale: they run, record a verdict that follows their
rule from the numbers they report, and share one backbone run per seed. The full-scale
verdicts (3 seeds) are asserted under the ``claims`` mark, as the ledger recorded them."""

from __future__ import annotations

import itertools

import pytest

from heldout.registry import CLAIMS


def test_few_shot_clustering_ci_follows_its_rule(store):
    verdict = CLAIMS.build("few-shot-clustering").run([0], store, scale="ci")
    row = verdict.numbers["seed0"]
    beats = shrinks = True
    for shot, balance, method in itertools.product((1, 5), ("balanced", "imbalanced"),
                                                   ("kmeans", "laplacianshot")):
        assert 0.2 < row[f"{shot}shot_{balance}_simpleshot"] <= 1  # above 5-way chance
        gain, half = row[f"{shot}shot_{balance}_{method}_gain"]
        assert gain == pytest.approx(row[f"{shot}shot_{balance}_{method}"]
                                     - row[f"{shot}shot_{balance}_simpleshot"], abs=1e-6)
        if balance == "balanced":
            beats &= gain - half > 0
            shrinks &= row[f"{shot}shot_imbalanced_{method}_gain"][0] < gain
    assert (row["beats"], row["shrinks"]) == (beats, shrinks)
    assert verdict.verdict == ("holds" if beats and shrinks else "does not hold")
    assert store.claim_results("few-shot-clustering")[0]["verdict"] == verdict.verdict
    # the 5-shot prototype classifier is better than the 1-shot one
    assert row["5shot_balanced_simpleshot"] > row["1shot_balanced_simpleshot"]

    unem = CLAIMS.build("unem-learned-hyperparameters").run([0], store, scale="ci")
    assert unem.run_ids == verdict.run_ids  # the same backbone, trained once
    assert len(store.runs()) == 1
    ok = True
    for shot in (1, 5):
        result = unem.numbers["seed0"][f"{shot}shot"]
        claim = CLAIMS.build("unem-learned-hyperparameters")
        assert tuple(result["grid_best"]) in itertools.product(claim.temperatures,
                                                               claim.balances)
        assert result["fit_loss"][1] < result["fit_loss"][0]  # learning lowered the loss
        assert len(result["learned_temperatures"]) == claim.layers
        gain, half = result["gain"]
        assert gain == pytest.approx(result["learned_test"] - result["grid_test"], abs=1e-6)
        ok &= gain - half > 0
    assert unem.verdict == ("holds" if ok else "does not hold")


@pytest.mark.claims
def test_few_shot_claims_full_scale(store):
    clustering = CLAIMS.build("few-shot-clustering").run([0, 1, 2], store)
    assert clustering.verdict == "does not hold", clustering.summary
    unem = CLAIMS.build("unem-learned-hyperparameters").run([0, 1, 2], store)
    assert unem.verdict == "holds", unem.summary
