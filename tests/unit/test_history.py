"""The SQLite run history: rows, queries, migrations and a damaged or newer database."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from app.store.history import SCHEMA_VERSION, HistoryError, HistoryStore, RunRecord


def _record(i: int, **kw) -> RunRecord:
    base = dict(
        id=f"run{i:03d}",
        created=1000.0 + i,
        state="succeeded",
        backend="segmind",
        model="clarity-upscaler",
        input=f"/photos/in{i}.jpg",
        output=f"/out/in{i}.png",
        params={"version": 1, "seed": 1337 + i, "prompt": f"castle {i}"},
        seed=1337 + i,
    )
    base.update(kw)
    return RunRecord(**base)


def test_rows_round_trip_with_json_columns(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    record = _record(
        1,
        remote={"phase": "done", "remote_id": "abc", "urls": {"status": "https://x"}},
        remote_id="abc",
        cost=0.3,
        cost_unit="credits",
        timings={"remote": 18.2, "download": 0.4},
        warnings=["note"],
        error_details={"fields": {"scale": ["too big"]}},
    )
    store.save(record)
    back = store.get("run001")
    assert back is not None and back.remote == record.remote and back.timings == record.timings
    assert back.cost == 0.3 and back.warnings == ["note"] and back.updated >= time.time() - 5
    assert back.error_details == {"fields": {"scale": ["too big"]}}
    store.save(_record(1, state="failed"))  # replaces, never duplicates
    assert [r.state for r in store.list()] == ["failed"]
    assert store.delete("run001") and not store.delete("run001")


def test_list_filters_search_and_unfinished(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    for i, state in enumerate(["succeeded", "running", "failed", "submit-unknown", "queued"]):
        store.save(_record(i, state=state, backend="fal" if i == 2 else "segmind"))
    assert [r.id for r in store.list()][:2] == ["run004", "run003"]  # newest first
    assert [r.id for r in store.list(states=["failed"])] == ["run002"]
    assert [r.id for r in store.list(backend="fal")] == ["run002"]
    assert [r.id for r in store.list(search="castle 3")] == ["run003"]
    assert [r.id for r in store.list(search="1338")] == ["run001"]  # by seed
    assert [r.id for r in store.unfinished()] == ["run001", "run003", "run004"]  # oldest first
    assert [r.id for r in store.with_prefix("run003")] == ["run003"]
    assert len(store.with_prefix("run")) == 2 and store.with_prefix("r%") == []


def test_a_second_connection_reads_while_the_first_writes(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    writer, reader = HistoryStore(path), HistoryStore(path)
    writer.save(_record(1))
    assert reader.get("run001") is not None
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_newer_schema_or_a_damaged_file_is_refused_clearly(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    HistoryStore(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryError, match="newer Clarifier"):
        HistoryStore(newer)
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match="cannot open the run history"):
        HistoryStore(damaged)
