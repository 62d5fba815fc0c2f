"""Run a :class:`RunConfig` end to end: build, train, record, checkpoint, resume.

The run's id is the hash of its canonical config. Executing a config whose run is already
``done`` returns the stored result; one whose run is unfinished (killed, failed) resumes from
its last checkpoint, and the metric history after that checkpoint is recomputed, so a run
killed at any step ends with exactly the metrics of the uninterrupted run. The run is recorded
through a :class:`~heldout.run.recorder.RunRecorder`; :func:`measure_run` computes measures
post hoc.

Training holds the run's lease (see :mod:`heldout.store.sqlite`): a second process on the
same config is refused naming the holder (or waits, ``wait=``); the heartbeat rides on the
metric flushes at evaluations and checkpoints; each checkpoint's sha256 is recorded before
the file is renamed into place, and a resume verifies against it.
"""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from heldout.config import (
    Component,
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
)
from heldout.core.state import Logger
from heldout.engine.checkpoint import has_checkpoint
from heldout.engine.trainer import (
    NonFiniteLossError,
    Trainer,
)
from heldout.registry import MEASURES
from heldout.run.assembly import build, check_init_from
from heldout.run.recorder import RunRecorder
from heldout.store.sqlite import LeaseLost, RunRecord, Store

__all__ = ["ProgressPrinter", "RunFailed", "RunResult", "execute", "measure_run"]


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
    metrics = trainer.measure([m.take(MEASURES) for m in measures], splits)
    RunRecorder(store, record.id).log(step, metrics)
    return metrics
