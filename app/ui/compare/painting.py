"""Drawing helpers for the compare view: images from the pyramid, labels, the divider, hints.

Images are drawn the way a careful viewer draws them: from the pyramid level nearest the zoom,
only the visible tiles, bilinear when a level pixel is smaller than a device pixel and nearest
at or above 100% (so pixels are exact and crisp), over a checkerboard when the picture has
transparency. Labels, divider and hint take their geometry from the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetricsF,
    QImage,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
)

from app.ui.compare.pyramid import Pyramid

HANDLE_RADIUS = 15.0  # logical px: the divider's round grip
_CHECK = 8  # logical px per checkerboard square

Content = Pyramid | QImage


def content_size(content: Content) -> tuple[int, int]:
    if isinstance(content, Pyramid):
        return content.width, content.height
    return content.width(), content.height()


def checker_brush(dark: bool, dpr: float) -> QBrush:
    """Transparency pattern: fixed-size squares on screen whatever the zoom (like every
    image editor); shades that suit the palette. (Hard-coded on purpose: it means "no pixel".)"""
    light, shade = (
        (QColor(70, 70, 70), QColor(52, 52, 52))
        if dark
        else (
            QColor(255, 255, 255),
            QColor(214, 214, 214),
        )
    )
    side = max(1, round(_CHECK * dpr))
    pix = QPixmap(2 * side, 2 * side)
    pix.fill(light)
    p = QPainter(pix)
    p.fillRect(0, 0, side, side, shade)
    p.fillRect(side, side, side, side, shade)
    p.end()
    pix.setDevicePixelRatio(dpr)
    return QBrush(pix)


@dataclass(frozen=True)
class Frame:
    """Where the scene lands on screen in one paint (the same for both pictures of a pane)."""

    origin: QPointF  # scene (0, 0) in widget coordinates
    width: float  # the scene's size on screen, logical px
    height: float
    dpr: float
    magnified: bool  # zoom at or above 100%: nearest-neighbour sampling, exact pixels
    checker: QBrush | None = None  # drawn under pictures with transparency
    scene_w: int = 0  # the scene's width in its own pixels (the after's grid)


def draw_content(p: QPainter, content: Content | None, clip: QRectF, frame: Frame) -> None:
    """Draw a picture stretched over the scene rectangle, restricted to ``clip`` (None, a
    picture not loaded yet: nothing)."""
    if content is None:
        return
    image_rect = QRectF(frame.origin.x(), frame.origin.y(), frame.width, frame.height)
    visible = image_rect.intersected(clip)
    if visible.isEmpty():
        return
    p.save()
    p.setClipRect(visible)
    has_alpha = content.has_alpha if isinstance(content, Pyramid) else content.hasAlphaChannel()
    if has_alpha and frame.checker is not None:
        p.fillRect(visible, frame.checker)
    if isinstance(content, Pyramid):
        _draw_pyramid(p, content, visible, frame)
    else:  # a small live preview, always stretched smoothly
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        p.drawImage(image_rect, content, QRectF(content.rect()))
    p.restore()


def _draw_pyramid(p: QPainter, pyr: Pyramid, visible: QRectF, frame: Frame) -> None:
    """Fetch and draw only the tiles of one level that meet ``visible``. Bilinear below 100%
    (and whenever a level pixel is smaller than a device pixel), nearest at or above it."""
    sx, sy = frame.width / pyr.width, frame.height / pyr.height  # logical px per image px
    level = pyr.level_for(min(sx, sy) * frame.dpr)
    f = float(1 << level)
    lx, ly = sx * f, sy * f  # logical px per level pixel
    # A smaller picture (the input under its upscale) is *resampled* to the output's grid, so it
    # is drawn smooth, as a plain resize would show it: blocky pixels would flatter the upscale.
    resampled = frame.scene_w > pyr.width
    smooth = resampled or not frame.magnified or min(lx, ly) * frame.dpr < 0.999
    p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
    ox, oy = frame.origin.x(), frame.origin.y()
    x0 = (visible.left() - ox) / lx
    y0 = (visible.top() - oy) / ly
    x1 = (visible.right() - ox) / lx
    y1 = (visible.bottom() - oy) / ly
    t = pyr.tile_size
    for col, row in pyr.tiles_in(level, math.floor(x0), math.floor(y0), x1, y1):
        tile = pyr.tile(level, col, row)
        target = QRectF(ox + col * t * lx, oy + row * t * ly, tile.width() * lx, tile.height() * ly)
        p.drawImage(target, tile, QRectF(0, 0, tile.width(), tile.height()))


def label_font(base: QFont) -> QFont:
    font = QFont(base)
    size = base.pointSizeF()
    if size > 0:
        font.setPointSizeF(max(7.0, size * 0.92))
    font.setWeight(QFont.Weight.Medium)
    return font


def draw_label(
    p: QPainter, text: str, bounds: QRectF, right: bool, font: QFont, clip: QRectF | None = None
) -> None:
    """A small pill in a top corner of ``bounds``: white text on translucent black, readable on
    any picture. ``clip`` lets the slider's labels slide under the divider."""
    if not text:
        return
    margin, pad_x, pad_y = 10.0, 8.0, 3.0
    fm = QFontMetricsF(font)
    text = fm.elidedText(text, Qt.TextElideMode.ElideMiddle, max(40.0, bounds.width() * 0.42))
    w = fm.horizontalAdvance(text) + 2 * pad_x
    h = fm.height() + 2 * pad_y
    x = bounds.right() - margin - w if right else bounds.left() + margin
    box = QRectF(x, bounds.top() + margin, w, h)
    p.save()
    if clip is not None:
        p.setClipRect(clip)
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(0, 0, 0, 150))
    p.drawRoundedRect(box, h / 2, h / 2)
    p.setFont(font)
    p.setPen(QColor(255, 255, 255, 235))
    p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
    p.restore()


def draw_divider(p: QPainter, x: float, rect: QRectF, active: bool) -> None:
    """A thin light line with a soft shadow and a round grip with two chevrons. The line is
    two plain rectangles (an antialiased 1000-px stroke costs a millisecond per frame); only the
    grip is antialiased."""
    p.save()
    p.fillRect(QRectF(x - 2.0, rect.top(), 4.0, rect.height()), QColor(0, 0, 0, 60))
    p.fillRect(QRectF(x - 1.0, rect.top(), 2.0, rect.height()), QColor(255, 255, 255, 225))
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    centre = QPointF(x, rect.center().y())
    r = HANDLE_RADIUS + (1.5 if active else 0.0)
    p.setPen(QPen(QColor(0, 0, 0, 90), 1.0))
    p.setBrush(QColor(255, 255, 255, 245 if active else 225))
    p.drawEllipse(centre, r, r)
    chevrons = QPainterPath()
    for sign in (-1, 1):
        tip = QPointF(x + sign * 9.0, centre.y())
        chevrons.moveTo(tip)
        chevrons.lineTo(x + sign * 4.0, centre.y() - 4.5)
        chevrons.lineTo(x + sign * 4.0, centre.y() + 4.5)
        chevrons.closeSubpath()
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(60, 60, 60))
    p.drawPath(chevrons)
    p.restore()


def draw_hint(p: QPainter, rect: QRectF, title: str, subtitle: str, palette: QPalette) -> None:
    """The empty state: a dashed drop zone with a large title and a quieter second line."""
    p.save()
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    zone = rect.adjusted(24, 24, -24, -24)
    if zone.width() > 120 and zone.height() > 80:
        pen = QPen(palette.color(QPalette.ColorRole.Mid), 1.5, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRoundedRect(zone, 12, 12)
    base = QFont(p.font())
    big = QFont(base)
    big.setPointSizeF(max(12.0, base.pointSizeF() * 1.9))
    big.setWeight(QFont.Weight.DemiBold)
    small = QFont(base)
    fm_big, fm_small = QFontMetricsF(big), QFontMetricsF(small)
    gap = 8.0
    total = fm_big.height() + (gap + fm_small.height() if subtitle else 0.0)
    top = rect.center().y() - total / 2
    p.setFont(big)
    p.setPen(palette.color(QPalette.ColorRole.WindowText))
    p.drawText(
        QRectF(rect.left(), top, rect.width(), fm_big.height()), Qt.AlignmentFlag.AlignCenter, title
    )
    if subtitle:
        p.setFont(small)
        p.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
        y = top + fm_big.height() + gap
        p.drawText(
            QRectF(rect.left(), y, rect.width(), fm_small.height()),
            Qt.AlignmentFlag.AlignCenter,
            subtitle,
        )
    p.restore()


def draw_status(p: QPainter, rect: QRectF, text: str, fraction: float, font: QFont) -> None:
    """A small pill at the bottom centre: what is loading, with a thin progress line when the
    progress is measurable (``fraction`` ≥ 0)."""
    fm = QFontMetricsF(font)
    w = fm.horizontalAdvance(text) + 28
    h = fm.height() + 12
    box = QRectF(rect.center().x() - w / 2, rect.bottom() - h - 14, w, h)
    p.save()
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(0, 0, 0, 160))
    p.drawRoundedRect(box, h / 2, h / 2)
    if fraction >= 0:
        bar = QRectF(
            box.left() + h / 2, box.bottom() - 3, (box.width() - h) * min(1.0, fraction), 2
        )
        p.setBrush(QColor(255, 255, 255, 200))
        p.drawRect(bar)
    p.setFont(font)
    p.setPen(QColor(255, 255, 255, 235))
    p.drawText(box.adjusted(0, 0, 0, -2), Qt.AlignmentFlag.AlignCenter, text)
    p.restore()


def draw_focus_ring(p: QPainter, rect: QRectF, palette: QPalette) -> None:
    """Shows keyboard users that the view has focus (its keys are live)."""
    p.save()
    colour = QColor(palette.color(QPalette.ColorRole.Highlight))
    colour.setAlpha(200)
    p.setPen(QPen(colour, 2.0))
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawRect(rect.adjusted(1, 1, -1, -1))
    p.restore()
