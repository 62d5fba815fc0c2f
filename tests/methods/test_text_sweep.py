"""The shipped PEFT sweep spec loads, names registered techniques and expands to its plan
(not run here: ``heldout sweep configs/sweeps/text-peft.yaml``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from heldout.experiments.sweep import expand, load_sweep

SPEC = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "text-peft.yaml"


def test_text_peft_sweep_loads_and_expands():
    runs = expand(load_sweep(SPEC))
    assert Counter(r.technique for r in runs) == {
        name: 3 for name in ("erm", "lora", "pego", "soma", "sara", "levi", "prompt_tuning")}
    assert {r.held_out for r in runs} == {("review",)}
    assert all(r.config.model.name == "minilm" for r in runs)
