"""The PEFT claims (#34 PEGO, #49 SaRA, #23 SoMA) at ci scale: they run, reuse their shared
runs and apply their rules to the numbers they report. Until the text suite ``text_topics``
is in the tree, a small stand-in with the same split names is registered for this module."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from heldout.core.inputs import InputSpec
from heldout.registry import CLAIMS, TASKS
from heldout.tasks.base import Split, Splits, Task

pytest.importorskip("peft")

DOMAINS = ("report", "chat", "headline", "review")


@dataclass(frozen=True)
class _TextTopicsStandIn(Task):
    """Three topics as planted tokens among domain-specific random tokens."""

    held_out: tuple[int, ...] = (3,)

    @property
    def input(self) -> InputSpec:
        return InputSpec("tokens", (12,), vocab=30522)

    def splits(self, seed: int) -> Splits:
        generator = torch.Generator().manual_seed(seed)

        def split(n: int, domain: int) -> Split:
            y = torch.randint(0, 3, (n,), generator=generator)
            x = torch.randint(1000 + 300 * domain, 1300 + 300 * domain, (n, 12),
                              generator=generator)
            x[:, 2] = 3000 + y
            x[:, 10:] = 0
            return Split(x, y, groups=torch.full((n,), domain))

        train = [split(16, d) for d in range(4) if d not in self.held_out]
        cat = [Split(torch.cat([s.x for s in train]), torch.cat([s.y for s in train]))]
        extra = {f"test@{name}": split(8, d) for d, name in enumerate(DOMAINS)}
        return Splits(cat[0], split(8, 0), extra["test@review"], self.input, 3, extra=extra)


@pytest.fixture
def text_topics():
    TASKS.load_builtins()
    if "text_topics" in TASKS:  # the real suite has landed
        yield
        return
    TASKS.register("text_topics", summary="test stand-in")(_TextTopicsStandIn)
    yield
    TASKS._entries.pop("text_topics")


def test_pego_claim_ci(text_topics, store):
    verdict = CLAIMS.build("pego-held-out").run([0], store, scale="ci")
    seed = verdict.numbers["seed0"]
    assert set(seed) == {"pego", "lora", "full", "pass"}
    assert seed["pass"] == (seed["pego"]["held_out"] > max(seed["lora"]["held_out"],
                                                             seed["full"]["held_out"]))
    assert verdict.verdict == ("holds" if seed["pass"] else "does not hold")
    assert all(0.0 <= seed[m][k] <= 1.0 for m in ("pego", "lora", "full")
               for k in ("held_out", "in_domain"))
    assert len(set(verdict.run_ids)) == 3 and len(store.runs()) == 3


def test_sara_and_soma_claims_ci_reuse_the_shared_runs(text_topics, store):
    sara = CLAIMS.build("sara-matches-lora").run([0], store, scale="ci")
    seed = sara.numbers["seed0"]
    counts = sara.numbers["trainable_parameters"]
    assert counts["sara"] < counts["lora"]  # 3 % of 32² < 8·(32 + 32) per weight
    expected = (seed["sara"]["in_domain"] >= seed["lora"]["in_domain"] - 0.01
                and seed["sara"]["held_out"] > seed["full"]["held_out"])
    assert seed["pass"] == expected
    assert sara.verdict == ("holds" if expected else "does not hold")
    assert len(store.runs()) == 4
    soma = CLAIMS.build("soma-keeps-held-out").run([0], store, scale="ci")
    assert len(store.runs()) == 5  # the full fine-tuning run is reused
    s = soma.numbers["seed0"]
    gap = {m: s[m]["in_domain"] - s[m]["held_out"] for m in ("soma", "full")}
    assert s["pass"] == (gap["soma"] < gap["full"]
                         and s["soma"]["in_domain"] >= s["full"]["in_domain"] - 0.01)
