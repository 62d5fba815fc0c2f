"""The shipped augmentation sweep spec loads, names registered techniques and expands to the
planned protocol (not run here: ``heldout sweep configs/sweeps/augmentations.yaml``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from heldout.experiments.sweep import expand, load_sweep

SPEC = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "augmentations.yaml"


def test_augmentation_sweep_loads_and_expands():
    spec = load_sweep(SPEC)
    assert {"erm", "global_affine", "random_fields", "random_conv", "adain_mix", "mixstyle",
            "adv_style"} <= set(spec.techniques)
    runs = expand(spec)
    # erm has nothing to search (one draw); small choice spaces repeat configs, planned once
    # (adain_mix's draws land on its default, mixstyle's on two distinct configs); the others
    # 3 draws; 2 suites x 3 seeds
    per_technique = Counter(run.technique for run in runs)
    assert per_technique == {"erm": 6, "adain_mix": 6, "mixstyle": 12, "global_affine": 18,
                             "random_fields": 18, "random_conv": 18, "adv_style": 18}
    assert {run.task for run in runs} == {"digits-rotation", "digits-noise"}
    assert {run.held_out for run in runs} == {("rot90",), ("noise0p4",)}
    assert {run.seed for run in runs} == {0, 1, 2}
    assert len({run.config.identity for run in runs}) == len(runs)  # no run planned twice
    drawn = [run for run in runs if run.technique == "random_fields" and run.hparams > 0]
    assert drawn and all("techniques.random_fields.length_scale" in run.values
                         for run in drawn)
    for run in runs:
        assert run.config.model.name == "cnn2d" and run.config.steps == 200
