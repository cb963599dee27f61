"""A multi-resolution tile pyramid: what lets the compare view stay smooth on a 64 MP output.

Level 0 is the image at full size, each next level half the previous one (2×2 box average,
rounded up, so level pixel ``(u, v)`` covers exactly level-0 pixels ``[u·2ᴸ, (u+1)·2ᴸ)``), down to
a level that fits in :data:`MIN_SIDE` pixels. Every level is one contiguous array already in the
layout Qt's raster engine draws fastest (``Format_RGB32``, or ``Format_ARGB32_Premultiplied`` when
the image has transparency), so a tile is a zero-copy ``QImage`` view into it: fetching a tile
costs microseconds and holds no pixels of its own, and the memory is the pyramid itself (4/3 of
the 4-byte image: about 340 MB for 64 MP), never a second cache of converted tiles.

A painter picks the level whose pixels are just larger than a device pixel
(:meth:`Pyramid.level_for`), so it never scales down by more than 2× and never reads more than
about twice the screen's pixels, whatever the zoom; then it draws only the tiles that intersect
the visible rectangle (:meth:`Pyramid.tiles_in`).

Building runs in a worker thread (:func:`build_pyramid`): the 8- or 16-bit RGB(A) arrays from
:func:`pipeline.io.load.load_image` are converted strip by strip (Qt's SIMD converters do the
RGB→RGB32 work, Pillow's ``reduce`` the box filter), so no float copy and no second full-size
temporary is ever made. QImage and QPainter on a QImage are safe outside the GUI thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image
from PySide6.QtGui import QImage, QPainter

TILE = 512  # pixels per tile side, at every level
MIN_SIDE = 256  # the coarsest level fits in this many pixels
_STRIP = 256  # rows reduced at a time (bounds the temporaries to a few MB)
_CONVERT_STRIP = 64  # rows converted at a time: each holds the GIL for well under a millisecond

_OPAQUE = QImage.Format.Format_RGB32
_ALPHA = QImage.Format.Format_ARGB32_Premultiplied


class BuildCancelled(Exception):
    """The build was abandoned because a newer image replaced the one being built."""


class Pyramid:
    """Levels of one image, each addressable as ``TILE``-sized zero-copy QImage tiles.

    ``fetches`` counts :meth:`tile` calls (the tests and the benchmark read it to prove that a
    paint touches only visible tiles)."""

    def __init__(self, levels: list[np.ndarray], has_alpha: bool, tile: int = TILE) -> None:
        if not levels or any(a.ndim != 3 or a.shape[2] != 4 or a.dtype != np.uint8 for a in levels):
            raise ValueError("levels must be H×W×4 uint8 arrays")
        self.levels = levels
        self.has_alpha = has_alpha
        self.tile_size = tile
        self.format = _ALPHA if has_alpha else _OPAQUE
        self._flat = [np.ascontiguousarray(a).reshape(-1).data for a in levels]  # memoryviews
        self.fetches = 0

    @property
    def width(self) -> int:
        return int(self.levels[0].shape[1])

    @property
    def height(self) -> int:
        return int(self.levels[0].shape[0])

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.levels)

    def level_size(self, level: int) -> tuple[int, int]:
        h, w = self.levels[level].shape[:2]
        return int(w), int(h)

    def grid(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles at a level."""
        w, h = self.level_size(level)
        t = self.tile_size
        return (w + t - 1) // t, (h + t - 1) // t

    def level_for(self, device_per_pixel: float) -> int:
        """The coarsest level whose pixels still cover at least one device pixel each.

        ``device_per_pixel`` is how many device pixels one level-0 pixel spans on screen; at 1 or
        more (100% and beyond) that is level 0, read with nearest-neighbour sampling."""
        if device_per_pixel >= 1.0 or device_per_pixel <= 0.0:
            return 0
        level = math.floor(math.log2(1.0 / device_per_pixel) + 1e-9)
        return max(0, min(self.level_count - 1, level))

    def tiles_in(
        self, level: int, x0: float, y0: float, x1: float, y1: float
    ) -> Iterator[tuple[int, int]]:
        """The (column, row) of every tile that intersects the level-pixel rectangle
        ``[x0, x1) × [y0, y1)``, row by row."""
        w, h = self.level_size(level)
        t = self.tile_size
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        if x1 <= x0 or y1 <= y0:
            return
        c0, r0 = int(x0 // t), int(y0 // t)
        c1, r1 = math.ceil(x1 / t), math.ceil(y1 / t)
        for row in range(r0, r1):
            for col in range(c0, c1):
                yield col, row

    def tile(self, level: int, col: int, row: int) -> QImage:
        """A view of one tile's pixels (no copy; valid while this pyramid lives)."""
        self.fetches += 1
        w, h = self.level_size(level)
        t = self.tile_size
        x0, y0 = col * t, row * t
        tw, th = min(t, w - x0), min(t, h - y0)
        if tw <= 0 or th <= 0:
            raise IndexError(f"tile ({col}, {row}) is outside level {level}")
        stride = w * 4
        offset = y0 * stride + x0 * 4
        span = (th - 1) * stride + tw * 4
        return QImage(self._flat[level][offset : offset + span], tw, th, stride, self.format)


def _to_8bit(strip: np.ndarray) -> np.ndarray:
    if strip.dtype == np.uint8:
        return np.ascontiguousarray(strip)
    if strip.dtype == np.uint16:
        return (strip >> 8).astype(np.uint8)
    return np.clip(strip, 0, 255).astype(np.uint8)


def _strip_image(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[QImage, np.ndarray]:
    """One strip as a QImage Qt can convert from (and the array it views, to keep alive)."""
    rgb8 = _to_8bit(rgb)
    if rgb8.ndim == 2:
        rgb8 = np.repeat(rgb8[:, :, None], 3, axis=2)
    h, w = rgb8.shape[:2]
    if alpha is None:
        data = np.ascontiguousarray(rgb8)
        return QImage(data.data, w, h, w * 3, QImage.Format.Format_RGB888), data
    data = np.empty((h, w, 4), np.uint8)
    data[:, :, :3] = rgb8
    data[:, :, 3] = _to_8bit(alpha)
    return QImage(data.data, w, h, w * 4, QImage.Format.Format_RGBA8888), data


def _convert_base(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    check: Callable[[], None],
    progress: Callable[[float], None],
) -> np.ndarray:
    """Level 0 in the display layout, converted by Qt strip by strip into one array."""
    h, w = rgb.shape[:2]
    out = np.empty((h, w, 4), np.uint8)
    target = QImage(out.data, w, h, w * 4, _ALPHA if alpha is not None else _OPAQUE)
    painter = QPainter(target)
    try:
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        for y in range(0, h, _CONVERT_STRIP):
            check()
            rows = slice(y, min(h, y + _CONVERT_STRIP))
            # Touch the fresh pages with numpy first: it releases the GIL, and the first write
            # to new memory (page faults: most of the cost at 64 MP) would otherwise happen
            # inside drawImage, which holds it and would stall the GUI thread.
            out[rows].fill(0)
            image, _keep = _strip_image(rgb[rows], None if alpha is None else alpha[rows])
            painter.drawImage(0, y, image)
            progress(rows.stop / h)
    finally:
        painter.end()
    return out


def half_level(src: np.ndarray, check: Callable[[], None] = lambda: None) -> np.ndarray:
    """The next level: a 2×2 box average of a 4-byte-per-pixel level, sizes rounded up (an odd
    last row or column is averaged on its own). The four bytes are averaged alike, which is right
    for premultiplied alpha."""
    h, w = src.shape[:2]
    out = np.empty(((h + 1) // 2, (w + 1) // 2, 4), np.uint8)
    for oy in range(0, out.shape[0], _STRIP):
        check()
        strip = np.ascontiguousarray(src[2 * oy : 2 * (oy + _STRIP)])
        im = Image.frombuffer("RGBX", (w, strip.shape[0]), strip, "raw", "RGBX", 0, 1)
        reduced = np.asarray(im.reduce(2))
        out[oy : oy + reduced.shape[0]] = reduced
    return out


def build_pyramid(
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[float], None] | None = None,
    tile: int = TILE,
    min_side: int = MIN_SIDE,
) -> Pyramid:
    """Build every level of an H×W×3 (or H×W) uint8/uint16 image with optional H×W alpha.

    ``cancelled`` is polled between strips (raises :class:`BuildCancelled`); ``progress`` gets
    0..1. Peak extra memory is the pyramid itself plus a few MB of strips."""
    if rgb.ndim not in (2, 3) or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected an H×W×3 image, got shape {rgb.shape}")

    def check() -> None:
        if cancelled is not None and cancelled():
            raise BuildCancelled

    report = progress or (lambda _f: None)
    # Progress weights by pixels written: level 0 is 3/4 of the work, the rest 1/4.
    base = _convert_base(rgb, alpha, check, lambda f: report(0.75 * f))
    levels = [base]
    while max(levels[-1].shape[:2]) > min_side:
        levels.append(half_level(levels[-1], check))
        report(min(1.0, 0.75 + 0.25 * (1 - 4.0 ** (1 - len(levels)))))
    report(1.0)
    return Pyramid(levels, alpha is not None, tile)


def preview_image(rgb: np.ndarray, alpha: np.ndarray | None, max_side: int = 1024) -> QImage:
    """A quick, nearest-sampled small copy (milliseconds even at 64 MP): shown while the
    pyramid is built. Owns its pixels."""
    h, w = rgb.shape[:2]
    step = max(1, math.ceil(max(h, w) / max_side))
    image, _keep = _strip_image(
        rgb[::step, ::step], None if alpha is None else alpha[::step, ::step]
    )
    return image.copy()
