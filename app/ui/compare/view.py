"""The compare view widget: before/after slider, side by side, toggle, or a single picture.

See :mod:`app.ui.compare` for the public API. Everything heavy (decoding, pyramid building)
happens in :mod:`app.ui.compare.loader`'s worker tasks; painting reads only the visible tiles of
one pyramid level (:mod:`app.ui.compare.painting`), and the zoom/pan arithmetic lives in
:mod:`app.ui.compare.viewport`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFocusEvent,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QWidget

from app.ui.compare import interaction, painting
from app.ui.compare.painting import Content
from app.ui.compare.pyramid import Pyramid
from app.ui.compare.sources import Sources
from app.ui.compare.viewport import Viewport

MODES = ("slider", "side", "toggle", "single")
_MODE_NAMES = {
    "slider": "Before/after slider",
    "side": "Side by side",
    "toggle": "Toggle",
    "single": "Single image",
}
_GAP = 2.0  # logical px between the side-by-side panes
_GRAB = 8.0  # logical px either side of the divider line that start a divider drag
SHORTCUTS = (
    "0 fit · 1 100% · + / − zoom · ←/→ move the divider (Shift: faster) · "
    "S slider · D side by side · T toggle · Space swap"
)


class CompareView(QWidget):
    """Before/after comparison of two pictures (input vs output, or two runs). See the package
    docstring for the API."""

    mode_changed = Signal(str)
    zoom_changed = Signal(float)
    divider_changed = Signal(float)
    loading_changed = Signal(bool)
    images_ready = Signal()
    load_failed = Signal(str)
    content_changed = Signal()  # which pictures are present changed (the toolbar listens)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._src = Sources(self)
        self._src.changed.connect(self._on_sources)
        self._src.progressed.connect(self.update)
        self._src.loading_changed.connect(self.loading_changed)
        self._src.images_ready.connect(self.images_ready)
        self._src.load_failed.connect(self.load_failed)
        self._mode = "slider"
        self._divider = 0.5
        self._show_after = True
        self._vp = Viewport()
        self._hint = ("Drop images here", "or press Ctrl+O · paste with Ctrl+V")
        self._drag: str | None = None  # "divider" or "pan" while a button is held
        self._last = QPointF()
        self._hover_divider = False
        self._focus_ring = False
        self._flicker = QTimer(self)
        self._flicker.timeout.connect(self.swap)
        self._checker: tuple[bool, float, QBrush] | None = None
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.setMinimumSize(160, 120)
        self.setAccessibleName("Before and after comparison")
        self.setToolTip(f"Compare pictures. Keys: {SHORTCUTS}")
        self._describe()

    # --- public API: content ------------------------------------------------------------------

    def set_before(self, path: str | os.PathLike[str] | None, label: str = "Input") -> None:
        """The reference picture (the input, or an earlier run), drawn at the after's size."""
        self._src.set("before", path, label)

    def set_after(self, path: str | os.PathLike[str] | None, label: str = "Output") -> None:
        """The result; its size defines the comparison's pixel grid (100% = its pixels). A live
        preview stays on screen until this picture is ready."""
        self._src.set("after", path, label)

    def set_preview(
        self,
        data: bytes | QImage | None,
        output_size: tuple[int, int] | None = None,
        label: str = "Preview",
    ) -> None:
        """Show a running job's small canvas preview (PNG bytes or a QImage) as the "after",
        stretched to ``output_size`` (default: the before's frame), until a real after is
        loaded. None removes it."""
        self._src.set_preview(data, output_size, label)

    def clear(self) -> None:
        """Forget every picture (loads in flight are abandoned) and show the empty hint."""
        self._src.clear()

    def set_empty_hint(self, title: str, subtitle: str = "") -> None:
        self._hint = (title, subtitle)
        self.update()
        self._describe()

    def has_before(self) -> bool:
        return self._src.has_before()

    def has_after(self) -> bool:
        return self._src.has_after()

    def can_compare(self) -> bool:
        """Two pictures are present, so slider, side by side and toggle mean something."""
        return self.has_before() and self.has_after()

    def is_loading(self) -> bool:
        return self._src.loading

    # --- public API: mode, zoom, divider -------------------------------------------------------

    def mode(self) -> str:
        return self._mode

    def effective_mode(self) -> str:
        """The mode actually drawn: "single" whenever only one picture is present."""
        return self._mode if self.can_compare() else "single"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown compare mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == self._mode:
            return
        self._mode = mode
        if mode != "toggle":
            self._flicker.stop()
        self._sync_panes()
        self.update()
        self._describe()
        self.mode_changed.emit(mode)

    def zoom(self) -> float:
        """Device pixels per after-pixel: 1.0 is 100% (pixel-exact)."""
        return self._vp.zoom

    def is_fit(self) -> bool:
        return self._vp.fitted

    def fit(self) -> None:
        self._change_view(self._vp.fit)

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        """Zoom (1.0 = 100%) keeping the picture point under ``anchor`` (widget coordinates;
        default the pane centre) where it is."""
        local = None
        if anchor is not None:
            pane = self._pane_at(anchor)
            local = (anchor.x() - pane.x(), anchor.y() - pane.y())
        self._change_view(lambda: self._vp.set_zoom(zoom, local))

    def zoom_in(self) -> None:
        self.set_zoom(self._vp.step(up=True))

    def zoom_out(self) -> None:
        self.set_zoom(self._vp.step(up=False))

    def divider(self) -> float:
        return self._divider

    def set_divider(self, fraction: float) -> None:
        """Where the slider's divider is, as a fraction of the view's width (0 = left edge)."""
        fraction = min(1.0, max(0.0, float(fraction)))
        if abs(fraction - self._divider) < 1e-9:
            return
        self._divider = fraction
        self.update()
        self.divider_changed.emit(fraction)

    def showing_after(self) -> bool:
        """In toggle mode: whether the after (True) or the before is on screen."""
        return self._show_after

    def swap(self) -> None:
        """Toggle mode: show the other picture."""
        self._show_after = not self._show_after
        self.update()
        self._describe()

    def set_flicker(self, interval_ms: int) -> None:
        """Toggle mode: swap automatically every ``interval_ms`` (0 stops)."""
        if interval_ms > 0:
            self._flicker.start(interval_ms)
            self.set_mode("toggle")
        else:
            self._flicker.stop()

    def flickering(self) -> bool:
        return self._flicker.isActive()

    def labels(self) -> tuple[str, str]:
        """The labels on screen for the before and the after (a preview's while one shows)."""
        return self._src.before_content()[1], self._src.after_content()[1]

    def pyramids(self) -> tuple[Pyramid | None, Pyramid | None]:
        """The before's and after's pyramids when loaded (tests and benchmarks inspect them)."""
        return self._src.before.pyramid, self._src.after.pyramid

    def _on_sources(self, presence: bool) -> None:
        """A picture arrived, went or changed size: re-derive the scene; repaint."""
        self._sync_panes()
        self.update()
        self._describe()
        if presence:
            self.content_changed.emit()

    # --- geometry -----------------------------------------------------------------------------

    def _panes(self) -> list[QRectF]:
        r = QRectF(self.rect())
        if self.effective_mode() != "side":
            return [r]
        w = (r.width() - _GAP) / 2
        return [
            QRectF(r.left(), r.top(), w, r.height()),
            QRectF(r.left() + w + _GAP, r.top(), w, r.height()),
        ]

    def _pane_at(self, pos: QPointF) -> QRectF:
        panes = self._panes()
        return panes[1] if len(panes) > 1 and pos.x() >= panes[1].left() else panes[0]

    def _sync_panes(self) -> None:
        old = self._vp.zoom
        pane = self._panes()[0]
        self._vp.set_pane(pane.width(), pane.height(), self.devicePixelRatioF())
        size = self._src.scene_size()
        if size is None:  # nothing left: the next picture starts fitted
            self._vp.set_scene(0, 0)
            self._vp.fitted = True
        else:
            self._vp.set_scene(*size)
        if abs(self._vp.zoom - old) > 1e-12:
            self.zoom_changed.emit(self._vp.zoom)

    def _change_view(self, change: Callable[[], None]) -> None:
        old = (self._vp.zoom, self._vp.cx, self._vp.cy)
        change()
        if (self._vp.zoom, self._vp.cx, self._vp.cy) != old:
            self.update()
        if abs(self._vp.zoom - old[0]) > 1e-12:
            self.zoom_changed.emit(self._vp.zoom)
            self._describe()

    def _origin(self, pane: QRectF) -> QPointF:
        """Scene (0, 0) in widget coordinates, snapped to the device pixel grid so that 100% is
        pixel-exact."""
        dpr = self.devicePixelRatioF()
        ox, oy = self._vp.origin()
        return QPointF(round((pane.x() + ox) * dpr) / dpr, round((pane.y() + oy) * dpr) / dpr)

    def _divider_x(self) -> float:
        """On the device pixel grid, so the line is crisp and both sides meet exactly."""
        dpr = self.devicePixelRatioF()
        return round(self.width() * self._divider * dpr) / dpr

    def _on_divider(self, pos: QPointF) -> bool:
        if self.effective_mode() != "slider":
            return False
        x = self._divider_x()
        centre = QPointF(x, self.height() / 2)
        near_handle = (pos - centre).manhattanLength() <= painting.HANDLE_RADIUS * 1.6
        return abs(pos.x() - x) <= _GRAB or near_handle

    def map_to_scene(self, pos: QPointF) -> QPointF:
        """The after-pixel coordinates under a widget position (tests use it)."""
        pane = self._pane_at(pos)
        o = self._origin(pane)
        s = self._vp.scale
        return QPointF((pos.x() - o.x()) / s, (pos.y() - o.y()) / s)

    def map_from_scene(self, point: QPointF, pane_index: int = 0) -> QPointF:
        panes = self._panes()
        o = self._origin(panes[min(pane_index, len(panes) - 1)])
        s = self._vp.scale
        return QPointF(o.x() + point.x() * s, o.y() + point.y() * s)

    # --- painting -----------------------------------------------------------------------------

    def _checker_brush(self) -> QBrush:
        dark = self.palette().color(QPalette.ColorRole.Window).lightness() < 128
        dpr = self.devicePixelRatioF()
        if self._checker is None or self._checker[:2] != (dark, dpr):
            self._checker = (dark, dpr, painting.checker_brush(dark, dpr))
        return self._checker[2]

    def _background(self) -> QColor:
        window = self.palette().color(QPalette.ColorRole.Window)
        return window.darker(135 if window.lightness() < 128 else 108)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        rect = QRectF(self.rect())
        p.fillRect(event.rect(), self._background())
        before, before_label = self._src.before_content()
        after, after_label = self._src.after_content()
        if before is None and after is None:
            title, subtitle = self._hint
            if self._src.loading:
                title, subtitle = "Opening…", self._src.loading_text()
            painting.draw_hint(p, rect, title, subtitle, self.palette())
            if self._focus_ring:
                painting.draw_focus_ring(p, rect, self.palette())
            p.end()
            return
        mode = self.effective_mode()
        font = painting.label_font(self.font())
        vp = self._vp
        frame = painting.Frame(
            QPointF(),
            vp.scene_w * vp.scale,
            vp.scene_h * vp.scale,
            self.devicePixelRatioF(),
            vp.zoom >= 0.999,
            self._checker_brush(),
            int(vp.scene_w),
        )
        if mode == "slider":
            x = self._divider_x()
            frame = replace(frame, origin=self._origin(rect))
            left = QRectF(rect.left(), rect.top(), x - rect.left(), rect.height())
            right = QRectF(x, rect.top(), rect.right() - x, rect.height())
            painting.draw_content(p, before, left, frame)
            painting.draw_content(p, after, right, frame)
            painting.draw_label(p, before_label, rect, False, font, left)
            painting.draw_label(p, after_label, rect, True, font, right)
            painting.draw_divider(p, x, rect, self._drag == "divider" or self._hover_divider)
        elif mode == "side":
            for pane, content, label in zip(
                self._panes(), (before, after), (before_label, after_label), strict=True
            ):
                painting.draw_content(p, content, pane, replace(frame, origin=self._origin(pane)))
                painting.draw_label(p, label, pane, False, font)
            gap = self._panes()[1]
            p.fillRect(
                QRectF(gap.left() - _GAP, rect.top(), _GAP, rect.height()),
                self.palette().color(QPalette.ColorRole.Mid),
            )
        else:
            content, label = self._single()
            painting.draw_content(p, content, rect, replace(frame, origin=self._origin(rect)))
            painting.draw_label(p, label, rect, False, font)
        if self._src.loading:
            text, fraction = self._src.loading_text(), self._src.loading_fraction()
            painting.draw_status(p, rect, text, fraction, font)
        if self._focus_ring:
            painting.draw_focus_ring(p, rect, self.palette())
        p.end()

    def _single(self) -> tuple[Content | None, str]:
        before = self._src.before_content()
        if self.effective_mode() == "toggle" and not self._show_after:
            return before
        after = self._src.after_content()
        return after if after[0] is not None else before

    def _describe(self) -> None:
        """Keep the accessible description current (screen readers announce it)."""
        if not self.has_before() and not self.has_after():
            text = "No pictures. " + self._hint[0]
        else:
            mode = self.effective_mode()
            text = f"{_MODE_NAMES[mode]}, zoom {self._vp.zoom:.0%}"
            if mode == "toggle":
                text += ", showing " + ("after" if self._show_after else "before")
        self.setAccessibleDescription(text)

    # --- events (keys, mouse and wheel: app.ui.compare.interaction) ---------------------------

    def event(self, event: QEvent) -> bool:
        return interaction.event(self, event) or super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if not interaction.key_press(self, event):
            super().keyPressEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if not interaction.mouse_press(self, event):
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        interaction.mouse_move(self, event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        interaction.mouse_release(self, event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if not interaction.mouse_double_click(self, event):
            super().mouseDoubleClickEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        interaction.wheel(self, event)

    def leaveEvent(self, event: QEvent) -> None:
        interaction.leave(self)
        super().leaveEvent(event)

    def focusInEvent(self, event: QFocusEvent) -> None:
        interaction.focus_in(self, event)
        super().focusInEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        interaction.focus_out(self)
        super().focusOutEvent(event)

    def resizeEvent(self, event: QResizeEvent) -> None:
        self._sync_panes()
        super().resizeEvent(event)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.StyleChange):
            self._checker = None
        super().changeEvent(event)
