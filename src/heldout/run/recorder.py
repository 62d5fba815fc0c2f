"""One run's life in a store: :class:`RunRecorder` (start, log, checkpoint, finish, fail).

The run alone (:func:`heldout.run.execute.execute`), the copies of a vectorized group
(:mod:`heldout.vectorize`) and a sweep worker's runs (through the forwarding store of
:mod:`heldout.experiments.executors`) all record a run through it, so what a finished or failed
run leaves in the store is written in one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from heldout.core.digest import file_sha256
from heldout.store.records import MetricRow, RunStore, error_message, metric_rows

__all__ = ["RunRecorder"]


class RunRecorder:
    """Records run ``run_id`` in ``store``; a :class:`~heldout.core.state.Logger` for its
    Trainer.

    Each evaluation's metrics reach the store in one transaction, or, with ``flush_seconds``,
    at most that often and before every checkpoint (a vectorized group, whose checkpoints carry
    the history). With a ``lease`` every write checks and refreshes it."""

    def __init__(self, store: RunStore, run_id: str, lease: Any = None,
                 flush_seconds: float = 0.0) -> None:
        self.store, self.run_id, self.lease = store, run_id, lease
        self.flush_seconds = flush_seconds
        self._rows: list[MetricRow] = []
        self._flushed = time.perf_counter()

    def start(self, step: int = 0, history: Iterable[tuple[int, Mapping[str, float]]] = ()) -> None:
        """The run (re)starts at ``step``; ``history`` (what a checkpoint carries) is logged
        again, idempotently, so no evaluation is lost with a killed process."""
        self.store.start_run(self.run_id, step, lease=self.lease)
        self._rows.extend(metric_rows(history))

    # the Logger protocol
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._rows.extend(metric_rows([(step, metrics)]))
        if time.perf_counter() - self._flushed >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        self.store.log_metrics(self.run_id, rows, lease=self.lease)
        self._flushed = time.perf_counter()

    def checkpointed(self, step: int, sha256: str) -> None:
        """A new checkpoint's digest, recorded before the file replaces the previous one."""
        self.store.record_checkpoint(self.run_id, sha256, step, lease=self.lease)

    def finish(self, step: int, seconds: float, checkpoint: Path | None = None,
               artifacts: Mapping[str, Path] | None = None) -> None:
        """The run is done at ``step``: its last metrics, its final checkpoint (recorded with
        its digest) and other ``artifacts``, then its status."""
        self.flush()
        if checkpoint is not None:
            self.store.set_checkpoint(self.run_id, str(checkpoint), step)
            self.store.add_artifact(self.run_id, "checkpoint", checkpoint,
                                    file_sha256(checkpoint))
        for name, path in (artifacts or {}).items():
            self.store.add_artifact(self.run_id, name, path, file_sha256(path))
        self.store.finish_run(self.run_id, status="done", seconds=seconds, step=step,
                              lease=self.lease)

    def fail(self, step: int, seconds: float, error: BaseException | str) -> None:
        """The run failed at ``step``; its metrics so far are kept, and the error recorded."""
        self.flush()
        message = error if isinstance(error, str) else error_message(error)
        self.store.finish_run(self.run_id, status="failed", seconds=seconds, step=step,
                              error=message, lease=self.lease)
