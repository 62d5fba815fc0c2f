import dataclasses
import json

import pytest
import torch

from heldout.config import (
    ConfigError,
    RunConfig,
    canonical_json,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)


def test_overrides_set_nested_values():
    cfg = parse_overrides(RunConfig(), [
        "task.p=97", "model.hidden=[64,64]", "optimizer.lr=1e-2", "steps=300",
        "techniques=perp_grad,sam", "techniques.sam.rho=0.1", "batch_size=128",
    ])
    assert cfg.task.params["p"] == 97
    assert cfg.model.params["hidden"] == (64, 64)
    assert cfg.optimizer.lr == 0.01
    assert [t.name for t in cfg.techniques] == ["perp_grad", "sam"]
    assert cfg.techniques[1].params["rho"] == 0.1
    assert cfg.batch_size == 128


def test_switching_component_resets_its_parameters():
    cfg = parse_overrides(RunConfig(), ["task.p=97"])
    cfg = parse_overrides(cfg, ["task=digits"])
    assert cfg.task.name == "digits" and "p" not in cfg.task.params


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, message",
    [
        ("stepz=3", "stepz: unknown config key; valid keys: task, model"),
        ("steps=many", "steps: expected an integer, got 'many'"),
        ("steps=1.5", "steps: expected an integer"),
        ("optimizer.lr=fast", "optimizer.lr: expected a number"),
        ("optimizer.name=lion", "optimizer.name: expected one of 'adamw', 'adam', 'sgd'"),
        ("optimizer.momentun=0.9", "optimizer.momentun: unknown key; valid keys:"),
        ("task=cifar", "task: unknown task 'cifar'; valid tasks: "),
        ("task.q=3", "task.q: unknown parameter of task 'modular'; valid: "),
        ("task.p=ten", "task.p: expected an integer, got 'ten'"),
        ("task.operation=%", "task.operation: expected one of '+'"),
        ("techniques=sam,foo", "techniques[1]: unknown technique 'foo'; valid techniques:"),
        ("techniques.sam.rho=0.1", "techniques.sam: not in techniques"),
        ("model.bias=maybe", "model.bias: expected true or false"),
        ("steps=0", "steps: must be >= 1"),
        ("techniques=sam,sam", "techniques: sam listed more than once"),
        ("task.train_fraction=1.5", "task: "),
        ("nonsense", "an override is key=value"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        parse_overrides(RunConfig(), [override])
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_identity_is_stable_and_complete():
    a = RunConfig()
    b = parse_overrides(RunConfig(), ["task.p=113"])  # the default, written out
    assert a.identity == b.identity
    assert parse_overrides(a, ["seed=1"]).identity != a.identity
    assert parse_overrides(a, ["name=label"]).identity == a.identity  # a label only
    assert parse_overrides(a, ["techniques=ema"]).identity != parse_overrides(
        a, ["techniques=ema", "techniques.ema.decay=0.99"]).identity
    data = json.loads(canonical_json(a))
    assert data["task"]["p"] == 113 and "name" not in data


def test_round_trip_through_plain_data():
    cfg = parse_overrides(RunConfig(), ["techniques=sam", "model.hidden=[8,8]"])
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg and again.identity == cfg.identity


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "task: {name: modular, p: 59}\nmodel: {name: mlp, hidden: [16]}\n"
        "techniques: [perp_grad, {name: ema, decay: 0.9}]\nsteps: 20\n"
    )
    cfg = load_config(path, ["seed=4"])
    assert cfg.task.params["p"] == 59 and cfg.seed == 4
    assert cfg.techniques[1].params == {"decay": 0.9, "evaluate_average": True}
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: modular, p: 59\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_switching_optimizer_keeps_its_settings():
    cfg = parse_overrides(RunConfig(), ["optimizer.lr=0.5", "optimizer.name=sgd"])
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.5


def test_shipped_configs_load():
    from pathlib import Path

    shipped = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert shipped
    for path in shipped:
        cfg = load_config(path)
        assert cfg.identity


def test_shipped_sweep_specs_expand():
    from pathlib import Path

    from heldout.experiments.sweep import expand, load_sweep

    shipped = sorted(Path(__file__).parent.parent.joinpath("configs", "sweeps").glob("*.yaml"))
    assert shipped
    sizes = {path.stem: len(expand(load_sweep(path))) for path in shipped}
    assert sizes["shift-protocol"] == 216  # 3 techniques x 4 draws x 3 seeds x 3 x 2 suites
    assert all(size > 0 for size in sizes.values())


def test_loss_choice_reaches_the_trainer():
    from heldout.run.assembly import build

    cfg = parse_overrides(RunConfig(), ["task.p=11", "model.hidden=[8]", "loss=mse"])
    trainer = build(cfg)
    x, y, _ = next(trainer.batches)
    from heldout.engine.trainer import mse_to_one_hot

    with torch.no_grad():
        assert float(trainer.loss_fn(trainer.model(x), y)) == float(
            mse_to_one_hot(trainer.model(x), y))
    with pytest.raises(ConfigError, match="loss: expected one of 'cross_entropy', 'mse'"):
        parse_overrides(RunConfig(), ["loss=hinge"])


# Ids computed on the code before the restructure (issue 8): the shipped configs, the default
# config, a config with fields of later schemas, and the 216 runs of the shipped sweep spec.
PINNED_IDS = {
    "configs/grokking-perp.yaml": "a3f70ab9ecf4",
    "configs/mnist1d-sam.yaml": "014ff24b0c40",
}


def test_run_ids_of_shipped_configs_are_pinned():
    import hashlib
    from pathlib import Path

    import yaml

    from heldout.config import load_config
    from heldout.experiments.sweep import expand, sweep_from_dict

    root = Path(__file__).resolve().parents[1]
    for path, run_id in PINNED_IDS.items():
        assert load_config(root / path).identity == run_id, path
    assert RunConfig().identity == "b172f144a7d9"
    assert parse_overrides(RunConfig(), ["techniques=sam,ema", "precision=bf16-mixed"]
                           ).identity == "6878fd29424c"
    spec = sweep_from_dict(yaml.safe_load((root / "configs/sweeps/shift-protocol.yaml")
                                          .read_text()))
    ids = sorted(run.config.identity for run in expand(spec))
    assert len(ids) == 216
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16] == "3b25c810fe8ba00b"


def test_schema_version_is_recorded_and_a_newer_one_refused():
    from heldout.config import SCHEMA_VERSION, config_from_dict, config_to_dict

    data = config_to_dict(RunConfig())
    assert data["schema_version"] == SCHEMA_VERSION
    assert config_from_dict(data) == RunConfig()
    old = {k: v for k, v in data.items() if k not in ("schema_version", "precision",
                                                      "callbacks")}
    assert config_from_dict(old).identity == RunConfig().identity  # a record of schema 1
    with pytest.raises(ConfigError, match="written by a newer heldout"):
        config_from_dict({**data, "schema_version": SCHEMA_VERSION + 1})
    with_callback = parse_overrides(RunConfig(), ["callbacks=grad_norm_report"])
    assert with_callback.identity != RunConfig().identity  # a non-default later field counts


def test_each_component_is_built_once_per_run(tmp_path, monkeypatch):
    """From the command line to step 0, the task, model, techniques, measures and callbacks
    are each built once (their checks run when the config is made, on the object the run
    then uses); a second run of the same config builds its own."""
    from collections import Counter

    from heldout.cli import main
    from heldout.registry import CALLBACKS, MEASURES, MODELS, TASKS, TECHNIQUES

    built: Counter = Counter()
    for registry in (TASKS, MODELS, TECHNIQUES, MEASURES, CALLBACKS):
        for entry in registry.entries():
            original = entry.cls.__post_init__

            def counting(self, _original=original, _name=f"{registry.kind}:{entry.name}"):
                built[_name] += 1
                _original(self)

            monkeypatch.setattr(entry.cls, "__post_init__", counting)
    monkeypatch.setenv("HELDOUT_HOME", str(tmp_path / "home"))
    argv = ["run", "--task", "modular", "task.p=11", "--technique", "sam", "--technique", "ema",
            "--callback", "grad_norm_report", "--steps", "2", "eval_every=1"]
    assert main(argv) == 0
    expected = {"task:modular": 1, "model:mlp": 1, "technique:sam": 1, "technique:ema": 1,
                "callback:grad_norm_report": 1, "measure:accuracy": 1, "measure:loss": 1,
                "measure:ece": 1, "measure:gap": 1}
    assert dict(built) == expected
    built.clear()
    cfg = parse_overrides(RunConfig(), ["task.p=11", "techniques=sam,ema", "steps=2"])
    from heldout.run.execute import execute
    from heldout.store import Store

    store = Store(tmp_path / "direct")
    execute(cfg, store)
    execute(cfg, Store(tmp_path / "again"))  # the same config object, a second run
    assert {k: v for k, v in built.items() if k.startswith("technique")} == {
        "technique:sam": 2, "technique:ema": 2}
