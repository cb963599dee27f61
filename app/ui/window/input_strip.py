"""The input strip: a row of thumbnails, one per image waiting to be upscaled (a batch)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QKeySequence, QPainter, QPixmap, QShortcut
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidget, QListWidgetItem, QWidget

from app.ui.shared.thumbs import ThumbnailLoader

__all__ = ["InputStrip"]

_THUMB = 88
_PATH = Qt.ItemDataRole.UserRole


class InputStrip(QListWidget):
    """Thumbnails of the inputs; selection picks what the compare view shows."""

    current_changed = Signal(object)  # Path | None
    count_changed = Signal(int)

    def __init__(self, thumbs: ThumbnailLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._thumbs = thumbs
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(_THUMB, _THUMB))
        self.setGridSize(QSize(_THUMB + 28, _THUMB + 30))
        self.setUniformItemSizes(True)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFixedHeight(_THUMB + 52)
        self.setAccessibleName("Input images")
        self.setToolTip("Images to upscale. Delete removes the selected ones.")
        self._placeholder = self._blank()
        thumbs.ready.connect(self._on_thumb)
        thumbs.failed.connect(self._on_failed)
        self.currentItemChanged.connect(lambda *_: self.current_changed.emit(self.current_path()))
        remove = QShortcut(QKeySequence.StandardKey.Delete, self)
        remove.setContext(Qt.ShortcutContext.WidgetShortcut)
        remove.activated.connect(self.remove_selected)

    @staticmethod
    def _blank() -> QIcon:
        pixmap = QPixmap(_THUMB, _THUMB)
        pixmap.fill(QColor(128, 128, 128, 40))
        return QIcon(pixmap)

    # --- contents -------------------------------------------------------------------------------
    def paths(self) -> list[Path]:
        return [self.item(i).data(_PATH) for i in range(self.count())]

    def current_path(self) -> Path | None:
        item = self.currentItem()
        return item.data(_PATH) if item is not None else None

    def add_paths(self, paths: Iterable[Path]) -> list[Path]:
        """Add images not already in the strip; return those added and select the first."""
        have = {p.resolve() for p in self.paths()}
        added: list[Path] = []
        for path in paths:
            key = path.resolve()
            if key in have:
                continue
            have.add(key)
            item = QListWidgetItem(self._placeholder, path.name)
            item.setData(_PATH, path)
            item.setToolTip(str(path))
            item.setSizeHint(QSize(_THUMB + 24, _THUMB + 28))
            self.addItem(item)
            added.append(path)
            image = self._thumbs.request(str(path), _THUMB * 2)
            if image is not None:
                self._set_icon(item, image)
        if added:
            self.setCurrentRow(self.count() - len(added))
            self.count_changed.emit(self.count())
        return added

    def remove_selected(self) -> None:
        for item in self.selectedItems():
            self.takeItem(self.row(item))
        self.count_changed.emit(self.count())
        if self.count() == 0:
            self.current_changed.emit(None)

    def clear_all(self) -> None:
        self.clear()
        self.count_changed.emit(0)
        self.current_changed.emit(None)

    def select_path(self, path: Path) -> None:
        for i in range(self.count()):
            if self.item(i).data(_PATH) == path:
                self.setCurrentRow(i)
                return

    # --- thumbnails -----------------------------------------------------------------------------
    def _items_for(self, path: str) -> list[QListWidgetItem]:
        return [self.item(i) for i in range(self.count()) if str(self.item(i).data(_PATH)) == path]

    def _set_icon(self, item: QListWidgetItem, image: QImage) -> None:
        scaled = image.scaled(
            _THUMB,
            _THUMB,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        canvas = QPixmap(_THUMB, _THUMB)
        canvas.fill(Qt.GlobalColor.transparent)
        with QPainter(canvas) as painter:
            painter.drawImage(
                (_THUMB - scaled.width()) // 2, (_THUMB - scaled.height()) // 2, scaled
            )
        item.setIcon(QIcon(canvas))

    def _on_thumb(self, path: str, image: QImage) -> None:
        for item in self._items_for(path):
            self._set_icon(item, image)

    def _on_failed(self, path: str, message: str) -> None:
        for item in self._items_for(path):
            item.setText(f"⚠ {Path(path).name}")
            item.setToolTip(f"{path}\n{message}")
