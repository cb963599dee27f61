"""Safe image input: every picture that enters Clarifier passes here.

Loading turns any supported file into plain numpy arrays the engine can trust: upright (EXIF
orientation applied), in sRGB (embedded ICC profiles and CMYK converted with LittleCMS), 8 or
16 bits as stored, alpha kept apart. Whatever goes wrong (a missing, empty, truncated, mislabelled
or hostile file) becomes an :class:`~pipeline.errors.ImageError` that names the file and says
what is wrong in plain words, checked before any large allocation.

Reading back the parameters an output carries, and the output-size cap, live here too; saving is
:mod:`pipeline.io.save`.

numpy and Pillow only (no torch, no Qt); ImageCms, OpenCV and pillow-heif load on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from pipeline.errors import ImageError, OutputTooLarge
from pipeline.io import _exif, _png16, _sniff
from pipeline.io import icc as _icc  # aliased: the code names the profiles it reads `icc`
from pipeline.io import pixels as _pixels  # and the arrays it decodes `pixels`
from pipeline.metadata import RunInfo, parse_infotext
from pipeline.params import UpscaleParams

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "SUPPORTED_SUFFIXES",
    "LoadedImage",
    "SourceInfo",
    "bleed_transparent",
    "check_output_size",
    "load_image",
    "probe_image",
    "read_parameters_text",
    "read_run_info",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_PIXELS = 64_000_000

_HEIF_INSTALLED = importlib.util.find_spec("pillow_heif") is not None

_NOT_SCANNED = {".ico", ".psd"}  # readable when named, but not picked up from a folder
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    s
    for s, f in _sniff.SUFFIX_FORMAT.items()
    if s not in _NOT_SCANNED and (f != "HEIF" or _HEIF_INSTALLED)
)
# Formats we let Pillow try. Deliberately short: EPS would run Ghostscript, and formats without a
# signature (TGA) would let random bytes pass for an image.
_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "DIB", "GIF", "AVIF", "PPM", "QOI",
                "JPEG2000", "ICO", "PSD")  # fmt: skip
_FORMAT_NAMES = {"MPO": "JPEG", "DIB": "BMP"}


@dataclass(frozen=True)
class SourceInfo:
    """What a source image is, as stored (read from its header)."""

    path: str | None
    format: str  # "PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "AVIF", "HEIF", ...
    mode: str  # the original Pillow mode
    width: int  # after EXIF orientation is applied
    height: int
    bit_depth: int  # 8 or 16 bits per channel as stored (16 also for 32-bit integer/float)
    grayscale: bool
    has_alpha: bool
    frames: int
    # The source's own ICC profile (None if untagged); its EXIF with Orientation reset to 1,
    # ready to embed; its XMP with any tiff:Orientation reset to 1. Left out of repr: binary.
    icc_profile: bytes | None = field(repr=False)
    exif: bytes | None = field(repr=False)
    xmp: bytes | None = field(repr=False)


@dataclass
class LoadedImage:
    """Decoded pixels, ready for the engine."""

    rgb: np.ndarray  # H×W×3 uint8, or uint16 for 16-bit sources; sRGB; upright
    alpha: np.ndarray | None  # H×W, same dtype as rgb; None when absent or fully opaque
    source: SourceInfo
    warnings: list[str] = field(default_factory=list)  # plain-language notices


# --- opening files ----------------------------------------------------------------------------


@dataclass
class _Source:
    fp: BinaryIO
    path: Path | None
    head: bytes

    @property
    def name(self) -> str:
        return self.path.name if self.path else "the image"


@contextlib.contextmanager
def _open_source(src: str | os.PathLike[str] | bytes) -> Iterator[_Source]:
    """Open a path or in-memory bytes, turning every way that can fail into an ImageError."""
    if isinstance(src, bytes | bytearray | memoryview):
        fp: BinaryIO = io.BytesIO(bytes(src))
        path = None
    else:
        try:
            path = Path(os.fspath(src))
        except TypeError:
            raise ImageError(f"expected a file path or bytes, got {type(src).__name__}") from None
        if path.is_dir():
            raise ImageError("this is a folder, not an image file", path)
        try:
            fp = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
        except FileNotFoundError:
            raise ImageError("the file does not exist", path) from None
        except PermissionError:
            raise ImageError("permission denied: this file may not be read", path) from None
        except OSError as exc:
            raise ImageError(f"the file cannot be opened ({exc.strerror or exc})", path) from exc
    with fp:
        try:
            head = fp.read(64)
            fp.seek(0)
        except OSError as exc:
            raise ImageError(f"the file cannot be read ({exc.strerror or exc})", path) from exc
        if not head:
            raise ImageError("the file is empty (0 bytes)", path)
        yield _Source(fp, path, head)


_limit_lock = threading.Lock()
_limit_users = 0
_saved_limit: int | None = None


@contextlib.contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Pillow's global MAX_IMAGE_PIXELS would refuse large images before our own check (which
    uses the caller's cap) runs, so it is off while any of our reads is in progress and restored
    when the last one ends."""
    global _limit_users, _saved_limit
    with _limit_lock:
        if _limit_users == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _saved_limit


_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif(src: _Source) -> None:
    global _heif_registered
    if not _sniff.looks_heif(src.head) or _heif_registered:
        return
    if not _HEIF_INSTALLED:
        raise ImageError(
            "this is a HEIC/HEIF photo; reading it needs the optional pillow-heif package "
            "(pip install clarifier[heif])",
            src.path,
        )
    with _heif_lock:
        import pillow_heif  # pyright: ignore[reportMissingImports]  # the optional heif extra

        pillow_heif.register_heif_opener()
        _heif_registered = True


def _not_an_image(src: _Source) -> ImageError:
    what = _sniff.describe_content(src.head)
    expected = _sniff.SUFFIX_FORMAT.get(src.path.suffix.lower()) if src.path else None
    if what:
        message = f"this is not an image: it looks like {what}"
    elif expected:
        message = f"the file is not a readable {expected} image (unrecognised or damaged content)"
    else:
        message = "this is not an image file Clarifier can read (unrecognised content)"
    return ImageError(message, src.path)


def _damaged(exc: BaseException, src: _Source) -> ImageError:
    if isinstance(exc, MemoryError):
        return ImageError("there is not enough memory to decode this image", src.path)
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        # Only when Pillow's own guard fires anyway (e.g. on a frame inside the image).
        return ImageError(f"the image is too large to decode safely ({exc})", src.path)
    reason = str(exc).strip() or type(exc).__name__
    if "MAX_TEXT" in reason:
        return ImageError(
            "the file has an oversized text chunk (refused: it could be a decompression bomb)",
            src.path,
        )
    return ImageError(f"the file is truncated or damaged ({reason})", src.path)


def _pil_open(src: _Source) -> Image.Image:
    _register_heif(src)
    formats = (*_PIL_FORMATS, "HEIF") if _heif_registered else _PIL_FORMATS
    try:
        return Image.open(src.fp, formats=formats)
    except Image.UnidentifiedImageError:
        raise _not_an_image(src) from None
    except Exception as exc:
        raise _damaged(exc, src) from exc


# --- what a source is -------------------------------------------------------------------------


def _png_chunk(fp: BinaryIO, ctype: bytes) -> bytes | None:
    """The first chunk of a type anywhere in a PNG (EXIF may follow the pixel data)."""
    position = fp.tell()
    try:
        for kind, data in _png16.iter_chunks(fp, (ctype,)):
            if kind == ctype:
                return data
    except (_png16.PngError, OSError):
        return None
    finally:
        fp.seek(position)
    return None


def _read_exif(im: Image.Image, src: _Source) -> Image.Exif | None:
    if hasattr(im, "tag_v2"):  # TIFF: the EXIF tags live in the file's own directories
        exif = im.getexif()
        return exif if len(exif) else None
    raw = im.info.get("exif")
    if raw is None and im.format == "PNG":
        raw = _png_chunk(src.fp, b"eXIf")
    if raw is None and "Raw profile type exif" in im.info:  # ImageMagick's PNG text form
        raw = bytes.fromhex("".join(str(im.info["Raw profile type exif"]).split("\n")[3:]))
    if not raw:
        return None
    exif = Image.Exif()
    exif.load(raw)
    return exif if len(exif) else None


def _as_bytes(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value) if isinstance(value, bytes | bytearray) and value else None


def _gray_palette(im: Image.Image) -> bool:
    palette = im.getpalette()
    if not palette:
        return False
    rgb = np.asarray(palette, np.int32).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _layout(im: Image.Image, png: _png16.PngHeader | None) -> tuple[int, bool, bool]:
    """(bit depth, grayscale, has alpha) as stored."""
    mode = im.mode
    transparency = "transparency" in im.info
    if png is not None:
        gray = png.colour_type in (0, 4) or (png.colour_type == 3 and _gray_palette(im))
        return (16 if png.bit_depth == 16 else 8), gray, png.colour_type in (4, 6) or transparency
    bits = 16 if mode in ("I", "F") or mode.startswith("I;16") else 8
    stored = getattr(im, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if stored is not None and max(stored if isinstance(stored, tuple) else (stored,)) > 8:
        bits = 16
    gray = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")
    gray = gray or (mode in ("P", "PA") and _gray_palette(im))
    alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or transparency
    return bits, gray, alpha


def _inspect(im: Image.Image, src: _Source, notes: list[str]) -> tuple[SourceInfo, int]:
    """Describe an opened image from its header; also return its EXIF orientation (1…8)."""
    fmt = _FORMAT_NAMES.get(im.format or "", im.format or "unknown")
    png = _png16.read_header(src.head) if fmt == "PNG" else None
    try:
        frames = int(getattr(im, "n_frames", 1))
    except Exception:  # noqa: BLE001 - counting frames walks the file and can hit damage
        frames = 1
    xmp = _as_bytes(im.info.get("xmp"))
    exif_bytes = None
    orientation = None
    try:
        exif = _read_exif(im, src)
        if exif is not None:
            orientation = exif.get(_exif.ORIENTATION)
            exif_bytes = _exif.prepare_source_exif(exif)
    except Exception:  # noqa: BLE001 - EXIF parsing fails in many ways on damaged data
        notes.append(f"{src.name}: its EXIF metadata is damaged and was left out.")
    if orientation is None:
        orientation = _exif.xmp_orientation(xmp)
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    if xmp:
        xmp = _exif.reset_xmp_orientation(xmp)
    width, height = im.size
    if orientation >= 5:
        width, height = height, width
    bits, gray, alpha = _layout(im, png)
    info = SourceInfo(
        path=str(src.path) if src.path else None,
        format=fmt,
        mode=im.mode,
        width=width,
        height=height,
        bit_depth=bits,
        grayscale=gray,
        has_alpha=alpha,
        frames=frames,
        icc_profile=_as_bytes(im.info.get("icc_profile")),
        exif=exif_bytes,
        xmp=xmp,
    )
    return info, orientation


def probe_image(path: str | os.PathLike[str] | bytes) -> SourceInfo:
    """Describe an image from its header, without decoding the pixels."""
    with _open_source(path) as src, _pillow_limit_off():
        im = _pil_open(src)
        with im:
            try:
                return _inspect(im, src, [])[0]
            except ImageError:
                raise
            except Exception as exc:
                raise _damaged(exc, src) from exc


# --- decoding ---------------------------------------------------------------------------------


def load_image(
    src: str | os.PathLike[str] | bytes, *, max_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS
) -> LoadedImage:
    """Decode an image to upright sRGB arrays.

    ``max_pixels`` is the output cap: an input larger than it can never give an allowed output
    (outputs are at least as large as their inputs), so it is refused from its header, before
    any pixel is decoded. None disables the check."""
    notes: list[str] = []
    with _open_source(src) as source, _pillow_limit_off():
        im = _pil_open(source)
        with im:
            try:
                info, orientation = _inspect(im, source, notes)
                _check_input_size(im.size, max_pixels, source)
                notes += _format_notes(info, source)
                rgb, alpha = _decode(im, info, source, notes)
            except ImageError:
                raise
            except Exception as exc:  # decoders raise anything on damaged data
                raise _damaged(exc, source) from exc
    rgb = _pixels.orient(rgb, orientation)
    if alpha is not None:
        alpha = _pixels.match_depth(_pixels.orient(alpha, orientation), rgb.dtype)
        if int(alpha.min()) == np.iinfo(alpha.dtype).max:
            alpha = None
    return LoadedImage(rgb=rgb, alpha=alpha, source=info, warnings=notes)


def _check_input_size(size: tuple[int, int], max_pixels: int | None, src: _Source) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"the image has no pixels ({width}×{height})", src.path)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"the image is {width}×{height} pixels ({_mp(width * height)}), larger than the "
            f"{_mp(max_pixels)} output cap; an upscaled output could never fit the cap, so it "
            f"was not decoded (raise the cap in the settings if this machine can handle it)",
            src.path,
        )


def _format_notes(info: SourceInfo, src: _Source) -> list[str]:
    notes = []
    if info.frames > 1 and info.format == "TIFF":
        notes.append(f"{src.name} has {info.frames} pages; only the first page is used.")
    elif info.frames > 1 and info.format in ("GIF", "PNG", "WEBP", "AVIF", "HEIF"):
        notes.append(
            f"{src.name} is animated ({info.frames} frames); only the first frame is used."
        )
    suffix = src.path.suffix if src.path else ""
    expected = _sniff.SUFFIX_FORMAT.get(suffix.lower())
    if expected and expected != info.format:
        notes.append(
            f"{src.name} is named {suffix} but contains a {info.format} image; "
            f"it was read as {info.format}."
        )
    return notes


def _decode(
    im: Image.Image, info: SourceInfo, src: _Source, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels in sRGB, before orientation: (H×W×3, H×W alpha or None)."""
    if info.format == "PNG" and info.bit_depth == 16 and info.frames == 1:
        kind, colour, alpha = _decode_png16(src)
    elif info.format == "TIFF" and info.bit_depth == 16 and im.mode in ("RGB", "RGBA", "RGBX"):
        decoded = _decode_tiff16(src, im.size)
        if decoded is None:
            notes.append(
                f"{src.name}: 16-bit colour TIFF read at 8 bits per channel (install "
                "opencv-python for full precision)."
            )
            kind, colour, alpha = _decode_pillow(im, notes, src)
        else:
            kind, colour, alpha = decoded
    else:
        kind, colour, alpha = _decode_pillow(im, notes, src)
    return _to_srgb(kind, colour, info.icc_profile, notes, src), alpha


def _decode_png16(src: _Source) -> tuple[str, Any, np.ndarray | None]:
    try:
        pixels, trns = _png16.decode(src.fp)
    except _png16.PngError as exc:
        raise ImageError(f"the file is truncated or damaged ({exc})", src.path) from exc
    channels = pixels.shape[2]
    colour = pixels[:, :, 0] if channels <= 2 else pixels[:, :, :3]
    alpha = pixels[:, :, -1] if channels in (2, 4) else None
    if alpha is None and trns is not None and len(trns) >= 2 * (1 if channels == 1 else 3):
        key = np.frombuffer(trns, ">u2", 1 if channels == 1 else 3)
        hit = colour == key[0] if channels == 1 else (colour == key).all(axis=2)
        alpha = np.where(hit, 0, 65535).astype(np.uint16)
    return ("gray" if channels <= 2 else "rgb"), colour, alpha


def _decode_tiff16(src: _Source, size: tuple[int, int]) -> tuple[str, Any, Any] | None:
    cv2 = _png16.opencv()
    if cv2 is None:
        return None
    src.fp.seek(0)
    pixels = cv2.imdecode(np.frombuffer(src.fp.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        return None
    if pixels.shape[:2] != size[::-1] or pixels.shape[2] not in (3, 4):
        return None
    colour = np.ascontiguousarray(pixels[:, :, 2::-1])
    alpha = np.ascontiguousarray(pixels[:, :, 3]) if pixels.shape[2] == 4 else None
    return "rgb", colour, alpha


def _decode_pillow(
    im: Image.Image, notes: list[str], src: _Source
) -> tuple[str, Any, np.ndarray | None]:
    """(kind, colour, alpha): kind "gray"/"rgb" with arrays, "cmyk"/"lab" with a Pillow image."""
    im.load()
    mode = im.mode
    key = im.info.get("transparency")
    if mode in ("P", "PA"):  # palette entries are RGB, even when they are all gray
        rgba = np.asarray(im.convert("RGBA"))
        return "rgb", rgba[:, :, :3], rgba[:, :, 3]
    if mode in ("1", "L"):
        values = np.asarray(im.convert("L"))
        return "gray", values, _pixels.key_alpha(values, key, 255) if mode == "L" else None
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA"))
        return "gray", la[:, :, 0], la[:, :, 1]
    if mode.startswith("I;16"):
        values = np.asarray(im).astype(np.uint16)
        return "gray", values, _pixels.key_alpha(values, key, 65535)
    if mode == "I":
        values = np.asarray(im)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            notes.append(f"{src.name}: 32-bit values outside 0–65535 were clipped.")
        return "gray", np.clip(values, 0, 65535).astype(np.uint16), None
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, np.float64))
        scale = 65535.0 if values.size and float(values.max()) <= 1.0 else 1.0
        notes.append(f"{src.name}: floating-point image read as 16-bit (scale ×{scale:g}).")
        return "gray", np.clip(np.rint(values * scale), 0, 65535).astype(np.uint16), None
    if mode == "RGB":
        values = np.asarray(im)
        return "rgb", values, _pixels.key_alpha(values, key, 255)
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))
        return "rgb", rgba[:, :, :3], rgba[:, :, 3]
    if mode == "CMYK":
        return "cmyk", im, None
    if mode == "LAB":
        return "lab", im, None
    rgba = np.asarray(im.convert("RGBA"))  # YCbCr, HSV, RGBX and the rare rest
    return "rgb", rgba[:, :, :3], rgba[:, :, 3]


def _to_srgb(kind: str, colour: Any, icc: bytes | None, notes: list[str], src: _Source) -> Any:
    """Apply the embedded profile (untagged means sRGB); gray becomes three equal channels."""
    from PIL import ImageCms

    space = _icc.colour_space(icc) if icc else None
    if icc and (space is None or not _icc.valid_profile(icc)):
        notes.append(f"{src.name}: its colour profile is damaged; colours were read as sRGB.")
        icc = space = None
    expected = {"gray": "GRAY", "rgb": "RGB", "cmyk": "CMYK", "lab": "LAB"}[kind]
    if icc and space != expected:
        notes.append(
            f"{src.name}: its colour profile is for {space} data but the image is "
            f"{expected}; the profile was ignored."
        )
        icc = None
    srgb = _icc.srgb_profile()
    try:
        if kind == "gray":
            if icc:
                lut = _icc.gray_to_srgb_lut(icc, 16 if colour.dtype == np.uint16 else 8)
                if lut is not None:
                    colour = lut[colour]
            return np.repeat(colour[:, :, None], 3, axis=2)
        if kind == "rgb":
            if icc and not _icc.is_srgb(icc):
                colour = _rgb_to_srgb(colour, icc, notes, src)
            return np.ascontiguousarray(colour)
        if kind == "cmyk":
            if icc:
                return np.asarray(_icc.transform8(colour, icc, srgb, "RGB"))
            notes.append(
                f"{src.name}: CMYK image without a colour profile; converted with a simple "
                "formula, so colours may differ from print software."
            )
            return np.asarray(colour.convert("RGB"))
        lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
        return np.asarray(_icc.transform8(colour, lab, srgb, "RGB"))
    except ImageCms.PyCMSError as exc:
        notes.append(f"{src.name}: its colours could not be converted ({exc}); read as sRGB.")
        if isinstance(colour, Image.Image):
            return np.asarray(colour.convert("RGB"))
        return colour if colour.ndim == 3 else np.repeat(colour[:, :, None], 3, axis=2)


def _rgb_to_srgb(rgb: np.ndarray, icc: bytes, notes: list[str], src: _Source) -> np.ndarray:
    srgb = _icc.srgb_profile()
    if rgb.dtype == np.uint16:
        converted = _icc.rgb16_to_srgb(rgb, icc)
        if converted is not None:
            return converted
        notes.append(f"{src.name}: its colour profile was applied at 8-bit precision.")
        rgb = _pixels.to_8bit(rgb)
    return np.asarray(_icc.transform8(Image.fromarray(rgb, "RGB"), icc, srgb, "RGB"))


# --- output size ------------------------------------------------------------------------------


def _mp(pixels: float) -> str:
    return f"{pixels / 1e6:.1f} MP"


def check_output_size(
    source_w: int,
    source_h: int,
    params: UpscaleParams,
    max_pixels: int,
    *,
    path: str | os.PathLike[str] | None = None,
) -> tuple[int, int]:
    """The output size for this input and these parameters, or OutputTooLarge past the cap."""
    width, height = params.output_size(source_w, source_h)
    if width * height <= max_pixels:
        return width, height
    best = None
    for step in range(math.ceil(params.scale_factor * 2) - 1, 1, -1):  # 0.5 steps, downwards
        scale = step / 2
        w, h = params.replace(scale_factor=scale).output_size(source_w, source_h)
        if w * h <= max_pixels:
            best = (scale, w, h)
            break
    request = (
        f"the output would be {width}×{height} pixels ({width * height:,} pixels, "
        f"{_mp(width * height)}), more than the cap of {max_pixels:,} pixels ({_mp(max_pixels)})"
    )
    if best is not None:
        scale, w, h = best
        advice = (
            f"the largest scale factor that fits is {scale:g} ({w}×{h}, {_mp(w * h)}); "
            "lower the scale or raise the cap in the settings"
        )
    else:
        advice = (
            "even a scale factor of 1 would not fit; turn on downscaling or raise the cap in "
            "the settings"
        )
    raise OutputTooLarge(f"{request}; {advice}", path)


# --- reading metadata back --------------------------------------------------------------------

_TEXT_LIMIT = 16 << 20  # a parameters text is a few kB; refuse to inflate beyond this


def _png_text(fp: BinaryIO, key: str) -> str | None:
    """The value of a PNG text chunk (tEXt, zTXt or iTXt), wherever it is in the file."""
    wanted = key.encode("latin-1")
    for ctype, data in _png16.iter_chunks(fp, (b"tEXt", b"zTXt", b"iTXt")):
        if data is None:
            continue
        name, _, rest = data.partition(b"\0")
        if name != wanted:
            continue
        with contextlib.suppress(zlib.error, ValueError, IndexError):
            if ctype == b"tEXt":
                return rest.decode("latin-1")
            if ctype == b"zTXt":
                return _inflate_text(rest[1:]).decode("latin-1")
            compressed = rest[0] == 1
            _, _, rest = rest[2:].partition(b"\0")  # language tag
            _, _, rest = rest.partition(b"\0")  # translated keyword
            return (_inflate_text(rest) if compressed else rest).decode("utf-8", "replace")
    return None


def _inflate_text(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _TEXT_LIMIT)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def read_parameters_text(path: str | os.PathLike[str] | bytes) -> str | None:
    """The raw A1111 ``parameters`` text of an image: from a PNG text chunk or from the EXIF
    UserComment (JPEG, WebP and others). None when the image has none."""
    with _open_source(path) as src:
        if src.head.startswith(_png16.SIGNATURE):
            try:
                text = _png_text(src.fp, "parameters")
            except _png16.PngError as exc:
                raise ImageError(f"the file is truncated or damaged ({exc})", src.path) from exc
            if text is not None:
                return text
        with _pillow_limit_off():
            im = _pil_open(src)
            with im:
                try:
                    exif = _read_exif(im, src)
                    comment = exif.get_ifd(_exif.EXIF_IFD).get(_exif.USER_COMMENT) if exif else None
                except Exception:  # noqa: BLE001 - damaged EXIF simply has no parameters
                    return None
                return _exif.decode_user_comment(comment)


def read_run_info(path: str | os.PathLike[str] | bytes) -> RunInfo | None:
    """The :class:`RunInfo` an image was made with, if it carries one (Clarifier or A1111)."""
    text = read_parameters_text(path)
    return parse_infotext(text) if text else None


# --- transparency -----------------------------------------------------------------------------


def bleed_transparent(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Give (nearly) transparent pixels the colour of the nearest opaque ones.

    Transparent pixels often hold black or garbage colour; an upscaler that sees them smears it
    into the edges of the visible image (the "halo"/"bloom" complaint). A push-pull fill
    replaces them: average the visible colours down an image pyramid, then fill each level's
    holes from the coarser level, smoothly upsampled. Pixels with alpha above 2 % of full
    opacity are returned unchanged, bit for bit."""
    return _pixels.bleed_transparent(rgb, alpha)
