"""Keeping an encoded image's bytes and inserting the run's metadata into them, losslessly.

A hosted provider's result is already a PNG, JPEG or WebP; decoding and re-encoding it (at
JPEG quality 95) would lose detail that was paid for. When the bytes are in the format the
person asked for, :func:`keep_encoded` writes them as they came, with the same metadata
:func:`pipeline.io.save.save_image` would embed inserted at the container level:

* **PNG**: a ``parameters`` text chunk (tEXt, or iTXt when the text is not Latin-1), an
  ``eXIf`` chunk with the source's EXIF, an ``iCCP`` profile and the source's XMP (iTXt
  ``XML:com.adobe.xmp``), right after ``IHDR``; the compressed ``IDAT`` stream is untouched;
* **JPEG**: an APP1 ``Exif`` segment carrying the parameters as the UserComment (as A1111
  writes them), APP2 ``ICC_PROFILE`` segments and an APP1 XMP packet, after SOI (and JFIF's
  APP0); every segment from the first SOS on is copied byte for byte;
* **WebP**: the ``VP8X`` header (made from the ``VP8``/``VP8L`` frame's size when the file was
  a simple one), ``ICCP``, ``EXIF`` and ``XMP`` chunks in the order RFC 9649 requires; the
  ``VP8``/``VP8L``/``ALPH`` chunks are untouched.

The provider's own parameters text, EXIF, XMP and profile are replaced: the output describes
how *this* run made it. Whatever else the file holds is kept as it is.

Bytes are kept only when nothing but metadata would change: the format matches, the image is a
single frame, upright (no EXIF rotation), in sRGB (untagged or an sRGB profile), and saving
would not convert it (a source with its own non-sRGB profile, or a gray source whose result is
in colour, makes the saver convert the pixels). Otherwise :func:`keep_encoded` returns None and
the caller decodes and saves as before.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pipeline.errors import ImageError
from pipeline.io import _exif
from pipeline.io import icc as _icc
from pipeline.io.atomic import atomic_write
from pipeline.io.save import _target
from pipeline.metadata import RunInfo, format_infotext

if TYPE_CHECKING:
    from pipeline.io.load import SourceInfo

__all__ = ["Encoded", "Metadata", "describe_encoded", "insert_metadata", "keep_encoded"]

log = logging.getLogger(__name__)

_PNG = b"\x89PNG\r\n\x1a\n"
_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
_KEPT_MODES = {"RGB", "RGBA", "P", "L", "LA"}
_ORIENTATION = 0x0112
_XMP_KEY = "XML:com.adobe.xmp"
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_JPEG_XMP_EXT = b"http://ns.adobe.com/xmp/extension/\0"
_JPEG_ICC = b"ICC_PROFILE\0"
_JPEG_ICC_CHUNK = 65519  # 65535 - 2 (length) - 14 (ICC_PROFILE\0 + sequence + count)
_JPEG_XMP_LIMIT = 65504
_WEBP_IMAGE = (b"VP8 ", b"VP8L")


@dataclass(frozen=True)
class Encoded:
    """What an encoded image is, read from its header."""

    format: str  # "png", "jpg" or "webp": the output_format names
    width: int
    height: int
    mode: str  # Pillow's mode
    icc_profile: bytes | None


@dataclass(frozen=True)
class Metadata:
    """What is inserted; None leaves that kind out (and removes the file's own)."""

    parameters: str | None = None  # A1111's infotext
    exif: bytes | None = None  # "Exif\\0\\0" + TIFF, as Pillow's Exif.tobytes() gives it
    icc_profile: bytes | None = None
    xmp: bytes | None = None


# --- deciding ---------------------------------------------------------------------------------
def describe_encoded(data: bytes) -> Encoded | None:
    """The format, size and profile of ``data`` when its metadata can be rewritten without
    touching its pixels: one upright frame of PNG, JPEG or WebP. None for anything else."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = _FORMATS.get(im.format or "")
            if fmt is None or getattr(im, "n_frames", 1) != 1 or im.mode not in _KEPT_MODES:
                return None
            if fmt == "png" and _png_has(data, b"acTL"):
                return None  # an APNG: the saver keeps its first frame only
            if int(im.getexif().get(_ORIENTATION, 1) or 1) != 1:
                return None
            icc = im.info.get("icc_profile") or None
            return Encoded(fmt, im.width, im.height, im.mode, icc)
    except (OSError, ValueError, SyntaxError, struct.error, EOFError):
        return None


def _profile_to_embed(encoded: Encoded, source: SourceInfo | None) -> tuple[bool, bytes | None]:
    """Whether the pixels can stay as they are, and the profile to embed (save_image's rule:
    the source's own sRGB profile, else the built-in sRGB; none for untagged gray)."""
    if encoded.icc_profile is not None and not _icc.is_srgb(encoded.icc_profile):
        return False, None
    icc = source.icc_profile if source else None
    if icc and not _icc.valid_profile(icc):
        icc = None
    gray = source is not None and source.grayscale and encoded.format != "webp"
    if gray:
        # The saver turns a gray source's result gray, through the source's gray profile.
        return encoded.mode in ("L", "LA") and not icc, None
    if encoded.mode in ("L", "LA"):
        return False, None  # the saver writes colour; an RGB profile cannot tag gray pixels
    if icc and _icc.colour_space(icc) == "RGB":
        return (True, icc) if _icc.is_srgb(icc) else (False, None)
    return True, _icc.srgb_profile()


def keep_encoded(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    info: RunInfo,
    source: SourceInfo | None,
    fmt: str,
) -> Path | None:
    """Write ``data`` as the output at ``path`` (its suffix follows ``fmt``, as the saver does)
    with ``info`` and the source's EXIF, XMP and profile inserted, or return None when the bytes
    cannot be kept as they are (then decode and save them instead). Atomic, like the saver; a
    write that fails is an :class:`~pipeline.errors.ImageError`."""
    encoded = describe_encoded(data)
    if encoded is None or encoded.format != fmt:
        return None
    keep, icc = _profile_to_embed(encoded, source)
    if not keep:
        return None
    size = (encoded.width, encoded.height)
    text = format_infotext(info)
    exif = _exif.output_exif(
        source.exif if source else None,
        size,
        text if fmt != "png" else None,  # PNG carries it in a text chunk
        _exif.JPEG_EXIF_LIMIT if fmt == "jpg" else None,
    )
    xmp = _exif.update_xmp_size(source.xmp, size) if source and source.xmp else None
    if xmp and fmt == "jpg" and len(xmp) > _JPEG_XMP_LIMIT:
        log.warning("the source's XMP is too large for a JPEG and is left out")
        xmp = None
    meta = Metadata(text if fmt == "png" else None, exif, icc, xmp)
    try:
        out = insert_metadata(data, meta)
    except ValueError as exc:
        log.info("the result's bytes are re-encoded: %s", exc)
        return None
    target, _chosen = _target(path, fmt)
    try:
        atomic_write(target, lambda fp: fp.write(out))
    except OSError as exc:  # as the saver words it: a full disk, a read-only folder
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ImageError(f"the image could not be written ({reason})", target) from exc
    return target


def insert_metadata(data: bytes, meta: Metadata) -> bytes:
    """``data`` (a PNG, JPEG or WebP) with ``meta`` in place of its own parameters text, EXIF,
    XMP and profile; its image data is copied byte for byte. ValueError when ``data`` is not one
    of them, is damaged, or cannot take the metadata (an animated WebP)."""
    if data.startswith(_PNG):
        return _insert_png(data, meta)
    if data.startswith(b"\xff\xd8"):
        return _insert_jpeg(data, meta)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _insert_webp(data, meta)
    raise ValueError("not a PNG, JPEG or WebP file")


# --- PNG --------------------------------------------------------------------------------------
def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(_PNG)
    while True:
        if pos + 8 > len(data):
            raise ValueError("the PNG ends before its IEND chunk")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise ValueError(f"the PNG's {ctype!r} chunk is cut short")
        if struct.unpack(">I", crc)[0] != zlib.crc32(ctype + body):
            raise ValueError(f"the PNG's {ctype!r} chunk fails its CRC")
        yield ctype, body
        pos += 12 + length
        if ctype == b"IEND":
            return


def _png_has(data: bytes, wanted: bytes) -> bool:
    try:
        return any(ctype == wanted for ctype, _ in _png_chunks(data))
    except ValueError:
        return False


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_text(key: str, text: str) -> tuple[bytes, bytes]:
    try:
        return b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1")
    except UnicodeEncodeError:  # iTXt: keyword, no compression, no language, no translation
        return b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")


def _text_key(ctype: bytes, body: bytes) -> bytes | None:
    if ctype in (b"tEXt", b"zTXt", b"iTXt"):
        return body.partition(b"\0")[0]
    return None


def _insert_png(data: bytes, meta: Metadata) -> bytes:
    chunks = list(_png_chunks(data))
    if not chunks or chunks[0][0] != b"IHDR":
        raise ValueError("the PNG does not start with IHDR")
    replaced = {b"parameters", _XMP_KEY.encode("latin-1")}
    dropped = {b"eXIf", b"iCCP", b"sRGB"}
    kept = [
        (ctype, body)
        for ctype, body in chunks[1:]
        if ctype not in dropped and _text_key(ctype, body) not in replaced
    ]
    added: list[tuple[bytes, bytes]] = []
    if meta.icc_profile:
        added.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc_profile)))
    if meta.exif:
        added.append((b"eXIf", meta.exif.removeprefix(b"Exif\0\0")))
    if meta.parameters is not None:
        added.append(_png_text("parameters", meta.parameters))
    if meta.xmp:
        added.append((b"iTXt", _XMP_KEY.encode("latin-1") + b"\0\0\0\0\0" + meta.xmp))
    out = [_PNG, _png_chunk(*chunks[0])]
    out += [_png_chunk(ctype, body) for ctype, body in (*added, *kept)]
    return b"".join(out)


# --- JPEG -------------------------------------------------------------------------------------
def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The marker segments before the first SOS as ``(marker, payload)``, and the rest (SOS on)."""
    segments: list[tuple[int, bytes]] = []
    pos = 2
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise ValueError("the JPEG's header is damaged")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # SOS: the entropy-coded data follows, kept as is
            return segments, data[pos:]
        if marker in (0xD8, 0xD9) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            raise ValueError(f"unexpected JPEG marker 0xFF{marker:02X} before the image data")
        if pos + 4 > len(data):
            raise ValueError("the JPEG ends inside its header")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > len(data):
            raise ValueError("a JPEG segment runs past the end of the file")
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("a JPEG segment would be too large")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _insert_jpeg(data: bytes, meta: Metadata) -> bytes:
    segments, scan = _jpeg_segments(data)

    def ours(marker: int, payload: bytes) -> bool:
        if marker == 0xE1:
            return payload.startswith((b"Exif\0\0", _JPEG_XMP, _JPEG_XMP_EXT))
        return marker == 0xE2 and payload.startswith(_JPEG_ICC)

    kept = [(m, p) for m, p in segments if not ours(m, p)]
    lead = 0
    while lead < len(kept) and kept[lead][0] == 0xE0:  # JFIF/JFXX stay first
        lead += 1
    added: list[tuple[int, bytes]] = []
    if meta.exif:
        exif = meta.exif if meta.exif.startswith(b"Exif\0\0") else b"Exif\0\0" + meta.exif
        added.append((0xE1, exif))
    if meta.icc_profile:
        parts = [
            meta.icc_profile[i : i + _JPEG_ICC_CHUNK]
            for i in range(0, len(meta.icc_profile), _JPEG_ICC_CHUNK)
        ]
        if len(parts) > 255:
            raise ValueError("the colour profile is too large for a JPEG")
        for n, part in enumerate(parts, 1):
            added.append((0xE2, _JPEG_ICC + bytes((n, len(parts))) + part))
    if meta.xmp:
        added.append((0xE1, _JPEG_XMP + meta.xmp))
    ordered = [*kept[:lead], *added, *kept[lead:]]
    return b"\xff\xd8" + b"".join(_jpeg_segment(m, p) for m, p in ordered) + scan


# --- WebP -------------------------------------------------------------------------------------
def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    (size,) = struct.unpack_from("<I", data, 4)
    end = min(len(data), 8 + size)
    if size + 8 > len(data):
        raise ValueError("the WebP file is cut short")
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise ValueError(f"the WebP's {fourcc!r} chunk is cut short")
        chunks.append((fourcc, body))
        pos += 8 + length + (length & 1)
    return chunks


def _webp_chunk(fourcc: bytes, body: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")


def _frame_size(fourcc: bytes, body: bytes) -> tuple[int, int, bool]:
    """Width, height and whether the frame has alpha, from a VP8 or VP8L bitstream header."""
    if fourcc == b"VP8 ":
        if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
            raise ValueError("the WebP's VP8 frame header is damaged")
        width, height = struct.unpack_from("<HH", body, 6)
        return width & 0x3FFF, height & 0x3FFF, False
    if len(body) < 5 or body[0] != 0x2F:
        raise ValueError("the WebP's VP8L header is damaged")
    bits = int.from_bytes(body[1:5], "little")
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)


def _insert_webp(data: bytes, meta: Metadata) -> bytes:
    chunks = _webp_chunks(data)
    kinds = {fourcc for fourcc, _ in chunks}
    if kinds & {b"ANIM", b"ANMF"}:
        raise ValueError("an animated WebP")
    image = next(((f, b) for f, b in chunks if f in _WEBP_IMAGE), None)
    if image is None:
        raise ValueError("the WebP holds no image")
    header = next((b for f, b in chunks if f == b"VP8X"), None)
    if header is not None and len(header) >= 10:
        alpha = bool(header[0] & 0x10)
        width = int.from_bytes(header[4:7], "little") + 1
        height = int.from_bytes(header[7:10], "little") + 1
    else:
        width, height, alpha = _frame_size(*image)
    alpha = alpha or b"ALPH" in kinds
    flags = (0x20 if meta.icc_profile else 0) | (0x10 if alpha else 0)
    flags |= (0x08 if meta.exif else 0) | (0x04 if meta.xmp else 0)
    vp8x = bytes((flags, 0, 0, 0)) + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    body = [(b"VP8X", vp8x)]
    if meta.icc_profile:
        body.append((b"ICCP", meta.icc_profile))
    body += [(f, b) for f, b in chunks if f not in (b"VP8X", b"ICCP", b"EXIF", b"XMP ")]
    if meta.exif:
        body.append((b"EXIF", meta.exif.removeprefix(b"Exif\0\0")))
    if meta.xmp:
        body.append((b"XMP ", meta.xmp))
    payload = b"WEBP" + b"".join(_webp_chunk(f, b) for f, b in body)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload
