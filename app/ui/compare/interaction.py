"""Keyboard, mouse, wheel and gesture handling of the compare view: the event handlers of
:class:`~app.ui.compare.view.CompareView` call these (kept apart so each module stays readable).
Those that may leave an event alone return whether they took it; the view passes the others on
to ``QWidget``.

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
from PySide6.QtWidgets import QToolTip

if TYPE_CHECKING:
    from app.ui.compare.view import CompareView

_WHEEL_NOTCH = 2.0 ** (1 / 3)  # zoom factor per wheel notch
_DIVIDER_STEP, _DIVIDER_BIG_STEP = 0.01, 0.1
_ARROW_PAN, _ARROW_BIG_PAN = 40, 200  # logical px per arrow key press without a divider
_KEYS = (
    Qt.Key.Key_0, Qt.Key.Key_1, Qt.Key.Key_Plus, Qt.Key.Key_Equal, Qt.Key.Key_Minus,
    Qt.Key.Key_Underscore, Qt.Key.Key_Left, Qt.Key.Key_Right, Qt.Key.Key_S, Qt.Key.Key_D,
    Qt.Key.Key_T, Qt.Key.Key_Space,
)  # fmt: skip


def event(view: CompareView, event: QEvent) -> bool:
    """Before the specific handlers: our keys over shortcuts, no tooltip over a picture, pinch."""
    if event.type() == QEvent.Type.ShortcutOverride and handles_key(event):
        event.accept()  # our keys win over window-wide shortcuts while the view has focus
        return True
    if event.type() == QEvent.Type.ToolTip and (view.has_before() or view.has_after()):
        QToolTip.hideText()  # the hint helps on an empty view, never over a picture
        event.ignore()
        return True
    if (
        isinstance(event, QNativeGestureEvent)
        and event.gestureType() == Qt.NativeGestureType.ZoomNativeGesture
    ):
        view.set_zoom(view._vp.zoom * (1.0 + event.value()), event.position())
        return True
    return False


def handles_key(event: QEvent) -> bool:
    if not isinstance(event, QKeyEvent):
        return False
    mods = event.modifiers() & ~(
        Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.KeypadModifier
    )
    return mods == Qt.KeyboardModifier.NoModifier and event.key() in _KEYS


def key_press(view: CompareView, event: QKeyEvent) -> bool:
    if not handles_key(event):
        return False
    key = event.key()
    big = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
    if key == Qt.Key.Key_0:
        view.fit()
    elif key == Qt.Key.Key_1:
        view.actual_size()
    elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
        view.zoom_in()
    elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
        view.zoom_out()
    elif key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
        sign = -1 if key == Qt.Key.Key_Left else 1
        if view.effective_mode() == "slider":
            view.set_divider(view._divider + sign * (_DIVIDER_BIG_STEP if big else _DIVIDER_STEP))
        else:  # no divider: the arrows pan instead
            view._change_view(
                lambda: view._vp.pan(-sign * (_ARROW_BIG_PAN if big else _ARROW_PAN), 0)
            )
    elif key == Qt.Key.Key_S:
        view.set_mode("slider")
    elif key == Qt.Key.Key_D:
        view.set_mode("side")
    elif key == Qt.Key.Key_T:
        view.set_mode("toggle")
    elif key == Qt.Key.Key_Space and view.effective_mode() == "toggle":
        view._flicker.stop()
        view.swap()
    event.accept()
    return True


def mouse_press(view: CompareView, event: QMouseEvent) -> bool:
    pos = event.position()
    view._last = pos
    if event.button() == Qt.MouseButton.LeftButton and view._on_divider(pos):
        view._drag = "divider"
        view.set_divider(pos.x() / max(1, view.width()))
    elif event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
        view._drag = "pan"
        view.setCursor(Qt.CursorShape.ClosedHandCursor)
    else:
        return False
    view.update()
    event.accept()
    return True


def mouse_move(view: CompareView, event: QMouseEvent) -> None:
    pos = event.position()
    if view._drag == "divider":
        view.set_divider(pos.x() / max(1, view.width()))
    elif view._drag == "pan":
        delta = pos - view._last
        view._change_view(lambda: view._vp.pan(delta.x(), delta.y()))
    else:
        hover = view._on_divider(pos)
        if hover != view._hover_divider:
            view._hover_divider = hover
            view.update()
        update_cursor(view, hover)
    view._last = pos
    event.accept()


def mouse_release(view: CompareView, event: QMouseEvent) -> None:
    if view._drag is not None and not (
        event.buttons() & (Qt.MouseButton.LeftButton | Qt.MouseButton.MiddleButton)
    ):
        view._drag = None
        update_cursor(view, view._on_divider(event.position()))
        view.update()
    event.accept()


def mouse_double_click(view: CompareView, event: QMouseEvent) -> bool:
    if event.button() != Qt.MouseButton.LeftButton or view._on_divider(event.position()):
        return False
    if view._vp.fitted:
        view.set_zoom(1.0, event.position())
    else:
        view.fit()
    event.accept()
    return True


def wheel(view: CompareView, event: QWheelEvent) -> None:
    delta = event.angleDelta()
    if delta.y():
        old = view._vp.zoom
        new = old * _WHEEL_NOTCH ** (delta.y() / 120)
        if (old < 1.0 < new) or (old > 1.0 > new):
            new = 1.0  # stop at 100% on the way through: the zoom people look for
        if new <= view._vp.fit_zoom() < old:
            view.fit()
        else:
            view.set_zoom(new, event.position())
    elif delta.x():
        view._change_view(lambda: view._vp.pan(delta.x() / 2, 0))
    event.accept()


def leave(view: CompareView) -> None:
    if view._hover_divider:
        view._hover_divider = False
        view.update()


def focus_in(view: CompareView, event: QFocusEvent) -> None:
    # A focus ring only when focus came from the keyboard, as native controls do.
    keyboard = (
        Qt.FocusReason.TabFocusReason,
        Qt.FocusReason.BacktabFocusReason,
        Qt.FocusReason.ShortcutFocusReason,
    )
    view._focus_ring = event.reason() in keyboard
    view.update()


def focus_out(view: CompareView) -> None:
    view._focus_ring = False
    view.update()


def update_cursor(view: CompareView, on_divider: bool) -> None:
    if on_divider:
        view.setCursor(Qt.CursorShape.SplitHCursor)
    elif view._vp.can_pan():
        view.setCursor(Qt.CursorShape.OpenHandCursor)
    else:
        view.unsetCursor()
