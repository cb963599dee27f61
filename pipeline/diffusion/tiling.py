"""Where the MultiDiffusion tiles go on the latent canvas, and how they are batched.

Pure arithmetic (no torch) so it can be tested and benchmarked on its own. The placement is the
one Clarity gets from the Tiled Diffusion extension, re-derived from its documented behaviour:

* a tile never exceeds the canvas (``tile = min(tile, canvas)``), so a canvas that fits in one
  tile is not tiled at all;
* the overlap asked for (4 latent px) is a *minimum*: ``cols = ceil((W - o) / (tw - o))`` and the
  tiles are then spread evenly (``x = min(int(col·dx), W - tw)`` with ``dx = (W - tw) / (cols-1)``),
  so every tile is full size and real overlaps are usually much larger than 4;
* tiles run in batches of at most ``batch``, balanced so that ``ceil(n / batches)`` tiles go
  in each (20 tiles at batch 8 → 7, 7, 6).

In ``wrap`` mode (seamless patterns) the canvas is a torus: tiles start every ``W / cols`` and may
run over the right/bottom edge, continuing at the left/top; a canvas smaller than a tile gets one
tile a little *larger* than the canvas, centred, so that every edge pixel is denoised with its
wrapped-around neighbours in view. Box coordinates may then be negative or run past the canvas:
the crop takes them modulo the canvas size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["WRAP_MARGIN", "Box", "TilePlan", "plan_tiles", "unet_pixels_ratio"]

WRAP_MARGIN = 8  # latent px of wrapped context on each side of a pattern canvas that fits a tile


@dataclass(frozen=True)
class Box:
    """One tile in latent pixels: top-left corner and size."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class TilePlan:
    width: int  # latent canvas
    height: int
    boxes: tuple[Box, ...]
    batches: tuple[tuple[int, ...], ...]  # indices into boxes, one tuple per model call
    wrap: bool = False

    @property
    def tile_w(self) -> int:
        return self.boxes[0].w

    @property
    def tile_h(self) -> int:
        return self.boxes[0].h

    @property
    def tiled(self) -> bool:
        return len(self.boxes) > 1

    def rebatched(self, batch: int) -> TilePlan:
        """The same tiles in smaller batches (what an out-of-memory retry does first)."""
        return TilePlan(
            self.width, self.height, self.boxes, _batches(len(self.boxes), batch), self.wrap
        )


def _positions(size: int, tile: int, overlap: int) -> list[int]:
    if tile >= size:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    if count <= 1:
        return [0]
    step = (size - tile) / (count - 1)
    return [min(int(i * step), size - tile) for i in range(count)]


def _wrapped_positions(size: int, tile: int, overlap: int) -> list[int]:
    # On a torus there is no edge: `count` tiles of `tile` cover `size` with at least `overlap`
    # between neighbours when count·(tile - overlap) ≥ size.
    if tile >= size:
        return [-((tile - size) // 2)]
    count = math.ceil(size / (tile - overlap))
    return [round(i * size / count) for i in range(count)]


def _batches(count: int, batch: int) -> tuple[tuple[int, ...], ...]:
    batch = max(1, batch)
    n_batches = math.ceil(count / batch)
    size = math.ceil(count / n_batches)
    return tuple(tuple(range(i, min(i + size, count))) for i in range(0, count, size))


def plan_tiles(
    width: int,
    height: int,
    tile_w: int,
    tile_h: int,
    *,
    overlap: int = 4,
    batch: int = 8,
    wrap: bool = False,
) -> TilePlan:
    """Plan the tiles of a ``width × height`` latent canvas (all sizes in latent pixels)."""
    if min(width, height, tile_w, tile_h) < 1:
        raise ValueError(f"bad tiling: canvas {width}×{height}, tile {tile_w}×{tile_h}")
    if wrap:
        tw, th = min(tile_w, width + 2 * WRAP_MARGIN), min(tile_h, height + 2 * WRAP_MARGIN)
    else:
        tw, th = min(tile_w, width), min(tile_h, height)
    # The extension shrinks the overlap for tiny tiles so a tile always advances.
    ov = max(0, min(overlap, min(tw, th) - 4))
    place = _wrapped_positions if wrap else _positions
    xs, ys = place(width, tw, ov), place(height, th, ov)
    boxes = tuple(Box(x, y, tw, th) for y in ys for x in xs)
    return TilePlan(width, height, boxes, _batches(len(boxes), batch), wrap)


def unet_pixels_ratio(plan: TilePlan) -> float:
    """Latent pixels the UNet processes per latent pixel of the canvas: the tiling overhead."""
    return sum(b.w * b.h for b in plan.boxes) / (plan.width * plan.height)
