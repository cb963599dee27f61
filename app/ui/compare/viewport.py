"""Zoom and pan of the compare view, as plain arithmetic (no Qt), shared by every pane.

Coordinates: the *scene* is the "after" image's pixel grid (both images are mapped onto it); a
*pane* is the widget area one image is drawn in, in logical (device-independent) pixels. One
Viewport serves both panes of the side-by-side mode, which is what keeps them in sync: a zoom or
pan made in either pane is a change of this one state, read by both.

``zoom`` counts *device* pixels per scene pixel, so 1.0 is pixel-exact 1:1 on a HiDPI screen
too; ``scale`` is the same in logical pixels (``zoom / dpr``), what a QPainter works in.
"""

from __future__ import annotations

import math

MAX_ZOOM = 32.0  # 3200%: far enough to judge single pixels of the result
# Zoom steps for the keyboard: powers of √2, so 50%, 100%, 200%, 400% are always hit exactly.
_STEPS = tuple(2.0 ** (k / 2) for k in range(-24, 11))


class Viewport:
    """What part of the scene a pane shows: zoom, centre, and whether it tracks "fit"."""

    def __init__(self) -> None:
        self.scene_w = 0
        self.scene_h = 0
        self.pane_w = 1.0
        self.pane_h = 1.0
        self.dpr = 1.0
        self.zoom = 1.0
        self.cx = 0.0
        self.cy = 0.0
        # True while the view should re-fit on every resize (until the person zooms or pans).
        self.fitted = True

    # --- derived values -----------------------------------------------------------------------

    @property
    def has_scene(self) -> bool:
        return self.scene_w > 0 and self.scene_h > 0

    @property
    def scale(self) -> float:
        """Logical pixels per scene pixel."""
        return self.zoom / self.dpr

    def fit_zoom(self) -> float:
        if not self.has_scene:
            return 1.0
        return min(self.pane_w / self.scene_w, self.pane_h / self.scene_h) * self.dpr

    def min_zoom(self) -> float:
        """Never smaller than fit (nothing more to see), unless 100% itself is smaller."""
        return min(self.fit_zoom(), 1.0)

    def max_zoom(self) -> float:
        return max(MAX_ZOOM, self.fit_zoom())

    def origin(self) -> tuple[float, float]:
        """Where scene point (0, 0) lands, relative to the pane's top-left, in logical pixels."""
        s = self.scale
        return self.pane_w / 2 - self.cx * s, self.pane_h / 2 - self.cy * s

    def to_scene(self, px: float, py: float) -> tuple[float, float]:
        s = self.scale
        return self.cx + (px - self.pane_w / 2) / s, self.cy + (py - self.pane_h / 2) / s

    def to_pane(self, x: float, y: float) -> tuple[float, float]:
        ox, oy = self.origin()
        return ox + x * self.scale, oy + y * self.scale

    def can_pan(self) -> bool:
        s = self.scale
        return self.scene_w * s > self.pane_w + 0.5 or self.scene_h * s > self.pane_h + 0.5

    # --- changes ------------------------------------------------------------------------------

    def set_scene(self, width: int, height: int) -> None:
        """A new scene size. A different image of another size keeps the same part of the
        picture on screen (centre and apparent size), unless the view is tracking fit."""
        if (width, height) == (self.scene_w, self.scene_h):
            return
        old_w, old_h = self.scene_w, self.scene_h
        self.scene_w, self.scene_h = max(0, width), max(0, height)
        if not self.has_scene:
            return
        if self.fitted or old_w <= 0 or old_h <= 0:
            self.fit()
            return
        self.cx *= self.scene_w / old_w
        self.cy *= self.scene_h / old_h
        self.zoom /= self.scene_w / old_w
        self._limit()

    def set_pane(self, width: float, height: float, dpr: float) -> None:
        self.pane_w, self.pane_h = max(1.0, width), max(1.0, height)
        self.dpr = dpr if dpr > 0 else 1.0
        if self.fitted:
            self.fit()
        else:
            self._limit()

    def fit(self) -> None:
        self.fitted = True
        self.zoom = self.fit_zoom()
        self.cx, self.cy = self.scene_w / 2, self.scene_h / 2

    def set_zoom(self, zoom: float, anchor: tuple[float, float] | None = None) -> None:
        """Zoom so that the scene point under ``anchor`` (pane coordinates; the pane centre when
        None) stays under it."""
        if not self.has_scene or not math.isfinite(zoom) or zoom <= 0:
            return
        ax, ay = anchor if anchor is not None else (self.pane_w / 2, self.pane_h / 2)
        sx, sy = self.to_scene(ax, ay)
        self.zoom = min(self.max_zoom(), max(self.min_zoom(), zoom))
        self.fitted = False
        s = self.scale
        self.cx = sx - (ax - self.pane_w / 2) / s
        self.cy = sy - (ay - self.pane_h / 2) / s
        self._limit()

    def pan(self, dx: float, dy: float) -> None:
        """Move the picture by (dx, dy) logical pixels (the way a drag moves it)."""
        if not self.has_scene:
            return
        self.cx -= dx / self.scale
        self.cy -= dy / self.scale
        self.fitted = False if self.can_pan() else self.fitted
        self._limit()

    def step(self, up: bool) -> float:
        """The next keyboard zoom step above or below the current zoom."""
        if up:
            return next((z for z in _STEPS if z > self.zoom * 1.001), _STEPS[-1])
        return next((z for z in reversed(_STEPS) if z < self.zoom / 1.001), _STEPS[0])

    def _limit(self) -> None:
        """Keep the zoom in range and the picture on screen: a dimension smaller than the pane
        is centred, a larger one may not leave an empty margin at either edge."""
        self.zoom = min(self.max_zoom(), max(self.min_zoom(), self.zoom))
        s = self.scale
        self.cx = _clamp_axis(self.cx, self.scene_w, self.pane_w, s)
        self.cy = _clamp_axis(self.cy, self.scene_h, self.pane_h, s)


def _clamp_axis(centre: float, length: float, pane: float, scale: float) -> float:
    if length * scale <= pane:
        return length / 2
    half = pane / (2 * scale)
    return min(length - half, max(half, centre))
