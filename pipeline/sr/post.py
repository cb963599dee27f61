"""Pixel operations around the model passes: Clarity's downscaling and sharpen, resizes.

Arrays are H×W×C (or H×W) uint8 / uint16, as :mod:`pipeline.io.load` produces them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["downscale_like_clarity", "lanczos_resize", "sharpen"]


def _to_pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr)


def lanczos_resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size = (width, height)`` with Pillow's Lanczos, any channel count or depth."""
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    if arr.dtype == np.uint8:
        return np.asarray(_to_pil(arr).resize(size, Image.Resampling.LANCZOS))
    # Pillow resizes 16-bit data only as single float channels.
    planes = arr[..., None] if arr.ndim == 2 else arr
    out = np.empty((size[1], size[0], planes.shape[2]), dtype=arr.dtype)
    info = np.iinfo(arr.dtype)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(planes[..., c].astype(np.float32), mode="F")
        resized = np.asarray(plane.resize(size, Image.Resampling.LANCZOS))
        out[..., c] = np.clip(np.rint(resized), info.min, info.max)
    return out[..., 0] if arr.ndim == 2 else out


def _bilinear_no_antialias(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV ``INTER_LINEAR`` semantics: half-pixel centres, two taps, no anti-aliasing."""
    h, w = arr.shape[:2]
    out_w, out_h = size

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    src = arr.astype(np.float32)
    fx = fx[None, :, None] if arr.ndim == 3 else fx[None, :]
    fy = fy[:, None, None] if arr.ndim == 3 else fy[:, None]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    info = np.iinfo(arr.dtype)
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), info.min, info.max).astype(arr.dtype)


def downscale_like_clarity(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """Clarity's ``downscaling``: longer side → ``resolution`` (bilinear), then a JPEG q95 trip.

    The JPEG round trip is part of what Clarity does (it cleans up the image before the
    upscale), so it is reproduced, not skipped."""
    h, w = rgb.shape[:2]
    k = resolution / max(w, h)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    resized = _bilinear_no_antialias(rgb, size)
    eight_bit = resized if resized.dtype == np.uint8 else _to_uint8(resized)
    buffer = io.BytesIO()
    Image.fromarray(eight_bit).save(buffer, "JPEG", quality=95)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return decoded if rgb.dtype == np.uint8 else decoded.astype(np.uint16) * 257


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.rint(arr.astype(np.float32) / 257.0).astype(np.uint8)


def sharpen(rgb: np.ndarray, amount: float) -> np.ndarray:
    """Clarity's sharpen: a 3×3 kernel, neighbours ``-amount/10``, centre ``1 + 0.8·amount``.

    8-bit images go through Pillow's ``Kernel`` filter exactly as Clarity does (edge pixels
    unchanged); 16-bit images use the same kernel in numpy."""
    if amount == 0:
        return rgb
    a = -amount / 10
    kernel = [a] * 9
    kernel[4] = 1 - 8 * a
    if rgb.dtype == np.uint8:
        return np.asarray(_to_pil(rgb).filter(ImageFilter.Kernel((3, 3), kernel, scale=1)))
    src = rgb.astype(np.float32)
    out = src.copy()
    core = sum(
        kernel[(dy + 1) * 3 + (dx + 1)]
        * src[1 + dy : src.shape[0] - 1 + dy, 1 + dx : src.shape[1] - 1 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    out[1:-1, 1:-1] = core
    info = np.iinfo(rgb.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(rgb.dtype)
