"""The two pictures of the compare view (plus a live preview) and their loading.

:class:`Sources` owns the before and after slots: what was asked for, what is ready to draw (a
pyramid, or a small stand-in while it is built), the picture's size as soon as its header is
read, and the worker task that loads it. Each request gets a new generation number, so results
of a replaced request are dropped and its task is told to stop. The view only listens to
:attr:`Sources.changed` and draws what :meth:`Sources.before_content` and
:meth:`Sources.after_content` give it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QImage

from app.ui.compare.loader import LoadRelay, LoadTask
from app.ui.compare.painting import Content
from app.ui.compare.pyramid import Pyramid


@dataclass
class Slot:
    """One of the two pictures: what was asked for and what is ready to draw."""

    label: str
    path: str | None = None
    stamp: tuple[int, int] | None = None  # (mtime_ns, size): reload only when the file changed
    pyramid: Pyramid | None = None
    quick: QImage | None = None  # a small stand-in while the pyramid is built
    size: tuple[int, int] | None = None  # the picture's size, from its header
    generation: int = 0
    task: LoadTask | None = None
    progress: float = -1.0

    @property
    def loading(self) -> bool:
        return self.task is not None

    def content(self) -> Content | None:
        return self.pyramid if self.pyramid is not None else self.quick

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel.set()
            self.task = None

    def reset(self) -> None:
        self.cancel()
        self.generation += 1
        self.path = self.stamp = self.pyramid = self.quick = self.size = None
        self.progress = -1.0


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _preview_image(data: object) -> QImage | None:
    if isinstance(data, QImage):
        return None if data.isNull() else data
    if isinstance(data, bytes | bytearray | memoryview):
        image = QImage.fromData(bytes(data))  # a few hundred px: about a millisecond
        return None if image.isNull() else image
    return None


class Sources(QObject):
    """Before, after and preview, with their loads. Signals mirror the view's public ones."""

    changed = Signal(bool)  # the scene or loading state may differ; True: presence changed
    progressed = Signal()
    loading_changed = Signal(bool)
    images_ready = Signal()
    load_failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.before = Slot("Input")
        self.after = Slot("Output")
        self.preview: QImage | None = None
        self.preview_label = "Preview"
        self.preview_size: tuple[int, int] | None = None
        self.loading = False
        self._relay = LoadRelay(self)
        self._relay.sized.connect(self._on_sized)
        self._relay.preview.connect(self._on_preview)
        self._relay.progress.connect(self._on_progress)
        self._relay.done.connect(self._on_done)
        self._relay.failed.connect(self._on_failed)
        # Abandon loads in flight when this goes (the lambda holds the slots, not self).
        before, after = self.before, self.after
        self.destroyed.connect(lambda *_: (before.cancel(), after.cancel()))

    # --- requests -----------------------------------------------------------------------------

    def slot(self, key: str) -> Slot:
        return self.before if key == "before" else self.after

    def set(self, key: str, path: str | os.PathLike[str] | None, label: str) -> None:
        slot = self.slot(key)
        slot.label = label
        if path is None:
            present = slot.path is not None
            slot.reset()
            self._changed(present)
            return
        path = os.fspath(path)
        stamp = _stamp(path)
        if path == slot.path and stamp == slot.stamp and (slot.pyramid or slot.loading):
            self.changed.emit(False)  # same file, unchanged: only the label may differ
            return
        slot.reset()
        slot.path, slot.stamp = path, stamp
        slot.task = LoadTask(self._relay, key, slot.generation, path)
        QThreadPool.globalInstance().start(slot.task)
        self._changed(True)

    def set_preview(
        self, data: bytes | QImage | None, output_size: tuple[int, int] | None, label: str
    ) -> None:
        had = self.preview is not None
        self.preview = _preview_image(data)
        self.preview_label = label
        self.preview_size = output_size if self.preview is not None else None
        self._changed(had != (self.preview is not None))

    def clear(self) -> None:
        self.before.reset()
        self.after.reset()
        self.preview = self.preview_size = None
        self._changed(True)

    # --- what to draw -------------------------------------------------------------------------

    def before_content(self) -> tuple[Content | None, str]:
        return self.before.content(), self.before.label

    def after_content(self) -> tuple[Content | None, str]:
        """The live preview while there is one, else the after."""
        if self.preview is not None:
            return self.preview, self.preview_label
        return self.after.content(), self.after.label

    def has_before(self) -> bool:
        return self.before.content() is not None

    def has_after(self) -> bool:
        return self.after_content()[0] is not None

    def scene_size(self) -> tuple[int, int] | None:
        """The pixel grid both pictures are drawn on: the after's (a preview's output size),
        else the before's."""
        if self.preview is not None:
            size = self.preview_size or self.before.size or self.after.size
            return size or (self.preview.width(), self.preview.height())
        return self.after.size or self.before.size

    def loading_fraction(self) -> float:
        busy = [s.progress for s in (self.before, self.after) if s.loading]
        return -1.0 if not busy or min(busy) < 0 else sum(busy) / len(busy)

    def loading_text(self) -> str:
        names = [Path(s.path).name for s in (self.before, self.after) if s.loading and s.path]
        fraction = self.loading_fraction()
        suffix = f" {fraction:.0%}" if fraction >= 0 else ""
        return f"Loading {' and '.join(names)}…{suffix}" if names else "Loading…"

    # --- results from the workers -------------------------------------------------------------

    def _current(self, key: str, generation: int) -> Slot | None:
        slot = self.slot(key)
        return slot if slot.generation == generation and slot.task is not None else None

    def _on_sized(self, key: str, generation: int, width: int, height: int) -> None:
        if slot := self._current(key, generation):
            slot.size = (width, height)
            self._changed(False)

    def _on_preview(self, key: str, generation: int, image: QImage) -> None:
        if slot := self._current(key, generation):
            slot.quick = image
            self._changed(True)

    def _on_progress(self, key: str, generation: int, fraction: float) -> None:
        if slot := self._current(key, generation):
            slot.progress = fraction
            self.progressed.emit()

    def _on_done(self, key: str, generation: int, pyramid: Pyramid) -> None:
        if not (slot := self._current(key, generation)):
            return
        slot.task = None
        slot.pyramid, slot.quick = pyramid, None
        slot.size = (pyramid.width, pyramid.height)
        if key == "after":
            self.preview = self.preview_size = None  # the real result replaces the preview
        self._changed(True)
        if not self.loading:
            self.images_ready.emit()

    def _on_failed(self, key: str, generation: int, message: str) -> None:
        if not (slot := self._current(key, generation)):
            return
        slot.reset()
        self._changed(True)
        self.load_failed.emit(message)

    def _changed(self, presence: bool) -> None:
        loading = self.before.loading or self.after.loading
        flipped = loading != self.loading
        self.loading = loading
        self.changed.emit(presence)
        if flipped:
            self.loading_changed.emit(loading)
