"""Claim #26 (LOOK under label noise) at ci scale: it runs, reuses its runs and reports the
rule's numbers."""

from heldout.registry import CLAIMS


def test_look_label_noise_claim_ci(store):
    verdict = CLAIMS.build("look-label-noise").run([0], store, scale="ci")
    numbers = verdict.numbers["seed0"]
    assert set(numbers) == {"ce@0.2", "look@0.2", "ce@0.4", "look@0.4", "pass"}
    assert numbers["pass"] == all(numbers[f"look@{n}"] > numbers[f"ce@{n}"] for n in (0.2, 0.4))
    assert verdict.verdict == ("holds" if numbers["pass"] else "does not hold")
    # both methods learn the digits despite the noise (chance is 0.1)
    assert min(v for k, v in numbers.items() if k != "pass") > 0.5
    assert len(set(verdict.run_ids)) == 4 and len(store.runs()) == 4
    assert store.claim_results("look-label-noise")[0]["verdict"] == verdict.verdict
