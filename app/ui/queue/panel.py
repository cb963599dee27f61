"""The queue panel: this session's jobs, what each is doing, and what can be done about it.

Rows are painted by :class:`~app.ui.queue.model.QueueDelegate` (a batch of hundreds of images
is one model, not hundreds of widgets). Below the list, the selected job is shown in full: its
state, a live progress bar, counts, elapsed and time left, and an error in plain words that can
be selected and copied, with the next step to take. The panel decides nothing itself: every
button emits a signal the window connects to the job controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QItemSelection, QModelIndex, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFont, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QProgressBar,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.backends.base import JobState
from app.ui.queue.model import QueueDelegate, QueueModel, QueueRole, retryable
from app.ui.shared import messages
from app.ui.shared.thumbs import ThumbnailLoader

if TYPE_CHECKING:
    from app.jobs import Job, JobEvent

__all__ = ["QueuePanel"]

_THUMB = 48
_SCOPE = Qt.ShortcutContext.WidgetWithChildrenShortcut
_SELECTABLE = (
    Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.TextSelectableByKeyboard
)


class QueuePanel(QWidget):
    """This session's jobs. Feed it every :class:`~app.jobs.JobEvent` through :meth:`on_event`
    (on the GUI thread); connect its request signals to the controller."""

    cancel_requested = Signal(str)  # job id
    retry_requested = Signal(str)
    resolve_requested = Signal(str, bool)  # job id, resubmit
    preview = Signal(str, bytes)  # job id, PNG of the engine's latest canvas
    selected = Signal(str)  # job id
    open_requested = Signal(str)  # a succeeded job, to show in the compare view
    cleared = Signal(list)  # ids of the ended jobs "Clear finished" removed

    def __init__(
        self,
        thumbs: ThumbnailLoader | None = None,
        parent: QWidget | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(parent)
        self.setAccessibleName("Queue")
        self.thumbs = thumbs or ThumbnailLoader(self)
        ratio = max(1.0, self.devicePixelRatioF())  # sharp thumbnails on high-DPI screens
        self.model = QueueModel(
            self.thumbs, thumb_size=round(_THUMB * ratio), clock=clock, parent=self
        )
        self._build_actions()
        self._build_ui()
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._tick)
        self._update_actions()
        self._show_current()

    # --- building -----------------------------------------------------------------------------
    def _action(self, text: str, tip: str, slot: Callable[[], None], key: str = "") -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if key:
            sequence = QKeySequence(key)
            action.setShortcut(sequence)
            action.setShortcutContext(_SCOPE)
            native = sequence.toString(QKeySequence.SequenceFormat.NativeText)
            action.setToolTip(f"{tip} ({native})")
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.cancel_action = self._action(
            "Cancel", "Stop the selected jobs", self._cancel_selected, "Delete"
        )
        self.retry_action = self._action(
            "Retry", "Run the selected failed or canceled jobs again", self._retry_selected, "R"
        )
        self.send_again_action = self._action(
            "Send again",
            "The provider may not have received this job: send it again (it may bill twice)",
            lambda: self._resolve_selected(True),
        )
        self.went_through_action = self._action(
            "It went through",
            "The provider has this job (you checked its dashboard): close it without sending it "
            "again",
            lambda: self._resolve_selected(False),
        )
        self.open_action = self._action(
            "Open result", "Show the result in the compare view", self._open_current
        )
        self.copy_action = self._action(
            "Copy message", "Copy the job's message to the clipboard", self._copy_message
        )
        self.clear_action = self._action(
            "Clear finished",
            "Remove the jobs that have ended from this list (they stay in the history)",
            self._clear_finished,
        )

    def _button(self, action: QAction) -> QToolButton:
        button = QToolButton(self)
        button.setDefaultAction(action)
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        button.setAccessibleName(action.text())
        button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        return button

    def _label(self, name: str, *, selectable: bool = False) -> QLabel:
        label = QLabel(self)
        label.setAccessibleName(name)
        label.setWordWrap(True)
        if selectable:
            label.setTextInteractionFlags(_SELECTABLE)
            label.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        return label

    def _build_ui(self) -> None:
        self.view = QListView(self)
        self.view.setModel(self.model)
        self.view.setItemDelegate(QueueDelegate(_THUMB, self.view))
        self.view.setUniformItemSizes(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setAccessibleName("Jobs")
        self.view.setToolTip("This session's jobs; the run history keeps them all")
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.activated.connect(self._activated)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.model.rowsInserted.connect(self._rows_changed)
        self.model.modelReset.connect(self._rows_changed)

        self.empty_label = QLabel(
            "No jobs yet. Add images, then press Upscale (Ctrl+Return).", self
        )
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.setEnabled(False)  # drawn in the palette's disabled (muted) text

        self.details = QFrame(self)
        self.details.setFrameShape(QFrame.Shape.StyledPanel)
        self.title_label = self._label("Selected job", selectable=True)
        bold = QFont(self.title_label.font())
        bold.setBold(True)
        self.title_label.setFont(bold)
        self.state_label = self._label("Job state", selectable=True)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setAccessibleName("Job progress")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(10)
        self.progress_label = self._label("Job progress details", selectable=True)
        self.time_label = self._label("Elapsed and time left")
        self.error_label = self._label("Error message", selectable=True)
        self.hint_label = self._label("What to do next", selectable=True)
        detail_layout = QVBoxLayout(self.details)
        detail_layout.setContentsMargins(8, 6, 8, 6)
        detail_layout.setSpacing(3)
        for widget in (
            self.title_label,
            self.state_label,
            self.progress_bar,
            self.progress_label,
            self.time_label,
            self.error_label,
            self.hint_label,
        ):
            detail_layout.addWidget(widget)

        self.cancel_button = self._button(self.cancel_action)
        self.retry_button = self._button(self.retry_action)
        self.send_again_button = self._button(self.send_again_action)
        self.went_through_button = self._button(self.went_through_action)
        self.clear_button = self._button(self.clear_action)
        buttons = QHBoxLayout()
        buttons.setSpacing(4)
        for button in (
            self.cancel_button,
            self.retry_button,
            self.send_again_button,
            self.went_through_button,
        ):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.clear_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        self.details.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    # --- feeding ------------------------------------------------------------------------------
    def on_event(self, event: JobEvent) -> None:
        """Take one controller event (GUI thread): create or refresh the job's row."""
        row = self.model.update(event)
        if event.preview_png:
            self.preview.emit(event.job.id, bytes(event.preview_png))
        if not event.state.terminal and not self._timer.isActive():
            self._timer.start()
        if row == self.view.currentIndex().row() or event.job.id in self.selected_ids():
            self._show_current()
            self._update_actions()
        elif event.state.terminal:
            self._update_actions()  # "Clear finished" may have become possible

    def job_ids(self) -> list[str]:
        return [job.id for job in self.model.jobs()]

    def selected_ids(self) -> list[str]:
        rows = sorted(i.row() for i in self.view.selectionModel().selectedRows())
        return [self.model.job(r).id for r in rows]

    def select_job(self, job_id: str) -> bool:
        """Make ``job_id`` the current, only selected row (the window follows a new job)."""
        row = self.model.row_of(job_id)
        if row is None:
            return False
        self.view.setCurrentIndex(self.model.index(row))
        self.view.scrollTo(self.model.index(row))
        return True

    def _selected_jobs(self) -> list[Job]:
        rows = sorted(i.row() for i in self.view.selectionModel().selectedRows())
        return [self.model.job(r) for r in rows]

    def _current_job(self) -> Job | None:
        index = self.view.currentIndex()
        if index.isValid() and self.view.selectionModel().isSelected(index):
            return self.model.job(index.row())
        jobs = self._selected_jobs()
        return jobs[0] if jobs else None

    # --- acting -------------------------------------------------------------------------------
    def _cancel_selected(self) -> None:
        for job in self._selected_jobs():
            if not job.state.terminal:
                self.cancel_requested.emit(job.id)

    def _retry_selected(self) -> None:
        for job in self._selected_jobs():
            if retryable(job.state):
                self.retry_requested.emit(job.id)

    def _resolve_selected(self, resubmit: bool) -> None:
        for job in self._selected_jobs():
            if job.state == JobState.submit_unknown:
                self.resolve_requested.emit(job.id, resubmit)

    def _open_current(self) -> None:
        job = self._current_job()
        if job is not None and job.state == JobState.succeeded:
            self.open_requested.emit(job.id)

    def _activated(self, index: QModelIndex) -> None:
        if index.isValid() and self.model.job(index.row()).state == JobState.succeeded:
            self.open_requested.emit(self.model.job(index.row()).id)

    def _copy_message(self) -> None:
        job = self._current_job()
        if job is None:
            return
        text = QueueModel.error_text(job) or job.message
        if text:
            QGuiApplication.clipboard().setText(text)

    def _clear_finished(self) -> None:
        gone = self.model.remove_finished()
        if gone:
            self.cleared.emit(gone)
        self._update_actions()
        self._show_current()

    def _context_menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        if index.isValid() and not self.view.selectionModel().isSelected(index):
            self.view.setCurrentIndex(index)
        menu = QMenu(self)
        for action in (
            self.open_action,
            self.cancel_action,
            self.retry_action,
            self.send_again_action,
            self.went_through_action,
            self.copy_action,
        ):
            if action.isEnabled():
                menu.addAction(action)
        menu.addSeparator()
        menu.addAction(self.clear_action)
        menu.exec(self.view.viewport().mapToGlobal(pos))

    # --- keeping the view in step -------------------------------------------------------------
    def _rows_changed(self, *_: object) -> None:
        empty = self.model.rowCount() == 0
        self.empty_label.setVisible(empty)
        self._update_actions()

    def _selection_changed(self, *_: QItemSelection) -> None:
        self._update_actions()
        self._show_current()

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid():
            return
        job = self.model.job(current.row())
        self.selected.emit(job.id)
        shown = self.model.preview_of(job.id)
        if shown:
            self.preview.emit(job.id, shown)

    def _tick(self) -> None:
        if not self.model.tick():
            self._timer.stop()
        job = self._current_job()
        if job is not None and not job.state.terminal:
            self._show_current()

    def _update_actions(self) -> None:
        jobs = self._selected_jobs()
        self.cancel_action.setEnabled(any(not j.state.terminal for j in jobs))
        self.retry_action.setEnabled(any(retryable(j.state) for j in jobs))
        unknown = any(j.state == JobState.submit_unknown for j in jobs)
        for action in (self.send_again_action, self.went_through_action):
            action.setEnabled(unknown)
        if hasattr(self, "send_again_button"):  # a tool button ignores its action's visibility
            self.send_again_button.setVisible(unknown)
            self.went_through_button.setVisible(unknown)
        current = self._current_job()
        self.open_action.setEnabled(current is not None and current.state == JobState.succeeded)
        self.copy_action.setEnabled(
            current is not None and bool(QueueModel.error_text(current) or current.message)
        )
        self.clear_action.setEnabled(any(j.state.terminal for j in self.model.jobs()))
        watched = [
            messages.backend_label(j.backend)
            for j in jobs
            if not j.state.terminal and not messages.can_cancel_remotely(j.backend)
        ]
        tip = "Stop the selected jobs"
        if watched:
            names = ", ".join(dict.fromkeys(watched))
            tip += (
                f". {names} cannot cancel a job it has received: Clarifier stops watching, "
                "and the provider may still finish and bill it"
            )
        self.cancel_action.setToolTip(f"{tip} (Delete)")

    def _show_current(self) -> None:
        job = self._current_job()
        self.details.setVisible(job is not None)
        if job is None:
            return
        row = self.model.row_of(job.id)
        index = self.model.index(row if row is not None else 0)
        data = self.model.data
        self.title_label.setText(
            f"{job.input.name} — {messages.backend_model_text(job.backend, job.model)}"
        )
        self.state_label.setText(data(index, QueueRole.StateText))
        fraction = data(index, QueueRole.Fraction)
        running = not job.state.terminal and job.state != JobState.submit_unknown
        self.progress_bar.setVisible(running)
        if fraction is None and job.state == JobState.running:
            self.progress_bar.setRange(0, 0)  # busy: the backend gives no count
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(round(1000 * (fraction or 0.0)))
        for label, role in (
            (self.progress_label, QueueRole.ProgressText),
            (self.time_label, QueueRole.TimeText),
            (self.error_label, QueueRole.ErrorText),
            (self.hint_label, QueueRole.HintText),
        ):
            text = str(data(index, role) or "")
            label.setText(text)
            label.setVisible(bool(text))
