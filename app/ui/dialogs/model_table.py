"""The model manager's table: one row per model file, with a progress bar while one moves.

It only shows things: the rows come from :func:`app.ui.dialogs.model_tasks.scan_models` and
the state of each row from the dialog (work in progress first, then what the scan found).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QProgressBar,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from app.ui.dialogs.model_tasks import ROLE_LABELS, ModelRow
from pipeline.models.store import human_size

__all__ = ["COLUMNS", "STATE_TEXT", "ModelTable"]

COLUMNS = ("Model", "Role", "Size", "Licence", "State", "Location")
NAME, ROLE, SIZE, LICENCE, STATE, WHERE = range(len(COLUMNS))
STATE_TEXT = {
    "bundled": "Ready (bundled)",
    "missing": "Missing",
    "verified": "Verified",
    "unverified": "Present, not verified",
    "mismatch": "Does not match",
    "queued": "Waiting to download",
    "downloading": "Downloading",
    "verifying": "Verifying",
    "removing": "Removing",
    "failed": "Failed",
}

StateOf = Callable[[str], tuple[str, str]]


class ModelTable(QTableWidget):
    """Rows of :class:`ModelRow`; ``bars`` holds the progress bar of each row that has one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.rows: list[ModelRow] = []
        self.bars: dict[str, QProgressBar] = {}
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setAccessibleName("Model files")
        self.setToolTip("The files the local engine uses; select rows to act on them")
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.setAlternatingRowColors(True)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        for column, width in ((LICENCE, 230), (STATE, 180)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(column, width)
        header.setSectionResizeMode(WHERE, QHeaderView.ResizeMode.Stretch)

    def _warning(self) -> QIcon:
        return self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)

    def index_of(self, model_id: str) -> int:
        return next((i for i, r in enumerate(self.rows) if r.id == model_id), -1)

    def cell_text(self, model_id: str, column: int) -> str:
        item = self.item(self.index_of(model_id), column)
        return item.text() if item is not None else ""

    def set_rows(self, rows: Sequence[ModelRow], state_of: StateOf) -> None:
        for index in range(self.rowCount()):
            self.removeCellWidget(index, STATE)
        self.bars.clear()
        self.rows = list(rows)
        self.setRowCount(len(self.rows))
        for index, row in enumerate(self.rows):
            name = QTableWidgetItem(row.name + ("" if not row.required else " *"))
            name.setToolTip(
                (row.entry.purpose if row.entry else "Real-ESRGAN, bundled for faithful mode")
                + ("\n* used by the default settings" if row.required else "")
            )
            role = ROLE_LABELS.get(row.role, row.role) + (" (faithful)" if row.bundled else "")
            size = QTableWidgetItem(row.size_text)
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            short = row.licence.split(" (")[0]  # the full text is in the tooltip and below
            licence = QTableWidgetItem(short + (" — non-commercial" if row.non_commercial else ""))
            tip = f"{row.licence}\n{row.entry.licence_url if row.entry else 'Real-ESRGAN'}"
            if row.non_commercial:
                licence.setIcon(self._warning())
                tip = "Non-commercial licence: not for paid work.\n" + tip
            elif not row.licence_verified:
                tip = "Licence not verified: read the model page before using it.\n" + tip
            licence.setToolTip(tip)
            where = QTableWidgetItem(
                "bundled" if row.bundled else str(row.path) if row.path else "—"
            )
            where.setToolTip(where.text())
            for column, item in (
                (NAME, name),
                (ROLE, QTableWidgetItem(role)),
                (SIZE, size),
                (LICENCE, licence),
                (WHERE, where),
            ):
                self.setItem(index, column, item)
            self.show_state(row.id, *state_of(row.id))

    def show_state(self, model_id: str, state: str, detail: str) -> None:
        index = self.index_of(model_id)
        if index < 0:
            return
        text = STATE_TEXT.get(state, state)
        item = QTableWidgetItem(f"{text}: {detail}" if state == "failed" else text)
        item.setToolTip(detail)
        if state in ("failed", "mismatch"):
            item.setIcon(self._warning())
        self.setItem(index, STATE, item)
        if state in ("downloading", "verifying"):
            bar = self.bars.get(model_id)
            if bar is None:
                bar = QProgressBar()
                bar.setAccessibleName(f"{text} {model_id}")
                bar.setToolTip(detail)
                self.bars[model_id] = bar
                self.setCellWidget(index, STATE, bar)
            if state == "verifying":
                bar.setRange(0, 0)  # app.models.verify reports no progress
                bar.setFormat("Verifying…")
        elif model_id in self.bars:
            self.removeCellWidget(index, STATE)
            del self.bars[model_id]

    def show_progress(self, model_id: str, done: int, total: int | None) -> None:
        bar = self.bars.get(model_id)
        if bar is None:
            return
        if total:
            bar.setRange(0, 1000)
            bar.setValue(min(1000, int(1000 * done / total)))
            bar.setFormat(f"%p%  {human_size(done)} of {human_size(total)}")
        else:
            bar.setRange(0, 0)  # no size known: a busy bar with the bytes so far
            bar.setFormat(human_size(done))

    def selected_rows(self) -> list[ModelRow]:
        indexes = sorted({i.row() for i in self.selectedIndexes()})
        return [self.rows[i] for i in indexes if i < len(self.rows)]

    def select_ids(self, model_ids: Sequence[str]) -> None:
        self.clearSelection()
        previous = self.selectionMode()
        self.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for index, row in enumerate(self.rows):
            if row.id in model_ids:
                self.selectRow(index)
        self.setSelectionMode(previous)
