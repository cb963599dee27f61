"""The queue's rows: one per job of this session, as a list model and a painted delegate.

A batch of hundreds of jobs stays fast because nothing here is a widget: the model turns each
live :class:`~app.jobs.Job` into texts (through :mod:`app.ui.shared.messages`) and the
delegate paints a thumbnail, three lines and a progress bar. The model also keeps what the job
object does not: when the current stage began (to estimate the time left from its rate when the
backend gives no estimate), when an automatic retry is due, and the latest preview image.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QFont, QFontMetrics, QImage, QPainter, QPalette
from PySide6.QtWidgets import (
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QWidget,
)

from app.backends.base import JobState
from app.ui.shared import messages
from app.ui.shared.thumbs import ThumbnailLoader

if TYPE_CHECKING:
    from app.jobs import Job, JobEvent

__all__ = ["QueueDelegate", "QueueModel", "QueueRole"]

_AnyIndex = QModelIndex | QPersistentModelIndex


class QueueRole(enum.IntEnum):
    JobId = Qt.ItemDataRole.UserRole + 1
    State = enum.auto()  # JobState
    StateText = enum.auto()
    ProgressText = enum.auto()
    Fraction = enum.auto()  # float in 0..1, or None when the backend gives no count
    TimeText = enum.auto()
    ErrorText = enum.auto()
    HintText = enum.auto()
    BackendText = enum.auto()
    Remaining = enum.auto()  # seconds, or None


_RETRYABLE = (JobState.failed, JobState.canceled, JobState.lost)


@dataclass
class _Row:
    job: Job
    stage_key: tuple[str, str] = ("", "")
    stage_t0: float = 0.0
    stage_f0: float = 0.0
    fraction: float | None = None
    event_t: float = 0.0
    eta_s: float | None = None  # the backend's estimate at event_t
    retry_at: float | None = None  # wall clock of an announced automatic retry
    preview: bytes | None = None


class QueueModel(QAbstractListModel):
    """The session's jobs in submission order. ``clock`` is monotonic seconds (tests pass a
    fake one to check the time-left estimate)."""

    def __init__(
        self,
        thumbs: ThumbnailLoader,
        *,
        thumb_size: int = 48,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self._rows: list[_Row] = []
        self._index: dict[str, int] = {}
        self._thumbs = thumbs
        self.thumb_size = thumb_size
        self._clock = clock
        self._wall = wall
        thumbs.ready.connect(self._thumb_changed)
        thumbs.failed.connect(self._thumb_changed)

    # --- rows ---------------------------------------------------------------------------------
    def rowCount(self, parent: _AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def job(self, row: int) -> Job:
        return self._rows[row].job

    def jobs(self) -> list[Job]:
        return [r.job for r in self._rows]

    def row_of(self, job_id: str) -> int | None:
        return self._index.get(job_id)

    def preview_of(self, job_id: str) -> bytes | None:
        row = self._index.get(job_id)
        return None if row is None else self._rows[row].preview

    def update(self, event: JobEvent) -> int:
        """Take one event: create the job's row or refresh it. Returns the row."""
        job = event.job
        now = self._clock()
        row_no = self._index.get(job.id)
        if row_no is None:
            row_no = len(self._rows)
            self.beginInsertRows(QModelIndex(), row_no, row_no)
            self._rows.append(_Row(job, stage_t0=now, event_t=now))
            self._index[job.id] = row_no
            self.endInsertRows()
        row = self._rows[row_no]
        row.job = job  # a retry keeps the id; the controller may hand the same or a new object
        self._track(row, event, now)
        index = self.index(row_no)
        self.dataChanged.emit(index, index)
        return row_no

    def _track(self, row: _Row, event: JobEvent, now: float) -> None:
        job = row.job
        key = (event.stage, messages.pass_label(job.message))
        fraction = event.done / event.total if event.total else None
        restarted = fraction is not None and row.fraction is not None and fraction < row.fraction
        if key != row.stage_key or restarted:
            row.stage_key = key
            row.stage_t0 = now
            row.stage_f0 = fraction or 0.0
        row.fraction = fraction
        row.event_t = now
        row.eta_s = job.eta_s if event.stage else None
        delay = messages.retry_delay(event.message) if event.state == JobState.queued else None
        row.retry_at = None if delay is None else self._wall() + delay
        if event.preview_png:
            row.preview = event.preview_png
        if event.state.terminal:
            row.preview = None  # the output itself is what to look at now

    def remove_finished(self) -> list[str]:
        """Drop every job that has ended (it stays in the history). Returns their ids."""
        keep = [r for r in self._rows if not r.job.state.terminal]
        gone = [r.job.id for r in self._rows if r.job.state.terminal]
        if gone:
            self.beginResetModel()
            self._rows = keep
            self._index = {r.job.id: i for i, r in enumerate(keep)}
            self.endResetModel()
        return gone

    def tick(self) -> bool:
        """Refresh the rows whose clock is running; returns whether any is."""
        active = [i for i, r in enumerate(self._rows) if not r.job.state.terminal]
        if active:
            self.dataChanged.emit(self.index(active[0]), self.index(active[-1]))
        return bool(active)

    def _thumb_changed(self, path: str, *_: Any) -> None:
        for i, r in enumerate(self._rows):
            if str(r.job.input) == path:
                index = self.index(i)
                self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    # --- texts --------------------------------------------------------------------------------
    def remaining(self, row: _Row) -> float | None:
        job = row.job
        if job.state.terminal or job.state == JobState.submit_unknown:
            return None
        now = self._clock()
        if row.eta_s is not None:
            return max(0.0, row.eta_s - (now - row.event_t))
        if row.fraction is None:
            return None
        return messages.estimate_remaining(now - row.stage_t0, row.stage_f0, row.fraction)

    def time_text(self, row: _Row) -> str:
        job = row.job
        elapsed = job.elapsed
        if job.state == JobState.succeeded:
            return f"took {messages.duration_text(elapsed)}" if elapsed is not None else ""
        if job.state.terminal or elapsed is None or job.state == JobState.submit_unknown:
            return ""
        left = messages.eta_text(self.remaining(row))
        return " · ".join(t for t in (messages.duration_text(elapsed), left) if t)

    @staticmethod
    def error_text(job: Job) -> str:
        if job.state in (JobState.failed, JobState.lost, JobState.submit_unknown):
            return job.error.message if job.error is not None else job.message
        if job.state == JobState.canceled and job.message not in ("", "canceled"):
            return job.message  # e.g. "Stopped watching. Segmind has no way to cancel a job…"
        return ""

    def hint_text(self, row: _Row) -> str:
        job = row.job
        if row.retry_at is not None and job.state == JobState.queued:
            return messages.error_hint("rate_limited", retry_at=row.retry_at)
        if job.state in (JobState.failed, JobState.lost, JobState.submit_unknown):
            kind = job.error.kind if job.error is not None else None
            if job.state == JobState.submit_unknown:
                kind = "submit_unknown"
            return messages.error_hint(kind, backend=job.backend)
        return ""

    def data(self, index: _AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        job = row.job
        if role == Qt.ItemDataRole.DisplayRole:
            return job.input.name
        if role == Qt.ItemDataRole.DecorationRole:
            return self._thumbs.request(str(job.input), self.thumb_size)
        if role == QueueRole.JobId:
            return job.id
        if role == QueueRole.State:
            return job.state
        if role == QueueRole.StateText:
            return messages.state_text(job)
        if role == QueueRole.ProgressText:
            return messages.progress_text(job)
        if role == QueueRole.Fraction:
            return None if job.state.terminal else job.fraction
        if role == QueueRole.TimeText:
            return self.time_text(row)
        if role == QueueRole.Remaining:
            return self.remaining(row)
        if role == QueueRole.ErrorText:
            return self.error_text(job)
        if role == QueueRole.HintText:
            return self.hint_text(row)
        if role == QueueRole.BackendText:
            return messages.backend_model_text(job.backend, job.model)
        if role in (Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.AccessibleTextRole):
            parts = [
                job.input.name,
                messages.backend_model_text(job.backend, job.model),
                messages.state_text(job),
                messages.progress_text(job),
                self.time_text(row),
                self.error_text(job),
                self.hint_text(row),
            ]
            return "\n".join(p for p in parts if p)
        return None


def _data(index: _AnyIndex, role: int) -> Any:
    """The model's data, asked of the Python model itself: PySide6 6.12.0's
    ``QModelIndex.data`` releases a reference it does not own when the answer is None, which
    crashes the interpreter after a few thousand paints."""
    model = index.model()
    return model.data(index, role) if model is not None else None


class QueueDelegate(QStyledItemDelegate):
    """Paints a job row: thumbnail; name and backend; state and counts; bar and times (or the
    error). Colours come from the palette so light and dark themes both read well."""

    PAD = 6

    def __init__(self, thumb_size: int = 48, parent: Any = None) -> None:
        super().__init__(parent)
        self.thumb_size = thumb_size

    def sizeHint(self, option: QStyleOptionViewItem, index: _AnyIndex) -> QSize:
        line = QFontMetrics(option.font).height()
        return QSize(320, max(self.thumb_size, 3 * line + 4) + 2 * self.PAD)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _AnyIndex) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        widget: QWidget | None = opt.widget
        style = widget.style() if widget is not None else None
        painter.save()
        if style is not None:
            style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, opt, painter, widget)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        group = (
            QPalette.ColorGroup.Active
            if opt.state & QStyle.StateFlag.State_Active
            else QPalette.ColorGroup.Inactive
        )
        pal = opt.palette
        text_role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        text = pal.color(group, text_role)
        dim = text if selected else pal.color(group, QPalette.ColorRole.PlaceholderText)
        rect = opt.rect.adjusted(self.PAD, self.PAD, -self.PAD, -self.PAD)
        size = self.thumb_size

        thumb = QRect(rect.left(), rect.top() + (rect.height() - size) // 2, size, size)
        image = _data(index, Qt.ItemDataRole.DecorationRole)
        if isinstance(image, QImage) and not image.isNull():
            scaled = image.size().scaled(thumb.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, scaled.width(), scaled.height())
            target.moveCenter(thumb.center())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(target, image)
        else:
            painter.fillRect(thumb, pal.color(group, QPalette.ColorRole.AlternateBase))

        fm = QFontMetrics(opt.font)
        line = fm.height()
        x = thumb.right() + 1 + self.PAD
        width = rect.right() - x
        top = rect.top() + max(0, (rect.height() - 3 * line - 4) // 2)

        backend = str(_data(index, QueueRole.BackendText) or "")
        backend_w = min(fm.horizontalAdvance(backend) + 4, width // 2)
        bold = QFont(opt.font)
        bold.setBold(True)
        painter.setFont(bold)
        painter.setPen(text)
        name_rect = QRect(x, top, width - backend_w - self.PAD, line)
        name = QFontMetrics(bold).elidedText(
            str(_data(index, Qt.ItemDataRole.DisplayRole) or ""),
            Qt.TextElideMode.ElideMiddle,
            name_rect.width(),
        )
        painter.drawText(
            name_rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, name
        )
        painter.setFont(opt.font)
        painter.setPen(dim)
        painter.drawText(
            QRect(rect.right() - backend_w, top, backend_w, line),
            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
            fm.elidedText(backend, Qt.TextElideMode.ElideRight, backend_w),
        )

        state = str(_data(index, QueueRole.StateText) or "")
        progress = str(_data(index, QueueRole.ProgressText) or "")
        second = f"{state} · {progress}" if progress else state
        painter.setPen(text)
        painter.drawText(
            QRect(x, top + line + 2, width, line),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            fm.elidedText(second, Qt.TextElideMode.ElideRight, width),
        )

        third = QRect(x, top + 2 * line + 4, width, line)
        error = str(_data(index, QueueRole.ErrorText) or "")
        if error:
            self._paint_error(painter, third, error, fm, text, style, widget)
        else:
            self._paint_progress(painter, third, index, fm, dim, opt, style, widget)
        painter.restore()

    @staticmethod
    def _paint_error(painter, rect, error, fm, colour, style, widget) -> None:
        x = rect.left()
        if style is not None:
            icon = style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning, None, widget)
            side = rect.height()
            icon.paint(painter, QRect(x, rect.top(), side, side))
            x += side + 4
        painter.setPen(colour)
        painter.drawText(
            QRect(x, rect.top(), rect.right() - x, rect.height()),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            fm.elidedText(error.replace("\n", " "), Qt.TextElideMode.ElideRight, rect.right() - x),
        )

    @staticmethod
    def _paint_progress(painter, rect, index, fm, colour, opt, style, widget) -> None:
        times = str(_data(index, QueueRole.TimeText) or "")
        times_w = fm.horizontalAdvance(times)
        painter.setPen(colour)
        painter.drawText(rect, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, times)
        fraction = _data(index, QueueRole.Fraction)
        state = _data(index, QueueRole.State)
        if style is None or state is None or JobState(state).terminal:
            return
        if fraction is None and state != JobState.running:
            return  # waiting: a bar would only say "nothing yet"
        bar = QStyleOptionProgressBar()
        bar.rect = QRect(
            rect.left(), rect.center().y() - 3, max(40, rect.width() - times_w - 12), 7
        )
        bar.palette = opt.palette
        bar.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal
        bar.minimum, bar.maximum = 0, 1000
        bar.progress = int(1000 * fraction) if fraction is not None else 0
        bar.textVisible = False
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, widget)


def retryable(state: JobState) -> bool:
    return state in _RETRYABLE
