"""The run history as a Qt table model, and the queries that fill it off the GUI thread.

Thousands of runs stay fast because the view asks only for the rows on screen (uniform row
heights) and everything slow happens elsewhere: the SQLite query and the JSON decoding of each
row run in the thread pool (:func:`query_runs` through :class:`Loader`), thumbnails come from the
:class:`~app.ui.shared.thumbs.ThumbnailLoader`. Rows load a page at a time as the view scrolls.

Jobs that are still running are shown from the live records the window hands to
:meth:`HistoryModel.upsert` (the controller persists only state changes, so the database lags
behind a job's progress); those live records also win over a page loaded while they changed.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QDateTime,
    QLocale,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRunnable,
    Qt,
    QThreadPool,
    Signal,
)
from PySide6.QtGui import QColor, QPixmap

from app.backends.base import JobState
from app.store.history import HistoryError, HistoryStore, RunRecord
from app.ui.shared import messages
from app.ui.shared.thumbs import ThumbnailLoader

__all__ = ["Column", "Filter", "HistoryModel", "Loader", "RecordRole", "query_runs"]

log = logging.getLogger(__name__)

_AnyIndex = QModelIndex | QPersistentModelIndex
RecordRole = Qt.ItemDataRole.UserRole + 1
_UNFINISHED = tuple(str(s) for s in JobState if not s.terminal)


class Column(enum.IntEnum):
    Image = 0
    Backend = enum.auto()
    Settings = enum.auto()
    Seed = enum.auto()
    State = enum.auto()
    Duration = enum.auto()
    Cost = enum.auto()
    When = enum.auto()
    Output = enum.auto()


_HEADERS = {
    Column.Image: "Image",
    Column.Backend: "Backend",
    Column.Settings: "Settings",
    Column.Seed: "Seed",
    Column.State: "State",
    Column.Duration: "Duration",
    Column.Cost: "Cost",
    Column.When: "When",
    Column.Output: "Output",
}


# --- querying ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filter:
    """What the history shows: states (None for all), one backend ("" for all), a search."""

    states: tuple[str, ...] | None = None
    backend: str = ""
    search: str = ""

    def matches(self, record: RunRecord) -> bool:
        """The same test as :func:`query_runs`, for a row that changed live."""
        if self.states is not None and record.state not in self.states:
            return False
        if self.backend and record.backend != self.backend:
            return False
        needle = self.search.strip().lower()
        if not needle:
            return True
        seed = messages.run_seed(record)
        return needle in messages.search_text(record) or (seed is not None and str(seed) == needle)


def _backends_named(needle: str) -> list[str]:
    """Backends whose name or label contains ``needle``: the store's search does not look at
    the backend column, so a search for "segmind" adds that backend's runs."""
    from app.backends.capabilities import backends

    needle = needle.strip().lower()
    if not needle:
        return []
    return [b.name for b in backends() if needle in b.name.lower() or needle in b.label.lower()]


def query_runs(store: HistoryStore, where: Filter, *, limit: int, offset: int) -> list[RunRecord]:
    """One page of runs, newest first. Runs in a worker thread (the store is thread-safe)."""
    search = where.search.strip() or None
    named = [b for b in _backends_named(where.search) if not where.backend or b == where.backend]
    if not named:
        return store.list(
            states=where.states,
            backend=where.backend or None,
            search=search,
            limit=limit,
            offset=offset,
        )
    # Several queries merged: each gives its newest offset + limit, the merge cuts the page.
    upto = offset + limit
    found: dict[str, RunRecord] = {}
    queries = [dict(backend=where.backend or None, search=search)]
    queries += [dict(backend=name, search=None) for name in named]
    for query in queries:
        for record in store.list(states=where.states, limit=upto, offset=0, **query):
            found.setdefault(record.id, record)
    merged = sorted(found.values(), key=lambda r: r.created, reverse=True)
    return merged[offset:upto]


class _Relay(QObject):
    done = Signal(int, object, str)  # ticket, list[RunRecord] or None, error


class _Task(QRunnable):
    def __init__(self, ticket: int, work: Callable[[], list[RunRecord]], relay: _Relay) -> None:
        super().__init__()
        self._ticket, self._work, self._relay = ticket, work, relay

    def run(self) -> None:
        result: list[RunRecord] | None = None
        error = ""
        try:
            result = self._work()
        except HistoryError as exc:
            error = str(exc)
        except Exception as exc:  # one bad query must not kill the pool thread
            log.exception("history query failed")
            error = f"The history could not be read ({type(exc).__name__}: {exc})."
        with contextlib.suppress(RuntimeError):  # the panel was deleted meanwhile
            self._relay.done.emit(self._ticket, result, error)


class Loader(QObject):
    """Runs queries in the thread pool; each answer comes back on the GUI thread through
    ``done(ticket, records, error)``, the ticket telling callers which request it answers."""

    done = Signal(int, object, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._relay = _Relay(self)
        self._relay.done.connect(self.done)
        self._tickets = 0

    def start(self, work: Callable[[], list[RunRecord]]) -> int:
        self._tickets += 1
        QThreadPool.globalInstance().start(_Task(self._tickets, work, self._relay))
        return self._tickets


# --- the model --------------------------------------------------------------------------------
def _when(created: float) -> str:
    stamp = QDateTime.fromMSecsSinceEpoch(round(created * 1000))
    locale = QLocale.system()
    if stamp.date() == QDateTime.currentDateTime().date():
        return locale.toString(stamp.time(), QLocale.FormatType.ShortFormat)
    return locale.toString(stamp, QLocale.FormatType.ShortFormat)


class HistoryModel(QAbstractTableModel):
    """Loaded runs, newest first, with their texts and thumbnails."""

    def __init__(self, thumbs: ThumbnailLoader, *, thumb_size: int = 48, parent: Any = None):
        super().__init__(parent)
        self._thumbs = thumbs
        self.thumb_size = thumb_size
        self._rows: list[RunRecord] = []
        self._index: dict[str, int] = {}
        self._placeholder: QPixmap | None = None
        self.has_more = False
        self.fetch_more: Callable[[], None] | None = None  # set by the panel
        thumbs.ready.connect(self._thumb_changed)
        thumbs.failed.connect(self._thumb_changed)

    # --- rows ---------------------------------------------------------------------------------
    def rowCount(self, parent: _AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(Column)

    def canFetchMore(self, parent: _AnyIndex = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self.has_more

    def fetchMore(self, parent: _AnyIndex = QModelIndex()) -> None:  # noqa: B008
        if not parent.isValid() and self.has_more and self.fetch_more is not None:
            self.fetch_more()

    def records(self) -> list[RunRecord]:
        return list(self._rows)

    def record(self, row: int) -> RunRecord:
        return self._rows[row]

    def row_of(self, run_id: str) -> int | None:
        return self._index.get(run_id)

    def _reindex(self) -> None:
        self._index = {r.id: i for i, r in enumerate(self._rows)}

    def set_records(self, records: Sequence[RunRecord]) -> None:
        self.beginResetModel()
        self._rows = list(records)
        self._reindex()
        self.endResetModel()

    def append_records(self, records: Iterable[RunRecord]) -> None:
        new = [r for r in records if r.id not in self._index]
        if not new:
            return
        first = len(self._rows)
        self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
        self._rows.extend(new)
        for i, record in enumerate(new, first):
            self._index[record.id] = i
        self.endInsertRows()

    def upsert(self, record: RunRecord, *, keep: bool) -> None:
        """Replace the run's row, insert it in date order, or (``keep`` False: it no longer
        matches the filter) remove it."""
        row = self._index.get(record.id)
        if row is not None and not keep:
            self.remove_ids([record.id])
        elif row is not None:
            self._rows[row] = record
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(Column) - 1))
        elif keep:
            keys = [-r.created for r in self._rows]
            row = bisect.bisect_right(keys, -record.created)
            if row == len(self._rows) and self.has_more:
                return  # older than what is loaded: its page will bring it
            self.beginInsertRows(QModelIndex(), row, row)
            self._rows.insert(row, record)
            self._reindex()
            self.endInsertRows()

    def remove_ids(self, ids: Iterable[str]) -> None:
        for row in sorted((self._index[i] for i in ids if i in self._index), reverse=True):
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._rows[row]
            self.endRemoveRows()
        self._reindex()

    def tick(self) -> None:
        """Refresh the durations of runs that have not ended (they count up)."""
        for row, record in enumerate(self._rows):
            if not record.terminal:
                index = self.index(row, Column.Duration)
                self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole])

    # --- thumbnails ---------------------------------------------------------------------------
    @staticmethod
    def image_path(record: RunRecord) -> str:
        """The output once a run succeeded, the input before (or when it failed)."""
        if record.state == JobState.succeeded and record.output:
            return record.output
        return record.input

    def _thumb(self, record: RunRecord) -> Any:
        image = self._thumbs.request(self.image_path(record), self.thumb_size)
        if image is not None:
            return image
        if self._placeholder is None:  # keeps the text column aligned while loading
            self._placeholder = QPixmap(self.thumb_size, self.thumb_size)
            self._placeholder.fill(QColor(0, 0, 0, 0))
        return self._placeholder

    def _thumb_changed(self, path: str, *_: Any) -> None:
        for row, record in enumerate(self._rows):
            if os.fspath(self.image_path(record)) == path:
                index = self.index(row, Column.Image)
                self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    # --- texts --------------------------------------------------------------------------------
    @staticmethod
    def state_text(record: RunRecord) -> str:
        text = messages.state_text(record)
        if record.state in (JobState.failed, JobState.lost) and record.message:
            return f"{text}: {record.message}" if not text.startswith("Lost") else text
        return text

    def text(self, record: RunRecord, column: int) -> str:
        if column == Column.Image:
            return Path(record.input).name
        if column == Column.Backend:
            return messages.backend_model_text(record.backend, record.model)
        if column == Column.Settings:
            return messages.params_text(record.params, record.backend)
        if column == Column.Seed:
            seed = messages.run_seed(record)
            return "" if seed is None else str(seed)
        if column == Column.State:
            return self.state_text(record)
        if column == Column.Duration:
            seconds = messages.run_duration(record)
            return "" if seconds is None else messages.duration_text(seconds)
        if column == Column.Cost:
            return messages.cost_text(record.cost, record.cost_unit)
        if column == Column.When:
            return _when(record.created) if record.created else ""
        if column == Column.Output:
            return record.output
        return ""

    def data(self, index: _AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        record = self._rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self.text(record, column)
        if role == Qt.ItemDataRole.DecorationRole and column == Column.Image:
            return self._thumb(record)
        if role == RecordRole:
            return record
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == Column.State and record.message:
                return f"{messages.state_text(record)}\n{record.message}"
            if column == Column.Image:
                return f"{record.input}\n→ {record.output}"
            return self.text(record, column) or None
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return self.text(record, column)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (
            Column.Seed,
            Column.Duration,
            Column.Cost,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            with contextlib.suppress(ValueError):
                return _HEADERS[Column(section)]
        return None


def state_choices() -> list[tuple[str, tuple[str, ...] | None]]:
    """The state filter's entries: label and the states it shows."""
    return [
        ("All states", None),
        ("Succeeded", (str(JobState.succeeded),)),
        ("Failed", (str(JobState.failed), str(JobState.lost))),
        ("Canceled", (str(JobState.canceled),)),
        ("In progress", _UNFINISHED),
    ]
