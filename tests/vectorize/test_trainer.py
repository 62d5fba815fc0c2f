"""Vectorized seeds: K copies trained together equal the same configs trained alone."""

from __future__ import annotations

import json
import math

import pytest
import torch

from heldout.config import Component, RunConfig, parse_overrides
from heldout.engine.checkpoint import load_checkpoint
from heldout.run.execute import RunFailed, execute, measure_run
from heldout.store import Store
from heldout.vectorize.trainer import (
    GROUP_NAME,
    _Group,
    _StackedOptimizer,
    can_vectorize,
    train_vectorized,
)
from tests.conftest import tiny_config

SEEDS = (0, 1, 2, 3)
REL, ABS = 1e-5, 1e-6  # float tolerance: a batched matmul may round unlike the plain one
OPTIMIZERS = {
    "adamw": ["optimizer.name=adamw", "optimizer.lr=0.01"],
    "sgd_momentum": ["optimizer.name=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9"],
}


def seeds_configs(*overrides: str, lrs=None, weight_decays=None) -> list[RunConfig]:
    """tiny_config (p=23, hidden [32], 12 steps, eval every 3, one checkpoint) for each seed,
    with per-copy learning rates / weight decays if given."""
    configs = []
    for i, seed in enumerate(SEEDS):
        extra = [f"seed={seed}", "checkpoint_every=12"]
        if lrs is not None:
            extra.append(f"optimizer.lr={lrs[i]}")
        if weight_decays is not None:
            extra.append(f"optimizer.weight_decay={weight_decays[i]}")
        configs.append(tiny_config(*overrides, *extra))
    return configs


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """``alone(cfg)``: the store in which ``cfg`` was trained alone by the runner (one store
    for the module; a config trained before is not trained again)."""
    store = Store(tmp_path_factory.mktemp("alone"))

    def train(cfg: RunConfig) -> Store:
        execute(cfg, store)
        return store

    return train


def assert_same_history(ours: Store, theirs: Store, run_id: str) -> None:
    """The same metrics at the same steps, every value equal to float tolerance."""
    a, b = ours.metrics(run_id), theirs.metrics(run_id)
    assert [(step, key) for step, key, _ in a] == [(step, key) for step, key, _ in b]
    for (step, key, x), (_, _, y) in zip(a, b, strict=True):
        assert math.isclose(x, y, rel_tol=REL, abs_tol=ABS), (step, key, x, y)


def assert_close_tree(a, b, path: str = "checkpoint") -> None:
    """Same structure, equal plain values, floats and float tensors equal to float
    tolerance."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close_tree(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, path
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=REL, atol=ABS, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=REL, abs_tol=ABS), (path, a, b)
    else:
        assert a == b, path


def checkpoint_of(store: Store, run_id: str) -> dict:
    return load_checkpoint(store.checkpoint_path(run_id))


def per_copy(configs: list[RunConfig], key: str, values) -> list[RunConfig]:
    """``configs`` with ``key`` set to one value per copy."""
    return [parse_overrides(c, [f"{key}={v}"]) for c, v in zip(configs, values, strict=True)]


def train_and_compare(configs: list[RunConfig], tmp_path, alone) -> Store:
    """Train ``configs`` as one group; assert every metric and the final checkpoint of each
    copy equal the run trained alone (float tolerance); return the group's store."""
    assert can_vectorize(configs) == (True, "")
    store = Store(tmp_path / "vectorized")
    train_vectorized(configs, store)
    for cfg in configs:
        separate = alone(cfg)
        assert_same_history(store, separate, cfg.identity)
        assert_close_tree(checkpoint_of(store, cfg.identity),
                          checkpoint_of(separate, cfg.identity))
    return store


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("batch", ["full", "16"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_copies_match_separate_runs(optimizer, batch, tmp_path, alone):
    batch_override = [] if batch == "full" else [f"batch_size={batch}"]
    configs = seeds_configs(*OPTIMIZERS[optimizer], *batch_override)
    store = Store(tmp_path / "vectorized")
    results = train_vectorized(configs, store)
    assert [r.run_id for r in results] == [c.identity for c in configs]
    assert all(r.status == "done" and not r.skipped for r in results)
    for cfg, result in zip(configs, results, strict=True):
        separate = alone(cfg)
        assert_same_history(store, separate, cfg.identity)
        steps = {step for step, _, _ in store.metrics(cfg.identity)}
        assert steps == {0, 3, 6, 9, 12}
        # the final checkpoint is the one the Trainer writes, to float tolerance: weights,
        # optimizer state, data position, RNG states, last loss
        ours, theirs = checkpoint_of(store, cfg.identity), checkpoint_of(separate, cfg.identity)
        assert_close_tree(ours, theirs)
        assert result.metrics == pytest.approx(separate.final_metrics(cfg.identity),
                                               rel=REL, abs=ABS)
    # the copies really differ: different seeds, different weights
    first, second = (checkpoint_of(store, c.identity)["model"] for c in configs[:2])
    assert not torch.allclose(first["head.weight"], second["head.weight"])


@pytest.mark.parametrize("batch", [[], ["batch_size=16"]])
def test_copies_sharing_one_dataset_match_separate_runs(batch, tmp_path, alone):
    """With ``task.data_seed`` every copy trains on the same split (batched by a free expand,
    so token layers keep their vmap path)."""
    configs = seeds_configs("task.data_seed=5", *batch)[:2]
    store = Store(tmp_path / "vectorized")
    train_vectorized(configs, store)
    for cfg in configs:
        assert_same_history(store, alone(cfg), cfg.identity)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_per_copy_learning_rates_and_weight_decays(optimizer, tmp_path, alone):
    base = {"adamw": [0.01, 0.02, 0.005, 0.03], "sgd_momentum": [0.1, 0.05, 0.2, 0.02]}
    configs = seeds_configs(*OPTIMIZERS[optimizer], "batch_size=16", lrs=base[optimizer],
                            weight_decays=[0.0, 0.1, 0.0, 0.5])
    store = train_and_compare(configs, tmp_path, alone)
    # the learning rates took effect: same seed, other lr, other weights
    other = seeds_configs(*OPTIMIZERS[optimizer], "batch_size=16",
                          lrs=base[optimizer][::-1], weight_decays=[0.0, 0.1, 0.0, 0.5])
    train_vectorized(other[:1], store)
    assert not torch.allclose(checkpoint_of(store, configs[0].identity)["model"]["head.weight"],
                              checkpoint_of(store, other[0].identity)["model"]["head.weight"])


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "nesterov", "plain_sgd"])
def test_stacked_optimizer_is_torchs_update_bit_for_bit(name):
    """Fed the same gradients, the stacked update equals K torch optimizers exactly, with
    shared and with per-copy learning rates and weight decays."""
    make = {
        "adamw": lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd),
        "adam": lambda ps, lr, wd: torch.optim.Adam(ps, lr=lr, weight_decay=wd),
        "sgd": lambda ps, lr, wd: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd),
        "nesterov": lambda ps, lr, wd: torch.optim.SGD(ps, lr=lr, momentum=0.9,
                                                       nesterov=True, weight_decay=wd),
        "plain_sgd": lambda ps, lr, wd: torch.optim.SGD(ps, lr=lr, weight_decay=wd),
    }[name]
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (5,), (2, 5)]
    for lrs, wds in [([0.01] * 3, [0.1] * 3), ([0.01, 0.003, 0.02], [0.1, 0.0, 0.3])]:
        start = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
        params = [[torch.nn.Parameter(p.clone()) for p in copy] for copy in start]
        optimizers = [make(ps, lr, wd) for ps, lr, wd in zip(params, lrs, wds, strict=True)]
        flat = torch.stack([torch.cat([p.flatten() for p in copy]) for copy in start])
        stacked = _StackedOptimizer(optimizers, flat)
        for _ in range(4):
            grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
            for copy, opt, copy_grads in zip(params, optimizers, grads, strict=True):
                for p, g in zip(copy, copy_grads, strict=True):
                    p.grad = g.clone()
                opt.step()
            stacked.step(flat, torch.stack([torch.cat([g.flatten() for g in copy])
                                            for copy in grads]))
        expected = torch.stack([torch.cat([p.detach().flatten() for p in copy])
                                for copy in params])
        assert torch.equal(flat, expected)


# ----------------------------------------------------------------------------- the check

@pytest.mark.parametrize(("override", "reason"), [
    ("task.p=29", "task.p"),
    ("steps=20", "steps"),
    ("techniques=perp_grad", "technique 'perp_grad'"),
    ("model.batch_norm=true", "BatchNorm"),
])
def test_can_vectorize_refuses_with_the_reason(override, reason, tmp_path):
    configs = seeds_configs()
    if override.startswith(("task", "steps")):  # one copy differs
        configs[1] = seeds_configs(override)[1]
    else:
        configs = seeds_configs(override)
    ok, why = can_vectorize(configs)
    assert not ok and reason in why
    store = Store(tmp_path / "store")
    with pytest.raises(ValueError, match="cannot vectorize"):
        train_vectorized(configs, store)
    assert store.runs() == []  # refused before writing anything


def test_copies_may_differ_in_rho_but_not_in_sams_other_settings():
    configs = seeds_configs("techniques=sam")
    configs[1] = seeds_configs("techniques=sam", "techniques.sam.rho=0.2")[1]
    assert can_vectorize(configs) == (True, "")
    configs[2] = seeds_configs("techniques=sam", "techniques.sam.adaptive=true")[2]
    ok, why = can_vectorize(configs)
    assert not ok and "techniques" in why and "adaptive" in why


def test_can_vectorize_accepts_what_it_supports():
    assert can_vectorize(seeds_configs()) == (True, "")
    assert can_vectorize(seeds_configs("techniques=weight_decay")) == (True, "")
    ok, why = can_vectorize(seeds_configs("model=transformer", "model.d_model=16",
                                          "model.n_heads=2", "model.dropout=0.1"))
    assert not ok and "dropout" in why
    assert can_vectorize([]) == (False, "no configs")


def test_weight_decay_technique_folds_into_the_update(tmp_path, alone):
    configs = seeds_configs("techniques=weight_decay", "techniques.weight_decay.weight_decay=0.3")
    store = train_and_compare(configs[:2], tmp_path, alone)
    assert checkpoint_of(store, configs[0].identity)["optimizer"]["param_groups"][0][
        "weight_decay"] == 0.3


# ----------------------------------------------------------------------------- the store

def test_each_copy_is_its_own_finished_run(tmp_path, alone):
    configs = seeds_configs("batch_size=16", "name=group")
    store = Store(tmp_path / "store")
    train_vectorized(configs, store)
    assert sorted(r.id for r in store.runs()) == sorted(c.identity for c in configs)
    for cfg in configs:
        record = store.get_run(cfg.identity)
        assert (record.status, record.step, record.seed, record.name) == ("done", 12, cfg.seed,
                                                                          "group")
        assert record.started is not None and record.finished is not None
        path = store.checkpoint_path(cfg.identity)
        assert record.checkpoint == str(path)
        assert sorted(a["name"] for a in store.artifacts(cfg.identity)) == [
            "checkpoint", "vectorized_group"]
        group = json.loads((store.run_dir(cfg.identity) / GROUP_NAME).read_text())
        assert group == {"copies": [c.identity for c in configs],
                         "index": configs.index(cfg)}
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["step"] == 12 and ckpt["batches"] == {"epoch": 0, "index": 12}
        assert store.history(cfg.identity)["train/step_loss"][0][0] == 3  # not at step 0
    # post-hoc measures work on the checkpoint, and agree with the separate run's
    separate = alone(configs[2])
    ours = measure_run(store, configs[2].identity, [Component("norms")])
    theirs = measure_run(separate, configs[2].identity, [Component("norms")])
    assert ours.keys() == theirs.keys() and ours == pytest.approx(theirs, rel=REL)


def test_done_runs_are_skipped(tmp_path):
    configs = seeds_configs()
    store = Store(tmp_path / "store")
    first = execute(configs[0], store)  # one of them already done alone
    history = store.metrics(configs[0].identity)
    results = train_vectorized(configs, store)
    assert [r.skipped for r in results] == [True, False, False, False]
    assert store.metrics(configs[0].identity) == history
    assert results[0].metrics == first.metrics
    again = train_vectorized(configs + configs[:1], store)  # duplicates: one run
    assert len(again) == 5 and all(r.skipped and r.status == "done" for r in again)


def interrupt_evaluation_at(monkeypatch, at: int):
    """Make the group's evaluation at step ``at`` raise KeyboardInterrupt (a kill); return the
    original method, to put back."""
    original = _Group.evaluate

    def interrupt(self, index, step, loss, outputs=None):
        if step == at:
            raise KeyboardInterrupt
        return original(self, index, step, loss, outputs)

    monkeypatch.setattr(_Group, "evaluate", interrupt)
    return original


def test_killed_group_reruns_unfinished_copies_from_scratch(tmp_path, monkeypatch):
    configs = seeds_configs("batch_size=16")
    straight = Store(tmp_path / "straight")
    train_vectorized(configs, straight)
    broken = Store(tmp_path / "broken")
    original = interrupt_evaluation_at(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train_vectorized(configs, broken)
    assert {broken.get_run(c.identity).status for c in configs} == {"failed"}
    assert {broken.get_run(c.identity).step for c in configs} == {6}
    monkeypatch.setattr(_Group, "evaluate", original)
    results = train_vectorized(configs, broken)
    assert all(r.status == "done" and not r.skipped for r in results)
    for cfg in configs:
        assert broken.metrics(cfg.identity) == straight.metrics(cfg.identity)


@pytest.mark.parametrize("technique", ["none", "ema"])
def test_killed_group_resumes_from_the_copies_last_checkpoints(technique, tmp_path, monkeypatch):
    """Checkpoints every 4 steps (as each run alone would write them); killed at step 9, the
    rerun continues from step 8 and ends exactly as the uninterrupted group (with EMA: each
    copy's average, per-copy decay, read back from its checkpoint)."""
    configs = [parse_overrides(c, ["checkpoint_every=4"])
               for c in seeds_configs("batch_size=16")]
    if technique == "ema":
        configs = per_copy([parse_overrides(c, ["techniques=ema"]) for c in configs],
                           "techniques.ema.decay", [0.9, 0.5, 0.8, 0.7])
    straight = Store(tmp_path / "straight")
    train_vectorized(configs, straight)
    broken = Store(tmp_path / "broken")
    original_resume = _Group.resume
    resumed_at = []

    def resume(self, paths):
        resumed_at.append(original_resume(self, paths))
        return resumed_at[-1]

    original_evaluate = interrupt_evaluation_at(monkeypatch, 9)
    monkeypatch.setattr(_Group, "resume", resume)
    with pytest.raises(KeyboardInterrupt):
        train_vectorized(configs, broken)
    assert {checkpoint_of(broken, c.identity)["step"] for c in configs} == {8}
    assert {broken.get_run(c.identity).checkpoint for c in configs} == {
        str(broken.checkpoint_path(c.identity)) for c in configs}
    monkeypatch.setattr(_Group, "evaluate", original_evaluate)
    results = train_vectorized(configs, broken)
    assert resumed_at == [0, 8]
    assert all(r.status == "done" for r in results)
    for cfg in configs:
        assert broken.metrics(cfg.identity) == straight.metrics(cfg.identity)
        ours, theirs = checkpoint_of(broken, cfg.identity), checkpoint_of(straight, cfg.identity)
        assert_close_tree(ours, theirs)


def test_a_partial_set_of_checkpoints_restarts_the_group(tmp_path):
    configs = seeds_configs("batch_size=16")[:2]
    first = Store(tmp_path / "first")
    train_vectorized(configs[:1], first)  # one copy alone has a (final) checkpoint
    group = _Group(configs, first, None)
    paths = [first.checkpoint_path(c.identity) for c in configs]
    assert paths[0].exists() and not paths[1].exists()
    assert group.resume(paths) == 0
    assert not paths[0].exists()  # deleted: the group starts over together


def test_a_diverging_copy_fails_alone(tmp_path, alone):
    configs = seeds_configs(*OPTIMIZERS["sgd_momentum"], lrs=[0.1, 0.1, 1e12, 0.1])
    store = Store(tmp_path / "store")
    results = train_vectorized(configs, store)
    assert [r.status for r in results] == ["done", "done", "failed", "done"]
    with pytest.raises(RunFailed):
        alone(configs[2])
    separate = alone(configs[3])  # the store of the runs trained alone
    ours, theirs = store.get_run(configs[2].identity), separate.get_run(configs[2].identity)
    assert (ours.status, ours.step, ours.error) == (theirs.status, theirs.step, theirs.error)
    assert "non-finite" in ours.error
    assert not (store.checkpoint_path(configs[2].identity)).exists()
    assert_same_history(store, separate, configs[2].identity)  # up to the failure
    assert_same_history(store, separate, configs[3].identity)  # the others go on


# ----------------------------------------------------------------------------- the forward

@pytest.mark.parametrize(("kind", "model"), [
    ("tokens", dict(hidden=(8, 6))),
    ("tokens", dict(hidden=(8,), bias=False, activation="square")),
    ("continuous", dict(hidden=(7,), activation="gelu")),
    ("continuous", dict(hidden=(5, 4), activation="tanh", bias=False)),
])
def test_the_stacked_mlp_forward_is_the_vmapped_model(kind, model):
    """The batched-matmul forward of the MLPs equals vmapping the module over the copies."""
    from torch.func import functional_call, stack_module_state

    from heldout.core.inputs import InputSpec
    from heldout.models.mlp import MLP
    from heldout.vectorize.trainer import _stacked_forward

    spec = InputSpec("tokens", (3,), vocab=5) if kind == "tokens" else InputSpec("continuous",
                                                                                 (2, 3))
    torch.manual_seed(0)
    copies = [MLP(**model).build(spec, num_classes=4) for _ in range(3)]
    params, buffers = stack_module_state(copies)
    x = (torch.randint(0, 5, (3, 10, 3)) if kind == "tokens" else torch.randn(3, 10, 2, 3))
    forward = _stacked_forward(copies[0])
    assert forward is not None
    expected = torch.vmap(lambda p, b, xs: functional_call(copies[0], (p, b), (xs,)))(
        params, buffers, x)
    torch.testing.assert_close(forward(params, x), expected, rtol=1e-6, atol=1e-6)
    if kind == "tokens":
        with pytest.raises(IndexError, match="out of range"):
            forward(params, torch.full((3, 2, 3), 5))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_other_models_are_vmapped_whole_and_match_separate_runs(tmp_path, alone):
    from heldout.vectorize.trainer import _stacked_forward

    configs = seeds_configs("model=transformer", "model.d_model=16", "model.n_heads=2",
                            "batch_size=16")[:2]
    assert can_vectorize(configs) == (True, "")
    group = _Group(configs, Store(tmp_path / "probe"), None)
    assert group.stacked_forward is None  # attention, layer norms: the generic path
    assert _stacked_forward(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0))
                            ) is None
    store = Store(tmp_path / "vectorized")
    train_vectorized(configs, store)
    for cfg in configs:
        assert_same_history(store, alone(cfg), cfg.identity)


@pytest.mark.parametrize("loss", [["loss=mse"], ["loss_dtype=float64"]])
def test_other_losses_match_separate_runs(loss, tmp_path, alone):
    configs = seeds_configs(*loss, "batch_size=16")[:2]
    store = Store(tmp_path / "vectorized")
    train_vectorized(configs, store)
    for cfg in configs:
        assert_same_history(store, alone(cfg), cfg.identity)


def test_evaluation_logits_of_all_copies_are_computed_together(tmp_path):
    configs = seeds_configs()[:3]
    group = _Group(configs, Store(tmp_path / "store"), None)
    outputs = group.eval_outputs()
    for index, trainer in enumerate(group.trainers):
        assert outputs[index].keys() == trainer.eval_data.keys() == {"train", "val", "test"}
        model = group.load_copy(index).model
        for split, (logits, targets) in outputs[index].items():
            data = trainer.eval_data[split]
            torch.testing.assert_close(logits, model(data.x), rtol=1e-6, atol=1e-6)
            assert torch.equal(targets, data.y)



@pytest.mark.parametrize("technique", [
    ["techniques=sam"],  # per-copy rho below
    ["techniques=sam", "techniques.sam.adaptive=true", "techniques.sam.eta=0.01"],
    ["techniques=label_smoothing"],  # per-copy smoothing below
    ["techniques=sam,label_smoothing", "techniques.sam.rho=0.1"],
    ["techniques=asam"],  # per-copy rho below; biases unscaled
    ["techniques=asam,ema", "techniques.asam.eta=0.0"],
])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_sam_and_label_smoothing_match_separate_runs(technique, optimizer, tmp_path, alone):
    """SAM's and ASAM's ascent per copy (its own rho) and label smoothing per copy (its own
    ε): every metric and the final checkpoint equal the separate run's to float tolerance."""
    configs = seeds_configs(*OPTIMIZERS[optimizer], *technique, "batch_size=16")
    if technique in (["techniques=sam"], ["techniques=asam"]):
        name = technique[0].split("=")[1]
        configs = per_copy(configs, f"techniques.{name}.rho", [0.05, 0.5, 0.01, 0.2])
    if technique == ["techniques=label_smoothing"]:
        configs = per_copy(configs, "techniques.label_smoothing.smoothing", [0.1, 0.0, 0.3, 0.05])
    train_and_compare(configs, tmp_path, alone)


@pytest.mark.parametrize("technique", [
    ["techniques=ema"],  # per-copy decay below
    ["techniques=ema", "techniques.ema.evaluate_average=false"],
    ["techniques=sam,ema", "techniques.ema.decay=0.5"],
])
def test_ema_matches_separate_runs(technique, tmp_path, alone):
    """The stacked average: every metric (of the averaged weights, or of the raw ones) and
    the final checkpoint, the average and its update count included, equal the separate
    run's to float tolerance."""
    configs = seeds_configs(*OPTIMIZERS["adamw"], *technique, "batch_size=16")
    if technique == ["techniques=ema"]:
        configs = per_copy(configs, "techniques.ema.decay", [0.9, 0.5, 0.99, 0.0])
    store = train_and_compare(configs, tmp_path, alone)
    for cfg in configs:
        assert checkpoint_of(store, cfg.identity)["techniques"]["ema"]["updates"] == 12
    if technique == ["techniques=ema"]:  # decay 0 averages nothing: the average is the weights
        last = checkpoint_of(store, configs[3].identity)
        average = last["techniques"]["ema"]
        for name, value in last["model"].items():
            assert torch.equal(average["module"][name], value)


def test_sam_ascent_is_sams_first_step():
    """The stacked perturbation equals SAM.first_step's move, copy by copy, plain and
    adaptive, with per-copy radii."""
    from heldout.methods.sam import SAM, StackedAscent

    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (5,), (2, 5)]
    for adaptive, eta in [(False, 0.0), (True, 0.01)]:
        rhos = [0.05, 0.5, 0.2]
        copies = [[torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
                  for _ in rhos]
        grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in rhos]
        flat = torch.stack([torch.cat([p.detach().flatten() for p in c]) for c in copies])
        grad = torch.stack([torch.cat([g.flatten() for g in c]) for c in grads])
        layout, start = [], 0
        for i, s in enumerate(shapes):
            n = torch.Size(s).numel()
            layout.append((str(i), start, start + n, torch.Size(s)))
            start += n
        rho = torch.tensor(rhos, dtype=torch.float64).unsqueeze(1)
        e = StackedAscent(rho, layout, eta=eta if adaptive else None).ascent(flat, grad)
        for k, (params, g) in enumerate(zip(copies, grads, strict=True)):
            for p, gi in zip(params, g, strict=True):
                p.grad = gi.clone()
            before = torch.cat([p.detach().flatten() for p in params])
            SAM(torch.optim.SGD(params, lr=0.1), rho=rhos[k], adaptive=adaptive,
                eta=eta).first_step()
            moved = torch.cat([p.detach().flatten() for p in params]) - before
            torch.testing.assert_close(e[k], moved, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- extension

def test_a_technique_vectorizes_by_declaring_its_stacked_rule(tmp_path, monkeypatch):
    """What vectorizes, the refusal messages and the per-copy fields come from the techniques'
    own declarations: a technique defined here (one class, as a user's file would hold it),
    with a per-copy hyper-parameter and a loss rule, trains vectorized exactly as alone."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    from heldout.core.stacked import StackedRule, cast
    from heldout.core.stacked import per_copy as stacked_per_copy
    from heldout.core.technique import Technique
    from heldout.registry import TECHNIQUES
    from heldout.vectorize.trainer import per_copy_fields, vectorizable_techniques

    monkeypatch.setattr(TECHNIQUES, "_entries", dict(TECHNIQUES._entries))

    class _Scaled(StackedRule):
        def __init__(self, scale):
            self.scale = scale

        def loss(self, logits, targets):
            ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
            scale = cast(self.scale, ce)
            return ce * (scale if isinstance(scale, float) else scale.squeeze(1))

    @TECHNIQUES.register("scaled_loss_for_test", summary="Cross-entropy times a constant.")
    @dataclass
    class ScaledLoss(Technique):
        """Cross-entropy times ``scale``."""

        scale: float = 1.0
        touches = frozenset({"loss"})
        vectorizable = frozenset({"scale"})

        def loss(self, logits, targets, state):
            return F.cross_entropy(logits, targets) * self.scale

        @classmethod
        def stacked_rule(cls, copies, stack):
            return _Scaled(stacked_per_copy([c.scale for c in copies], stack.flat))

    assert vectorizable_techniques()["scaled_loss_for_test"] == {"scale"}
    assert "techniques.scaled_loss_for_test.scale" in per_copy_fields()
    configs = per_copy(seeds_configs("techniques=scaled_loss_for_test"),
                       "techniques.scaled_loss_for_test.scale", [0.5, 1.0, 2.0, 3.0])
    store = Store(tmp_path / "vectorized")
    train_vectorized(configs, store)
    separate = Store(tmp_path / "alone")
    for cfg in configs:
        execute(cfg, separate)
        assert_same_history(store, separate, cfg.identity)
    # a technique that does not declare it is refused, and the message lists what vectorizes
    ok, why = can_vectorize(seeds_configs("techniques=perp_grad"))
    assert not ok and "scaled_loss_for_test" in why and "ema" in why
