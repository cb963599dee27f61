"""The run history: every job, its parameters, seed, remote ids, cost and timings, in SQLite.

The job controller writes each state change here (WAL mode, so the window can read while a
batch writes), which is what lets remote jobs survive a restart: on start, the controller reads
the unfinished rows and resumes them from their last checkpoint. The history panel reads the
same rows. The schema is versioned (``PRAGMA user_version``) with forward migrations.

Nothing secret is stored: API keys live in the OS keyring, and the remote checkpoint holds only
ids and URLs.
"""

from __future__ import annotations

import builtins  # HistoryStore.list names a method: later annotations say builtins.list
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
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
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------------
    def save(self, record: RunRecord) -> None:
        """Insert or replace ``record`` (its ``updated`` time is set now)."""
        record.updated = time.time()
        values = [
            json.dumps(getattr(record, c), ensure_ascii=False)
            if c in _JSON_COLUMNS and getattr(record, c) is not None
            else getattr(record, c)
            for c in _COLUMNS
        ]
        placeholders = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        try:
            with self._lock:
                self._db.execute(sql, values)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot write the run history at {self.path}: {exc}") from exc

    def delete(self, run_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return cursor.rowcount > 0

    # --- reading ------------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[RunRecord]:
        with self._lock:
            cursor = self._db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        return [self._record(dict(zip(names, row, strict=True))) for row in rows]

    @staticmethod
    def _record(row: Mapping[str, Any]) -> RunRecord:
        data = dict(row)
        for column in _JSON_COLUMNS:
            if data.get(column) is not None:
                data[column] = json.loads(data[column])
        return RunRecord(**data)

    def get(self, run_id: str) -> RunRecord | None:
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
        """Jobs that had not ended when the last session stopped, oldest first."""
        placeholders = ", ".join("?" for _ in _TERMINAL)
        return self._rows(
            f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE state NOT IN ({placeholders}) "
            "ORDER BY created",
            _TERMINAL,
        )
