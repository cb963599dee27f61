"""What keeps the history model filled: background queries, pages, and live rows.

The panel states what it wants (a :class:`~app.ui.history.model.Filter`) and this feed does the
rest: it queries in the thread pool, drops answers that a newer request replaced (a person
typing a search sends several), appends pages as the view scrolls, and lays the live records
of running jobs over what the database says, because the controller persists only state
changes while a job's progress moves on.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from app.store.history import HistoryStore, RunRecord
from app.ui.history.model import Filter, HistoryModel, Loader, query_runs

__all__ = ["PAGE", "HistoryFeed"]

PAGE = 500


class HistoryFeed(QObject):
    """Fills ``model`` from ``store`` for the current filter."""

    applied = Signal()  # a refresh or a further page is in the model now
    failed = Signal(str)  # the query failed; the message says why

    def __init__(self, store: HistoryStore, model: HistoryModel, parent: QObject | None = None):
        super().__init__(parent)
        self.store = store
        self.model = model
        model.fetch_more = self.load_more
        self.filter = Filter()
        self._loader = Loader(self)
        self._loader.done.connect(self._loaded)
        self._refresh_ticket = 0  # the refresh whose answer counts; older ones are dropped
        self._more_ticket = 0
        self._seq = 0  # counts upserts, to know which live rows a loaded page predates
        self._refresh_seq = 0
        self._live: dict[str, tuple[int, RunRecord]] = {}
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)

    @property
    def loading(self) -> bool:
        return self._refresh_ticket != 0 or self._more_ticket != 0

    def set_filter(self, where: Filter) -> bool:
        """Show the runs ``where`` selects; returns whether that changed anything."""
        if where == self.filter:
            return False
        self.filter = where
        self.refresh()
        return True

    def refresh(self) -> None:
        where = self.filter
        self._refresh_seq = self._seq
        self._more_ticket = 0  # a page of the old list would not fit the new one
        self._refresh_ticket = self._loader.start(
            lambda: query_runs(self.store, where, limit=PAGE, offset=0)
        )

    def load_more(self) -> None:
        if self._more_ticket or self._refresh_ticket:
            return
        where, offset = self.filter, self.model.rowCount()
        self._more_ticket = self._loader.start(
            lambda: query_runs(self.store, where, limit=PAGE, offset=offset)
        )

    def upsert(self, record: RunRecord) -> None:
        self._seq += 1
        self._live[record.id] = (self._seq, record)
        self.model.upsert(record, keep=self.filter.matches(record))
        if not record.terminal and not self._clock.isActive():
            self._clock.start()

    def forget(self, run_ids: list[str]) -> None:
        """Runs deleted from the store: out of the model and the live overlay."""
        for run_id in run_ids:
            self._live.pop(run_id, None)
        self.model.remove_ids(run_ids)

    # --- answers ------------------------------------------------------------------------------
    def _overlay(self, records: list[RunRecord], *, complete: bool) -> list[RunRecord]:
        """Live records win over loaded ones; a live run missing from the page joins it when
        its date falls within the page."""
        out = [self._live[r.id][1] if r.id in self._live else r for r in records]
        seen = {r.id for r in out}
        oldest = records[-1].created if records and not complete else None
        extra = [
            rec
            for _, rec in self._live.values()
            if rec.id not in seen
            and self.filter.matches(rec)
            and (oldest is None or rec.created >= oldest)
        ]
        if extra:
            out = sorted(out + extra, key=lambda r: r.created, reverse=True)
        return [r for r in out if self.filter.matches(r)]

    def _loaded(self, ticket: int, records: list[RunRecord] | None, error: str) -> None:
        if ticket == self._refresh_ticket:
            self._refresh_ticket = 0
            if records is None:
                self.failed.emit(error)
                return
            self.model.has_more = len(records) >= PAGE
            self.model.set_records(self._overlay(records, complete=not self.model.has_more))
            # A live row that ended before this query started is in the database now.
            self._live = {
                k: v for k, v in self._live.items() if v[0] > self._refresh_seq or not v[1].terminal
            }
            if any(not r.terminal for r in self.model.records()):
                self._clock.start()
        elif ticket == self._more_ticket:
            self._more_ticket = 0
            if records is None:
                self.failed.emit(error)
                return
            self.model.has_more = len(records) >= PAGE
            self.model.append_records(self._overlay(records, complete=True))
        else:
            return  # an answer to a request that a newer one replaced
        self.applied.emit()

    def _tick(self) -> None:
        """Running jobs' durations count up once a second."""
        if any(not r.terminal for r in self.model.records()):
            self.model.tick()
        else:
            self._clock.stop()
