"""TensorBoard and MLflow sinks: read back what a tiny run wrote, value for value.

The back-ends are optional extras (``heldout[tensorboard]``, ``heldout[mlflow]``); the tests
that need one skip only when it is not installed (the ``test`` extra installs both).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from heldout.config import config_to_dict
from heldout.engine.trainer import Trainer
from heldout.registry import UnknownNameError
from heldout.run.assembly import build
from heldout.run.recorder import RunRecorder
from heldout.run.sinks import (
    PARAM_VALUE_LIMIT,
    MLflowSink,
    TensorBoardSink,
    flatten_config,
    make_sinks,
    mlflow_metric_name,
)
from heldout.store import Store
from tests.conftest import tiny_config


@pytest.fixture
def tensorboard():
    return pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")


@pytest.fixture
def mlflow():
    return pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite tracking database for the module: creating one runs MLflow's migrations
    (seconds); tests keep apart by experiment and run id."""
    # in a folder that does not exist yet: the first sink must make it
    return "sqlite:///" + (tmp_path_factory.mktemp("mlflow") / "new" / "mlflow.db").as_posix()


def _by_key(history) -> dict[str, list[tuple[int, float]]]:
    """Trainer history ``[(step, {key: value})]`` as ``{key: [(step, value), ...]}``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in history:
        for key, value in metrics.items():
            out.setdefault(key, []).append((step, value))
    return out


def _float32(history: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """The history as TensorBoard stores it: each value rounded to float32."""
    return {k: [(step, float(np.float32(v))) for step, v in points]
            for k, points in history.items()}


def _read_tensorboard(log_dir):
    """The run's scalars ``{tag: [(step, value)]}`` and its accumulator, from the event files,
    read as TensorBoard reads them (the plugin accumulator: the legacy ``event_accumulator``
    does not purge tensor summaries after a restart)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import (
        TENSORS,
        EventAccumulator,
    )
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={TENSORS: 0})  # 0: keep every event
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        scalars[tag] = []
        for event in acc.Tensors(tag):
            array = tensor_util.make_ndarray(event.tensor_proto)
            assert array.dtype == "float32"  # what TensorBoard's own data server reads
            scalars[tag].append((event.step, float(array)))
    return scalars, acc


def _read_mlflow(uri, mlflow_run_id):
    """The MLflow run and its metric histories ``{name: [(step, value)]}`` by step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(mlflow_run_id)
    histories = {}
    for name in run.data.metrics:
        points = client.get_metric_history(mlflow_run_id, name)
        histories[name] = sorted((m.step, m.value) for m in points)
    return run, histories


# ----------------------------------------------------------------------------- one tiny run


def test_both_sinks_hold_the_store_history(tensorboard, mlflow, mlflow_uri, tmp_path):
    cfg = tiny_config("techniques=sam")
    run_id = cfg.identity
    store = Store(tmp_path / "home")
    store.create_run(run_id, config_to_dict(cfg), cfg.seed, cfg.name)
    board = TensorBoardSink(tmp_path / "tb", run_id, cfg)
    tracking = MLflowSink(mlflow_uri, "both", run_id, cfg)
    trainer = build(cfg, loggers=[RunRecorder(store, run_id), board, tracking])
    expected = _by_key(trainer.fit())
    board.close()
    tracking.close()
    assert expected == store.history(run_id)  # the oracle: the store got the same stream
    assert len(expected["val/accuracy"]) == 5 and "train/step_loss" in expected

    scalars, acc = _read_tensorboard(tmp_path / "tb" / run_id)
    assert scalars == _float32(expected)  # every key, every step, every value
    assert scalars != expected  # (the rounding is real: the comparison is not vacuous)

    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text) == config_to_dict(cfg)
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    def plugin_data(tag):
        return HParamsPluginData.FromString(acc.SummaryMetadata(tag).plugin_data.content)

    hparams = plugin_data("_hparams_/session_start_info").session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == 0.01
    assert hparams["techniques"].string_value == "sam"
    assert hparams["techniques.sam.rho"].number_value == cfg.techniques[0].params["rho"]
    assert hparams["model.hidden"].string_value == "[32]"
    assert hparams["model.bias"].string_value == "true"
    assert "batch_size" not in hparams and "init_from" not in hparams  # None: left out
    assert set(hparams) == {k for k, v in flatten_config(cfg).items() if v is not None}
    declared = [m.name.tag for m in plugin_data("_hparams_/experiment").experiment.metric_infos]
    assert sorted(declared) == sorted(trainer.history[0][1])

    run, histories = _read_mlflow(mlflow_uri, tracking.mlflow_run_id)
    assert run.info.run_name == run_id and run.info.status == "FINISHED"
    assert run.data.tags["heldout.run_id"] == run_id
    assert histories == expected  # "split/name" keys are valid MLflow names, kept as they are
    flat = flatten_config(cfg)
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v)
                               for k, v in flat.items()}
    assert run.data.params["optimizer.lr"] == "0.01"
    assert run.data.params["model.hidden"] == "[32]"
    assert run.data.params["init_from"] == "null"
    assert run.data.params["measures"] == ",".join(m.name for m in cfg.measures)


def test_flatten_config_keys_components_by_name():
    cfg = tiny_config("techniques=sam")
    data = config_to_dict(cfg)
    flat = flatten_config(cfg)
    assert flatten_config(data) == flat  # a RunConfig or its plain dict
    assert flat["task.name"] == "modular" and flat["task.p"] == 23
    assert flat["model.hidden"] == [32] and flat["steps"] == 12
    assert flat["techniques"] == "sam"
    assert flat["measures"] == ",".join(m["name"] for m in data["measures"])
    for kind in ("techniques", "measures"):
        for component in data[kind]:
            for param, value in component.items():
                if param != "name":
                    assert flat[f"{kind}.{component['name']}.{param}"] == value
    assert flatten_config(tiny_config())["techniques"] == ""


# ----------------------------------------------------------------------------- resume


def test_resumed_run_leaves_the_uninterrupted_history(tensorboard, mlflow, mlflow_uri,
                                                      tmp_path, monkeypatch):
    """Killed right after the evaluation at step 9 (checkpoint at 8), then resumed: the
    step-9 points written before the kill must not appear twice, nor be lost."""
    cfg = tiny_config()
    run_id = cfg.identity
    straight = _by_key(build(cfg).fit())
    checkpoint = tmp_path / "checkpoint.pt"
    original = Trainer._evaluate

    def interrupt(self):
        original(self)
        if self.state.step == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_evaluate", interrupt)
    board = TensorBoardSink(tmp_path / "tb", run_id, cfg)
    tracking = MLflowSink(mlflow_uri, "resume", run_id, cfg)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, checkpoint_path=checkpoint, loggers=[board, tracking]).fit()
    board.close()  # the step-9 events reach the file: the case the purge must handle
    tracking.close("FAILED")
    monkeypatch.setattr(Trainer, "_evaluate", original)

    # TensorBoard reads a run's event files in name order, and a name starts with the time in
    # whole seconds: give the resumed writer's file a later second, as a new process would have
    from tensorboard.summary.writer import event_file_writer

    later = time.time() + 5
    monkeypatch.setattr(event_file_writer, "time", types.SimpleNamespace(time=lambda: later))
    board = TensorBoardSink(tmp_path / "tb", run_id, cfg)
    tracking = MLflowSink(mlflow_uri, "resume", run_id, cfg)
    trainer = build(cfg, checkpoint_path=checkpoint, loggers=[board, tracking])
    assert trainer.resume() == 8
    trainer.fit()
    board.close()
    tracking.close()

    first_mlflow_run = tracking.mlflow_run_id
    scalars, _ = _read_tensorboard(tmp_path / "tb" / run_id)
    assert scalars == _float32(straight)
    run, histories = _read_mlflow(mlflow_uri, tracking.mlflow_run_id)
    assert histories == straight
    assert run.info.status == "FINISHED" and tracking.mlflow_run_id == first_mlflow_run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("resume")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # continued, not a new run


# ----------------------------------------------------------------------------- MLflow names


@pytest.mark.parametrize(("key", "name"), [
    ("val/accuracy", "val/accuracy"),
    ("train/step_loss", "train/step_loss"),
    ("val@d/accuracy", "val_at_d/accuracy"),
    ("test@rot30/ece", "test_at_rot30/ece"),
    ("val@a:b/loss", "val_at_a_b/loss"),  # colons are invalid on Windows
    ("bad key=1,x/é", "bad key_1_x/_"),
    ("a//b", "a/_/b"),
    ("/lead/", "_/lead/_"),
    ("./x/../y", "_/x/_/y"),
])
def test_mlflow_metric_name(key, name):
    assert mlflow_metric_name(key) == name


def test_mlflow_accepts_the_mapped_names(mlflow, mlflow_uri):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    keys = ["val/accuracy", "val@d/accuracy", "val@a:b/loss", "bad key=1,x/é", "a//b",
            "./x/../y"]
    with MLflowSink(mlflow_uri, "names", "0123abcd4567") as sink:
        sink.log(0, {key: float(i) for i, key in enumerate(keys)})
        sink.log(5, {key: 10.0 + i for i, key in enumerate(keys)})
    run, histories = _read_mlflow(mlflow_uri, sink.mlflow_run_id)
    assert histories == {mlflow_metric_name(key): [(0, float(i)), (5, 10.0 + i)]
                         for i, key in enumerate(keys)}
    assert run.data.params == {}  # no config, no params
    # the premise: MLflow itself refuses the raw key
    with pytest.raises(MlflowException, match="Names may only contain"):
        MlflowClient(mlflow_uri).log_metric(sink.mlflow_run_id, "val@d/accuracy", 1.0, step=6)


def test_mlflow_refuses_two_keys_with_one_name(mlflow, mlflow_uri):
    sink = MLflowSink(mlflow_uri, "clash", "0123abcd4567")
    sink.log(0, {"val@d/x": 1.0})
    with pytest.raises(ValueError, match="'val@d/x' and 'val_at_d/x' both map"):
        sink.log(3, {"val_at_d/x": 2.0})
    sink.close("FAILED")


def test_mlflow_params_are_cut_to_the_limit(mlflow, mlflow_uri):
    config = {"name": "x" * (PARAM_VALUE_LIMIT + 100), "steps": 3,
              "task": {"name": "y" * PARAM_VALUE_LIMIT}}
    with MLflowSink(mlflow_uri, "long", "0123abcd4567", config) as sink:
        sink.log(0, {"val/loss": 1.0})
    run, _ = _read_mlflow(mlflow_uri, sink.mlflow_run_id)
    cut = run.data.params["name"]
    assert len(cut) == PARAM_VALUE_LIMIT and cut == "x" * (PARAM_VALUE_LIMIT - 3) + "..."
    assert run.data.params["task.name"] == "y" * PARAM_VALUE_LIMIT  # at the limit: kept whole
    assert run.data.params["steps"] == "3"


def test_mlflow_sink_fails_its_run_on_an_exception(mlflow, mlflow_uri):
    with pytest.raises(RuntimeError), MLflowSink(mlflow_uri, "failed", "0123abcd4567") as sink:
        sink.log(0, {"val/loss": 1.0})
        raise RuntimeError
    run, _ = _read_mlflow(mlflow_uri, sink.mlflow_run_id)
    assert run.info.status == "FAILED"


# ----------------------------------------------------------------------------- missing extras


@pytest.mark.parametrize(("make", "extra"), [
    (lambda tmp: TensorBoardSink(tmp / "tb", "0123abcd4567"), "tensorboard"),
    (lambda tmp: MLflowSink("sqlite:///" + str(tmp / "m.db"), "x", "0123abcd4567"), "mlflow"),
    (lambda tmp: make_sinks(f"tensorboard:{tmp}", "0123abcd4567"), "tensorboard"),
    (lambda tmp: make_sinks(f"mlflow:{tmp}/m.db", "0123abcd4567"), "mlflow"),
])
def test_missing_package_names_the_extra(make, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, extra, None)  # `import extra` now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'heldout\[{extra}\]'"):
        make(tmp_path)


def test_missing_package_via_import_hook(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match=r"pip install 'heldout\[tensorboard\]'") as info:
        TensorBoardSink(tmp_path, "0123abcd4567")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_importing_the_module_imports_no_backend():
    code = ("import sys, heldout.run.sinks, heldout.run.execute; "
            "print(sorted(m for m in ('mlflow', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- specs


def test_make_sinks_parses_a_spec(tensorboard, mlflow, mlflow_uri, tmp_path, monkeypatch):
    assert make_sinks(None, "0123abcd4567") == [] and make_sinks(" , ", "0123abcd4567") == []
    board, tracking = make_sinks(f"tensorboard:{tmp_path}/tb, mlflow:{mlflow_uri}",
                                 "0123abcd4567", tiny_config())
    assert isinstance(board, TensorBoardSink) and board.log_dir == tmp_path / "tb" / "0123abcd4567"
    assert board.config == config_to_dict(tiny_config())
    assert isinstance(tracking, MLflowSink) and tracking.tracking_uri == mlflow_uri
    assert tracking.experiment == "heldout" and tracking.run_id == "0123abcd4567"
    (named,) = make_sinks(f"mlflow:{mlflow_uri}#grokking,", "0123abcd4567")
    assert named.experiment == "grokking" and named.tracking_uri == mlflow_uri
    database = Path(mlflow_uri.removeprefix("sqlite:///"))
    monkeypatch.chdir(database.parent.parent)
    (plain,) = make_sinks("mlflow:new/mlflow.db", "0123abcd4567")  # a path: a SQLite database
    assert plain.tracking_uri == mlflow_uri
    experiment = plain.client.get_experiment_by_name("heldout")
    assert experiment.artifact_location == (database.parent / "mlartifacts").as_uri()


def test_make_sinks_refuses_unknown_names(tmp_path):
    database = tmp_path / "m.db"
    with pytest.raises(UnknownNameError, match=r"'wandb:x'.*valid sinks: mlflow, tensorboard"):
        make_sinks(f"mlflow:{database},wandb:x", "0123abcd4567")
    assert not database.exists()  # names are checked before any sink is made
    with pytest.raises(UnknownNameError, match="valid sinks: mlflow, tensorboard"):
        make_sinks("tb", "0123abcd4567")


@pytest.mark.parametrize(("spec", "message"), [
    ("tensorboard", "tensorboard:DIR"),
    ("tensorboard: ", "tensorboard:DIR"),
    ("mlflow:", "mlflow:sqlite:///PATH"),
    ("mlflow:#exp", "mlflow:sqlite:///PATH"),
])
def test_make_sinks_refuses_missing_targets(spec, message):
    with pytest.raises(ValueError, match=message):
        make_sinks(spec, "0123abcd4567")


def test_run_command_with_sinks(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from heldout.cli import main

    tb, db = tmp_path / "tb", tmp_path / "mlflow.db"
    args = ["--home", str(tmp_path / "home"), "run", "task.p=11", "model.hidden=[8]",
            "steps=4", "eval_every=2"]
    assert main([*args, "--sink", f"tensorboard:{tb},mlflow:{db}"]) == 0
    assert any(tb.rglob("events.out.tfevents.*")) and db.exists()
    assert main([*args, "--sink", "wandb:x"]) == 2
    assert "expected NAME:TARGET with NAME one of mlflow, tensorboard" in capsys.readouterr().err
