"""The history panel: every run, searchable, with the actions that make history useful.

Open a result in the compare view, compare two runs, run one again with the same seed or a new
one, branch the parameters from it, find its file, copy its seed, delete it. The panel reads the
run history (:class:`~app.store.history.HistoryStore`) off the GUI thread and changes nothing
but the rows a person deletes; everything else is a signal the window connects. Dialogs and the
desktop calls are small methods, so tests replace them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import (
    QItemSelection,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolBar,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from app.backends.base import JobState
from app.store.history import HistoryStore, RunRecord
from app.ui.history.feed import PAGE, HistoryFeed
from app.ui.history.model import Column, Filter, HistoryModel, state_choices
from app.ui.shared import desktop, messages
from app.ui.shared.thumbs import ThumbnailLoader

__all__ = ["PAGE", "HistoryPanel"]

_THUMB = 48
_SEARCH_DELAY_MS = 200
_SELECTABLE = (
    Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.TextSelectableByKeyboard
)


def _exists(path: str) -> bool:
    try:
        return bool(path) and Path(path).is_file()
    except OSError:
        return False


class _MiddleElide(QStyledItemDelegate):
    """Paths lose their middle, not their file name, when the column is narrow."""

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideMiddle


class HistoryPanel(QWidget):
    """The run history. Call :meth:`upsert` with ``job.to_record()`` on every event of a
    persisted job; :meth:`refresh` after anything else changed the store."""

    open_requested = Signal(object)  # RunRecord
    compare_requested = Signal(object, object)  # the older run, the newer run
    rerun_requested = Signal(object, bool)  # RunRecord, same seed
    branch_requested = Signal(object)  # RunRecord: load its parameters into the panel
    selected = Signal(object)  # RunRecord
    deleted = Signal(list)  # ids of the runs deleted here
    refreshed = Signal()  # a refresh (or a further page) has been applied

    def __init__(
        self, store: HistoryStore, thumbs: ThumbnailLoader, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setAccessibleName("Run history")
        self.store = store
        self.thumbs = thumbs
        ratio = max(1.0, self.devicePixelRatioF())
        self.model = HistoryModel(thumbs, thumb_size=round(_THUMB * ratio), parent=self)
        self.feed = HistoryFeed(store, self.model, self)
        self.feed.applied.connect(self._applied)
        self.feed.failed.connect(self._show_status)
        self._kept: tuple[set[str], str | None] = (set(), None)
        self._build_actions()
        self._build_ui()
        # After the view's own connections, which clear the selection on a reset.
        self.model.modelAboutToBeReset.connect(self._remember_selection)
        self.model.modelReset.connect(self._restore_selection)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(_SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self._filters_changed)
        self._update_actions()
        self.refresh()

    # --- building -----------------------------------------------------------------------------
    def _action(
        self,
        text: str,
        tip: str,
        slot: Callable[[], None],
        key: str = "",
        scope: QWidget | None = None,
    ) -> QAction:
        action = QAction(text, self)
        action.setStatusTip(tip)
        action.setToolTip(tip)
        if key:
            sequence = QKeySequence(key)
            action.setShortcut(sequence)
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            native = sequence.toString(QKeySequence.SequenceFormat.NativeText)
            action.setToolTip(f"{tip} ({native})")
        action.triggered.connect(slot)
        (scope or self).addAction(action)
        return action

    def _build_actions(self) -> None:
        # Return and Delete belong to the table (scoped to it) so they keep their usual
        # meaning in the search field.
        self.view = QTreeView(self)
        self.open_action = self._action(
            "Open", "Show this run in the compare view", self._open, "Return", self.view
        )
        self.compare_action = self._action(
            "Compare two", "Compare the two selected runs side by side", self._compare
        )
        self.rerun_same_action = self._action(
            "Re-run, same seed",
            "Run the selected runs again with the same parameters and seed",
            lambda: self._rerun(True),
            "Ctrl+Shift+R",
        )
        self.rerun_new_action = self._action(
            "Re-run, new seed",
            "Run the selected runs again with the same parameters and a new random seed",
            lambda: self._rerun(False),
        )
        self.branch_action = self._action(
            "Branch from here",
            "Load this run's parameters into the settings panel to change and run them",
            self._branch,
        )
        self.reveal_action = self._action(
            "Show in file manager", "Show the output file in the file manager", self._reveal
        )
        self.copy_seed_action = self._action(
            "Copy seed", "Copy the seed of the selected run to the clipboard", self._copy_seed
        )
        self.delete_action = self._action(
            "Delete…",
            "Delete the selected runs from the history (and, if you choose, their output files)",
            self._delete,
            "Delete",
            self.view,
        )

    def _build_ui(self) -> None:
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search: file, prompt, seed, model, backend")
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName("Search the history")
        self.search.setToolTip(
            "Search the run history by file name, prompt, seed, model or backend"
        )
        self.search.textChanged.connect(lambda _text: self._search_timer.start())
        self.search.returnPressed.connect(self._filters_changed)

        self.state_filter = QComboBox(self)
        self._state_choices = state_choices()
        for label, _states in self._state_choices:
            self.state_filter.addItem(label)
        self.state_filter.setAccessibleName("Show runs in state")
        self.state_filter.setToolTip("Show only the runs that succeeded, failed, …")
        self.state_filter.currentIndexChanged.connect(self._filters_changed)

        self.backend_filter = QComboBox(self)
        from app.backends.capabilities import backends

        self._backend_choices = [("All backends", "")] + [
            (info.label[:1].upper() + info.label[1:], info.name) for info in backends()
        ]
        for label, _name in self._backend_choices:
            self.backend_filter.addItem(label)
        self.backend_filter.setAccessibleName("Show runs of backend")
        self.backend_filter.setToolTip("Show only the runs of one backend")
        self.backend_filter.currentIndexChanged.connect(self._filters_changed)

        view = self.view
        view.setModel(self.model)
        view.setRootIsDecorated(False)
        view.setUniformRowHeights(True)  # lets the view skip measuring thousands of rows
        view.setAllColumnsShowFocus(True)
        view.setAlternatingRowColors(True)
        view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        view.setIconSize(QSize(_THUMB, _THUMB))
        view.setTextElideMode(Qt.TextElideMode.ElideRight)
        view.setItemDelegateForColumn(Column.Output, _MiddleElide(view))  # keep the file name
        view.setAccessibleName("Runs")
        view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        view.customContextMenuRequested.connect(self._context_menu)
        view.doubleClicked.connect(lambda _index: self._open())
        view.selectionModel().selectionChanged.connect(self._selection_changed)
        view.selectionModel().currentRowChanged.connect(self._current_changed)
        header = view.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        # What a person looks for first comes first, sized for a side dock: which image, which
        # seed, how it was made, how long it took; the rest is a scroll away.
        order_and_width = (
            (Column.Image, 170),
            (Column.Seed, 96),
            (Column.Settings, 150),
            (Column.Duration, 70),
            (Column.State, 120),
            (Column.Backend, 130),
            (Column.Cost, 80),
            (Column.When, 130),
        )
        for position, (column, width) in enumerate(order_and_width):
            header.moveSection(header.visualIndex(column), position)
            header.resizeSection(column, width)

        self.details = QLabel(self)
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(_SELECTABLE)
        self.details.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.details.setAccessibleName("Selected run")
        self.details.setTextFormat(Qt.TextFormat.PlainText)

        self.details.setContentsMargins(6, 4, 6, 2)
        self.status = QLabel(self)
        self.status.setAccessibleName("History status")
        self.status.setContentsMargins(6, 0, 6, 4)

        self.toolbar = QToolBar(self)
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.toolbar.setAccessibleName("Run actions")
        for action in (
            self.open_action,
            self.compare_action,
            self.rerun_same_action,
            self.rerun_new_action,
            self.branch_action,
            self.reveal_action,
            self.copy_seed_action,
            self.delete_action,
        ):
            self.toolbar.addAction(action)
            button = self.toolbar.widgetForAction(action)
            if button is not None:
                button.setAccessibleName(action.text().rstrip("…"))
                button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        filters = QHBoxLayout()
        filters.addWidget(self.search, 1)
        filters.addWidget(self.state_filter)
        filters.addWidget(self.backend_filter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(filters)
        layout.addWidget(self.toolbar)
        layout.addWidget(view, 1)
        layout.addWidget(self.details)
        layout.addWidget(self.status)

    # --- public -------------------------------------------------------------------------------
    def focus_search(self) -> None:
        """Ctrl+F (the window's shortcut) lands here."""
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    @property
    def loading(self) -> bool:
        return self.feed.loading

    def refresh(self) -> None:
        """Reload the first page for the current filter, in the background."""
        self.feed.refresh()
        self._show_status()

    def upsert(self, record: RunRecord) -> None:
        """One run changed (the window passes ``job.to_record()`` on each job event)."""
        self.feed.upsert(record)
        current = self._current_record()
        if current is not None and current.id == record.id:
            self._show_details()
            self._update_actions()
        self._show_status()

    def selected_records(self) -> list[RunRecord]:
        rows = sorted(i.row() for i in self.view.selectionModel().selectedRows())
        return [self.model.record(r) for r in rows]

    def select_run(self, run_id: str) -> bool:
        row = self.model.row_of(run_id)
        if row is None:
            return False
        index = self.model.index(row, 0)
        self.view.setCurrentIndex(index)
        self.view.scrollTo(index)
        return True

    # --- loading ------------------------------------------------------------------------------
    def _filters_changed(self, *_: object) -> None:
        self._search_timer.stop()
        where = Filter(
            states=self._state_choices[max(0, self.state_filter.currentIndex())][1],
            backend=self._backend_choices[max(0, self.backend_filter.currentIndex())][1],
            search=self.search.text().strip(),
        )
        if self.feed.set_filter(where):
            self._show_status()

    def _applied(self) -> None:
        self._update_actions()
        self._show_details()
        self._show_status()
        self.refreshed.emit()

    def _remember_selection(self) -> None:
        current = self._current_record()
        self._kept = ({r.id for r in self.selected_records()}, current.id if current else None)

    def _restore_selection(self) -> None:
        ids, current = self._kept
        selection = self.view.selectionModel()
        if current is not None and (row := self.model.row_of(current)) is not None:
            selection.setCurrentIndex(self.model.index(row, 0), selection.SelectionFlag.NoUpdate)
        for run_id in ids:
            if (row := self.model.row_of(run_id)) is not None:
                selection.select(
                    self.model.index(row, 0),
                    selection.SelectionFlag.Select | selection.SelectionFlag.Rows,
                )

    # --- state of the controls ----------------------------------------------------------------
    def _current_record(self) -> RunRecord | None:
        index = self.view.currentIndex()
        if index.isValid() and self.view.selectionModel().isRowSelected(index.row()):
            return self.model.record(index.row())
        records = self.selected_records()
        return records[0] if records else None

    def _selection_changed(self, *_: QItemSelection) -> None:
        self._update_actions()
        self._show_details()

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.selected.emit(self.model.record(current.row()))

    def _update_actions(self) -> None:
        records = self.selected_records()
        one = len(records) == 1
        # Only one or two rows can be opened or compared: no need to look at a thousand files.
        done = [
            r
            for r in (records if len(records) <= 2 else [])
            if r.state == JobState.succeeded and _exists(r.output)
        ]
        self.open_action.setEnabled(one and len(done) == 1)
        self.compare_action.setEnabled(len(records) == 2 and len(done) == 2)
        for action in (self.rerun_same_action, self.rerun_new_action):
            action.setEnabled(bool(records))
        self.branch_action.setEnabled(one)
        self.reveal_action.setEnabled(one)
        self.copy_seed_action.setEnabled(any(messages.run_seed(r) is not None for r in records))
        self.delete_action.setEnabled(bool(records) and all(r.terminal for r in records))
        if records and not all(r.terminal for r in records):
            self.delete_action.setToolTip("A run in progress cannot be deleted: cancel it first")
        else:
            self.delete_action.setToolTip(
                "Delete the selected runs from the history (and, if you choose, their output "
                "files) (Delete)"
            )

    def _show_details(self) -> None:
        record = self._current_record()
        self.details.setVisible(record is not None)
        if record is not None:
            self.details.setText(messages.run_details(record))

    def _show_status(self, error: str = "") -> None:
        count = self.model.rowCount()
        if error:
            text = error
        elif self.feed.loading and not count:
            text = "Loading the history…"
        elif count == 0 and (
            self.feed.filter.search or self.feed.filter.states or self.feed.filter.backend
        ):
            text = (
                "No runs match."
                if not self.feed.filter.search
                else (f"No runs match “{self.feed.filter.search}”.")
            )
        elif count == 0:
            text = "No runs yet. Every upscale you run is kept here, with its seed and settings."
        else:
            more = "+" if self.model.has_more else ""
            text = f"{count:,}{more} run{'s' if count != 1 or more else ''}"
        self.status.setText(text)

    # --- actions ------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.open_action.isEnabled():
            self.open_requested.emit(self.selected_records()[0])

    def _compare(self) -> None:
        if self.compare_action.isEnabled():
            older, newer = sorted(self.selected_records(), key=lambda r: r.created)
            self.compare_requested.emit(older, newer)

    def _rerun(self, same_seed: bool) -> None:
        for record in self.selected_records():
            self.rerun_requested.emit(record, same_seed)

    def _branch(self) -> None:
        records = self.selected_records()
        if len(records) == 1:
            self.branch_requested.emit(records[0])

    def _reveal(self) -> None:
        records = self.selected_records()
        if len(records) == 1:
            record = records[0]
            self.show_in_file_manager(record.output if _exists(record.output) else record.input)

    def _copy_seed(self) -> None:
        seeds = [messages.run_seed(r) for r in self.selected_records()]
        text = "\n".join(str(s) for s in seeds if s is not None)
        if text:
            self.copy_text(text)

    def _delete(self) -> None:
        records = [r for r in self.selected_records() if r.terminal]
        if not records or not self.delete_action.isEnabled():
            return
        proceed, with_files = self.confirm_delete(records)
        if not proceed:
            return
        problems: list[str] = []
        gone: list[str] = []
        for record in records:
            self.store.delete(record.id)
            gone.append(record.id)
            if with_files and record.output and record.output != record.input:
                try:
                    Path(record.output).unlink(missing_ok=True)
                except OSError as exc:
                    problems.append(f"{record.output}: {exc.strerror or exc}")
                self.thumbs.invalidate(record.output)
        self.feed.forget(gone)
        self.deleted.emit(gone)
        self._update_actions()
        self._show_details()
        self._show_status()
        if problems:
            self.warn("Some output files could not be deleted:\n" + "\n".join(problems))

    def _context_menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        if index.isValid() and not self.view.selectionModel().isRowSelected(index.row()):
            self.view.setCurrentIndex(index)
        menu = QMenu(self)
        for action in (
            self.open_action,
            self.compare_action,
            None,
            self.rerun_same_action,
            self.rerun_new_action,
            self.branch_action,
            None,
            self.reveal_action,
            self.copy_seed_action,
            None,
            self.delete_action,
        ):
            if action is None:
                menu.addSeparator()
            else:
                menu.addAction(action)
        menu.exec(self.view.viewport().mapToGlobal(pos))

    # --- what tests replace -------------------------------------------------------------------
    def confirm_delete(self, records: list[RunRecord]) -> tuple[bool, bool]:
        """Ask before deleting; returns (delete, also delete the output files)."""
        many = len(records) > 1
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Delete runs" if many else "Delete run")
        box.setText(
            f"Delete {len(records)} runs from the history?"
            if many
            else f"Delete the run of {Path(records[0].input).name} from the history?"
        )
        box.setInformativeText("The input images are never touched.")
        check = QCheckBox("Also delete the output files" if many else "Also delete the output file")
        check.setToolTip("Remove the upscaled images from the disk too")
        box.setCheckBox(check)
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel)
        box.button(QMessageBox.StandardButton.Yes).setText("Delete")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        answer = box.exec()
        return answer == QMessageBox.StandardButton.Yes, check.isChecked()

    def show_in_file_manager(self, path: str) -> None:
        desktop.show_in_file_manager(path, self)

    def copy_text(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)

    def warn(self, text: str) -> None:
        QMessageBox.warning(self, "Clarifier", text)
