"""The shipped PNG icons are the SVG drawn at each size, and the window wears them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import APP_ID
from app.ui.app import app_icon

ROOT = Path(__file__).resolve().parents[2]
HICOLOR = ROOT / "resources" / "icons" / "hicolor"


def _render_icons():
    spec = importlib.util.spec_from_file_location(
        "render_icons", ROOT / "packaging" / "render-icons.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pixels(qimage) -> np.ndarray:
    from PySide6.QtGui import QImage

    rgba = qimage.convertToFormat(QImage.Format.Format_RGBA8888)
    rows = np.frombuffer(rgba.constBits(), np.uint8).reshape(rgba.height(), rgba.bytesPerLine())
    return rows[:, : rgba.width() * 4].reshape(rgba.height(), rgba.width(), 4).copy()


@pytest.mark.parametrize("size", [16, 22, 24, 32, 48, 64, 96, 128, 256, 512])
def test_each_png_is_the_svg_at_its_size(qapp, size: int) -> None:
    render = _render_icons()
    assert size in render.ICON_SIZES
    drawn = _pixels(render.render(HICOLOR / "scalable" / "apps" / f"{APP_ID}.svg", size))
    shipped = np.asarray(
        Image.open(HICOLOR / f"{size}x{size}" / "apps" / f"{APP_ID}.png").convert("RGBA")
    )
    diff = np.abs(drawn.astype(int) - shipped.astype(int))
    assert diff.max() <= 24, "the PNG icons are stale: run packaging/render-icons.py"
    assert drawn[..., 3].mean() > 100  # mostly opaque: the card, not an empty canvas


def test_the_window_icon_offers_every_size(qapp) -> None:
    icon = app_icon()
    sizes = {(s.width(), s.height()) for s in icon.availableSizes()}
    assert {(16, 16), (48, 48), (256, 256), (512, 512)} <= sizes
    assert not icon.pixmap(32, 32).isNull()
