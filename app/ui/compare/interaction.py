"""Keyboard, mouse, wheel and gesture handling of the compare view (a mixin of
:class:`~app.ui.compare.view.CompareView`, kept apart so each module stays readable).

Keys (only while the view has focus, and they win over window shortcuts then): 0 fit, 1 100%,
+ / = and − zoom, ←/→ move the divider (Shift: 10% steps; in modes without a divider they pan),
S slider, D side by side, T toggle, Space swap. Mouse: the wheel zooms around the cursor (and
stops at 100% on the way), a left drag on the divider moves it, a left drag elsewhere or a
middle drag pans, a double-click toggles fit/100%; a touchpad pinch zooms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QFocusEvent, QKeyEvent, QMouseEvent, QNativeGestureEvent, QWheelEvent
from PySide6.QtWidgets import QToolTip, QWidget

if TYPE_CHECKING:
    from app.ui.compare.view import CompareView

_WHEEL_NOTCH = 2.0 ** (1 / 3)  # zoom factor per wheel notch
_DIVIDER_STEP, _DIVIDER_BIG_STEP = 0.01, 0.1
_ARROW_PAN, _ARROW_BIG_PAN = 40, 200  # logical px per arrow key press without a divider


class ViewInput:
    """Event handlers of :class:`CompareView`; it lists this class before ``QWidget``."""

    def event(self: CompareView, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ShortcutOverride and self._handles_key(event):
            event.accept()  # our keys win over window-wide shortcuts while the view has focus
            return True
        if event.type() == QEvent.Type.ToolTip and (self.has_before() or self.has_after()):
            QToolTip.hideText()  # the hint helps on an empty view, never over a picture
            event.ignore()
            return True
        if (
            isinstance(event, QNativeGestureEvent)
            and event.gestureType() == Qt.NativeGestureType.ZoomNativeGesture
        ):
            self.set_zoom(self._vp.zoom * (1.0 + event.value()), event.position())
            return True
        return QWidget.event(self, event)

    _KEYS = (
        Qt.Key.Key_0, Qt.Key.Key_1, Qt.Key.Key_Plus, Qt.Key.Key_Equal, Qt.Key.Key_Minus,
        Qt.Key.Key_Underscore, Qt.Key.Key_Left, Qt.Key.Key_Right, Qt.Key.Key_S, Qt.Key.Key_D,
        Qt.Key.Key_T, Qt.Key.Key_Space,
    )  # fmt: skip

    def _handles_key(self: CompareView, event: QEvent) -> bool:
        if not isinstance(event, QKeyEvent):
            return False
        mods = event.modifiers() & ~(
            Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.KeypadModifier
        )
        return mods == Qt.KeyboardModifier.NoModifier and event.key() in self._KEYS

    def keyPressEvent(self: CompareView, event: QKeyEvent) -> None:
        if not self._handles_key(event):
            QWidget.keyPressEvent(self, event)
            return
        key = event.key()
        big = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if key == Qt.Key.Key_0:
            self.fit()
        elif key == Qt.Key.Key_1:
            self.actual_size()
        elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_in()
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_out()
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            sign = -1 if key == Qt.Key.Key_Left else 1
            if self.effective_mode() == "slider":
                self.set_divider(
                    self._divider + sign * (_DIVIDER_BIG_STEP if big else _DIVIDER_STEP)
                )
            else:  # no divider: the arrows pan instead
                self._change_view(
                    lambda: self._vp.pan(-sign * (_ARROW_BIG_PAN if big else _ARROW_PAN), 0)
                )
        elif key == Qt.Key.Key_S:
            self.set_mode("slider")
        elif key == Qt.Key.Key_D:
            self.set_mode("side")
        elif key == Qt.Key.Key_T:
            self.set_mode("toggle")
        elif key == Qt.Key.Key_Space and self.effective_mode() == "toggle":
            self._flicker.stop()
            self.swap()
        event.accept()

    def mousePressEvent(self: CompareView, event: QMouseEvent) -> None:
        pos = event.position()
        self._last = pos
        if event.button() == Qt.MouseButton.LeftButton and self._on_divider(pos):
            self._drag = "divider"
            self.set_divider(pos.x() / max(1, self.width()))
        elif event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag = "pan"
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        else:
            QWidget.mousePressEvent(self, event)
            return
        self.update()
        event.accept()

    def mouseMoveEvent(self: CompareView, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag == "divider":
            self.set_divider(pos.x() / max(1, self.width()))
        elif self._drag == "pan":
            delta = pos - self._last
            self._change_view(lambda: self._vp.pan(delta.x(), delta.y()))
        else:
            hover = self._on_divider(pos)
            if hover != self._hover_divider:
                self._hover_divider = hover
                self.update()
            self._update_cursor(hover)
        self._last = pos
        event.accept()

    def mouseReleaseEvent(self: CompareView, event: QMouseEvent) -> None:
        if self._drag is not None and not (
            event.buttons() & (Qt.MouseButton.LeftButton | Qt.MouseButton.MiddleButton)
        ):
            self._drag = None
            self._update_cursor(self._on_divider(event.position()))
            self.update()
        event.accept()

    def mouseDoubleClickEvent(self: CompareView, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._on_divider(event.position()):
            QWidget.mouseDoubleClickEvent(self, event)
            return
        if self._vp.fitted:
            self.set_zoom(1.0, event.position())
        else:
            self.fit()
        event.accept()

    def wheelEvent(self: CompareView, event: QWheelEvent) -> None:
        delta = event.angleDelta()
        if delta.y():
            old = self._vp.zoom
            new = old * _WHEEL_NOTCH ** (delta.y() / 120)
            if (old < 1.0 < new) or (old > 1.0 > new):
                new = 1.0  # stop at 100% on the way through: the zoom people look for
            if new <= self._vp.fit_zoom() < old:
                self.fit()
            else:
                self.set_zoom(new, event.position())
        elif delta.x():
            self._change_view(lambda: self._vp.pan(delta.x() / 2, 0))
        event.accept()

    def leaveEvent(self: CompareView, event: QEvent) -> None:
        if self._hover_divider:
            self._hover_divider = False
            self.update()
        QWidget.leaveEvent(self, event)

    def focusInEvent(self: CompareView, event: QFocusEvent) -> None:
        # A focus ring only when focus came from the keyboard, as native controls do.
        keyboard = (
            Qt.FocusReason.TabFocusReason,
            Qt.FocusReason.BacktabFocusReason,
            Qt.FocusReason.ShortcutFocusReason,
        )
        self._focus_ring = event.reason() in keyboard
        self.update()
        QWidget.focusInEvent(self, event)

    def focusOutEvent(self: CompareView, event: QFocusEvent) -> None:
        self._focus_ring = False
        self.update()
        QWidget.focusOutEvent(self, event)

    def _update_cursor(self: CompareView, on_divider: bool) -> None:
        if on_divider:
            self.setCursor(Qt.CursorShape.SplitHCursor)
        elif self._vp.can_pan():
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        else:
            self.unsetCursor()
