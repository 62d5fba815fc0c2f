"""The adaptation claims of AdaNPC (#33) and DRM (#13) at ci scale: they run end to end,
record a verdict and report the numbers their rules read."""

from __future__ import annotations

from heldout.registry import CLAIMS


def test_adanpc_domain_sequence_ci_scale(store):
    verdict = CLAIMS.build("adanpc-domain-sequence").run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold")
    numbers = verdict.numbers["seed0"]
    assert numbers["domains"] == ["rot30", "rot60", "rot90"]
    for name in ("source", "tent", "adanpc"):
        assert len(numbers[name]) == 3 and all(0.0 <= a <= 1.0 for a in numbers[name])
    shares = numbers["adanpc_test_share"]
    assert 0.0 < shares[0] < shares[1] < shares[2] < 1.0  # β = 0.1 ≤ every vote share: all join
    assert store.claim_results("adanpc-domain-sequence")[0]["verdict"] == verdict.verdict


def test_drm_beats_erm_ci_scale(store):
    verdict = CLAIMS.build("drm-beats-erm").run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold")
    numbers = verdict.numbers["seed0"]
    assert numbers["pass"] == (numbers["drm"] > numbers["erm"])
    for key in ("erm", "drm", "drm_select_only"):
        assert 0.0 <= numbers[key] <= 1.0
    assert store.claim_results("drm-beats-erm")[0]["verdict"] == verdict.verdict
