"""Light and dark: the window follows the scheme it is given (and the system's by default)."""

from __future__ import annotations

from app.ui.window.theme import apply_theme, is_dark


def test_dark_and_light_schemes_change_the_palette(qapp) -> None:
    try:
        apply_theme("dark")
        assert is_dark()
        dark_window = qapp.palette().window().color().lightness()
        apply_theme("light")
        assert not is_dark()
        assert qapp.palette().window().color().lightness() > dark_window + 100
    finally:
        apply_theme("system")
