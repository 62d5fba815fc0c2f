"""The Ray executor on a real local Ray instance."""

import pytest

from heldout.experiments.executors import RayExecutor, run_jobs
from heldout.experiments.sweep import expand, run_sweep, sweep_from_dict, sweep_status
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import tiny_config
from tests.experiments.test_sweep import SPEC, assert_matches_alone, vectorized_group

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_sweep_matches_runs_done_alone(tmp_path, local_ray):
    spec = sweep_from_dict({**SPEC, "hparams": 2, "seeds": [0]})
    store = Store(tmp_path / "home")
    outcomes = run_sweep(spec, store, executor="ray")
    assert len(outcomes) == 4 and all(o.status == "done" for o in outcomes)
    assert sweep_status(store, spec.name)["counts"] == {"done": 4}
    alone = Store(tmp_path / "alone")
    for planned in expand(spec):
        execute(planned.config, alone)
        assert_matches_alone(store, alone, planned.config.identity)
    erm = [p.config.identity for p in expand(spec) if p.technique == "erm"]
    assert vectorized_group(store, erm[0]) == erm  # two learning rates, trained together
    assert run_sweep(spec, store, executor="ray") == []  # idempotent


def test_a_failing_run_is_marked_and_the_others_go_on(tmp_path, local_ray):
    store = Store(tmp_path / "home")
    good = tiny_config("steps=6")
    bad = tiny_config("optimizer.name=sgd", "optimizer.lr=1e30", "steps=30")
    for cfg in (good, bad):
        store.create_run(cfg.identity, {}, cfg.seed)
    outcomes = {o.run_id: o for o in run_jobs([good, bad], store, RayExecutor(store.home))}
    assert outcomes[good.identity].status == "done"
    assert outcomes[bad.identity].status == "failed"
    assert "non-finite loss" in store.get_run(bad.identity).error
