"""Look and feel: Qt's Fusion style, following the system's light or dark scheme (or the
person's choice), with a few touches that palette roles cannot express."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

__all__ = ["THEMES", "apply_theme", "is_dark"]

THEMES = ("system", "light", "dark")

_SCHEMES = {
    "system": Qt.ColorScheme.Unknown,
    "light": Qt.ColorScheme.Light,
    "dark": Qt.ColorScheme.Dark,
}

# The primary action stands out in both schemes through the palette's highlight colour.
_STYLE = """
QPushButton[primary="true"] {
    background: palette(highlight); color: palette(highlighted-text);
    border: none; border-radius: 6px; padding: 8px 14px; font-weight: 600;
}
QPushButton[primary="true"]:disabled { background: palette(mid); color: palette(window); }
QPushButton[primary="true"]:hover { background: palette(link); }
QDockWidget::title { padding: 4px 6px; font-weight: 600; }
QStatusBar QLabel { padding: 0 6px; }
"""


_current: dict[str, Any] = {"name": "system", "watching": False, "styled": False}


def _dark_palette() -> QPalette:
    """Fusion's colours for a dark scheme, for platforms whose theme has none to offer (X11
    without a desktop, the offscreen platform): the person's choice must still take effect."""
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    muted, accent = QColor(128, 131, 137), QColor(61, 133, 220)
    for role, colour in (
        (QPalette.ColorRole.Window, window),
        (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base),
        (QPalette.ColorRole.AlternateBase, QColor(37, 38, 41)),
        (QPalette.ColorRole.ToolTipBase, window),
        (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.PlaceholderText, muted),
        (QPalette.ColorRole.Text, text),
        (QPalette.ColorRole.Button, QColor(50, 52, 56)),
        (QPalette.ColorRole.ButtonText, text),
        (QPalette.ColorRole.BrightText, QColor(255, 92, 92)),
        (QPalette.ColorRole.Light, QColor(70, 72, 77)),
        (QPalette.ColorRole.Midlight, QColor(58, 60, 64)),
        (QPalette.ColorRole.Mid, QColor(36, 37, 40)),
        (QPalette.ColorRole.Dark, QColor(22, 23, 25)),
        (QPalette.ColorRole.Shadow, QColor(0, 0, 0)),
        (QPalette.ColorRole.Highlight, accent),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
        (QPalette.ColorRole.Link, QColor(110, 168, 240)),
        (QPalette.ColorRole.LinkVisited, QColor(160, 140, 230)),
    ):
        p.setColor(role, colour)
    for role in (
        QPalette.ColorRole.WindowText,
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, muted)
    return p


def apply_theme(name: str = "system") -> None:
    """Apply ``name`` ("system", "light" or "dark") to the running application; "system" keeps
    following the platform when it switches between light and dark."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    _current["name"] = name
    if not _current["styled"]:  # (app.style() is a style-sheet proxy once a sheet is set)
        _current["styled"] = True
        app.setStyle("Fusion")
    hints = QGuiApplication.styleHints()
    hints.setColorScheme(_SCHEMES.get(name, Qt.ColorScheme.Unknown))
    dark = name == "dark" or (name == "system" and hints.colorScheme() == Qt.ColorScheme.Dark)
    app.setPalette(_dark_palette() if dark else app.style().standardPalette())
    app.setStyleSheet(_STYLE)
    if not _current["watching"]:
        _current["watching"] = True
        hints.colorSchemeChanged.connect(lambda _scheme: _follow_system())


def _follow_system() -> None:
    if _current["name"] == "system":
        apply_theme("system")


def is_dark() -> bool:
    palette = QGuiApplication.palette()
    return palette.window().color().lightness() < palette.windowText().color().lightness()
