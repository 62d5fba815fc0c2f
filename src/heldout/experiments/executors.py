"""Executors behind one narrow interface — ``submit``, ``poll``, ``cancel`` — and the sweep
driver that is the store's single writer.

- :class:`LocalExecutor`: a process per run, at most ``workers`` at a time. Workers never write
  the store: they stream their metrics to the driver through a queue and write only their own
  checkpoint files. A worker that crashes or is killed marks its run failed with the reason.
- :class:`RayExecutor`: one Ray task per run; a local Ray instance is started when no address
  is given, a cluster is joined when one is (its workers must see the same ``HELDOUT_HOME``
  directory for checkpoints). Metrics come back when the task ends.

Checkpoints carry the metric history, so a run resumed after its worker or the driver died
reports every evaluation exactly once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heldout.config import RunConfig, config_from_dict, config_to_dict
from heldout.store.sqlite import Store

__all__ = ["Executor", "LocalExecutor", "Outcome", "RayExecutor", "make_executor", "run_jobs"]


@dataclass(frozen=True)
class Outcome:
    """How a submitted run ended."""

    run_id: str
    status: str  # "done" or "failed"
    error: str | None = None


def _rows(history: Iterable[tuple[int, Mapping[str, float]]]) -> list[tuple[int, str, str, float]]:
    out = []
    for step, metrics in history:
        for key, value in metrics.items():
            split, _, name = key.partition("/")
            out.append((int(step), split, name, float(value)))
    return out


def _train(config: dict[str, Any], home: str, emit: Any, threads: int) -> dict[str, Any]:
    """Run (or resume) one config in this process; ``emit(kind, payload)`` reports progress.
    Returns the final status. Never writes the store."""
    import torch

    from heldout.engine.trainer import NonFiniteLossError
    from heldout.runner import CHECKPOINT_NAME, build

    torch.set_num_threads(threads)
    cfg = config_from_dict(config)
    store = Store(home)  # read-only here: init_from and knowledge distillation read runs
    checkpoint = store.run_dir(cfg.identity) / CHECKPOINT_NAME

    class Emitter:
        def log(self, step: int, metrics: Mapping[str, float]) -> None:
            emit("metrics", _rows([(step, metrics)]))

        def flush(self) -> None:
            pass

    trainer = build(cfg, checkpoint_path=checkpoint, loggers=[Emitter()], store=store)
    resumed = trainer.resume() if checkpoint.exists() else 0
    emit("started", resumed)
    if trainer.history:  # evaluations the checkpoint carries: report them again (idempotent)
        emit("metrics", _rows(trainer.history))
    try:
        trainer.fit()
    except NonFiniteLossError as err:
        return {"status": "failed", "error": str(err), "seconds": trainer.seconds,
                "step": err.step}
    except Exception as err:  # noqa: BLE001 - the run fails, the sweep goes on
        message = "".join(traceback.format_exception_only(type(err), err)).strip()
        return {"status": "failed", "error": message, "seconds": trainer.seconds,
                "step": trainer.state.step}
    return {"status": "done", "error": None, "seconds": trainer.seconds,
            "step": trainer.state.step, "checkpoint": str(checkpoint)}


def _local_worker(config: dict[str, Any], home: str, messages: Any, run_id: str,
                  parent: int, threads: int) -> None:
    def emit(kind: str, payload: Any) -> None:
        if os.getppid() != parent:  # the driver died: stop, the next sweep resumes the run
            os._exit(3)
        messages.put((run_id, kind, payload))

    result = _train(config, home, emit, threads)
    messages.put((run_id, "finished", result))


class Executor(Protocol):
    """Runs submitted configs; the caller (the driver) owns the store and writes it."""

    capacity: int

    def submit(self, config: RunConfig) -> None: ...
    def poll(self, store: Store, timeout: float = 0.5) -> list[Outcome]: ...
    def cancel(self, run_id: str) -> None: ...
    def close(self) -> None: ...


class LocalExecutor:
    """A process per run (spawned, so CUDA and threads start clean), ``workers`` at a time."""

    def __init__(self, home: str | Path, workers: int = 2, threads_per_worker: int = 1) -> None:
        self.home = str(home)
        self.capacity = max(1, workers)
        self.threads = threads_per_worker
        self._ctx = mp.get_context("spawn")
        self._messages = self._ctx.Queue()
        self._running: dict[str, Any] = {}
        self._finished: dict[str, dict[str, Any]] = {}

    def submit(self, config: RunConfig) -> None:
        run_id = config.identity
        process = self._ctx.Process(
            target=_local_worker,
            args=(config_to_dict(config), self.home, self._messages, run_id, os.getpid(),
                  self.threads),
            daemon=True,
        )
        process.start()
        self._running[run_id] = process

    def _drain(self, store: Store, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                run_id, kind, payload = self._messages.get(timeout=remaining)
            except queue_module.Empty:
                return
            if kind == "started":
                store.start_run(run_id, payload)
            elif kind == "metrics":
                store.log_metrics(run_id, payload)
            elif kind == "finished":
                self._finished[run_id] = payload
            deadline = time.monotonic()  # keep draining what is already there, then return

    def poll(self, store: Store, timeout: float = 0.5) -> list[Outcome]:
        self._drain(store, timeout)
        outcomes = []
        for run_id, process in list(self._running.items()):
            if process.is_alive() and run_id not in self._finished:
                continue
            process.join(timeout=5)
            self._drain(store, 0.1)  # the last messages of a process that just ended
            result = self._finished.pop(run_id, None)
            if result is None:
                code = process.exitcode
                reason = (f"worker killed by signal {-code}" if code is not None and code < 0
                          else f"worker exited with code {code} before finishing")
                result = {"status": "failed", "error": reason, "seconds": 0.0,
                          "step": store.get_run(run_id).step}
            _finish(store, run_id, result)
            outcomes.append(Outcome(run_id, result["status"], result["error"]))
            del self._running[run_id]
        return outcomes

    def cancel(self, run_id: str) -> None:
        process = self._running.get(run_id)
        if process is not None and process.is_alive():
            process.terminate()

    def close(self) -> None:
        for process in self._running.values():
            if process.is_alive():
                process.terminate()
        self._running.clear()

    @property
    def busy(self) -> int:
        return len(self._running)


def _finish(store: Store, run_id: str, result: Mapping[str, Any]) -> None:
    if result["status"] == "done" and result.get("checkpoint"):
        store.set_checkpoint(run_id, result["checkpoint"], result["step"])
    store.finish_run(run_id, status=result["status"], seconds=result.get("seconds") or 0.0,
                     step=result.get("step") or 0, error=result.get("error"))


def _ray_task(config: dict[str, Any], home: str, threads: int) -> dict[str, Any]:
    events: list[tuple[str, Any]] = []
    result = _train(config, home, lambda kind, payload: events.append((kind, payload)),
                    threads)
    return {**result, "events": events}


class RayExecutor:
    """One Ray task per run. ``address=None`` starts a local Ray instance (``num_cpus`` CPUs);
    an address such as ``"auto"`` or ``"ray://host:10001"`` joins a cluster."""

    def __init__(self, home: str | Path, address: str | None = None,
                 num_cpus: int | None = None, threads_per_worker: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray executor needs Ray: pip install 'heldout[ray]'") from None
        self._ray = ray
        self.home = str(Path(home).resolve())
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.capacity = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.threads = threads_per_worker
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        self._refs: dict[Any, str] = {}

    def submit(self, config: RunConfig) -> None:
        ref = self._remote.remote(config_to_dict(config), self.home, self.threads)
        self._refs[ref] = config.identity

    def poll(self, store: Store, timeout: float = 0.5) -> list[Outcome]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs),
                                  timeout=timeout)
        outcomes = []
        for ref in ready:
            run_id = self._refs.pop(ref)
            try:
                result = self._ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a crashed or killed worker
                result = {"status": "failed", "seconds": 0.0,
                          "step": store.get_run(run_id).step,
                          "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
            for kind, payload in result.get("events", []):
                if kind == "started":
                    store.start_run(run_id, payload)
                elif kind == "metrics":
                    store.log_metrics(run_id, payload)
            _finish(store, run_id, result)
            outcomes.append(Outcome(run_id, result["status"], result["error"]))
        return outcomes

    def cancel(self, run_id: str) -> None:
        for ref, rid in list(self._refs.items()):
            if rid == run_id:
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()

    @property
    def busy(self) -> int:
        return len(self._refs)


def make_executor(name: str, home: str | Path, *, workers: int = 2,
                  address: str | None = None) -> Any:
    """``"local"`` or ``"ray"``; unknown names list the valid ones."""
    if name == "local":
        return LocalExecutor(home, workers)
    if name == "ray":
        return RayExecutor(home, address, num_cpus=workers if address is None else None)
    raise ValueError(f"unknown executor {name!r}; valid executors: local, ray")


def run_jobs(configs: Iterable[RunConfig], store: Store, executor: Any,
             on_outcome: Any = None) -> list[Outcome]:
    """Run every config not yet done, ``executor.capacity`` at a time; the caller's process
    is the only one that writes ``store``."""
    unique = {c.identity: c for c in configs}  # a run is never submitted twice at once
    pending = [c for c in unique.values() if store.get_run(c.identity).status != "done"]
    outcomes: list[Outcome] = []
    try:
        while pending or executor.busy:
            while pending and executor.busy < executor.capacity:
                executor.submit(pending.pop(0))
            for outcome in executor.poll(store):
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
    finally:
        executor.close()
    return outcomes
