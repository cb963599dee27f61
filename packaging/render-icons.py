"""Render resources/icons/hicolor/<N>x<N>/apps/*.png from the scalable SVG, at the sizes desktops
look up. Run after editing the SVG: ``.venv/bin/python packaging/render-icons.py``.
tests/ui/test_icons.py fails when a PNG no longer matches the SVG."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ICON_SIZES = (16, 22, 24, 32, 48, 64, 96, 128, 256, 512)
ICON_NAME = "io.github.clarifier.Clarifier"
HICOLOR = Path(__file__).resolve().parent.parent / "resources" / "icons" / "hicolor"


def render(svg: Path, size: int) -> QImage:
    """The SVG drawn into a transparent ``size``×``size`` ARGB image."""
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    with QPainter(image) as painter:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
    return image


def main() -> int:
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    svg = HICOLOR / "scalable" / "apps" / f"{ICON_NAME}.svg"
    for size in ICON_SIZES:
        out = HICOLOR / f"{size}x{size}" / "apps" / f"{ICON_NAME}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not render(svg, size).save(str(out), "PNG"):
            raise OSError(f"could not write {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
