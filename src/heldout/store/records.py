"""What a run leaves in a store, in one place: the :class:`RunStore` protocol the run lifecycle
writes through (the SQLite store, and a sweep worker's forwarding store, implement it), metric
rows, file digests and recorded error messages."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = ["MetricRow", "RunStore", "error_message", "metric_rows"]

MetricRow = tuple[int, str, str, float]
"""(step, split, name, value): one stored metric; the key ``"test/accuracy"`` is split at the
first ``/``."""


class RunStore(Protocol):
    """The writes of one run's lifecycle (and the reads it needs), as the store implements
    them. Methods that take ``lease`` check it, refresh its heartbeat and refuse to write when
    it was taken over; a store that does not lease ignores it."""

    def run_dir(self, run_id: str) -> Path: ...
    def checkpoint_path(self, run_id: str) -> Path: ...
    def start_run(self, run_id: str, resume_step: int = 0, *, lease: Any = None) -> None: ...
    def log_metrics(self, run_id: str, rows: Iterable[MetricRow], *, lease: Any = None
                    ) -> None: ...
    def record_checkpoint(self, run_id: str, sha256: str, step: int, *, lease: Any = None
                          ) -> None: ...
    def set_checkpoint(self, run_id: str, path: str | None, step: int) -> None: ...
    def add_artifact(self, run_id: str, name: str, path: str | Path,
                     sha256: str | None = None) -> None: ...
    def finish_run(self, run_id: str, *, status: str, seconds: float, step: int,
                   error: str | None = None, lease: Any = None) -> None: ...


def metric_rows(history: Iterable[tuple[int, Mapping[str, float]]]) -> list[MetricRow]:
    """Rows for the metrics of each ``(step, {"split/name": value})`` of ``history``.

    Example:
        >>> metric_rows([(3, {"test/accuracy": 0.5, "gap/loss": 0.1})])
        [(3, 'test', 'accuracy', 0.5), (3, 'gap', 'loss', 0.1)]
    """
    rows = []
    for step, metrics in history:
        for key, value in metrics.items():
            split, _, name = key.partition("/")
            rows.append((step, split, name, float(value)))
    return rows


def error_message(err: BaseException) -> str:
    """How a failed run records its error: ``"Type: message"`` on one line (the type alone
    when there is no message).

    Example:
        >>> error_message(ValueError("rho must be >= 0"))
        'ValueError: rho must be >= 0'
    """
    return "".join(traceback.format_exception_only(type(err), err)).strip() or type(err).__name__
