"""Look and feel: Qt's Fusion style, following the system's light or dark scheme (or the
person's choice), with a few touches that palette roles cannot express."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
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


def apply_theme(name: str = "system") -> None:
    """Apply ``name`` ("system", "light" or "dark") to the running application."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")
    QGuiApplication.styleHints().setColorScheme(_SCHEMES.get(name, Qt.ColorScheme.Unknown))
    app.setPalette(app.style().standardPalette())
    app.setStyleSheet(_STYLE)


def is_dark() -> bool:
    palette = QGuiApplication.palette()
    return palette.window().color().lightness() < palette.windowText().color().lightness()
