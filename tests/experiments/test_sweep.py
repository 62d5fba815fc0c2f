"""Sweeps: per-name seeded draws, idempotence, a killed driver, a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heldout.config import ConfigError
from heldout.experiments.executors import LocalExecutor, plan_jobs, run_jobs
from heldout.experiments.sweep import draw_value, expand, run_sweep, sweep_from_dict, sweep_status
from heldout.run.execute import execute
from heldout.store import Store
from heldout.vectorize.trainer import train_vectorized

SPEC = {
    "name": "tiny",
    "base": {"model": {"name": "mlp", "hidden": [16]}, "optimizer": {"name": "adam", "lr": 0.01},
             "steps": 30, "eval_every": 10, "checkpoint_every": 10},
    "tasks": [{"name": "modular", "p": 11}],
    "techniques": ["erm", "sam"],
    "hparams": 3,
    "seeds": 2,
    "search": {"optimizer.lr": ["log_uniform", 0.001, 0.1]},
}


def test_expand_draws_and_defaults():
    plan = expand(sweep_from_dict(SPEC))
    assert len(plan) == 2 * 3 * 2
    assert len({p.config.identity for p in plan}) == len(plan)
    defaults = [p for p in plan if p.hparams == 0]
    assert all(p.values == {} and p.config.optimizer.lr == 0.01 for p in defaults)
    sam = [p for p in plan if p.technique == "sam" and p.hparams == 2]
    assert set(sam[0].values) == {"optimizer.lr", "techniques.sam.rho"}
    assert sam[0].config.techniques[0].params["rho"] == sam[0].values["techniques.sam.rho"]
    assert 0.001 <= sam[0].values["optimizer.lr"] <= 0.1


def test_adding_a_hyperparameter_leaves_the_other_draws_unchanged():
    before = expand(sweep_from_dict(SPEC))
    more = dict(SPEC, search={**SPEC["search"], "optimizer.eps": ["log_uniform", 1e-9, 1e-6]})
    after = expand(sweep_from_dict(more))
    for a, b in zip(before, after, strict=True):
        for name, value in a.values.items():
            assert b.values[name] == value
    assert draw_value(["choice", [1, 2, 3]], 0, 5, "x") == draw_value(["choice", [1, 2, 3]], 0,
                                                                      5, "x")
    draws = {draw_value(["uniform", 0, 1], 0, k, "x") for k in range(1, 20)}
    assert len(draws) == 19  # different draws differ


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "bogus: unknown sweep key"),
    ({"techniques": ["erm", "nope"]}, "unknown technique 'nope'"),
    ({"search": {"optimizer.lr": ["gaussian", 0, 1]}}, "unknown search kind 'gaussian'"),
    ({"selection": ["best"]}, "unknown rule(s) ['best']"),
    ({"tasks": []}, "tasks: a sweep needs at least one task"),
    ({"base": {"seed": 3}}, "base.seed: set by the sweep"),
    ({"tasks": [{"name": "modular", "bogus": 1}]}, "tasks: modular: "),
])
def test_spec_errors_are_clear(change, message):
    with pytest.raises(ConfigError) as err:
        expand(sweep_from_dict({**SPEC, **change}))
    assert message in str(err.value)


def test_sweep_runs_each_planned_run_once_and_is_idempotent(tmp_path):
    store = Store(tmp_path / "home")
    spec = sweep_from_dict(SPEC)
    outcomes = run_sweep(spec, store, workers=2)
    assert len(outcomes) == 12 and all(o.status == "done" for o in outcomes)
    status = sweep_status(store, "tiny")
    assert status == {"runs": 12, "counts": {"done": 12}, "failures": []}
    finished = {r.id: r.finished for r in store.runs()}
    assert run_sweep(spec, store, workers=2) == []  # nothing left to do
    assert {r.id: r.finished for r in store.runs()} == finished
    # the six erm runs differ only in seed and learning rate, the six sam runs in seed,
    # learning rate and rho: each six train together, in one group. Every run's metrics equal
    # those of the run executed alone, to float rounding (bit for bit: see vectorize=1 below).
    plan = expand(spec)
    groups = {t: [p.config.identity for p in plan if p.technique == t] for t in ("erm", "sam")}
    for planned in plan:
        assert vectorized_group(store, planned.config.identity) == groups[planned.technique]
    alone = Store(tmp_path / "alone")
    for planned in (plan[0], plan[-1]):
        execute(planned.config, alone)
        assert_matches_alone(store, alone, planned.config.identity)


def vectorized_group(store: Store, run_id: str) -> list[str] | None:
    """The run ids a run was trained together with, or None if it was trained alone."""
    paths = [a["path"] for a in store.artifacts(run_id) if a["name"] == "vectorized_group"]
    return json.loads(Path(paths[0]).read_text())["copies"] if paths else None


def assert_matches_alone(store: Store, alone: Store, run_id: str) -> None:
    ours, theirs = store.metrics(run_id), alone.metrics(run_id)
    if vectorized_group(store, run_id) is None:
        assert ours == theirs
        return
    assert [row[:2] for row in ours] == [row[:2] for row in theirs]
    assert [row[2] for row in ours] == pytest.approx([row[2] for row in theirs], rel=1e-5,
                                                     abs=1e-6)


def test_vectorize_1_runs_every_config_alone(tmp_path):
    spec = sweep_from_dict({**SPEC, "techniques": ["erm", "sam"], "hparams": 1, "seeds": [0]})
    store = Store(tmp_path / "home")
    outcomes = run_sweep(spec, store, workers=2, vectorize=1)
    assert len(outcomes) == 2 and all(o.status == "done" for o in outcomes)
    alone = Store(tmp_path / "alone")
    for planned in expand(spec):
        assert vectorized_group(store, planned.config.identity) is None
        execute(planned.config, alone)
        assert store.metrics(planned.config.identity) == alone.metrics(planned.config.identity)


def test_plan_jobs_groups_what_can_be_vectorized():
    spec = sweep_from_dict({**SPEC, "seeds": 5,
                            "techniques": ["erm", "sam", "ema", "perp_grad"]})
    plan = [p.config for p in expand(spec)]
    jobs = plan_jobs(plan, max_copies=4)
    assert sorted(c.identity for job in jobs for c in job) == sorted(c.identity for c in plan)
    sizes = sorted(len(job) for job in jobs)
    # erm, sam and ema: 15 copies each (3 draws of lr / lr and rho / lr and decay x 5 seeds)
    # in groups of 4, 4, 4, 3; perp_grad (not vectorizable): 15 runs (lr draws) alone
    assert sizes == [1] * 15 + [3] * 3 + [4] * 9
    assert all(len({c.techniques[0].name if c.techniques else "erm" for c in job}) == 1
               for job in jobs)
    assert all(len(job) == 1 for job in jobs if job[0].techniques
               and job[0].techniques[0].name == "perp_grad")
    assert [len(job) for job in plan_jobs(plan, max_copies=1)] == [1] * 60


def _spec_file(tmp_path, **change):
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **change}))
    return path


def test_driver_killed_mid_sweep_then_rerun(tmp_path):
    spec_path = _spec_file(tmp_path, base={**SPEC["base"], "steps": 60})
    reference = Store(tmp_path / "reference")
    run_sweep(sweep_from_dict({**SPEC, "base": {**SPEC["base"], "steps": 60}}), reference,
              workers=2, vectorize=2)  # 6 jobs of 2 seeds: the kill lands between jobs
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "heldout.cli", "--home", str(home), "sweep",
                             str(spec_path), "--workers", "2", "--vectorize", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = 0
    deadline = time.time() + 120
    while time.time() < deadline and done < 3:
        line = proc.stdout.readline()
        done += line.strip().endswith(" done")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(home)
    before = {r.id: (r.finished, store.final_metrics(r.id)) for r in store.runs("done")}
    assert 3 <= len(before) < 12
    time.sleep(1.0)  # orphaned workers notice the driver is gone and stop
    out = subprocess.run([sys.executable, "-m", "heldout.cli", "--home", str(home), "sweep",
                          str(spec_path), "--workers", "2", "--vectorize", "2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 runs: done 12" in out.stdout
    for run_id, (finished, final) in before.items():  # finished results untouched
        record = store.get_run(run_id)
        assert record.finished == finished and store.final_metrics(run_id) == final
    for record in reference.runs():  # every run done once, with the uninterrupted history
        assert store.metrics(record.id) == reference.metrics(record.id)


def test_a_killed_worker_fails_its_run_and_a_rerun_resumes_it(tmp_path):
    spec = sweep_from_dict({**SPEC, "techniques": ["erm"], "hparams": 1, "seeds": [0],
                            "base": {**SPEC["base"], "steps": 2000, "eval_every": 100,
                                             "checkpoint_every": 20}})
    (planned,) = expand(spec)
    cfg = planned.config
    store = Store(tmp_path / "home")
    store.record_sweep(spec.identity, spec.name, {}, [(cfg.identity, {}, planned.meta, 0)])
    executor = LocalExecutor(store.home, workers=1)
    executor.submit(cfg)
    checkpoint = store.run_dir(cfg.identity) / "checkpoint.pt"
    deadline = time.time() + 120
    outcomes = []
    while time.time() < deadline and not checkpoint.exists():
        outcomes += executor.poll(store, 0.05)
    os.kill(executor.process_of(cfg.identity).pid, signal.SIGKILL)
    while executor.busy:
        outcomes += executor.poll(store, 0.1)
    (outcome,) = outcomes
    assert outcome.status == "failed" and "killed by signal 9" in outcome.error
    assert store.get_run(cfg.identity).status == "failed"
    (again,) = run_jobs([cfg], store, LocalExecutor(store.home, workers=1))
    assert again.status == "done"
    alone = Store(tmp_path / "alone")
    execute(cfg, alone)
    assert store.metrics(cfg.identity) == alone.metrics(cfg.identity)


def test_draws_that_repeat_the_defaults_are_planned_once():
    plan = expand(sweep_from_dict({**SPEC, "search": {}, "techniques": ["erm", "sam"]}))
    erm = [p for p in plan if p.technique == "erm"]
    assert len(erm) == 2 and {p.hparams for p in erm} == {0}  # nothing to search: draw 0 only
    assert len([p for p in plan if p.technique == "sam"]) == 3 * 2  # sam has rho to draw
    assert len({p.config.identity for p in plan}) == len(plan)


def test_a_killed_group_fails_all_its_runs_and_a_rerun_resumes_them(tmp_path):
    spec = sweep_from_dict({**SPEC, "techniques": ["erm"], "hparams": 1, "seeds": 3, "base": {
        **SPEC["base"], "steps": 3000, "eval_every": 1000, "checkpoint_every": 1000}})
    plan = expand(spec)
    store = Store(tmp_path / "home")
    store.record_sweep(spec.identity, spec.name, {}, [
        (p.config.identity, {}, p.meta, p.seed) for p in plan])
    configs = [p.config for p in plan]
    (job,) = plan_jobs(configs)
    assert len(job) == 3
    executor = LocalExecutor(store.home, workers=1)
    executor.submit(job)
    run_ids = tuple(c.identity for c in configs)
    paths = [store.run_dir(r) / "checkpoint.pt" for r in run_ids]
    deadline = time.time() + 120
    outcomes = []
    while time.time() < deadline and not all(p.exists() for p in paths):
        outcomes += executor.poll(store, 0.05)
    process = executor.process_of(run_ids[0])
    assert all(executor.process_of(r) is process for r in run_ids)
    os.kill(process.pid, signal.SIGKILL)
    while executor.busy:
        outcomes += executor.poll(store, 0.1)
    assert sorted(o.run_id for o in outcomes) == sorted(run_ids)
    assert all(o.status == "failed" and "killed by signal 9" in o.error for o in outcomes)
    again = run_jobs(configs, store, LocalExecutor(store.home, workers=1), vectorize=8)
    assert sorted(o.run_id for o in again) == sorted(run_ids)
    assert all(o.status == "done" for o in again)
    straight = Store(tmp_path / "straight")  # the same group, never killed
    train_vectorized(configs, straight)
    for cfg in configs:
        assert vectorized_group(store, cfg.identity) == list(run_ids)
        assert store.metrics(cfg.identity) == straight.metrics(cfg.identity)
        assert [step for step, key, _ in store.metrics(cfg.identity)
                if key == "train/accuracy"] == [0, 1000, 2000, 3000]


def test_pool_processes_are_reused_then_replaced_and_runs_match_runs_alone(tmp_path):
    """A worker runs job after job (no state leaks from one run into the next: bit-identical
    to each run alone) and is replaced after ``jobs_per_worker`` jobs."""
    spec = sweep_from_dict({**SPEC, "techniques": ["erm", "sam"], "hparams": 1, "seeds": [0]})
    configs = [p.config for p in expand(spec)]
    configs.append(expand(sweep_from_dict({**SPEC, "techniques": ["erm"], "hparams": 1,
                                           "seeds": [3]}))[0].config)
    store = Store(tmp_path / "home")
    for cfg in configs:
        store.create_run(cfg.identity, {}, cfg.seed)
    executor = LocalExecutor(store.home, workers=1, jobs_per_worker=2)
    pids = []
    for cfg in configs:
        executor.submit(cfg)
        pids.append(executor.process_of(cfg.identity).pid)
        outcomes = []
        while executor.busy:
            outcomes += executor.poll(store, 0.1)
        assert [o.status for o in outcomes] == ["done"]
    executor.close()
    assert pids[0] == pids[1] != pids[2]
    alone = Store(tmp_path / "alone")
    for cfg in configs:
        execute(cfg, alone)
        assert store.metrics(cfg.identity) == alone.metrics(cfg.identity)


def test_a_task_label_names_it_in_tables_and_stays_out_of_the_config():
    plan = expand(sweep_from_dict({**SPEC, "techniques": ["erm"], "hparams": 1, "tasks": [
        {"name": "spurious", "label": "colored"}]}))
    assert len(plan) == 3 * 2  # each of the 3 domains held out, 2 seeds
    assert {p.task for p in plan} == {"colored"}
    assert {p.held_out for p in plan} == {("agree90",), ("agree80",), ("agree10",)}
    assert all("label" not in p.config.task.params for p in plan)


def test_grids_cross_every_combination_with_the_draws():
    spec = sweep_from_dict({**SPEC, "hparams": 2, "seeds": [0], "search": {},
                            "grid": {"optimizer.lr": [0.01, 0.001],
                                     "techniques.sam.rho": [0.02, 0.2]}})
    plan = expand(spec)
    erm = [p for p in plan if p.technique == "erm"]  # the sam key does not apply to erm
    assert [(p.hparams, p.values) for p in erm] == [(0, {"optimizer.lr": 0.01}),
                                                    (1, {"optimizer.lr": 0.001})]
    assert [p.config.optimizer.lr for p in erm] == [0.01, 0.001]
    sam = [p for p in plan if p.technique == "sam"]  # 4 grid points x 2 draws of rho ...
    # ... but the grid's rho wins over the drawn one, so each draw 1 repeats its draw 0 and
    # is planned once
    assert [p.hparams for p in sam] == [0, 2, 4, 6]
    points = [(p.values["optimizer.lr"], p.values["techniques.sam.rho"]) for p in sam]
    assert points == [(0.01, 0.02), (0.01, 0.2), (0.001, 0.02), (0.001, 0.2)]
    assert [p.config.techniques[0].params["rho"] for p in sam] == [0.02, 0.2, 0.02, 0.2]
    assert [p.config.optimizer.lr for p in sam] == [0.01, 0.01, 0.001, 0.001]


@pytest.mark.parametrize("grid, message", [
    ({"optimizer.lr": []}, "grid.optimizer.lr: a grid is a non-empty list"),
    ({"techniques.ema.decay": [0.9]}, "technique 'ema' is not in the sweep's techniques"),
])
def test_grid_errors_are_clear(grid, message):
    with pytest.raises(ConfigError, match=message):
        sweep_from_dict({**SPEC, "grid": grid})


def test_a_group_that_cannot_stack_runs_its_configs_one_by_one(tmp_path, monkeypatch):
    """If the copies turn out not to stack before anything started (training sets of other
    shapes), the job trains its configs separately; the driver's messages are the same."""
    from heldout.config import config_to_dict
    from heldout.experiments.executors import _apply, _train_job
    from heldout.vectorize import trainer as vectorized

    def refuse(self, *args, **kwargs):
        raise ValueError("the copies' training sets differ in shape")

    monkeypatch.setattr(vectorized._Group, "__init__", refuse)
    spec = sweep_from_dict({**SPEC, "techniques": ["erm"], "hparams": 1})
    configs = [p.config for p in expand(spec)]
    store = Store(tmp_path / "home")
    for cfg in configs:
        store.create_run(cfg.identity, {}, cfg.seed)
    finished: dict = {}
    _train_job([config_to_dict(c) for c in configs], str(store.home),
               lambda run_id, kind, payload: _apply(store, run_id, kind, payload, finished), 1)
    assert sorted(finished) == sorted(c.identity for c in configs)
    assert all(r["status"] == "done" for r in finished.values())
    alone = Store(tmp_path / "alone")
    for cfg in configs:
        execute(cfg, alone)
        assert store.metrics(cfg.identity) == alone.metrics(cfg.identity)  # trained alone
