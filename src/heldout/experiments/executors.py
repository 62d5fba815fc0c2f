"""Executors behind one narrow interface — ``submit``, ``poll``, ``cancel`` — and the sweep
driver that is the store's single writer.

A job is one config, or a group of configs that differ only in seed (and learning rate or
weight decay) trained together by :func:`heldout.vectorize.trainer.train_vectorized`;
:func:`plan_jobs` forms the groups where :func:`~heldout.vectorize.trainer.can_vectorize`
allows and leaves every other config a job of its own.

- :class:`LocalExecutor`: a pool of ``workers`` processes, one job each at a time, kept from
  job to job. Workers never write the store: they stream their metrics to the driver through
  a queue and write only their own checkpoint files. A worker that crashes or is killed marks
  its unfinished runs failed with the reason.
- :class:`RayExecutor`: one Ray task per job; a local Ray instance is started when no address
  is given, a cluster is joined when one is (its workers must see the same ``HELDOUT_HOME``
  directory for checkpoints). Metrics come back when the task ends.

Checkpoints carry the metric history, so a run resumed after its worker or the driver died
reports every evaluation exactly once.

The driver holds the lease of each run it submits (see :mod:`heldout.store.sqlite`), so two
drivers on one spec, or a driver and a ``heldout run`` of one of its configs, never train a
run twice: a run another live process holds is reported ``skipped`` with the holder.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_module
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heldout.config import RunConfig, config_from_dict, config_to_dict
from heldout.store.records import MetricRow, error_message, metric_rows
from heldout.store.sqlite import Lease, RunLeased, Store

__all__ = ["Executor", "LocalExecutor", "Outcome", "RayExecutor", "make_executor", "plan_jobs",
           "run_jobs"]

Job = tuple[RunConfig, ...]
HEARTBEAT_SECONDS = 60.0  # how often a driver refreshes the leases of the runs it trains


@dataclass(frozen=True)
class Outcome:
    """How a submitted run ended."""

    run_id: str
    status: str  # "done" or "failed"; "skipped": another process holds its lease
    error: str | None = None


def _train(config: dict[str, Any], home: str, emit: Any, threads: int) -> dict[str, Any]:
    """Run (or resume) one config in this process; ``emit(kind, payload)`` reports progress.
    Returns the final status. Never writes the store."""
    import torch

    from heldout.engine.checkpoint import has_checkpoint
    from heldout.engine.trainer import NonFiniteLossError
    from heldout.run.assembly import build

    class Emitter:
        def log(self, step: int, metrics: Mapping[str, float]) -> None:
            emit("metrics", metric_rows([(step, metrics)]))

        def flush(self) -> None:
            pass

    torch.set_num_threads(threads)
    try:  # a run that cannot be built or resumed fails with its own reason, not the worker's
        cfg = config_from_dict(config)
        store = Store(home, readonly=True)  # init_from and knowledge distillation read runs
        checkpoint = store.checkpoint_path(cfg.identity)
        trainer = build(cfg, checkpoint_path=checkpoint, loggers=[Emitter()], store=store)
        resumed = trainer.resume() if has_checkpoint(checkpoint) else 0
    except Exception as err:  # noqa: BLE001 - the run fails, the sweep goes on
        return {"status": "failed", "error": error_message(err), "seconds": 0.0, "step": None}
    emit("started", resumed)
    if trainer.history:  # evaluations the checkpoint carries: report them again (idempotent)
        emit("metrics", metric_rows(trainer.history))
    try:
        trainer.fit()
    except NonFiniteLossError as err:
        return {"status": "failed", "error": str(err), "seconds": trainer.seconds,
                "step": err.step}
    except Exception as err:  # noqa: BLE001 - the run fails, the sweep goes on
        return {"status": "failed", "error": error_message(err), "seconds": trainer.seconds,
                "step": trainer.state.step}
    return {"status": "done", "error": None, "seconds": trainer.seconds,
            "step": trainer.state.step, "checkpoint": str(checkpoint)}


class _ForwardingStore:
    """The store as a vectorized group in a worker sees it (a
    :class:`~heldout.store.records.RunStore`): reads go to the store (read-only here), writes
    become messages ``emit(run_id, kind, payload)`` for the driver, which holds the leases."""

    def __init__(self, store: Store, emit: Any) -> None:
        self._store, self._emit = store, emit
        self._checkpoints: dict[str, tuple[str, int]] = {}
        self.started: set[str] = set()
        self.finished: set[str] = set()

    def __getattr__(self, name: str) -> Any:  # home, run_dir, has_run, get_run, runs, ...
        return getattr(self._store, name)

    def create_run(self, run_id: str, config: Any, seed: int, name: str | None = None) -> Any:
        return self._store.get_run(run_id)  # the driver recorded it before submitting

    def start_run(self, run_id: str, resume_step: int = 0, *, lease: Any = None) -> None:
        self.started.add(run_id)
        self._emit(run_id, "started", resume_step)

    def log_metrics(self, run_id: str, rows: Iterable[MetricRow], *, lease: Any = None
                    ) -> None:
        rows = list(rows)
        if rows:
            self._emit(run_id, "metrics", rows)

    def add_artifact(self, run_id: str, name: str, path: Any, sha256: str | None = None) -> None:
        self._emit(run_id, "artifact", (name, str(path), sha256))

    def set_checkpoint(self, run_id: str, path: str | None, step: int) -> None:
        if path is not None:
            self._checkpoints[run_id] = (path, step)

    def record_checkpoint(self, run_id: str, sha256: str, step: int, *, lease: Any = None
                          ) -> None:
        """Workers record no digests (the driver's store is read-only here); a resumed run
        still verifies its checkpoint by loading it and falls back to the previous one."""

    def finish_run(self, run_id: str, *, status: str, seconds: float, step: int,
                   error: str | None = None, lease: Any = None) -> None:
        checkpoint = self._checkpoints.get(run_id)
        self.finished.add(run_id)
        self._emit(run_id, "finished", {
            "status": status, "error": error, "seconds": seconds, "step": step,
            "checkpoint": checkpoint[0] if checkpoint and status == "done" else None})


def _train_job(configs: Sequence[dict[str, Any]], home: str, emit: Any, threads: int) -> None:
    """Run one job in this process: ``emit(run_id, kind, payload)`` reports progress, and each
    run of the job ends with its ``"finished"`` message. A group is trained vectorized; if
    its copies turn out not to stack (training sets of different shapes), before anything
    started, its configs run one after the other instead."""
    cfgs = [config_from_dict(c) for c in configs]
    if len(cfgs) > 1:
        import torch

        from heldout.vectorize.trainer import train_vectorized

        torch.set_num_threads(threads)
        store = _ForwardingStore(Store(home, readonly=True), emit)
        try:
            train_vectorized(cfgs, store)  # type: ignore[arg-type]  # a Store proxy (__getattr__)
        except Exception as err:  # noqa: BLE001 - the runs fail, the sweep goes on
            if isinstance(err, ValueError) and not store.started:
                store.finished.clear()
            else:
                for cfg in cfgs:
                    if cfg.identity not in store.finished:
                        emit(cfg.identity, "finished", {
                            "status": "failed", "error": error_message(err), "seconds": 0.0,
                            "step": 0})
                return
        else:
            for cfg in cfgs:  # skipped because already done: nothing changes
                if cfg.identity not in store.finished:
                    record = store.get_run(cfg.identity)
                    emit(cfg.identity, "finished", {
                        "status": record.status, "error": record.error, "seconds": 0.0,
                        "step": record.step, "checkpoint": record.checkpoint})
            return
    for cfg, config in zip(cfgs, configs, strict=True):
        run_id = cfg.identity
        result = _train(config, home, lambda kind, payload, r=run_id: emit(r, kind, payload),
                        threads)
        emit(run_id, "finished", result)


def _local_worker(inbox: Any, messages: Any, home: str, parent: int, threads: int) -> None:
    """A pool process: run the jobs that arrive in ``inbox`` until it sends None; exit when
    the driver is gone (the next sweep resumes what was left)."""

    def emit(run_id: str, kind: str, payload: Any) -> None:
        if os.getppid() != parent:
            os._exit(3)
        messages.put((run_id, kind, payload))

    while True:
        try:
            job = inbox.get(timeout=1.0)
        except queue_module.Empty:
            if os.getppid() != parent:
                os._exit(3)
            continue
        if job is None:
            return
        _train_job(job, home, emit, threads)


def _as_job(job: RunConfig | Sequence[RunConfig]) -> Job:
    return (job,) if isinstance(job, RunConfig) else tuple(job)


def _apply(store: Store, run_id: str, kind: str, payload: Any,
           finished: dict[str, dict[str, Any]]) -> None:
    """Write one worker message to the store (the driver's side)."""
    if kind == "started":
        store.start_run(run_id, payload)
    elif kind == "metrics":
        store.log_metrics(run_id, payload)
    elif kind == "artifact":
        store.add_artifact(run_id, *payload)
    elif kind == "finished":
        finished[run_id] = payload


class Executor(Protocol):
    """Runs submitted configs; the caller (the driver) owns the store and writes it."""

    capacity: int

    def submit(self, job: RunConfig | Sequence[RunConfig]) -> None: ...
    def poll(self, store: Store, timeout: float = 0.5) -> list[Outcome]: ...
    def cancel(self, run_id: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Slot:
    """One pool process, its inbox, and the runs of the job it is on (None: idle)."""

    process: Any
    inbox: Any
    job: tuple[str, ...] | None = None
    jobs: int = 0


class LocalExecutor:
    """A pool of ``workers`` processes (spawned, so CUDA and threads start clean), each
    running one job at a time and kept for the next one: starting Python with torch costs
    seconds, so a process per run would dominate sweeps of small runs. A process is replaced
    after ``jobs_per_worker`` jobs, and when it dies: its unfinished runs fail with the
    reason (``worker killed by signal 9``) and the pool goes on."""

    def __init__(self, home: str | Path, workers: int = 2, threads_per_worker: int = 1,
                 jobs_per_worker: int = 50) -> None:
        self.home = str(home)
        self.capacity = max(1, workers)
        self.threads = threads_per_worker
        self.jobs_per_worker = max(1, jobs_per_worker)
        self._ctx = mp.get_context("spawn")
        self._messages = self._ctx.Queue()
        self._slots: list[_Slot] = []
        self._finished: dict[str, dict[str, Any]] = {}

    def _idle_slot(self) -> _Slot:
        for slot in self._slots:
            if slot.job is None and slot.process.is_alive():
                if slot.jobs < self.jobs_per_worker:
                    return slot
                slot.inbox.put(None)  # worn out: let it exit, start a fresh one
        self._slots = [s for s in self._slots if s.job is not None]
        inbox = self._ctx.Queue()
        process = self._ctx.Process(
            target=_local_worker,
            args=(inbox, self._messages, self.home, os.getpid(), self.threads),
            daemon=True,
        )
        process.start()
        slot = _Slot(process, inbox)
        self._slots.append(slot)
        return slot

    def submit(self, job: RunConfig | Sequence[RunConfig]) -> None:
        """Start a job: one config, or configs to train together (vectorized)."""
        configs = _as_job(job)
        slot = self._idle_slot()
        slot.inbox.put([config_to_dict(c) for c in configs])
        slot.job = tuple(c.identity for c in configs)
        slot.jobs += 1

    def process_of(self, run_id: str) -> Any:
        """The process running ``run_id``'s job, or None."""
        return next((s.process for s in self._slots if s.job and run_id in s.job), None)

    def _drain(self, store: Store, timeout: float, bounded: bool = True) -> None:
        """Write the workers' messages to the store: wait up to ``timeout`` for the first,
        then take what is already queued until ``2 * timeout`` (+50 ms) has passed. The
        bound matters: workers can queue messages faster than the store writes them, and an
        unbounded drain would hold finished runs back (no progress, no new job to an idle
        worker). Unbounded, it takes everything queued (the last words of an ended process)."""
        start = time.monotonic()
        wait = timeout
        while not bounded or time.monotonic() - start < 2 * timeout + 0.05:
            try:
                run_id, kind, payload = self._messages.get(timeout=wait)
            except queue_module.Empty:
                return
            _apply(store, run_id, kind, payload, self._finished)
            wait = 0.0

    def poll(self, store: Store, timeout: float = 0.5) -> list[Outcome]:
        self._drain(store, timeout)
        outcomes = []
        for slot in self._slots:
            if slot.job is None:
                continue
            alive = slot.process.is_alive()
            if alive and not all(r in self._finished for r in slot.job):
                continue
            reason = ""
            if not alive:
                slot.process.join(timeout=5)
                self._drain(store, 0.1, bounded=False)  # a process that just ended: its last words
                code = slot.process.exitcode
                reason = (f"worker killed by signal {-code}" if code is not None and code < 0
                          else f"worker exited with code {code} before finishing")
            for run_id in slot.job:
                result = self._finished.pop(run_id, None)
                if result is None:
                    result = {"status": "failed", "error": reason, "seconds": 0.0,
                              "step": store.get_run(run_id).step}
                _finish(store, run_id, result)
                outcomes.append(Outcome(run_id, result["status"], result["error"]))
            slot.job = None
        self._slots = [s for s in self._slots if s.process.is_alive()]
        return outcomes

    def cancel(self, run_id: str) -> None:
        """Stop the job that runs ``run_id`` (with the other runs of its group)."""
        process = self.process_of(run_id)
        if process is not None and process.is_alive():
            process.terminate()

    def close(self) -> None:
        """Stop the pool: idle processes exit, busy ones are terminated."""
        for slot in self._slots:
            if slot.job is None and slot.process.is_alive():
                slot.inbox.put(None)
            elif slot.process.is_alive():
                slot.process.terminate()
        for slot in self._slots:
            slot.process.join(timeout=5)
            if slot.process.is_alive():
                slot.process.terminate()
        self._slots.clear()

    @property
    def busy(self) -> int:
        return sum(slot.job is not None for slot in self._slots)


def _finish(store: Store, run_id: str, result: Mapping[str, Any]) -> None:
    """Record how a run ended; a step of None (it failed before training) keeps the step
    the store already has."""
    if result["status"] == "done" and result.get("checkpoint"):
        store.set_checkpoint(run_id, result["checkpoint"], result["step"])
    step = result.get("step")
    store.finish_run(run_id, status=result["status"], seconds=result.get("seconds") or 0.0,
                     step=store.get_run(run_id).step if step is None else step,
                     error=result.get("error"))


def _ray_task(configs: list[dict[str, Any]], home: str, threads: int) -> list[tuple[str, str, Any]]:
    events: list[tuple[str, str, Any]] = []
    _train_job(configs, home, lambda *event: events.append(event), threads)
    return events


class RayExecutor:
    """One Ray task per job. ``address=None`` starts a local Ray instance (``num_cpus`` CPUs);
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
        self._refs: dict[Any, tuple[str, ...]] = {}

    def submit(self, job: RunConfig | Sequence[RunConfig]) -> None:
        """Start a job: one config, or configs to train together (vectorized)."""
        configs = _as_job(job)
        ref = self._remote.remote([config_to_dict(c) for c in configs], self.home,
                                  self.threads)
        self._refs[ref] = tuple(c.identity for c in configs)

    def poll(self, store: Store, timeout: float = 0.5) -> list[Outcome]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs),
                                  timeout=timeout)
        outcomes = []
        for ref in ready:
            run_ids = self._refs.pop(ref)
            finished: dict[str, dict[str, Any]] = {}
            reason = "the task ended without a result"
            try:
                events = self._ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a crashed or killed worker
                events = []
                reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            for run_id, kind, payload in events:
                _apply(store, run_id, kind, payload, finished)
            for run_id in run_ids:
                result = finished.get(run_id) or {
                    "status": "failed", "seconds": 0.0, "step": store.get_run(run_id).step,
                    "error": reason}
                _finish(store, run_id, result)
                outcomes.append(Outcome(run_id, result["status"], result["error"]))
        return outcomes

    def cancel(self, run_id: str) -> None:
        """Stop the job that runs ``run_id`` (with the other runs of its group)."""
        for ref, run_ids in list(self._refs.items()):
            if run_id in run_ids:
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


def plan_jobs(configs: Iterable[RunConfig], max_copies: int = 8) -> list[Job]:
    """Group configs that differ only in seed, learning rate or weight decay into jobs of at
    most ``max_copies`` trained together, where :func:`can_vectorize` allows (``max_copies``
    <= 1: no groups); every other config is a job of its own. Order follows the first member.

    Example:
        >>> from heldout.config import RunConfig
        >>> jobs = plan_jobs([RunConfig(seed=s) for s in range(5)], max_copies=4)
        >>> [len(job) for job in jobs]
        [4, 1]
    """
    from heldout.vectorize.trainer import can_vectorize, vectorization_key

    unique = list({c.identity: c for c in configs}.values())
    if max_copies <= 1:
        return [(c,) for c in unique]
    families: dict[str, list[RunConfig]] = {}
    for cfg in unique:
        families.setdefault(json.dumps(vectorization_key(cfg), sort_keys=True),
                            []).append(cfg)
    jobs: list[Job] = []
    for family in families.values():
        if len(family) > 1 and can_vectorize(family)[0]:
            jobs.extend(tuple(family[i:i + max_copies])
                        for i in range(0, len(family), max_copies))
        else:
            jobs.extend((c,) for c in family)
    order = {c.identity: i for i, c in enumerate(unique)}
    return sorted(jobs, key=lambda job: order[job[0].identity])


def run_jobs(configs: Iterable[RunConfig], store: Store, executor: Any,
             on_outcome: Any = None, *, vectorize: int = 1) -> list[Outcome]:
    """Run every config not yet done, ``executor.capacity`` jobs at a time; configs that
    differ only in seed (lr, weight decay) train together in groups of up to ``vectorize``
    (see :func:`plan_jobs`). The caller's process is the only one that writes ``store``."""
    unique = {c.identity: c for c in configs}  # a run is never submitted twice at once
    pending = plan_jobs([c for c in unique.values()
                         if store.get_run(c.identity).status != "done"], vectorize)
    outcomes: list[Outcome] = []
    leases: dict[str, Lease] = {}

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def claim(job: Job) -> Job:
        """The runs of ``job`` this driver trains: those whose lease it gets, not done."""
        kept = []
        for cfg in job:
            try:
                lease = store.acquire_lease(cfg.identity)
            except RunLeased as err:
                report(Outcome(cfg.identity, "skipped", str(err)))
                continue
            if store.get_run(cfg.identity).status == "done":  # another driver finished it
                store.release_lease(lease)
                continue
            leases[cfg.identity] = lease
            kept.append(cfg)
        return tuple(kept)

    beat = time.monotonic()
    try:
        while pending or executor.busy:
            while pending and executor.busy < executor.capacity:
                job = claim(pending.pop(0))
                if job:
                    executor.submit(job)
            for outcome in executor.poll(store):
                store.release_lease(leases.pop(outcome.run_id))
                report(outcome)
            if leases and time.monotonic() - beat > HEARTBEAT_SECONDS:
                store.heartbeat(leases.values())
                beat = time.monotonic()
    finally:
        executor.close()
        for lease in leases.values():
            store.release_lease(lease)
    return outcomes
