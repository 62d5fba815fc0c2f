"""Metric sinks: TensorBoard event files and MLflow runs, fed the metric stream the store gets.

A sink is a :class:`~heldout.engine.trainer.Logger` (``log(step, metrics)``, ``flush()``) with a
``close()``; pass sinks to the Trainer beside the store's logger and every evaluation reaches
all of them. Both back-ends are optional extras, imported only when a sink is made::

    pip install 'heldout[tensorboard]'    # TensorBoardSink
    pip install 'heldout[mlflow]'         # MLflowSink (a SQLite tracking URI, no server)

A sink opens its run at the first ``log`` call. When that first step is above 0, the run is a
resume from a checkpoint (the Trainer evaluates at step 0 only on a fresh start), and the
metrics from that step on are being recomputed: the TensorBoard sink purges its events from
that step on (``SummaryWriter(purge_step=...)``), and the MLflow sink continues the MLflow run
of the same heldout run id, skipping the (key, step) points it already holds, so after an
exact resume both hold the uninterrupted run's history, as the store does. (MLflow cannot
delete a point: were a resume not exact, MLflow would keep the first value of a step, the
store and TensorBoard the last.) Whoever makes the sinks closes them when the run ends;
``MLflowSink.close("FAILED")`` marks a failed run.

Names: TensorBoard tags are the metric keys as they are (``"val@rot30/accuracy"``); MLflow
names go through :func:`mlflow_metric_name` (``"val/accuracy"`` is kept, ``@`` becomes
``_at_``: ``"val_at_rot30/accuracy"``).

Sink specs (:func:`make_sinks`, for a command-line option) are a comma-separated list of
``NAME:TARGET`` items::

    tensorboard:DIR                     event files in DIR/<run id>/
    mlflow:sqlite:///PATH/mlflow.db     a SQLite tracking URI (``sqlite:////abs/path`` is absolute)
    mlflow:PATH/mlflow.db               a plain path: the same as sqlite:///<absolute PATH>
    mlflow:URI#EXPERIMENT               the MLflow experiment (default ``heldout``)

e.g. ``tensorboard:tb,mlflow:sqlite:///runs/mlflow.db#grokking``. A target cannot contain a comma.

Example:
    >>> # skipped: trains a run of a config cfg and writes its logs to ./tb and ./mlruns.db
    >>> from heldout.run.assembly import build  # doctest: +SKIP
    >>> sinks = make_sinks("tensorboard:tb,mlflow:mlruns.db", cfg.identity, cfg)  # doctest: +SKIP
    >>> build(cfg, loggers=sinks).fit()  # doctest: +SKIP
    >>> for sink in sinks:  # doctest: +SKIP
    ...     sink.close()
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

from heldout.config import RunConfig, config_to_dict
from heldout.core.state import Logger
from heldout.registry import Registry, UnknownNameError

__all__ = [
    "DEFAULT_EXPERIMENT",
    "PARAM_VALUE_LIMIT",
    "SINKS",
    "MLflowSink",
    "TensorBoardSink",
    "flatten_config",
    "make_sinks",
    "mlflow_metric_name",
]

SINKS: Registry[Logger] = Registry("sink")  # classes with a from_target constructor
DEFAULT_EXPERIMENT = "heldout"  # the MLflow experiment when a spec names none
# MLflow param values longer than this are cut to it, ending in "..." (MLflow 3 accepts 6000
# characters, older versions and some server databases 250-500; the full config is kept in
# the heldout store, under the run id the MLflow run is named and tagged with).
PARAM_VALUE_LIMIT = 500
_MLFLOW_BATCH = {"metrics": 1000, "params": 100}  # MLflow's per-request limits in log_batch
_COMPONENT_LISTS = ("techniques", "measures", "callbacks")  # lists of named components


# ----------------------------------------------------------------------------- shared helpers

ConfigLike = RunConfig | Mapping[str, Any] | None


class _SinkClass(Protocol):
    """What a registered sink class offers: a constructor from a ``NAME:TARGET`` target."""

    def from_target(self, target: str, run_id: str, config: ConfigLike) -> Logger: ...


def _config_dict(config: ConfigLike) -> dict[str, Any] | None:
    if config is None:
        return None
    return config_to_dict(config) if isinstance(config, RunConfig) else dict(config)


def flatten_config(config: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as flat ``dotted.key → value`` pairs (the form of MLflow params and
    TensorBoard hparams).

    Nested mappings join their keys with ``.``; the ``techniques`` and ``measures`` lists
    become ``techniques = "sam,perp_grad"`` (names in order) plus one key per parameter,
    ``techniques.sam.rho``; other values (lists included) are kept as they are.

    Example:
        >>> flatten_config({"optimizer": {"lr": 0.01}, "techniques": [{"name": "sam", "rho": 0.1}]})
        {'optimizer.lr': 0.01, 'techniques': 'sam', 'techniques.sam.rho': 0.1}
    """
    out: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
        elif prefix in _COMPONENT_LISTS and isinstance(value, list | tuple):
            out[prefix] = ",".join(str(c["name"]) for c in value)
            for component in value:
                params = {k: v for k, v in component.items() if k != "name"}
                visit(f"{prefix}.{component['name']}", params)
        else:
            out[prefix] = value

    visit("", _config_dict(config))
    return out


def _render(value: Any) -> str:
    """A param value as text: strings as they are, everything else as JSON (null, true, [32])."""
    return value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------- TensorBoard


@SINKS.register("tensorboard", summary="TensorBoard event files: one scalar series per "
                "metric key, the config as text and hparams.")
class TensorBoardSink:
    """Write each metric as a TensorBoard scalar, tagged with its key (``"val/accuracy"``).

    Events go to ``log_dir/<run_id>/``, so runs sharing a ``log_dir`` show up side by side.
    Scalars are TensorBoard's float32 scalars, so a value equals the store's rounded to float32
    (float64 tensor summaries exist, but TensorBoard's default, fast data server skips them).
    With ``config``, the run's config is written once, as JSON text (tag ``config``) and as
    hparams (the flattened config: numbers as numbers, ``None`` left out, the rest as text;
    the HParams dashboard reads the metrics of the first evaluation from this run's scalars).

    Example:
        >>> # skipped: writes event files under ./tb
        >>> sink = TensorBoardSink("tb", "0123abcd4567", config={"seed": 0})  # doctest: +SKIP
        >>> sink.log(0, {"val/accuracy": 0.5}); sink.close()  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | Path, run_id: str, config: ConfigLike = None) -> None:
        try:
            import tensorboard  # noqa: F401  (torch's writer needs the package)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoardSink needs the 'tensorboard' package: "
                "pip install 'heldout[tensorboard]'"
            ) from err
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir) / run_id
        self.run_id = run_id
        self.config = _config_dict(config)
        self._writer: Any = None

    @classmethod
    def from_target(cls, target: str, run_id: str, config: ConfigLike) -> TensorBoardSink:
        """The sink for spec ``tensorboard:TARGET`` (TARGET: the log directory)."""
        if not target:
            raise ValueError("the tensorboard sink needs a directory: tensorboard:DIR")
        return cls(target, run_id, config)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._writer is None:
            self._writer = self._open(step, metrics)
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), step)

    def _open(self, step: int, metrics: Mapping[str, float]) -> Any:
        # purge_step: TensorBoard hides earlier events at steps >= step (a resumed run's
        # recomputed steps, or a restarted run's whole old history)
        writer = self._writer_class(str(self.log_dir), purge_step=step)
        if self.config is not None:
            from torch.utils.tensorboard.summary import hparams

            text = json.dumps(self.config, indent=2, sort_keys=True)
            writer.add_text("config", "    " + text.replace("\n", "\n    "), step)
            # numbers stay numbers; None is left out (hparams() skips it), so a column keeps
            # one type across runs; everything else is text
            flat = {k: v if v is None or isinstance(v, int | float) and not isinstance(v, bool)
                    else _render(v) for k, v in flatten_config(self.config).items()}
            for summary in hparams(flat, dict.fromkeys(metrics, 0.0)):
                writer.file_writer.add_summary(summary, step)  # type: ignore[attr-defined]  # torch's unannotated writer sets it to None before opening it
        return writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later ``log`` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- MLflow

_INVALID_MLFLOW_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_metric_name(key: str) -> str:
    """The MLflow metric (or param) name for heldout's metric key ``key``.

    MLflow names may hold only letters, digits, ``_ - . /``, spaces (and colons, except on
    Windows), and must not look like a non-normalized path. The mapping:

    * ``/`` is kept: ``"val/accuracy"`` stays ``"val/accuracy"`` (MLflow groups charts by the
      part before ``/``, so splits become sections);
    * ``@`` becomes ``_at_``: ``"val@rot30/accuracy"`` → ``"val_at_rot30/accuracy"``;
    * any other character (colons and non-ASCII letters included) becomes ``_``;
    * an empty, ``.`` or ``..`` path segment becomes ``_`` (``"a//b"`` → ``"a/_/b"``).

    Two keys of one run that map to the same name make :class:`MLflowSink` raise.

    Example:
        >>> mlflow_metric_name("test@d2/accuracy")
        'test_at_d2/accuracy'
    """
    name = _INVALID_MLFLOW_CHARS.sub("_", key.replace("@", "_at_"))
    return "/".join(s if s not in ("", ".", "..") else "_" for s in name.split("/"))


def _sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri.endswith(":memory:"):
        return None
    return Path(tracking_uri[len(prefix):].split("?")[0])


@SINKS.register("mlflow", summary="MLflow tracking (a SQLite URI, no server): the config "
                "as params, each metric as a history by step.")
class MLflowSink:
    """Log the run to MLflow: one MLflow run per heldout run, named by its run id.

    ``tracking_uri`` is any MLflow tracking URI; the intended one is SQLite
    (``sqlite:///path/mlflow.db``, no server; its folder is made if missing, and a new
    experiment keeps artifacts in ``mlartifacts/`` beside the database, not in the working
    directory). The experiment is created if missing. The MLflow run is named by ``run_id``
    and tagged ``heldout.run_id``; its params are :func:`flatten_config` of ``config``, values
    as text (JSON for non-strings) cut to :data:`PARAM_VALUE_LIMIT` characters. Metrics are
    logged with their step, one ``log_batch`` per evaluation, under the names of
    :func:`mlflow_metric_name` (``"val@d/accuracy"`` → ``"val_at_d/accuracy"``). ``close``
    ends the MLflow run (``FINISHED``, or the status given).

    Example:
        >>> # skipped: writes an MLflow tracking database ./mlflow.db
        >>> sink = MLflowSink("sqlite:///mlflow.db", "heldout", "0123abcd4567")  # doctest: +SKIP
        >>> sink.log(0, {"val/accuracy": 0.5}); sink.close()  # doctest: +SKIP
    """

    def __init__(self, tracking_uri: str, experiment: str, run_id: str,
                 config: ConfigLike = None) -> None:
        try:
            import mlflow  # noqa: F401
            from mlflow.entities import Metric, Param
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ImportError(
                "MLflowSink needs the 'mlflow' package: pip install 'heldout[mlflow]'"
            ) from err
        self._metric, self._param = Metric, Param
        self.tracking_uri, self.experiment, self.run_id = tracking_uri, experiment, run_id
        self.config = _config_dict(config)
        database = _sqlite_path(tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = database.parent.resolve() / "mlartifacts" if database else None
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifacts.as_uri() if artifacts else None)
            except MlflowException:  # another process created it first
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        if found is not None:
            self.experiment_id = found.experiment_id
            if found.lifecycle_stage == "deleted":  # deleted in the UI: runs cannot start
                self.client.restore_experiment(self.experiment_id)
        self.mlflow_run_id: str | None = None  # MLflow's own id of the run, once started
        self._names: dict[str, str] = {}  # MLflow name → heldout key
        self._held: dict[str, set[int]] = {}  # steps a continued run already holds, by name

    @classmethod
    def from_target(cls, target: str, run_id: str, config: ConfigLike) -> MLflowSink:
        """The sink for spec ``mlflow:TARGET`` (TARGET: ``URI[#EXPERIMENT]`` or a path)."""
        uri, _, experiment = target.partition("#")
        if not uri:
            raise ValueError("the mlflow sink needs a tracking URI: "
                             "mlflow:sqlite:///PATH/mlflow.db[#EXPERIMENT]")
        if "://" not in uri:
            uri = "sqlite:///" + Path(uri).resolve().as_posix()
        return cls(uri, experiment or DEFAULT_EXPERIMENT, run_id, config)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.mlflow_run_id is None:
            self._start(step)
        assert self.mlflow_run_id is not None  # _start set it
        stamp = int(time.time() * 1000)
        points = []
        for key, value in metrics.items():
            name = self._name(key)
            if step in self._held.get(name, ()):
                continue  # a continued run already holds it (an exact resume: the same value)
            points.append(self._metric(name, float(value), stamp, step))
        for start in range(0, len(points), _MLFLOW_BATCH["metrics"]):
            self.client.log_batch(self.mlflow_run_id,
                                  metrics=points[start:start + _MLFLOW_BATCH["metrics"]])

    def _name(self, key: str) -> str:
        name = mlflow_metric_name(key)
        other = self._names.setdefault(name, key)
        if other != key:
            raise ValueError(f"metric keys {other!r} and {key!r} both map to the MLflow "
                             f"name {name!r}; rename one of them")
        return name

    def _start(self, step: int) -> None:
        if step > 0:  # a resume: continue this heldout run's latest MLflow run, if any
            previous = self.client.search_runs(
                [self.experiment_id], f"tags.`heldout.run_id` = '{self.run_id}'",
                max_results=1, order_by=["attributes.start_time DESC"])
            if previous:
                self.mlflow_run_id = previous[0].info.run_id
                self.client.update_run(self.mlflow_run_id, status="RUNNING")
                for name in previous[0].data.metrics:
                    history = self.client.get_metric_history(self.mlflow_run_id, name)
                    self._held[name] = {m.step for m in history if m.step >= step}
                return
        run = self.client.create_run(self.experiment_id, run_name=self.run_id,
                                     tags={"heldout.run_id": self.run_id})
        self.mlflow_run_id = run.info.run_id
        params = [self._param(mlflow_metric_name(k), _truncate(_render(v)))
                  for k, v in flatten_config(self.config or {}).items()]
        for start in range(0, len(params), _MLFLOW_BATCH["params"]):
            self.client.log_batch(self.mlflow_run_id,
                                  params=params[start:start + _MLFLOW_BATCH["params"]])

    def flush(self) -> None:
        pass  # each evaluation is sent as one batch in log()

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self.mlflow_run_id is not None:
            self.client.set_terminated(self.mlflow_run_id, status=status)

    def __enter__(self) -> MLflowSink:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def _truncate(text: str) -> str:
    return text if len(text) <= PARAM_VALUE_LIMIT else text[:PARAM_VALUE_LIMIT - 3] + "..."


# ----------------------------------------------------------------------------- specs


def make_sinks(spec: str | None, run_id: str, config: ConfigLike = None) -> list[Logger]:
    """The sinks a spec names, e.g. ``"tensorboard:tb,mlflow:sqlite:///runs/mlflow.db"``.

    ``spec`` is a comma-separated list of ``NAME:TARGET`` items (see the module docstring);
    ``None`` or ``""`` gives no sinks. An unknown NAME raises
    :class:`~heldout.registry.UnknownNameError` listing the valid ones; a missing TARGET
    raises ``ValueError``; a sink whose package is missing raises ``ImportError`` naming the
    extra to install.

    Example:
        >>> make_sinks(None, "0123abcd4567", None)
        []
    """
    parsed = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, _, target = item.strip().partition(":")
        try:
            parsed.append((SINKS.get(name.strip()), target.strip()))
        except UnknownNameError as err:
            raise UnknownNameError(f"sink {item.strip()!r}: {err}") from None
    # every name checked before any sink is made (an MLflow database takes seconds to create)
    sinks = [cast(_SinkClass, entry.cls).from_target(target, run_id, config)
             for entry, target in parsed]
    return sinks
