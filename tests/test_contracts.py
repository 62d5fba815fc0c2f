"""Contract tests generated from the registries: every registered component gets them."""

import copy
import functools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from heldout.config import parse_overrides
from heldout.registry import CLAIMS, MEASURES, MODELS, TASKS, TECHNIQUES
from heldout.run.assembly import build
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import assert_resume_is_exact, tiny_config

# Parameters that make a component fast or applicable in a tiny run; defaults otherwise.
TECHNIQUE_PARAMS = {
    "ghost_bn": {"ghost_batch_size": 4},
    "gbnn": {"lbfgs_iterations": 5},
    "genie": {"steps": 20, "num_samples": 32, "batch_size": 32},
    "metaaug": {"steps": 5, "calibration_size": 64},
}
# Techniques that need another task or model than the tiny modular MLP
TECHNIQUE_SETTING = {
    "mix_ln": ["model=transformer", "task.p=11", "model.d_model=16", "model.n_heads=2",
               "model.n_layers=4"],
    "gbnn": ["task=moons", "task.n_train=40", "task.n_val=10", "task.n_test=20",
             "model=gbnn_units", "model.max_units=12"],
    "raw_pipeline": ["task=digits_color", "model.hidden=[16]"],
    "random_fields": ["task=digits_shift"],
    "global_affine": ["task=digits_shift"],
    "adv_style": ["task=digits_shift", "model=cnn2d", "model.channels=[4,4]"],
    "mixstyle": ["task=digits_shift", "model=cnn2d", "model.channels=[4,4]"],
    "random_conv": ["task=digits_shift"],
    "adain_mix": ["task=digits_shift"],
    "conditioned_synthesis": ["task=digits_shift"],
    "rare_compositions": ["task=compositional", "task.samples_per_domain=200"],
    "hard_kd": ["task=digits_shift"],
    "cloob": ["task=paired_views"],
    "infonce": ["task=paired_views"],
    "density_normalized": ["task=scene_graph"],
    "genie": ["task=digits"],
    "metaaug": ["task=digits"],
    # the PEFT and prompt techniques adapt a pre-trained text classifier; modular's token
    # inputs suffice here (text_topics is their real setting: their own test files)
    **{name: ["model=tiny_bert"] for name in ("lora", "pego", "soma", "sara", "levi")},
    **{name: ["model=tiny_bert", "model.hidden=8", "model.layers=1", "task.p=11"]
       for name in ("prompt_tuning", "promptsrc", "gram", "soft_prompt_generation")},
    "ogen": ["task=text_topics", "task.examples_per_domain=30", "model=tiny_bert",
             "model.hidden=8", "model.layers=1"],
}
TASK_PARAMS = {
    "modular": {"p": 11},
    "xor_clusters": {"dim": 20, "n_train": 40, "n_test": 40, "n_val": 10},
    "mnist1d": {"num_samples": 400},
    "digits": {},
    "single_index": {"dim": 10, "n_train": 30, "n_val": 5, "n_test": 20},
    "moons": {"n_train": 40, "n_val": 10, "n_test": 20},
    "bit_patterns": {"n_bits": 6, "val_fraction": 0.1},
    "mnist1d_shift": {"num_samples": 800},
    "mnist1d_base_novel": {"num_samples": 400},
    "gcd_mnist1d": {"num_samples": 400},
    "mnist1d_long_tail": {"num_samples": 400},
    "text_topics": {"examples_per_domain": 60, "max_length": 16},
}


@functools.cache
def _user_files() -> dict:
    """Small generated inputs for the loaders of a user's own data (one per test process)."""
    root = Path(tempfile.mkdtemp(prefix="heldout-user-data-"))
    for domain in "ab":
        for label in "xy":
            folder = root / "img" / domain / label
            folder.mkdir(parents=True)
            for j in range(10):
                np.save(folder / f"{j}.npy", np.full((6, 6), 10 * j + ord(label), np.uint8))
    rows = ["domain,label,f1,f2"] + [f"{'ab'[i % 2]},{'xy'[i // 2 % 2]},{i},{i * i % 7}"
                                     for i in range(80)]
    (root / "t.csv").write_text("\n".join(rows))
    texts = ["text,label,domain"] + [f"{'ab'[i % 2]} note {i} on {'xy'[i // 2 % 2]},"
                                     f"{'xy'[i // 2 % 2]},{'ab'[i % 2]}" for i in range(40)]
    (root / "texts.csv").write_text("\n".join(texts))
    return {"image_folder_domains": {"root": str(root / "img"), "size": 6},
            "table_domains": {"path": str(root / "t.csv")},
            "text_domains": {"path": str(root / "texts.csv"), "max_length": 12}}


def task_params(name: str) -> dict:
    return _user_files().get(name) or TASK_PARAMS.get(name, {})


@functools.cache
def _teacher(*setting: str) -> dict:
    """A finished tiny run (on the technique's task) to distil from, one per test process."""
    home = tempfile.mkdtemp(prefix="heldout-teacher-")
    cfg = tiny_config("steps=6", *setting)
    execute(cfg, Store(home))
    return {"teacher_run": cfg.identity, "home": home}


def technique_config(name, *extra):
    params = dict(TECHNIQUE_PARAMS.get(name, {}))
    if name in ("knowledge_distillation", "hard_kd"):
        params.update(_teacher(*TECHNIQUE_SETTING.get(name, [])))
    cfg = tiny_config("model.batch_norm=true", "batch_size=16", f"techniques={name}",
                      *TECHNIQUE_SETTING.get(name, []), *extra)
    return parse_overrides(cfg, [f"techniques.{name}.{k}={v}" for k, v in params.items()])


@pytest.mark.parametrize("name", TECHNIQUES.names())
def test_technique_runs_and_is_deterministic(name, tmp_path):
    cfg = technique_config(name)
    first = execute(cfg, Store(tmp_path / "a"))
    second = execute(cfg, Store(tmp_path / "b"))
    assert first.status == "done" and first.record.step == cfg.steps
    assert all(math.isfinite(v) for v in first.metrics.values())
    assert Store(tmp_path / "a").metrics(cfg.identity) == Store(tmp_path / "b").metrics(
        cfg.identity)
    assert first.metrics == second.metrics


@pytest.mark.parametrize("name", TECHNIQUES.names())
def test_technique_state_round_trips(name):
    cfg = technique_config(name)
    trainer = build(cfg)
    trainer.state.max_steps = 3
    trainer.fit()
    for technique in trainer.techniques:
        state = technique.state_dict()
        fresh = copy.deepcopy(technique)
        fresh.load_state_dict(copy.deepcopy(state))
        _assert_same(fresh.state_dict(), state)


@pytest.mark.parametrize("name", TECHNIQUES.names())
def test_technique_resume_is_exact(name, tmp_path, monkeypatch):
    """Interrupt a run after its step-8 checkpoint, rerun it: same history as unbroken."""
    assert_resume_is_exact(technique_config(name), tmp_path, monkeypatch)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


# Cheaper settings for the costliest measures (their defaults are exercised in their own tests)
MEASURE_PARAMS = {"hessian": {"iterations": 10, "samples": 10}}


@pytest.mark.parametrize("name", MEASURES.names())
def test_measure_computes_finite_values_deterministically(name, tmp_path):
    cfg = tiny_config(f"measures=accuracy,loss,{name}" if name not in ("accuracy", "loss")
                      else "measures=accuracy,loss", "steps=3")
    cfg = parse_overrides(cfg, [f"measures.{name}.{k}={v}"
                                for k, v in MEASURE_PARAMS.get(name, {}).items()])
    a = execute(cfg, Store(tmp_path / "a")).metrics
    b = execute(cfg, Store(tmp_path / "b")).metrics
    assert a == b
    produced = [k for k in a if k.split("/", 1)[1] != "step_loss"]
    assert produced and all(math.isfinite(a[k]) for k in produced)


@pytest.mark.parametrize("name", TASKS.names())
def test_task_gives_consistent_deterministic_splits(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HELDOUT_CACHE", str(tmp_path / "cache"))
    task = TASKS.build(name, **task_params(name))
    splits, again, other = task.splits(0), task.splits(0), task.splits(1)
    assert splits.input == task.input
    for split_name, split in splits.items():
        assert split.x.shape[1:] == splits.input.shape
        if splits.regression:
            assert split.y.shape == (len(split), splits.num_classes)
        else:
            assert split.y.min() >= 0 and split.y.max() < splits.num_classes
        assert torch.equal(split.x, again[split_name].x)
        assert torch.equal(split.y, again[split_name].y)
    assert len(splits.train) and len(splits.test)
    assert not torch.equal(splits.train.y, other.train.y) or not torch.equal(
        splits.train.x, other.train.x)


@pytest.mark.parametrize("model_name", MODELS.names())
def test_model_builds_on_some_task_and_is_seeded(model_name, tmp_path, monkeypatch):
    """Every model builds on at least one task, refuses the others with a clear ValueError,
    gives (batch, classes) outputs, and is initialized the same for the same seed."""
    monkeypatch.setenv("HELDOUT_CACHE", str(tmp_path / "cache"))
    spec = MODELS.build(model_name)
    built = 0
    for task_name in TASKS.names():
        splits = TASKS.build(task_name, **task_params(task_name)).splits(0)
        torch.manual_seed(0)
        try:
            a = spec.build(splits.input, splits.num_classes)
        except ValueError as err:
            assert model_name in str(err) or "token" in str(err) or "class" in str(err)
            continue
        torch.manual_seed(0)
        b = spec.build(splits.input, splits.num_classes)
        torch.manual_seed(1)  # the same dropout masks (minilm trains with dropout)
        out = a(splits.train.x[:7])
        assert out.shape == (7, splits.num_classes)
        torch.manual_seed(1)
        assert torch.equal(out, b(splits.train.x[:7]))
        built += 1
    assert built, f"model {model_name} builds on no registered task"


@pytest.mark.parametrize("name", CLAIMS.names())
def test_claim_is_cited_and_stated(name):
    entry = CLAIMS.get(name)
    claim = entry.build()
    assert entry.papers and claim.statement and claim.default_seeds >= 1


