"""Saving outputs: PNG, JPEG or WebP, atomically, with everything that describes them.

A crash never leaves half a file or destroys an older one. Each output carries what users of
other upscalers keep losing: the run's parameters in A1111's ``parameters`` form (a PNG text
chunk, or the EXIF UserComment of a JPEG/WebP), the source's EXIF (Orientation reset, since the
pixels are upright now) and XMP, and its colour profile, so the output looks the same as the
source in a colour-managed viewer. 16-bit results become 16-bit PNGs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image

from pipeline.errors import ImageError
from pipeline.io import _exif, _png16
from pipeline.io import icc as _icc  # aliased: the code names the profile it writes `icc`
from pipeline.io import pixels as _pixels  # and the arrays it writes `pixels`
from pipeline.io._sniff import SUFFIX_FORMAT
from pipeline.io.atomic import atomic_write
from pipeline.metadata import RunInfo, format_infotext

if TYPE_CHECKING:
    from pipeline.io.load import SourceInfo

__all__ = ["save_image"]

log = logging.getLogger(__name__)

_SAVE_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
_SAVE_SUFFIX = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}


# --- saving -----------------------------------------------------------------------------------


def _target(path: str | os.PathLike[str], fmt: str | None) -> tuple[Path, str]:
    target = Path(os.fspath(path))
    from_suffix = _SAVE_FORMATS.get(target.suffix.lower().lstrip("."))
    if fmt is None:
        if from_suffix is None:
            raise ImageError(
                "cannot tell the output format from the file name; use .png, .jpg or .webp",
                target,
            )
        return target, from_suffix
    chosen = _SAVE_FORMATS.get(fmt.lower().lstrip("."))
    if chosen is None:
        raise ImageError(f"cannot save as {fmt!r}; the output formats are png, jpg and webp")
    if from_suffix != chosen:  # never write a file whose name lies about its content
        suffix = _SAVE_SUFFIX[chosen]
        if target.suffix.lower() in SUFFIX_FORMAT:
            target = target.with_suffix(suffix)
        else:
            target = target.with_name(target.name + suffix)
    return target, chosen


def _check_arrays(
    rgb: np.ndarray, alpha: np.ndarray | None, target: Path
) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(rgb, np.ndarray) or rgb.dtype not in (np.uint8, np.uint16):
        raise ImageError("cannot save: the pixels must be a uint8 or uint16 numpy array", target)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"cannot save: expected H×W×3 pixels, got shape {rgb.shape}", target)
    if alpha is not None:
        if not isinstance(alpha, np.ndarray) or alpha.dtype not in (np.uint8, np.uint16):
            raise ImageError("cannot save: alpha must be a uint8 or uint16 numpy array", target)
        alpha = alpha[:, :, 0] if alpha.ndim == 3 and alpha.shape[2] == 1 else alpha
        if alpha.shape != rgb.shape[:2]:
            raise ImageError(
                f"cannot save: alpha is {alpha.shape}, the image is {rgb.shape[:2]}", target
            )
        alpha = _pixels.match_depth(alpha, rgb.dtype)
        if int(alpha.min()) == np.iinfo(alpha.dtype).max:
            alpha = None
    return rgb, alpha


def _output_colour(
    pixels: np.ndarray, gray: bool, source: SourceInfo | None
) -> tuple[np.ndarray, bytes | None]:
    """Convert sRGB pixels back to the source's profile where it had its own; return the pixels
    and the profile to embed (the source's, or sRGB; none for untagged gray)."""
    icc = source.icc_profile if source else None
    space = _icc.colour_space(icc) if icc else None
    if icc and not _icc.valid_profile(icc):
        icc = space = None
    if gray:
        if icc and space == "GRAY":
            lut = _icc.gray_from_srgb_lut(icc, 16 if pixels.dtype == np.uint16 else 8)
            if lut is not None:
                return lut[pixels], icc
        return pixels, None
    if not icc or space != "RGB":
        return pixels, _icc.srgb_profile()
    if _icc.is_srgb(icc):
        return pixels, icc
    if pixels.dtype == np.uint16:
        converted = _icc.rgb16_from_srgb(pixels, icc)
        if converted is not None:
            return converted, icc
        log.info("colour profile applied at 8-bit precision (not a matrix/TRC profile)")
        image = Image.fromarray(_pixels.to_8bit(pixels), "RGB")
        pixels8 = _icc.transform8(image, _icc.srgb_profile(), icc, "RGB")
        return np.asarray(pixels8).astype(np.uint16) * 257, icc
    image = Image.fromarray(pixels, "RGB")
    return np.asarray(_icc.transform8(image, _icc.srgb_profile(), icc, "RGB")), icc


def save_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    info: RunInfo | None = None,
    source: SourceInfo | None = None,
    fmt: str | None = None,
    quality: int = 95,
) -> Path:
    """Write an sRGB image as PNG, JPEG or WebP, atomically, with the run's metadata.

    ``fmt`` None takes the format from the suffix; a suffix that disagrees with ``fmt`` is
    replaced (the returned path is the one written). JPEG and WebP are 8-bit; a uint16 image
    becomes a 16-bit PNG. JPEG cannot hold alpha, so the image is put over white."""
    target, chosen = _target(path, fmt)
    if not 1 <= quality <= 100:
        raise ImageError(f"quality must be from 1 to 100, not {quality}", target)
    rgb, alpha = _check_arrays(rgb, alpha, target)
    try:
        _save(target, chosen, rgb, alpha, info, source, quality)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("there is not enough memory to encode this image", target) from None
    except Exception as exc:  # encoders, LittleCMS and file systems raise many kinds
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ImageError(f"the image could not be written ({reason})", target) from exc
    return target


def _save(
    target: Path,
    chosen: str,
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    info: RunInfo | None,
    source: SourceInfo | None,
    quality: int,
) -> None:
    height, width = rgb.shape[:2]
    if chosen != "png" and rgb.dtype == np.uint16:
        rgb = _pixels.to_8bit(rgb)
        alpha = None if alpha is None else _pixels.to_8bit(alpha)
    if chosen == "jpg" and alpha is not None:
        rgb, alpha = _pixels.on_white(rgb, alpha), None
    gray = source is not None and source.grayscale and chosen != "webp"  # WebP has no gray
    pixels = _pixels.luma(rgb) if gray else rgb
    pixels, icc = _output_colour(pixels, gray, source)
    text = format_infotext(info) if info is not None else None
    exif = _exif.output_exif(
        source.exif if source else None,
        (width, height),
        text if chosen != "png" else None,  # PNG carries it in a text chunk instead
        _exif.JPEG_EXIF_LIMIT if chosen == "jpg" else None,
    )
    xmp = _exif.update_xmp_size(source.xmp, (width, height)) if source and source.xmp else None
    if xmp and chosen == "jpg" and len(xmp) > 65504:
        log.warning("the source's XMP is too large for a JPEG and is left out")
        xmp = None

    def write(fp: BinaryIO) -> None:
        if chosen == "png" and pixels.dtype == np.uint16:
            _write_png16(fp, pixels, alpha, text, icc, exif, xmp)
        else:
            _write_pillow(fp, chosen, pixels, alpha, text, icc, exif, xmp, quality)

    atomic_write(target, write)


def _write_pillow(
    fp: BinaryIO,
    fmt: str,
    pixels: np.ndarray,
    alpha: np.ndarray | None,
    text: str | None,
    icc: bytes | None,
    exif: bytes | None,
    xmp: bytes | None,
    quality: int,
) -> None:
    if alpha is not None:
        planes = [pixels] if pixels.ndim == 2 else [pixels[:, :, c] for c in range(3)]
        image = Image.fromarray(np.dstack([*planes, alpha]), "LA" if pixels.ndim == 2 else "RGBA")
    else:
        image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    options: dict[str, Any] = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    if fmt == "png":
        from PIL import PngImagePlugin

        pnginfo = PngImagePlugin.PngInfo()
        if text is not None:
            pnginfo.add_text("parameters", text)  # iTXt by itself when not Latin-1
        if xmp:
            pnginfo.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
        image.save(fp, "PNG", pnginfo=pnginfo, **options)
    elif fmt == "jpg":
        image.save(fp, "JPEG", quality=quality, optimize=True, xmp=xmp or b"", **options)
    else:
        image.save(fp, "WEBP", quality=quality, xmp=xmp or b"", **options)


def _write_png16(
    fp: BinaryIO,
    pixels: np.ndarray,
    alpha: np.ndarray | None,
    text: str | None,
    icc: bytes | None,
    exif: bytes | None,
    xmp: bytes | None,
) -> None:
    chunks = []
    if icc:
        chunks.append(_png16.iccp_chunk(icc))
    if text is not None:
        chunks.append(_png16.text_chunk("parameters", text))
    if exif:
        chunks.append((b"eXIf", exif.removeprefix(b"Exif\0\0")))
    if xmp:
        chunks.append((b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp))
    planes = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if alpha is not None:
        planes = np.dstack([planes, alpha])
    _png16.encode(fp, planes, chunks)
