"""The registry's contract checks (determinism, state round trip, exact resume) for the PEFT
techniques, on a small stand-in text task registered for this module only (the default
contract setting, modular arithmetic with an MLP, has no pre-trained encoder to adapt)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from heldout.core.inputs import InputSpec
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task

pytest.importorskip("peft")

SPEC = InputSpec("tokens", (12,), vocab=30522)
NAMES = ("lora", "pego", "soma", "sara", "levi")



@dataclass(frozen=True)
class _TokenTopics(Task):
    """Stand-in text task: the class is a token planted among random tokens, two domains
    with different random-token ranges."""

    @property
    def input(self) -> InputSpec:
        return SPEC

    def splits(self, seed: int) -> Splits:
        generator = torch.Generator().manual_seed(seed)

        def split(n: int, domain: int) -> Split:
            y = torch.randint(0, 3, (n,), generator=generator)
            x = torch.randint(1000 + 500 * domain, 1500 + 500 * domain, (n, 12),
                              generator=generator)
            x[:, 3] = 3000 + y
            x[:, 10:] = 0
            return Split(x, y, groups=torch.full((n,), domain))

        train = split(48, 0)
        return Splits(train, split(12, 0), split(12, 0), SPEC, 3,
                      extra={"test@other": split(12, 1)})


@pytest.fixture
def text_standin(monkeypatch):
    import tests.test_contracts as contracts

    TASKS.load_builtins()
    TASKS.register("peft_text_standin", summary="test stand-in")(_TokenTopics)
    setting = ["task=peft_text_standin", "model=tiny_bert", "optimizer.lr=0.01"]
    for name in NAMES:
        monkeypatch.setitem(contracts.TECHNIQUE_SETTING, name, setting)
    monkeypatch.setitem(contracts.TECHNIQUE_PARAMS, "levi", {"width": 4})
    yield contracts
    TASKS._entries.pop("peft_text_standin")


@pytest.mark.parametrize("name", NAMES)
def test_contract_checks_on_a_text_standin(name, text_standin, tmp_path, monkeypatch):
    text_standin.test_technique_runs_and_is_deterministic(name, tmp_path / "run")
    text_standin.test_technique_state_round_trips(name)
    text_standin.test_technique_resume_is_exact(name, tmp_path / "resume", monkeypatch)
