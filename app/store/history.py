"""The run history: every job, its parameters, seed, remote ids, cost and timings, in SQLite.

The job controller writes each state change here (WAL mode, so the window can read while a
batch writes), which is what lets remote jobs survive a restart: on start, the controller reads
the unfinished rows and resumes them from their last checkpoint. The history panel reads the
same rows. The schema is versioned (``PRAGMA user_version``) with forward migrations.

Nothing secret is stored: API keys live in the OS keyring, and the remote checkpoint holds only
ids and URLs.

A write that fails (a full disk, a database another program holds locked, a damaged file) loses
nothing that is still running: the record is kept in memory (:attr:`HistoryStore.pending`), reads
see it, and every later write, or :meth:`HistoryStore.flush`, writes it first, so the history
catches up as soon as the database can be written. The failed write itself raises
:class:`HistoryError` with a plain message; the job controller turns that into one warning.
While records wait, a write tries the database for a quarter of a second at most, and not more
often than a growing back-off allows, so a locked database never stalls the jobs.
"""

from __future__ import annotations

import builtins  # HistoryStore.list names a method: later annotations say builtins.list
import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.paths import data_dir

__all__ = ["HistoryError", "HistoryStore", "RunRecord", "history_path"]

SCHEMA_VERSION = 1
_TERMINAL = ("succeeded", "failed", "canceled", "lost")
_BUSY_MS = 5000  # how long a write waits for a lock held by another program
_CATCH_UP_MS = 250  # ... and while records already wait to be written
_BACKOFF = (1.0, 30.0)  # seconds between catch-up tries: the first, the longest

_SCHEMA_V1 = """
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    created       REAL NOT NULL,           -- wall clock, seconds
    updated       REAL NOT NULL,
    finished      REAL,
    state         TEXT NOT NULL,
    backend       TEXT NOT NULL,
    model         TEXT NOT NULL DEFAULT '',
    input         TEXT NOT NULL,
    output        TEXT NOT NULL,           -- where the output goes (or went)
    params        TEXT NOT NULL,           -- UpscaleParams.to_dict() as JSON
    seed          INTEGER,
    options       TEXT NOT NULL DEFAULT '{}',
    remote        TEXT,                    -- the remote backend's checkpoint, JSON
    remote_id     TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    stage         TEXT NOT NULL DEFAULT '',
    message       TEXT NOT NULL DEFAULT '',
    error_kind    TEXT,
    error_details TEXT,
    cost          REAL,
    cost_unit     TEXT NOT NULL DEFAULT '',
    timings       TEXT NOT NULL DEFAULT '{}',
    info          TEXT,                    -- RunInfo.to_dict() of the saved output
    warnings      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX runs_created ON runs (created DESC);
CREATE INDEX runs_state ON runs (state);
"""

_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1}  # from version n to n + 1


class HistoryError(Exception):
    """The history database cannot be opened or written; the message says why."""


@dataclass
class RunRecord:
    """One row of the history: a job as the controller last knew it."""

    id: str
    created: float
    state: str
    backend: str
    input: str
    output: str
    params: dict[str, Any]
    updated: float = 0.0
    finished: float | None = None
    model: str = ""
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    remote: dict[str, Any] | None = None
    remote_id: str | None = None
    attempts: int = 0
    stage: str = ""
    message: str = ""
    error_kind: str | None = None
    error_details: dict[str, Any] | None = None
    cost: float | None = None
    cost_unit: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in _TERMINAL


_JSON_COLUMNS = {"params", "options", "remote", "error_details", "timings", "info", "warnings"}
_COLUMNS = [f.name for f in fields(RunRecord)]


def history_path() -> Path:
    return data_dir() / "history.sqlite3"


class HistoryStore:
    """Thread-safe access to the history database (one connection, serialized)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or history_path()
        self._lock = threading.Lock()
        self._pending: dict[str, RunRecord] = {}  # written as soon as the database lets us
        self._next_try = 0.0  # monotonic time of the next catch-up attempt
        self._backoff = _BACKOFF[0]
        self._why = ""  # what the last failed write said
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint in WAL
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open the run history at {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"the run history at {self.path} was written by a newer Clarifier "
                f"(schema {version}; this one reads up to {SCHEMA_VERSION})"
            )
        while version < SCHEMA_VERSION:
            self._db.executescript(
                f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
            )
            version += 1

    def close(self) -> None:
        """Write what waits, if the database lets us now, and close it."""
        self.flush(force=True)
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many records wait to be written (after a write failed)."""
        with self._lock:
            return len(self._pending)

    def save(self, record: RunRecord) -> None:
        """Insert or replace ``record`` (its ``updated`` time is set now), after any record
        still waiting from a failed write. Raises :class:`HistoryError` when it cannot be
        written now; it is then kept, and written by a later save or :meth:`flush`."""
        record.updated = time.time()
        with self._lock:
            self._pending[record.id] = dataclasses.replace(record)
            if self._next_try and time.monotonic() < self._next_try:  # failed a moment ago
                raise HistoryError(
                    f"cannot write the run history at {self.path}: {self._why} "
                    f"({len(self._pending)} runs wait to be recorded)"
                )
            self._write_pending()

    def flush(self, *, force: bool = False) -> bool:
        """Write the records that wait, if the database lets us now (``force``: even before the
        back-off allows another try). True when nothing waits any more."""
        with self._lock:
            if not self._pending:
                return True
            if not force and time.monotonic() < self._next_try:
                return False
            with contextlib.suppress(HistoryError):
                self._write_pending()
            return not self._pending

    def _write_pending(self) -> None:
        """Write every waiting record in one transaction (the lock held); on failure keep them
        and raise :class:`HistoryError`."""
        catching_up = bool(self._next_try)  # an earlier write failed: wait for locks briefly
        placeholders = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        try:
            if catching_up:
                self._db.execute(f"PRAGMA busy_timeout = {_CATCH_UP_MS}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, [_values(r) for r in self._pending.values()])
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(_BACKOFF[1], self._backoff * 2)
            self._why = str(exc)
            raise HistoryError(f"cannot write the run history at {self.path}: {exc}") from exc
        finally:
            if catching_up:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        self._pending.clear()
        self._backoff = _BACKOFF[0]
        self._next_try = 0.0

    def delete(self, run_id: str) -> bool:
        with self._lock:
            waited = self._pending.pop(run_id, None) is not None
            try:
                cursor = self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            except sqlite3.Error as exc:
                raise HistoryError(f"cannot write the run history at {self.path}: {exc}") from exc
        return cursor.rowcount > 0 or waited

    # --- reading ------------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[RunRecord]:
        """The rows ``sql`` selects, each replaced by its newer record where one waits."""
        with self._lock:
            try:
                cursor = self._db.execute(sql, args)
                names = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
            except sqlite3.Error as exc:
                raise HistoryError(f"cannot read the run history at {self.path}: {exc}") from exc
            waiting = dict(self._pending)
        records = [self._record(dict(zip(names, row, strict=True))) for row in rows]
        return [dataclasses.replace(waiting.get(r.id, r)) for r in records]

    def _waiting(self) -> builtins.list[RunRecord]:
        with self._lock:
            return [dataclasses.replace(r) for r in self._pending.values()]

    @staticmethod
    def _record(row: Mapping[str, Any]) -> RunRecord:
        data = dict(row)
        for column in _JSON_COLUMNS:
            if data.get(column) is not None:
                data[column] = json.loads(data[column])
        return RunRecord(**data)

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            waiting = self._pending.get(run_id)
        if waiting is not None:
            return dataclasses.replace(waiting)
        rows = self._rows(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        return rows[0] if rows else None

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        backend: str | None = None,
        search: str | None = None,
        limit: int = 500,
        offset: int = 0,
    ) -> builtins.list[RunRecord]:
        """Newest first. ``search`` matches the input or output path, the prompt, the model,
        the seed or the provider's request id."""
        where, args = [], []
        if states is not None:
            states = list(states)
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += states
        if backend:
            where.append("backend = ?")
            args.append(backend)
        if search:
            like = f"%{search}%"
            where.append(
                "(input LIKE ? OR output LIKE ? OR params LIKE ? OR model LIKE ? "
                "OR CAST(seed AS TEXT) = ? OR remote_id LIKE ?)"
            )
            args += [like, like, like, like, search.strip(), like]
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC LIMIT ? OFFSET ?"
        return self._rows(sql, [*args, limit, offset])

    def with_prefix(self, prefix: str, limit: int = 2) -> builtins.list[RunRecord]:
        """Runs whose id starts with ``prefix`` (a person types the first few characters)."""
        if not prefix or not prefix.isalnum():
            return []
        return self._rows(
            f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id LIKE ? LIMIT ?",
            (prefix + "%", limit),
        )

    def unfinished(self) -> builtins.list[RunRecord]:
        """Jobs that had not ended when the last session stopped, oldest first (with the
        records still waiting to be written)."""
        placeholders = ", ".join("?" for _ in _TERMINAL)
        rows = self._rows(
            f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE state NOT IN ({placeholders}) "
            "ORDER BY created",
            _TERMINAL,
        )
        known = {r.id for r in rows}
        rows += [r for r in self._waiting() if r.id not in known]
        return sorted((r for r in rows if not r.terminal), key=lambda r: r.created)


def _values(record: RunRecord) -> list[Any]:
    return [
        json.dumps(getattr(record, c), ensure_ascii=False)
        if c in _JSON_COLUMNS and getattr(record, c) is not None
        else getattr(record, c)
        for c in _COLUMNS
    ]
