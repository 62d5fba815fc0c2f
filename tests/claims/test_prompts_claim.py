"""Claim #70 (PromptSRC vs prompt tuning on the held-out text domain) at ci scale, on the
prompt tests' tiny text stand-in (``text_topics`` runs at full scale)."""

from heldout.registry import CLAIMS
from tests.methods.prompt_text import register_text_task


def test_promptsrc_claim_ci_runs_reuses_and_applies_its_rule(store, monkeypatch):
    task = register_text_task(monkeypatch)
    claim = CLAIMS.build("promptsrc-held-out-domain", task=task)
    verdict = claim.run([0], store, scale="ci")
    numbers = verdict.numbers["seed0"]
    assert set(numbers) == {"prompt_tuning", "promptsrc", "pass"}
    assert numbers["pass"] == (numbers["promptsrc"] > numbers["prompt_tuning"])
    assert verdict.verdict == ("holds" if numbers["pass"] else "does not hold")
    assert all(0.0 <= numbers[k] <= 1.0 for k in ("prompt_tuning", "promptsrc"))
    assert len(set(verdict.run_ids)) == 2 and len(store.runs()) == 2
    again = claim.run([0], store, scale="ci")  # reuses both runs
    assert again.numbers == verdict.numbers and len(store.runs()) == 2
    full = claim.config(0, "full", True)
    assert full.model.name == "minilm" and full.task.name == task
    assert [t.name for t in full.techniques] == ["promptsrc"]
