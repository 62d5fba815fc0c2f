"""The runs store: one embedded SQLite file (stdlib ``sqlite3``, WAL, one writer).

Tables::

    runs(id, name, config_json, seed, status, created, started, finished, seconds, step,
         versions_json, git_sha, host, error, checkpoint)
    metrics(run_id, step, split, name, value)        -- the metric history
    artifacts(run_id, name, path, sha256)            -- files a run produced
    claims(id, claim, verdict, summary, numbers_json, seeds_json, run_ids_json, created)

Status moves ``queued → running → done | failed``. Every write is one transaction, so a
process killed mid-write leaves the store as it was before that write.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunRecord", "Store", "default_home", "environment_versions", "git_sha"]

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
"""


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
    """The SQLite runs store at ``<home>/store.sqlite``; run directories beside it."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "store.sqlite"
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # --------------------------------------------------------------------- plumbing
    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            yield db
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

    def start_run(self, run_id: str, resume_step: int = 0) -> None:
        """Mark a run running; drop metrics after ``resume_step`` (they will be recomputed)."""
        with self._transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, resume_step))
            db.execute(
                "UPDATE runs SET status = 'running', started = COALESCE(started, ?), "
                "error = NULL, versions_json = ?, git_sha = ?, host = ?, step = ? WHERE id = ?",
                (time.time(), json.dumps(environment_versions()), git_sha(), platform.node(),
                 resume_step, run_id),
            )

    def finish_run(self, run_id: str, *, status: str, seconds: float, step: int,
                   error: str | None = None) -> None:
        if status not in ("done", "failed"):
            raise ValueError(f"a run finishes as done or failed, not {status!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished = ?, seconds = COALESCE(seconds, 0) + ?, "
                "step = ?, error = ? WHERE id = ?",
                (status, time.time(), seconds, step, error, run_id),
            )

    def set_checkpoint(self, run_id: str, path: str | None, step: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET checkpoint = ?, step = ? WHERE id = ?",
                       (path, step, run_id))

    def get_run(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                matches = db.execute(
                    "SELECT * FROM runs WHERE id LIKE ? OR name = ?", (run_id + "%", run_id)
                ).fetchall()
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
        query, args = "SELECT * FROM runs", ()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        with self._connect() as db:
            return [_record(r) for r in db.execute(query + " ORDER BY created", args)]

    # --------------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, rows: Iterable[tuple[int, str, str, float]]) -> None:
        """Write ``(step, split, name, value)`` rows in one transaction (idempotent)."""
        rows = [(run_id, s, sp, n, v) for s, sp, n, v in rows]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, split, name, value) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
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
                rows = db.execute("SELECT * FROM sweeps WHERE id LIKE ?",
                                  (sweep_id + "%",)).fetchall()
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
        with closing(sqlite3.connect(self.path)) as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"], name=row["name"], config=json.loads(row["config_json"]), seed=row["seed"],
        status=row["status"], created=row["created"], started=row["started"],
        finished=row["finished"], seconds=row["seconds"], step=row["step"],
        versions=json.loads(row["versions_json"] or "{}"), git_sha=row["git_sha"],
        host=row["host"], error=row["error"], checkpoint=row["checkpoint"],
    )


def _record_dict(r: RunRecord) -> dict[str, Any]:
    return dict(r.__dict__)


def _heldout_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("heldout")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
