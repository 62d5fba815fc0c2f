"""The runs store: one embedded SQLite file (stdlib ``sqlite3``, WAL, one writer).

Tables::

    runs(id, name, config_json, seed, status, created, started, finished, seconds, step,
         versions_json, git_sha, host, error, checkpoint)
    metrics(run_id, step, split, name, value)        -- the metric history
    artifacts(run_id, name, path, sha256)            -- files a run produced
    claims(id, claim, verdict, summary, numbers_json, seeds_json, run_ids_json, created)
    leases(run_id, token, pid, host, since, heartbeat)  -- who trains a run right now
    checkpoints(run_id, sha256, step, prev_sha256, prev_step, saved)  -- checkpoint digests
    adaptations(id, source_run, adapter, config_json, status, created, finished, seconds,
                metrics_json, error)              -- test-time adaptations of finished runs

Status moves ``queued → running → done | failed``. Every write is one transaction, so a
process killed mid-write leaves the store as it was before that write.

One process trains a run at a time: it holds the run's *lease* (pid, host, heartbeat),
taken in one transaction before training; a second process is refused naming the holder
(or waits). A lease whose process died (same host, pid gone) or whose heartbeat is older
than ``lease_stale_after`` seconds is taken over; writes that carry a lease check, in their
own transaction, that it is still held, so a process whose lease was taken writes nothing
more. A finished run is never started, checkpointed or finished again.

Each process that opens the store for writing leaves a marker in ``<home>/.writers`` that
it removes at a clean exit; opening the store while a dead process's marker is there (an
unclean shutdown) runs ``PRAGMA quick_check`` first and refuses a store that fails it.
Read-only stores (``Store(home, readonly=True)``) open the file with ``mode=ro`` and never
write: no schema creation, no marker.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import platform
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Lease", "LeaseLost", "RunFinishedError", "RunLeased", "RunRecord", "Store",
           "StoreError", "default_home", "environment_versions", "git_sha"]

LEASE_STALE_SECONDS = 900.0  # a holder silent this long (no evaluation, no checkpoint) is gone
_HINT = ("restore it from a backup (`heldout store backup PATH` makes one) and see "
         "`heldout store check`")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    config_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL,
    step INTEGER NOT NULL DEFAULT 0,
    versions_json TEXT,
    git_sha TEXT,
    host TEXT,
    error TEXT,
    checkpoint TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, split, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs(id),
    meta_json TEXT NOT NULL,
    PRIMARY KEY (sweep_id, run_id)
);
CREATE TABLE IF NOT EXISTS claims (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    claim TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('holds', 'does not hold', 'inconclusive')),
    summary TEXT NOT NULL,
    numbers_json TEXT NOT NULL,
    seeds_json TEXT NOT NULL,
    run_ids_json TEXT NOT NULL,
    scale TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    since REAL NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS adaptations (
    id TEXT PRIMARY KEY,
    source_run TEXT NOT NULL REFERENCES runs(id),
    adapter TEXT NOT NULL,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    created REAL NOT NULL,
    finished REAL,
    seconds REAL,
    metrics_json TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    step INTEGER NOT NULL,
    prev_sha256 TEXT,
    prev_step INTEGER,
    saved REAL NOT NULL
);
"""


class StoreError(Exception):
    """The store file cannot be used (corrupt, unreadable, read-only): one line naming it."""


class RunLeased(RuntimeError):
    """Another live process holds the run's lease."""

    def __init__(self, run_id: str, pid: int, host: str, since: float) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        super().__init__(f"run {run_id} is being trained by pid {pid} on host {host} "
                         f"since {when}; `--wait` waits for it to finish")
        self.run_id, self.pid, self.host, self.since = run_id, pid, host, since


class LeaseLost(RuntimeError):
    """This process's lease on a run was taken over (it was presumed dead)."""


class RunFinishedError(RuntimeError):
    """A write that would change a finished run (its checkpoint, its state)."""


@dataclass(frozen=True)
class Lease:
    """A held lease: only the process holding ``token`` may write the run's training."""

    run_id: str
    token: str
    pid: int
    host: str
    since: float


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


_OPEN_MARKERS: set[Path] = set()


@atexit.register
def _clean_exit() -> None:
    for marker in _OPEN_MARKERS:
        marker.unlink(missing_ok=True)


def default_home() -> Path:
    """Where runs live: ``$HELDOUT_HOME`` if set, else ``./.heldout``."""
    return Path(os.environ.get("HELDOUT_HOME", ".heldout"))


def git_sha() -> str | None:
    """The commit of the working directory, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_versions() -> dict[str, str]:
    import numpy
    import torch

    return {
        "heldout": _heldout_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table."""

    id: str
    name: str | None
    config: dict[str, Any]
    seed: int
    status: str
    created: float
    started: float | None
    finished: float | None
    seconds: float | None
    step: int
    versions: dict[str, str]
    git_sha: str | None
    host: str | None
    error: str | None
    checkpoint: str | None


class Store:
    """The SQLite runs store at ``<home>/store.sqlite``; run directories beside it.
    ``readonly=True`` opens it for reading only (read commands; a read-only home);
    ``check=False`` skips the integrity check after an unclean shutdown (to inspect a
    damaged store)."""

    def __init__(self, home: str | Path | None = None, *, readonly: bool = False,
                 check: bool = True, lease_stale_after: float = LEASE_STALE_SECONDS) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.path = self.home / "store.sqlite"
        self.readonly = readonly
        self.lease_stale_after = lease_stale_after
        if readonly:
            if check and self.path.exists():
                self._check_after_unclean_shutdown(clear=False)
            return
        marker = self.home / ".writers" / f"{os.getpid()}@{platform.node()}"
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            if check:
                self._check_after_unclean_shutdown(clear=True)
            if marker not in _OPEN_MARKERS:
                marker.parent.mkdir(exist_ok=True)
                marker.touch()
                _OPEN_MARKERS.add(marker)
        except OSError as err:
            raise StoreError(f"cannot write the store in {self.home} ({err.strerror}); "
                             "read commands (runs, report) work on a read-only store") from None
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # --------------------------------------------------------------------- plumbing
    def _check_after_unclean_shutdown(self, clear: bool) -> None:
        """Run ``PRAGMA quick_check`` if a writer died with the store open (its marker is
        left); refuse a store that fails it. Normal path: one directory listing."""
        writers = self.home / ".writers"
        host = platform.node()
        dead = []
        for marker in writers.iterdir() if writers.is_dir() else ():
            pid, _, marker_host = marker.name.partition("@")
            if marker_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                dead.append(marker)
        if not dead or not self.path.exists():
            return
        problems = self.check()
        if problems != ["ok"]:
            raise StoreError(f"{self.path} fails its integrity check after an unclean "
                             f"shutdown ({problems[0]}); {_HINT}")
        if clear:
            for marker in dead:
                marker.unlink(missing_ok=True)

    def _open(self) -> sqlite3.Connection:
        if not self.readonly:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            return db
        if not self.path.exists():  # nothing recorded yet: an empty store, in memory
            db = sqlite3.connect(":memory:", isolation_level=None)
            db.executescript(_SCHEMA)
            return db
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, isolation_level=None)
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return db
        except sqlite3.OperationalError:
            if Path(f"{self.path}-wal").exists():
                raise
        # A read-only directory without a write-ahead log: no writer can be at work (it
        # would need to create the log there), so the file is read as immutable.
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _error(self, err: sqlite3.Error) -> StoreError:
        if type(err) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB
            return StoreError(f"{self.path} is damaged ({err}); {_HINT}")
        return StoreError(f"{self.path}: {err}")

    @contextmanager
    def _connect(self):
        try:
            db = self._open()
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as err:
            raise self._error(err) from None
        try:
            db.row_factory = sqlite3.Row
            yield db
        except sqlite3.DatabaseError as err:
            if type(err) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
                raise
            raise self._error(err) from None
        finally:
            db.close()

    @contextmanager
    def _transaction(self):
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def checkpoint_path(self, run_id: str) -> Path:
        """Where the run's last checkpoint lives (the one before: ``checkpoint.prev.pt``)."""
        return self.run_dir(run_id) / "checkpoint.pt"

    # --------------------------------------------------------------------- leases
    def acquire_lease(self, run_id: str, *, wait: float = 0.0) -> Lease:
        """Take the run's lease in one transaction, or raise :class:`RunLeased` naming the
        holder (after polling for up to ``wait`` seconds). A dead or silent holder's lease
        is taken over."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._refuse_live_holder(run_id)  # a read: waits on no writer's lock
                return self._try_lease(run_id)
            except RunLeased:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _refuse_live_holder(self, run_id: str) -> None:
        """Raise :class:`RunLeased` if a live process holds the run's lease. A read, so a
        holder stopped inside a write transaction (SIGSTOP, a debugger) is named at once
        instead of timing out on the database's write lock."""
        row = self._optional("SELECT * FROM leases WHERE run_id = ?", run_id)
        if row is not None and not self._lease_expired(row, time.time()):
            raise RunLeased(run_id, row["pid"], row["host"], row["since"])

    def _try_lease(self, run_id: str) -> Lease:
        now, host = time.time(), platform.node()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM leases WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and not self._lease_expired(row, now):
                raise RunLeased(run_id, row["pid"], row["host"], row["since"])
            lease = Lease(run_id, secrets.token_hex(8), os.getpid(), host, now)
            db.execute("INSERT OR REPLACE INTO leases (run_id, token, pid, host, since, "
                       "heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
                       (run_id, lease.token, lease.pid, host, now, now))
        return lease

    def _lease_expired(self, row: sqlite3.Row, now: float) -> bool:
        if now - row["heartbeat"] > self.lease_stale_after:
            return True
        return row["host"] == platform.node() and not _pid_alive(row["pid"])

    def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        """The run's lease row (pid, host, since, heartbeat), or None."""
        row = self._optional("SELECT pid, host, since, heartbeat FROM leases WHERE run_id = ?",
                             run_id)
        return None if row is None else dict(row)

    def _optional(self, query: str, *args: Any) -> sqlite3.Row | None:
        """One row from a table a store written by an older heldout may lack (a read-only
        open does not create it): None then."""
        with self._connect() as db:
            try:
                return db.execute(query, args).fetchone()
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return None
                raise

    def heartbeat(self, leases: Iterable[Lease]) -> None:
        """Refresh held leases in one transaction; raise :class:`LeaseLost` if one is gone."""
        with self._transaction() as db:
            for lease in leases:
                self._hold(db, lease)

    def release_lease(self, lease: Lease) -> None:
        """Give the lease back (nothing happens if it was taken over)."""
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE run_id = ? AND token = ?",
                       (lease.run_id, lease.token))

    @staticmethod
    def _hold(db: sqlite3.Connection, lease: Lease | None) -> None:
        """Inside a transaction: refresh ``lease``'s heartbeat, or raise if it is lost."""
        if lease is None:
            return
        cur = db.execute("UPDATE leases SET heartbeat = ? WHERE run_id = ? AND token = ?",
                         (time.time(), lease.run_id, lease.token))
        if cur.rowcount == 0:
            raise LeaseLost(f"run {lease.run_id}: another process took over its lease "
                            f"(this one, pid {lease.pid}, was presumed dead); stopping "
                            "without writing")

    @staticmethod
    def _refuse_finished(db: sqlite3.Connection, run_id: str, what: str) -> None:
        row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is not None and row["status"] == "done":
            raise RunFinishedError(f"run {run_id} is done; refusing to {what} (--restart "
                                   "discards it and trains from step 0)")

    # --------------------------------------------------------------------- runs
    def create_run(self, run_id: str, config: Mapping[str, Any], seed: int,
                   name: str | None = None) -> RunRecord:
        """Insert a queued run, or return the existing run with this id unchanged."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs (id, name, config_json, seed, status, created) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (run_id, name, json.dumps(config, sort_keys=True), seed, time.time()),
            )
        return self.get_run(run_id)

    def start_run(self, run_id: str, resume_step: int = 0, *, lease: Lease | None = None
                  ) -> None:
        """Mark a run running; drop metrics after ``resume_step`` (they will be recomputed).
        A done run is refused (:class:`RunFinishedError`). Only a start under a lease
        (:func:`heldout.run.execute.execute`) records checkpoint digests; any other (a sweep
        worker, a vectorized group) forgets those recorded, as its checkpoints replace them."""
        with self._transaction() as db:
            self._hold(db, lease)
            self._refuse_finished(db, run_id, "start it again")
            if lease is None:
                db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, resume_step))
            db.execute(
                "UPDATE runs SET status = 'running', started = COALESCE(started, ?), "
                "error = NULL, versions_json = ?, git_sha = ?, host = ?, step = ? WHERE id = ?",
                (time.time(), json.dumps(environment_versions()), git_sha(), platform.node(),
                 resume_step, run_id),
            )

    def finish_run(self, run_id: str, *, status: str, seconds: float, step: int,
                   error: str | None = None, lease: Lease | None = None) -> None:
        """Mark a run done or failed (and give its lease back). A done run stays as it is."""
        if status not in ("done", "failed"):
            raise ValueError(f"a run finishes as done or failed, not {status!r}")
        with self._transaction() as db:
            self._hold(db, lease)
            db.execute(
                "UPDATE runs SET status = ?, finished = ?, seconds = COALESCE(seconds, 0) + ?, "
                "step = ?, error = ? WHERE id = ? AND status != 'done'",
                (status, time.time(), seconds, step, error, run_id),
            )
            if lease is not None:
                db.execute("DELETE FROM leases WHERE run_id = ? AND token = ?",
                           (run_id, lease.token))

    def reset_run(self, run_id: str, *, lease: Lease) -> None:
        """Forget a run's training (``--restart``): queued at step 0, no metrics, artifacts
        or checkpoint digests. Needs the run's lease."""
        with self._transaction() as db:
            self._hold(db, lease)
            for table in ("metrics", "artifacts"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
            db.execute("UPDATE runs SET status = 'queued', started = NULL, finished = NULL, "
                       "seconds = NULL, step = 0, error = NULL, checkpoint = NULL "
                       "WHERE id = ?", (run_id,))

    def set_checkpoint(self, run_id: str, path: str | None, step: int) -> None:
        """Record the final checkpoint's path (a done run keeps the one it has)."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET checkpoint = ?, step = ? WHERE id = ? "
                       "AND status != 'done'", (path, step, run_id))

    def record_checkpoint(self, run_id: str, sha256: str, step: int, *,
                          lease: Lease | None = None) -> None:
        """Record the digest of a checkpoint about to replace the last one (whose digest
        becomes the previous one's). Called before the file is renamed into place, so
        every complete checkpoint on disk has its digest recorded."""
        with self._transaction() as db:
            self._hold(db, lease)
            self._refuse_finished(db, run_id, "write its checkpoint")
            db.execute(
                "INSERT INTO checkpoints (run_id, sha256, step, saved) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET prev_sha256 = sha256, prev_step = step, "
                "sha256 = excluded.sha256, step = excluded.step, saved = excluded.saved",
                (run_id, sha256, step, time.time()))

    def checkpoint_digests(self, run_id: str) -> set[str] | None:
        """The sha256 of the run's last and previous checkpoints; None if none recorded."""
        row = self._optional("SELECT sha256, prev_sha256 FROM checkpoints WHERE run_id = ?",
                             run_id)
        if row is None:
            return None
        return {d for d in (row["sha256"], row["prev_sha256"]) if d}

    def get_run(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                matches = db.execute(
                    "SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\' OR name = ?",
                    (_like_prefix(run_id), run_id)).fetchall()
                if len(matches) == 1:
                    row = matches[0]
                elif matches:
                    ids = ", ".join(m["id"] for m in matches)
                    raise KeyError(f"run {run_id!r} is ambiguous: {ids}")
        if row is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return _record(row)

    def has_run(self, run_id: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def runs(self, status: str | None = None) -> list[RunRecord]:
        query, args = "SELECT * FROM runs", tuple[str, ...]()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        with self._connect() as db:
            return [_record(r) for r in db.execute(query + " ORDER BY created", args)]

    # --------------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, rows: Iterable[tuple[int, str, str, float]], *,
                    lease: Lease | None = None) -> None:
        """Write ``(step, split, name, value)`` rows in one transaction (idempotent). With
        ``lease``, the same transaction refreshes its heartbeat, and writes nothing if the
        lease was lost (:class:`LeaseLost`)."""
        keyed = [(run_id, s, sp, n, v) for s, sp, n, v in rows]
        if not keyed:
            return
        with self._transaction() as db:
            self._hold(db, lease)
            db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, split, name, value) "
                "VALUES (?, ?, ?, ?, ?)",
                keyed,
            )

    def metrics(self, run_id: str) -> list[tuple[int, str, float]]:
        """The history as ``(step, "split/name", value)`` rows, by step."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT step, split, name, value FROM metrics WHERE run_id = ? "
                "ORDER BY step, split, name",
                (run_id,),
            ).fetchall()
        return [(r["step"], f"{r['split']}/{r['name']}", r["value"]) for r in rows]

    def history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """The history as ``{"split/name": [(step, value), ...]}``."""
        out: dict[str, list[tuple[int, float]]] = {}
        for step, key, value in self.metrics(run_id):
            out.setdefault(key, []).append((step, value))
        return out

    def final_metrics(self, run_id: str) -> dict[str, float]:
        """The metrics of the last logged step."""
        rows = self.metrics(run_id)
        if not rows:
            return {}
        last = max(step for step, _, _ in rows)
        return {key: value for step, key, value in rows if step == last}

    # --------------------------------------------------------------------- artifacts, claims
    def add_artifact(self, run_id: str, name: str, path: str | Path,
                     sha256: str | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, name, path, sha256) VALUES (?,?,?,?)",
                (run_id, name, str(path), sha256),
            )

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute(
                "SELECT name, path, sha256 FROM artifacts WHERE run_id = ? ORDER BY name",
                (run_id,))]

    def record_claim(self, claim: str, verdict: str, summary: str, numbers: Mapping[str, Any],
                     seeds: Sequence[int], run_ids: Sequence[str], scale: str) -> int:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO claims (claim, verdict, summary, numbers_json, seeds_json, "
                "run_ids_json, scale, created) VALUES (?,?,?,?,?,?,?,?)",
                (claim, verdict, summary, json.dumps(numbers, sort_keys=True),
                 json.dumps(list(seeds)), json.dumps(list(run_ids)), scale, time.time()),
            )
            return int(cur.lastrowid)

    def claim_results(self, claim: str | None = None) -> list[dict[str, Any]]:
        """The latest recorded result of each claim (or of ``claim``)."""
        query = ("SELECT * FROM claims WHERE id IN (SELECT MAX(id) FROM claims GROUP BY claim)"
                 + (" AND claim = ?" if claim else "") + " ORDER BY claim")
        with self._connect() as db:
            rows = db.execute(query, (claim,) if claim else ()).fetchall()
        return [
            {**dict(r), "numbers": json.loads(r["numbers_json"]),
             "seeds": json.loads(r["seeds_json"]), "run_ids": json.loads(r["run_ids_json"])}
            for r in rows
        ]

    # --------------------------------------------------------------------- adaptations
    def start_adaptation(self, adaptation_id: str, source_run: str, adapter: str,
                         config: Mapping[str, Any]) -> None:
        """Record an adaptation of the finished run ``source_run`` as running (again, if it
        failed before); a done adaptation is refused (:class:`RunFinishedError`)."""
        with self._transaction() as db:
            row = db.execute("SELECT status FROM adaptations WHERE id = ?",
                             (adaptation_id,)).fetchone()
            if row is not None and row["status"] == "done":
                raise RunFinishedError(f"adaptation {adaptation_id} is done; it is not run "
                                       "again")
            db.execute(
                "INSERT INTO adaptations (id, source_run, adapter, config_json, status, "
                "created) VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT (id) DO UPDATE SET "
                "status = 'running', error = NULL",
                (adaptation_id, source_run, adapter, json.dumps(config, sort_keys=True),
                 time.time()))

    def finish_adaptation(self, adaptation_id: str, *, status: str, seconds: float,
                          metrics: Mapping[str, Any] | None = None,
                          error: str | None = None) -> None:
        if status not in ("done", "failed"):
            raise ValueError(f"an adaptation finishes done or failed, not {status!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE adaptations SET status = ?, finished = ?, seconds = ?, "
                "metrics_json = ?, error = ? WHERE id = ? AND status != 'done'",
                (status, time.time(), seconds,
                 None if metrics is None else json.dumps(metrics, sort_keys=True), error,
                 adaptation_id))

    def get_adaptation(self, adaptation_id: str) -> dict[str, Any]:
        """An adaptation by id or unique id prefix."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM adaptations WHERE id = ? OR id LIKE ? ESCAPE '\\'",
                              (adaptation_id, _like_prefix(adaptation_id))).fetchall()
        exact = [r for r in rows if r["id"] == adaptation_id]
        if exact:
            rows = exact
        if len(rows) != 1:
            raise KeyError(f"adaptation {adaptation_id!r} is ambiguous" if rows else
                           f"no adaptation {adaptation_id!r} in {self.path}")
        return _adaptation(rows[0])

    def adaptations(self, source_run: str | None = None) -> list[dict[str, Any]]:
        """Every adaptation (of ``source_run`` only, if given), oldest first."""
        query, args = "SELECT * FROM adaptations", tuple[str, ...]()
        if source_run is not None:
            query, args = query + " WHERE source_run = ?", (source_run,)
        with self._connect() as db:
            return [_adaptation(r) for r in db.execute(query + " ORDER BY created, id", args)]

    # --------------------------------------------------------------------- sweeps
    def record_sweep(self, sweep_id: str, name: str, spec: Mapping[str, Any],
                     runs: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any], int]]
                     ) -> None:
        """Register a sweep and its planned runs ``(run_id, config, meta, seed)`` as queued,
        in one transaction; what is already recorded is left as it is."""
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO sweeps (id, name, spec_json, created) "
                       "VALUES (?, ?, ?, ?)", (sweep_id, name, json.dumps(spec, sort_keys=True),
                                               now))
            db.executemany(
                "INSERT OR IGNORE INTO runs (id, name, config_json, seed, status, created) "
                "VALUES (?, NULL, ?, ?, 'queued', ?)",
                [(rid, json.dumps(cfg, sort_keys=True), seed, now) for rid, cfg, _, seed in runs],
            )
            db.executemany(
                "INSERT OR IGNORE INTO sweep_runs (sweep_id, run_id, meta_json) VALUES (?,?,?)",
                [(sweep_id, rid, json.dumps(meta, sort_keys=True)) for rid, _, meta, _ in runs],
            )

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep by id, unique id prefix or name (the latest of that name)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM sweeps WHERE id = ? OR name = ? ORDER BY created "
                              "DESC", (sweep_id, sweep_id)).fetchall()
            if not rows:
                rows = db.execute("SELECT * FROM sweeps WHERE id LIKE ? ESCAPE '\\'",
                                  (_like_prefix(sweep_id),)).fetchall()
        if len(rows) == 0 or (len(rows) > 1 and rows[0]["name"] != sweep_id):
            raise KeyError(f"no sweep {sweep_id!r} in {self.path}")
        row = rows[0]
        return {"id": row["id"], "name": row["name"], "spec": json.loads(row["spec_json"]),
                "created": row["created"]}

    def sweeps(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute(
                "SELECT id, name, created FROM sweeps ORDER BY created")]

    def sweep_runs(self, sweep_id: str) -> list[tuple[RunRecord, dict[str, Any]]]:
        """The runs of a sweep (by id, unique prefix or name) with their protocol metadata."""
        sweep = self.get_sweep(sweep_id)["id"]
        with self._connect() as db:
            members = db.execute(
                "SELECT r.*, s.meta_json FROM sweep_runs s JOIN runs r ON r.id = s.run_id "
                "WHERE s.sweep_id = ? ORDER BY r.created, r.id", (sweep,)).fetchall()
        return [(_record(m), json.loads(m["meta_json"])) for m in members]

    # --------------------------------------------------------------------- export
    def export(self, run_ids: Sequence[str] | None = None, fmt: str = "csv") -> str:
        """Runs with their final metrics as CSV, or runs with full histories as JSON."""
        records = [self.get_run(r) for r in run_ids] if run_ids else self.runs()
        if fmt == "json":
            return json.dumps(
                [{**_record_dict(r), "history": [
                    {"step": s, "metric": k, "value": v} for s, k, v in self.metrics(r.id)
                ]} for r in records],
                indent=2,
            )
        if fmt != "csv":
            raise ValueError(f"unknown export format {fmt!r}; valid formats: csv, json")
        finals = {r.id: self.final_metrics(r.id) for r in records}
        keys = sorted({k for f in finals.values() for k in f})
        buf = io.StringIO()
        writer = csv.writer(buf)
        base = ["id", "name", "status", "seed", "step", "seconds", "task", "model", "techniques"]
        writer.writerow(base + keys)
        for r in records:
            cfg = r.config
            writer.writerow(
                [r.id, r.name or "", r.status, r.seed, r.step,
                 "" if r.seconds is None else f"{r.seconds:.3f}",
                 cfg.get("task", {}).get("name", ""), cfg.get("model", {}).get("name", ""),
                 "+".join(t["name"] for t in cfg.get("techniques", []))]
                + [finals[r.id].get(k, "") for k in keys]
            )
        return buf.getvalue()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``'s first line: ``"ok"`` for a sound store."""
        return self.check(full=True)[0]

    def check(self, full: bool = False) -> list[str]:
        """The problems ``PRAGMA quick_check`` (``full``: ``integrity_check``) finds, or
        ``["ok"]``; a file that is not a database at all is one problem."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            with closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro",
                                         uri=True, timeout=60)) as db:
                return [r[0] for r in db.execute(f"PRAGMA {pragma}")]
        except sqlite3.DatabaseError as err:
            return [str(err)]

    def backup(self, target: str | Path) -> Path:
        """Copy the store to ``target`` with SQLite's online backup (consistent while
        runs write). ``target`` must not exist; its directory must."""
        target = Path(target)
        if target.exists():
            raise StoreError(f"{target} exists; give a new file name for the backup")
        if not target.parent.is_dir():
            raise StoreError(f"{target.parent} is not a directory")
        with self._connect() as db, closing(sqlite3.connect(target)) as copy:
            try:
                db.backup(copy)
            except sqlite3.DatabaseError as err:
                raise self._error(err) from None
        return target


def _like_prefix(prefix: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching strings that start with ``prefix``."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"], name=row["name"], config=json.loads(row["config_json"]), seed=row["seed"],
        status=row["status"], created=row["created"], started=row["started"],
        finished=row["finished"], seconds=row["seconds"], step=row["step"],
        versions=json.loads(row["versions_json"] or "{}"), git_sha=row["git_sha"],
        host=row["host"], error=row["error"], checkpoint=row["checkpoint"],
    )


def _adaptation(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: v for k, v in dict(row).items() if not k.endswith("_json")}
    out["config"] = json.loads(row["config_json"])
    out["metrics"] = json.loads(row["metrics_json"]) if row["metrics_json"] else {}
    return out


def _record_dict(r: RunRecord) -> dict[str, Any]:
    return dict(r.__dict__)


def _heldout_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("heldout")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
