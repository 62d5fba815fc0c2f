"""Run a :class:`RunConfig` end to end: build, train, record, checkpoint, resume.

The run's id is the hash of its canonical config. Executing a config whose run is already
``done`` returns the stored result; one whose run is unfinished (killed, failed) resumes from
its last checkpoint, and the metric history after that checkpoint is recomputed, so a run
killed at any step ends with exactly the metrics of the uninterrupted run.

Training holds the run's lease (see :mod:`heldout.store.sqlite`): a second process on the
same config is refused naming the holder (or waits, ``wait=``); the heartbeat rides on the
metric flushes at evaluations and checkpoints; each checkpoint's sha256 is recorded before
the file is renamed into place, and a resume verifies against it.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from heldout.config import (
    Component,
    ConfigError,
    OptimizerConfig,
    RunConfig,
    config_from_dict,
    config_to_dict,
)
from heldout.core.state import Logger
from heldout.engine.checkpoint import has_checkpoint, load_checkpoint
from heldout.engine.trainer import (
    NonFiniteLossError,
    Trainer,
    cross_entropy,
    mse_to_one_hot,
)
from heldout.registry import CALLBACKS, MEASURES, MODELS, TASKS, TECHNIQUES
from heldout.run.recorder import RunRecorder
from heldout.store.sqlite import LeaseLost, RunRecord, Store

__all__ = ["ProgressPrinter", "RunFailed", "RunResult", "RunRecorder", "build",
           "check_init_from", "execute", "make_optimizer", "measure_run"]

CHECKPOINT_NAME = "checkpoint.pt"


class RunFailed(RuntimeError):
    """A run ended as failed; ``run_id`` names it in the store."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(f"run {run_id} failed: {message}")
        self.run_id = run_id


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str
    metrics: dict[str, float]
    resumed_from: int | None  # the checkpoint step a resumed run continued from
    skipped: bool  # the run was already done; nothing was executed
    record: RunRecord


def make_optimizer(cfg: OptimizerConfig):
    """A factory ``params → torch.optim.Optimizer`` for the base optimizer of ``cfg``."""

    def factory(params):
        if cfg.name == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                   weight_decay=cfg.weight_decay)

    return factory


def check_init_from(cfg: RunConfig, store: Store) -> Path | None:
    """The checkpoint that ``cfg.init_from`` names (None without ``init_from``); a run that
    is unknown, unfinished or has no checkpoint file is a one-line :class:`ConfigError`."""
    if not cfg.init_from:
        return None
    try:
        record = store.get_run(cfg.init_from)
    except KeyError as err:
        raise ConfigError(f"init_from: {err.args[0]}") from None
    if record.status != "done":
        raise ConfigError(f"init_from: needs a finished run; run {record.id} is {record.status}")
    checkpoint = store.checkpoint_path(record.id)
    if not has_checkpoint(checkpoint):
        raise ConfigError(f"init_from: run {record.id} has no checkpoint ({checkpoint} is "
                          "missing)")
    return checkpoint


def _load_weights(model: torch.nn.Module, cfg: RunConfig, store: Store) -> None:
    checkpoint = check_init_from(cfg, store)
    assert checkpoint is not None and cfg.init_from  # called only with init_from set
    record = store.get_run(cfg.init_from)
    state = load_checkpoint(checkpoint, digests=store.checkpoint_digests(record.id))["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"init_from {cfg.init_from}: its weights do not fit this model "
                         f"({str(err).splitlines()[0]})") from None


def _build(registry, component: Component) -> Any:
    return component.take(registry)  # the object checking the config built, if not yet used


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(
    cfg: RunConfig,
    *,
    checkpoint_path: Any = None,
    loggers: Sequence[Logger] = (),
    device: Any = None,
    store: Store | None = None,
) -> Trainer:
    """The Trainer for ``cfg``: task splits, seeded model, optimizer, techniques, measures.
    With ``cfg.init_from`` the model starts from that run's final weights (from ``store``)."""
    task = _build(TASKS, cfg.task)
    splits = task.splits(cfg.seed)
    seed_everything(cfg.seed)
    model = _build(MODELS, cfg.model).build(splits.input, splits.num_classes)
    if cfg.init_from:
        _load_weights(model, cfg, store or Store())
    dtype = getattr(torch, cfg.loss_dtype)
    if splits.regression:
        def loss_fn(outputs, targets):
            return F.mse_loss(outputs.to(dtype), targets.to(dtype))
    elif cfg.loss == "mse":
        def loss_fn(logits, targets):
            return mse_to_one_hot(logits, targets, dtype)
    else:
        def loss_fn(logits, targets):
            return cross_entropy(logits, targets, dtype)
    trainer = Trainer(
        model,
        make_optimizer(cfg.optimizer),
        splits.train,
        max_steps=cfg.steps,
        eval_data=dict(splits.items()),
        techniques=[_build(TECHNIQUES, t) for t in cfg.techniques],
        measures=[_build(MEASURES, m) for m in cfg.measures],
        callbacks=[_build(CALLBACKS, c) for c in cfg.callbacks],
        loss_fn=loss_fn,
        batch_size=cfg.batch_size,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_path=checkpoint_path,
        loggers=loggers,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
    )
    for technique in trainer.techniques:
        technique.resolve_runs(lambda run, home: evaluation_model(
            run, Store(home) if home else store or Store()))
    return trainer


def evaluation_model(run: str, store: Store) -> torch.nn.Module:
    """The model a finished run evaluates with (its last checkpoint, with the weights its
    techniques evaluate, e.g. an EMA average), in eval mode."""
    record = store.get_run(run)
    if record.status != "done":
        raise ValueError(f"run {record.id} is {record.status}, not done")
    trainer = build(config_from_dict(record.config), store=store,
                    checkpoint_path=store.checkpoint_path(record.id))
    trainer.resume()
    model = next((m for t in trainer.techniques if (m := t.eval_model(trainer.state)) is not None),
                 trainer.model)
    return model.eval()


class ProgressPrinter:
    """A live bar on a terminal; plain periodic lines elsewhere (logs, CI)."""

    KEYS = ("train/accuracy", "test/accuracy", "train/loss", "test/loss")

    def __init__(self, total: int, stream: TextIO | None = None, every_seconds: float = 5.0,
                 label: str = "") -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every_seconds
        self.label = label
        self._last = 0.0
        self._start = time.perf_counter()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        now = time.perf_counter()
        shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in self.KEYS if k in metrics)
        if self.tty:
            width = 24
            filled = int(width * step / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{self.label}[{bar}] {step}/{self.total}  {shown}\033[K")
            if step >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif step == 0 or step >= self.total or now - self._last >= self.every:
            self.stream.write(f"{self.label}step {step}/{self.total} "
                              f"({now - self._start:.1f}s)  {shown}\n")
            self.stream.flush()
            self._last = now

    def flush(self) -> None:
        pass


def execute(
    cfg: RunConfig,
    store: Store | None = None,
    *,
    progress: bool | TextIO = False,
    restart: bool = False,
    device: Any = None,
    sinks: str | None = None,
    wait: float = 0.0,
) -> RunResult:
    """Run ``cfg`` (or resume it, or return it if done) and record it in ``store``.

    Another process training the same run: raise :class:`~heldout.store.RunLeased` naming
    it, after waiting up to ``wait`` seconds for it to finish. ``restart`` discards the
    run's checkpoints and history and trains from step 0. ``sinks`` also streams the
    metrics to TensorBoard and/or MLflow, e.g. ``"tensorboard:runs/tb,mlflow:mlflow.db"``
    (see :func:`heldout.run.sinks.make_sinks`). A config mistake (an unusable ``init_from``,
    a model that does not fit the task) is a :class:`ConfigError` raised before any run
    record is written.
    """
    store = store or Store()
    run_id = cfg.identity
    if not restart and store.has_run(run_id) and (record := store.get_run(run_id)).status == "done":
        return RunResult(run_id, "done", store.final_metrics(run_id), None, True, record)
    check_init_from(cfg, store)  # a mistake here leaves no run record behind
    recorder = RunRecorder(store, run_id)  # holds the lease once it is taken
    loggers: list[Logger] = [recorder]
    if progress:
        stream = progress if not isinstance(progress, bool) else None
        loggers.append(ProgressPrinter(cfg.steps, stream, label=f"{run_id} "))
    extra = []
    if sinks:
        from heldout.run.sinks import make_sinks

        extra = make_sinks(sinks, run_id, config_to_dict(cfg))
    loggers += extra
    checkpoint = store.checkpoint_path(run_id)
    try:
        trainer = build(cfg, checkpoint_path=checkpoint, loggers=loggers, device=device,
                        store=store)
    except ValueError as err:  # a model that does not fit the task, say: no record written
        _close(extra, failed=True)
        raise ConfigError(f"run {run_id} cannot be built: {err}") from err
    lease = None
    try:  # the lease first: a process training this run is named before anything is written
        lease = recorder.lease = store.acquire_lease(run_id, wait=wait)
        record = store.create_run(run_id, config_to_dict(cfg), cfg.seed, cfg.name)
        if record.status == "done" and not restart:  # it finished while this one waited
            store.release_lease(lease)
            _close(extra, failed=True)
            return RunResult(run_id, "done", store.final_metrics(run_id), None, True, record)
        result = _train_leased(trainer, store, recorder, restart=restart)
    except BaseException:
        if lease is not None:
            store.release_lease(lease)  # if it failed before finishing (or was taken: no-op)
        _close(extra, failed=True)
        raise
    _close(extra, failed=False)
    return result


def _train_leased(trainer: Trainer, store: Store, recorder: RunRecorder, *,
                  restart: bool) -> RunResult:
    """Train the built ``trainer`` under the recorder's lease (a recorder into ``store``):
    from scratch with ``restart``, else from its last checkpoint if it has one; record the
    outcome (finishing gives the lease back)."""
    run_id, lease = recorder.run_id, recorder.lease
    checkpoint = store.checkpoint_path(run_id)
    if restart:
        store.reset_run(run_id, lease=lease)
        if store.run_dir(run_id).exists():
            shutil.rmtree(store.run_dir(run_id))
    resumed_from = None
    if has_checkpoint(checkpoint):
        resumed_from = trainer.resume(digests=store.checkpoint_digests(run_id))
    recorder.start(resumed_from or 0)
    try:
        trainer.fit()
    except LeaseLost:  # another process owns the run now: write nothing more
        raise
    except NonFiniteLossError as err:
        recorder.fail(err.step, trainer.seconds, str(err))
        raise RunFailed(run_id, str(err)) from err
    except BaseException as err:
        recorder.fail(trainer.state.step, trainer.seconds, err)
        raise
    recorder.finish(trainer.state.step, trainer.seconds, checkpoint)
    return RunResult(run_id, "done", store.final_metrics(run_id), resumed_from, False,
                     store.get_run(run_id))


def _close(sinks: Sequence[Any], failed: bool) -> None:
    for sink in sinks:
        if hasattr(sink, "close"):
            try:
                sink.close("FAILED") if failed and _takes_status(sink) else sink.close()
            except Exception:  # noqa: BLE001 - a sink must not hide the run's own outcome
                traceback.print_exc()


def _takes_status(sink: Any) -> bool:
    import inspect

    return "status" in inspect.signature(sink.close).parameters


def measure_run(
    store: Store,
    run_id: str,
    measures: Sequence[Component],
    splits: Sequence[str] | None = None,
    device: Any = None,
) -> dict[str, float]:
    """Compute ``measures`` post hoc on a finished run's last checkpoint and store the
    results in its metric history at that checkpoint's step (replacing earlier values)."""
    from heldout.config import config_from_dict

    record = store.get_run(run_id)
    checkpoint = store.checkpoint_path(record.id)
    if not has_checkpoint(checkpoint):
        raise FileNotFoundError(f"run {record.id} has no checkpoint at {checkpoint}")
    cfg = config_from_dict(record.config)
    trainer = build(cfg, checkpoint_path=checkpoint, device=device, store=store)
    step = trainer.resume(digests=store.checkpoint_digests(record.id))
    valid = list(trainer.eval_data)
    for split in splits or ():
        if split not in valid:
            raise KeyError(f"unknown split {split!r}; valid splits: {', '.join(valid)}")
    metrics = trainer.measure([_build(MEASURES, m) for m in measures], splits)
    RunRecorder(store, record.id).log(step, metrics)
    return metrics
