"""Colour-profile helpers for loading and saving: sRGB detection and conversions.

Eight-bit RGB and CMYK pixels go through Pillow's ImageCms (LittleCMS). Pillow has no 16-bit
RGB mode and ImageCms refuses grayscale-to-grayscale transforms, so 16-bit RGB and every
grayscale image are converted here in numpy instead, for the "matrix/TRC" profiles that cameras,
editors and displays use (sRGB, Adobe RGB, Display P3, ProPhoto, gray gamma and dot-gain
profiles). That arithmetic is the relative-colorimetric transform LittleCMS itself applies to
such profiles, so both paths agree; a LUT-based profile at 16 bits falls back to 8-bit
ImageCms (the caller says so in a warning).

ImageCms is imported lazily so that ``import pipeline.io.load`` stays fast.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image, ImageCms

__all__ = [
    "MatrixShaper",
    "colour_space",
    "gray_from_srgb_lut",
    "gray_to_srgb_lut",
    "is_srgb",
    "matrix_shaper",
    "rgb16_from_srgb",
    "rgb16_to_srgb",
    "srgb_profile",
    "transform8",
    "valid_profile",
]

Curve = Callable[[np.ndarray], np.ndarray]


def colour_space(icc: bytes) -> str | None:
    """The profile's data colour space: "RGB", "GRAY", "CMYK", "LAB", ... or None if not ICC."""
    if len(icc) < 132 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("latin-1").strip().upper()


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """LittleCMS's built-in sRGB profile, as embeddable bytes."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@functools.lru_cache(maxsize=32)
def valid_profile(icc: bytes) -> bool:
    """Whether LittleCMS accepts ``icc`` at all (damaged profiles are common in the wild)."""
    from PIL import ImageCms

    try:
        ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        return False
    return True


@functools.lru_cache(maxsize=16)
def _transform(src: bytes, dst: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform:
    from PIL import ImageCms

    # NOCACHE: LittleCMS's one-pixel cache makes a shared transform unsafe across threads.
    return ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(src)),
        ImageCms.ImageCmsProfile(io.BytesIO(dst)),
        in_mode,
        out_mode,
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
        flags=ImageCms.Flags.NOCACHE,
    )


def transform8(image: Image.Image, src: bytes, dst: bytes, out_mode: str) -> Image.Image:
    """Convert an 8-bit Pillow image from profile ``src`` to profile ``dst`` with LittleCMS."""
    from PIL import ImageCms

    out = ImageCms.applyTransform(image, _transform(src, dst, image.mode, out_mode))
    assert out is not None  # None only for inPlace=True
    return out


@functools.lru_cache(maxsize=32)
def is_srgb(icc: bytes) -> bool:
    """Whether an RGB profile renders like sRGB (within one 8-bit level on a colour grid).

    Checking behaviour rather than the name catches the many sRGB variants ("sRGB IEC61966-2.1",
    "sRGB built-in", camera vendors' copies) and lets such images skip a lossy round trip."""
    if icc == srgb_profile():
        return True
    if colour_space(icc) != "RGB" or not valid_profile(icc):
        return False
    from PIL import Image, ImageCms

    levels = np.linspace(0, 255, 9).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(27, 27, 3)
    try:
        out = transform8(Image.fromarray(grid, "RGB"), icc, srgb_profile(), "RGB")
    except (OSError, ValueError, ImageCms.PyCMSError):
        return False
    return int(np.abs(np.asarray(out).astype(np.int16) - grid).max()) <= 1


# --- matrix/TRC profiles in numpy -----------------------------------------------------------


@dataclass(frozen=True)
class MatrixShaper:
    """A matrix/TRC profile: per-channel tone curves and, for RGB, the matrix to XYZ (D50)."""

    curves: tuple[Curve, ...]  # 3 for RGB, 1 for gray: device value (0…1) → linear
    matrix: np.ndarray | None  # 3×3, columns = the red, green and blue colorants; None for gray


def _tags(icc: bytes) -> dict[bytes, bytes]:
    (count,) = struct.unpack_from(">I", icc, 128)
    tags = {}
    for i in range(min(count, 200)):
        sig, offset, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
        tags[sig] = icc[offset : offset + size]
    return tags


def _s15(data: bytes, offset: int, n: int) -> list[float]:
    return [v / 65536 for v in struct.unpack_from(f">{n}i", data, offset)]


def _curve(tag: bytes) -> Curve:
    kind = tag[:4]
    if kind == b"curv":
        (n,) = struct.unpack_from(">I", tag, 8)
        if n == 0:
            return lambda x: x
        if n == 1:
            gamma = struct.unpack_from(">H", tag, 12)[0] / 256
            return lambda x: np.power(x, gamma)
        table = np.frombuffer(tag, ">u2", n, 12).astype(np.float64) / 65535
        grid = np.linspace(0.0, 1.0, n)
        return lambda x: np.interp(x, grid, table)
    if kind == b"para":
        (fn,) = struct.unpack_from(">H", tag, 8)
        nparams = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[fn]
        g, a, b, c, d, e, f = [*_s15(tag, 12, nparams), 0, 0, 0, 0, 0, 0][:7]
        if fn == 0:
            return lambda x: np.power(x, g)
        # Bring types 1-3 to the general form of type 4: (aX+b)^g + e if X >= d else cX + f.
        if fn == 1:
            d, c = -b / a, 0.0
        elif fn == 2:
            d, e, f, c = -b / a, c, c, 0.0

        def para(x: np.ndarray) -> np.ndarray:
            high = np.power(np.clip(a * x + b, 0, None), g) + e
            return np.where(x >= d, high, c * x + f)

        return para
    raise ValueError(f"unsupported curve type {kind!r}")


@functools.lru_cache(maxsize=16)
def matrix_shaper(icc: bytes) -> MatrixShaper | None:
    """Parse a matrix/TRC RGB profile or a TRC gray profile; None for anything else."""
    try:
        tags = _tags(icc)
        space = colour_space(icc)
        if space == "GRAY" and b"kTRC" in tags:
            return MatrixShaper((_curve(tags[b"kTRC"]),), None)
        if space == "RGB" and all(t in tags for t in (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC")):
            columns = [_s15(tags[t], 8, 3) for t in (b"rXYZ", b"gXYZ", b"bXYZ")]
            curves = tuple(_curve(tags.get(t, tags[b"rTRC"])) for t in (b"rTRC", b"gTRC", b"bTRC"))
            return MatrixShaper(curves, np.array(columns, dtype=np.float64).T)
    except (struct.error, ValueError, KeyError, ZeroDivisionError):
        return None
    return None


def _inverse(curve: Curve, samples: int = 65536) -> Curve:
    # Tone curves are monotonic; invert one by swapping the axes of a dense sampling.
    x = np.linspace(0.0, 1.0, samples)
    y = np.maximum.accumulate(np.clip(curve(x), 0.0, 1.0))
    return lambda v: np.interp(v, y, x)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, np.power((v + 0.055) / 1.055, 2.4))


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


@functools.lru_cache(maxsize=1)
def _srgb_matrix() -> np.ndarray:
    shaper = matrix_shaper(srgb_profile())
    if shaper is None or shaper.matrix is None:
        raise RuntimeError("LittleCMS's sRGB profile is not a matrix/TRC profile")
    return shaper.matrix


def _levels(bits: int) -> np.ndarray:
    return np.arange(2**bits, dtype=np.float64) / (2**bits - 1)


def _quantise(v: np.ndarray, dtype: type) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.clip(np.rint(v * top), 0, top).astype(dtype)


@functools.lru_cache(maxsize=16)
def gray_to_srgb_lut(icc: bytes, bits: int) -> np.ndarray | None:
    """Lookup table from a gray profile's values to sRGB-encoded gray (R = G = B)."""
    shaper = matrix_shaper(icc)
    if shaper is None or shaper.matrix is not None:
        return None
    dtype = np.uint8 if bits == 8 else np.uint16
    return _quantise(_srgb_encode(shaper.curves[0](_levels(bits))), dtype)


@functools.lru_cache(maxsize=16)
def gray_from_srgb_lut(icc: bytes, bits: int) -> np.ndarray | None:
    """Lookup table from sRGB-encoded gray to a gray profile's values (inverse of the above)."""
    shaper = matrix_shaper(icc)
    if shaper is None or shaper.matrix is not None:
        return None
    dtype = np.uint8 if bits == 8 else np.uint16
    return _quantise(_inverse(shaper.curves[0])(_srgb_decode(_levels(bits))), dtype)


def rgb16_to_srgb(rgb: np.ndarray, icc: bytes) -> np.ndarray | None:
    """Convert uint16 RGB in a matrix/TRC profile to sRGB; None if the profile is not one."""
    shaper = matrix_shaper(icc)
    if shaper is None or shaper.matrix is None:
        return None
    levels = _levels(16)
    linear = np.empty(rgb.shape, np.float32)
    for c in range(3):  # a 65536-entry table per channel is cheaper than evaluating curves
        linear[..., c] = shaper.curves[c](levels).astype(np.float32)[rgb[..., c]]
    to_srgb = (np.linalg.inv(_srgb_matrix()) @ shaper.matrix).astype(np.float32)
    return _quantise(_srgb_encode(linear @ to_srgb.T), np.uint16)


def rgb16_from_srgb(rgb: np.ndarray, icc: bytes) -> np.ndarray | None:
    """Convert uint16 sRGB to a matrix/TRC profile; None if the profile is not one."""
    shaper = matrix_shaper(icc)
    if shaper is None or shaper.matrix is None:
        return None
    decode = _srgb_decode(_levels(16)).astype(np.float32)
    linear = decode[rgb]
    to_dst = (np.linalg.inv(shaper.matrix) @ _srgb_matrix()).astype(np.float32)
    linear = np.clip(linear @ to_dst.T, 0.0, 1.0)
    out = np.empty(rgb.shape, np.uint16)
    for c in range(3):
        out[..., c] = _quantise(_inverse(shaper.curves[c])(linear[..., c]), np.uint16)
    return out
