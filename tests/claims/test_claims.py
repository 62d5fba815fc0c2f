"""The claims of catalog #9 (ledger C1). The verdicts are asserted: a claim that stops
reproducing fails here, and the ledger would record it as not holding."""

import pytest

from heldout.claims import collapse_margins, seed_vote
from heldout.registry import CLAIMS


def test_seed_vote():
    assert seed_vote([True, True, False]) == "holds"
    assert seed_vote([True, False, False]) == "does not hold"
    assert seed_vote([True, False, True, False]) == "inconclusive"
    assert seed_vote([True]) == "holds" and seed_vote([False]) == "does not hold"


def test_softmax_collapse_margins_match_the_ledger(store):
    margins = collapse_margins(113)
    assert margins == {"softmax_float32": 21, "softmax_float64": 40, "stablemax_float64": None}
    verdict = CLAIMS.build("softmax-collapse").run([0], store)
    assert verdict.verdict == "holds", verdict.numbers
    assert store.claim_results("softmax-collapse")[0]["verdict"] == "holds"


def _grokking_claims(store, seeds):
    perp = CLAIMS.build("grokking-perp-adamw").run(seeds, store, scale="ci")
    nlm = CLAIMS.build("grokking-nlm-alignment").run(seeds, store, scale="ci")
    return perp, nlm


def test_grokking_claims_one_seed(store):
    perp, nlm = _grokking_claims(store, [0])
    assert perp.verdict == "holds", perp.numbers
    assert nlm.verdict == "holds", nlm.numbers
    # the alignment claim reused the baseline run of the first claim
    assert set(nlm.run_ids) <= set(perp.run_ids)
    assert len(store.runs()) == 2


@pytest.mark.claims
def test_grokking_claims_three_seeds(store):
    perp, nlm = _grokking_claims(store, [0, 1, 2])
    assert perp.verdict == "holds", perp.numbers
    assert nlm.verdict == "holds", nlm.numbers


def test_xor_benign_overfitting_five_seeds(store):
    verdict = CLAIMS.build("xor-benign-overfitting").run(list(range(5)), store)
    assert verdict.verdict == "holds", verdict.numbers
    for numbers in verdict.numbers.values():
        assert numbers["flipped_labels_fitted_end"] == 1.0  # the noise stays fitted


def test_time_to_fraction():
    from heldout.claims import time_to_fraction

    assert time_to_fraction([(0, 4.0), (8, 2.0), (16, 0.9), (24, 0.5)], 0.25) == 16
    assert time_to_fraction([(0, 4.0), (8, 3.0)], 0.25) is None


def test_lazy_rich_grokking_ci_scale(store):
    verdict = CLAIMS.build("lazy-rich-grokking").run([0], store, scale="ci")
    assert verdict.verdict == "holds", verdict.numbers
    assert "not evaluated at ci scale" in verdict.summary


@pytest.mark.claims
def test_lazy_rich_grokking_full(store):
    verdict = CLAIMS.build("lazy-rich-grokking").run([0], store)
    assert verdict.verdict == "holds", verdict.numbers


def test_ipr_pruning_removes_memorization(store):
    verdict = CLAIMS.build("ipr-pruning-memorization").run([0], store)
    assert verdict.verdict == "holds", verdict.numbers


def test_sharpness_correlation_protocol_ci_scale(store):
    """The CI-sized population (8 runs): every run done, τ over the runs that fit (NaN when
    fewer than two remain), verdict by the rule."""
    import math

    from heldout.measures.ranking import kendall_tau

    claim = CLAIMS.build("sharpness-weak-correlation")
    verdict = claim.run([0], store, scale="ci")
    numbers = verdict.numbers["seed0"]
    assert numbers["runs"] == 8 and len(store.runs("done")) == 8
    rows = numbers["population"]
    fitted = [r for r in rows if r["train_accuracy"] >= claim.fit]
    assert numbers["fitted_runs"] == len(fitted)
    assert numbers["train_accuracy_min"] == min(r["train_accuracy"] for r in rows)
    assert numbers["tau_sharpness_gap_all_runs"] == pytest.approx(
        kendall_tau([r["sharpness"] for r in rows], [r["gap"] for r in rows]))
    if len(fitted) >= 2:
        tau = kendall_tau([r["sharpness"] for r in fitted], [r["gap"] for r in fitted])
        assert numbers["tau_sharpness_gap"] == pytest.approx(tau)
    else:
        assert math.isnan(numbers["tau_sharpness_gap"])
    if 3 * len(fitted) < 2 * len(rows):
        expected = "inconclusive"
    else:
        tau = abs(numbers["tau_sharpness_gap"])
        expected = ("holds" if tau < claim.weak else
                    "does not hold" if tau >= claim.strong else "inconclusive")
    assert verdict.verdict == expected


def test_coherence_real_vs_random_one_seed(store):
    verdict = CLAIMS.build("coherence-real-vs-random").run([0], store)
    assert verdict.verdict == "holds", verdict.numbers


@pytest.mark.claims
def test_coherence_real_vs_random_three_seeds(store):
    verdict = CLAIMS.build("coherence-real-vs-random").run([0, 1, 2], store)
    assert verdict.verdict == "holds", verdict.numbers


def _recomputed(name, verdict):
    """The verdict the claim's documented rule gives from the numbers it recorded."""
    numbers = {k: v for k, v in verdict.numbers.items() if k.startswith("seed")}
    if name == "large-batch-gap":
        return "holds" if all(all(n["checks"].values()) for n in numbers.values()) else (
            "does not hold" if len(numbers) == 1 else None)
    if name == "pskd-calibration":
        lower = [n["pskd"]["test_ece"] < n["ce"]["test_ece"] for n in numbers.values()]
        diff = sum(n["pskd"]["test_accuracy"] - n["ce"]["test_accuracy"]
                   for n in numbers.values()) / len(numbers)
        share = sum(lower) / len(lower)
        return ("holds" if share >= 2 / 3 and diff >= -0.005 else "does not hold"
                if share <= 1 / 3 or diff < -0.005 else "inconclusive")
    if name == "hard-batches":
        diff = sum(n["difference"] for n in numbers.values()) / len(numbers)
        wins = sum(n["difference"] > 0 for n in numbers.values())
        return ("holds" if diff > 0.01 and wins >= 2 * len(numbers) / 3 else
                "does not hold" if diff < -0.01 else "inconclusive")
    if name == "gbnn-truncation":
        checks = [n["checks"] for n in numbers.values()]
        every = all(all(v for k, v in c.items() if k != "mlp_loses_twice_as_much_moons")
                    for c in checks)
        twice = sum(c["mlp_loses_twice_as_much_moons"] for c in checks)
        return "holds" if every and twice >= -(-2 * len(checks) // 3) else "does not hold"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["large-batch-gap", "pskd-calibration", "hard-batches",
                                  "gbnn-truncation"])
def test_claim_protocol_at_ci_scale(name, store):
    """Small versions of the Techniques-I claims: every run finishes, the verdict follows the
    documented rule from the recorded numbers, and it is stored. (Their evidence comes from
    the full runs with 3 seeds: `heldout claims run NAME --seeds 3`.)"""
    verdict = CLAIMS.build(name).run([0], store, scale="ci")
    assert verdict.verdict == _recomputed(name, verdict)
    assert len(store.runs("done")) == len(verdict.run_ids) == len(set(verdict.run_ids))
    assert store.claim_results(name)[0]["verdict"] == verdict.verdict


@pytest.mark.claims
def test_large_batch_gap_three_seeds(store):
    verdict = CLAIMS.build("large-batch-gap").run([0, 1, 2], store)
    assert verdict.verdict == "holds", verdict.numbers


def test_greedy_soup_protocol_small(store):
    """A small soup (short runs): the greedy soup never scores below its best ingredient on
    the validation split it was built on, and the verdict follows the rule."""
    claim = CLAIMS.build("greedy-soup", pretrain_steps=60, finetune_steps=30)
    verdict = claim.run([0], store)
    numbers = verdict.numbers["seed0"]
    assert 1 <= numbers["greedy_soup_size"] <= 6
    assert verdict.verdict == ("holds" if numbers["greedy_soup_test"]
                               >= numbers["best_single_test"] else "does not hold")
    assert len(store.runs("done")) == 7


def test_mup_transfer_protocol_ci_scale(store):
    verdict = CLAIMS.build("mup-transfer").run([0], store, scale="ci")
    numbers = verdict.numbers
    assert numbers["widths"] == [32, 64, 128]
    assert len(store.runs()) == 2 * 3 * 6
    shift = {p: numbers[p]["max_shift_in_grid_steps"] for p in ("mup", "sp")}
    expected = ("holds" if shift["mup"] <= 1 and shift["sp"] >= 2 else
                "does not hold" if shift["mup"] >= 2 else "inconclusive")
    assert verdict.verdict == expected


def test_local_complexity_protocol_ci_scale(store):
    verdict = CLAIMS.build("local-complexity-descent").run([0], store, scale="ci")
    numbers = verdict.numbers["seed0"]
    curve = numbers["lc_train_curve"]
    assert len(curve) == 13 and all(value >= 0 for _, value in curve)
    assert numbers["lc_peak"] == max(value for _, value in curve)
    assert verdict.verdict == ("holds" if all(numbers["checks"].values()) else "does not hold")


def test_information_compression_protocol_ci_scale(store):
    verdict = CLAIMS.build("information-compression").run([0], store, scale="ci")
    numbers = verdict.numbers["seed0"]
    assert numbers["layer"] == 5 and len(numbers["curve"]) == 21
    assert all(0 <= value <= 12 for _, value in numbers["curve"])  # ≤ log2(4096) bits
    expected = numbers["fitting_phase"] and numbers["compression_phase"]
    assert verdict.verdict == ("holds" if expected else "does not hold")
