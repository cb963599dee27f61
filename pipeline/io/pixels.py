"""Pixel-array helpers for loading and saving (and the tiled VAE's row blocks): orientation,
bit depth, compositing, luma and the push-pull fill behind
:func:`pipeline.io.load.bleed_transparent`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = [
    "bleed_transparent",
    "key_alpha",
    "luma",
    "match_depth",
    "on_white",
    "orient",
    "row_blocks",
    "to_8bit",
]


_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation so the pixels are upright."""
    return np.ascontiguousarray(_ORIENT[orientation](a))


def to_8bit(a: np.ndarray) -> np.ndarray:
    """uint16 → uint8, rounded (v / 257), in row blocks to bound the temporary memory."""
    if a.dtype == np.uint8:
        return a
    out = np.empty(a.shape, np.uint8)
    for rows in row_blocks(a.shape[0], a[:1].size):
        out[rows] = (a[rows].astype(np.uint32) + 128) // 257
    return out


def match_depth(a: np.ndarray, dtype: np.dtype[Any] | type) -> np.ndarray:
    """Bring an 8- or 16-bit array to the other's depth (×257 up, rounded down)."""
    if a.dtype == dtype:
        return a
    if dtype == np.uint16:
        return a.astype(np.uint16) * 257
    return to_8bit(a)


def row_blocks(height: int, row_size: int, budget: int = 1 << 22) -> Iterator[slice]:
    """Row slices of about ``budget`` elements: whole-image temporaries of a 64 MP output in
    uint32 would need gigabytes."""
    step = max(1, budget // max(1, row_size))
    for start in range(0, height, step):
        yield slice(start, start + step)


def key_alpha(values: np.ndarray, key: Any, top: int) -> np.ndarray | None:
    """Alpha from a tRNS-style transparent colour key (one value, or an RGB triple)."""
    if isinstance(key, int):
        hit = values == key
    elif isinstance(key, tuple) and len(key) == 3 and values.ndim == 3:
        hit = (values == np.asarray(key, values.dtype)).all(axis=2)
    else:
        return None
    return np.where(hit, 0, top).astype(values.dtype)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite 8-bit RGB over white (JPEG has no alpha; Clarity does the same)."""
    out = np.empty(rgb.shape, np.uint8)
    for rows in row_blocks(rgb.shape[0], rgb[:1].size * 2):
        a = alpha[rows, :, None].astype(np.uint16)
        out[rows] = (rgb[rows] * a + 255 * (255 - a) + 127) // 255
    return out


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's convert("L"), in the array's own bit depth."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for rows in row_blocks(rgb.shape[0], rgb[:1].size * 4):
        block = rgb[rows].astype(np.uint32)
        out[rows] = (block[..., 0] * 299 + block[..., 1] * 587 + block[..., 2] * 114 + 500) // 1000
    return out


def bleed_transparent(rgb: np.ndarray, alpha: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Give (nearly) transparent pixels the colour of the nearest opaque ones.

    Transparent pixels often hold black or garbage colour; an upscaler that sees them smears it
    into the edges of the visible image (the "halo"/"bloom" complaint). A push-pull fill
    replaces them: average the visible colours down an image pyramid, then fill each level's
    holes from the coarser level, smoothly upsampled. Pixels with alpha above ``threshold``
    (a fraction of full opacity) are returned unchanged, bit for bit."""
    if rgb.shape[:2] != alpha.shape[:2]:
        raise ValueError(f"alpha is {alpha.shape[:2]}, the image is {rgb.shape[:2]}")
    top = np.iinfo(alpha.dtype).max if alpha.dtype.kind in "ui" else 1.0
    keep = alpha.reshape(alpha.shape[:2]) > threshold * top
    if keep.all() or not keep.any():
        return rgb.copy()
    colours = [rgb.astype(np.float32)]
    weights = [keep.astype(np.float32)]
    while max(colours[-1].shape[:2]) > 1:
        colour, weight = _pull(colours[-1], weights[-1])
        colours.append(colour)
        weights.append(weight)
    filled = colours[-1]
    for level in range(len(colours) - 2, -1, -1):
        coarse = _upsample(filled, colours[level].shape[:2])
        # Blocks that are partly covered mix their own average with the coarser fill.
        w = np.clip(weights[level] * 2.0, 0.0, 1.0)[:, :, None]
        filled = colours[level] * w + coarse * (1.0 - w)
    if rgb.dtype.kind in "ui":
        info = np.iinfo(rgb.dtype)
        filled = np.clip(np.rint(filled), info.min, info.max)
    out = filled.astype(rgb.dtype)
    out[keep] = rgb[keep]
    return out


def _pull(colour: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pyramid level down: weighted 2×2 averages of colour, plain averages of weight."""
    h, w = weight.shape
    if h % 2 or w % 2:  # pad with zero weight, which contributes nothing
        colour = np.pad(colour, ((0, h % 2), (0, w % 2), (0, 0)))
        weight = np.pad(weight, ((0, h % 2), (0, w % 2)))
    h2, w2 = weight.shape[0] // 2, weight.shape[1] // 2
    wsum = weight.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    csum = (colour * weight[:, :, None]).reshape(h2, 2, w2, 2, -1).sum(axis=(1, 3))
    averaged = csum / np.maximum(wsum, 1e-12)[:, :, None]
    return averaged, wsum / 4.0


def _upsample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Double a level's size with bilinear weights (¾ near, ¼ far), cropped to ``shape``."""
    for axis in (0, 1):
        n = a.shape[axis]
        before = np.take(a, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
        after = np.take(a, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
        even, odd = 0.75 * a + 0.25 * before, 0.75 * a + 0.25 * after
        a = np.stack([even, odd], axis=axis + 1).reshape(
            *a.shape[:axis], 2 * n, *a.shape[axis + 1 :]
        )
    return a[: shape[0], : shape[1]]
