"""EXIF and XMP helpers for loading and saving: carry a source's metadata to an output.

What an output keeps from its source: camera and authorship tags, the Exif and GPS
directories, and XMP. What it must not keep: a rotation the pixels already have (Orientation is
set to 1 in both EXIF and XMP), stale pixel dimensions, the embedded thumbnail (it would show
the old image), the source's UserComment (where A1111 stores the parameters the *source* was
made with), and, for TIFF sources, the TIFF structure tags (strip offsets, bit depths) that
Pillow reports as EXIF.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from PIL import Image

__all__ = [
    "JPEG_EXIF_LIMIT",
    "USER_COMMENT",
    "decode_user_comment",
    "encode_user_comment",
    "output_exif",
    "prepare_source_exif",
    "reset_xmp_orientation",
    "update_xmp_size",
    "xmp_orientation",
]

log = logging.getLogger(__name__)

EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
ORIENTATION = 0x0112
USER_COMMENT = 0x9286
MAKER_NOTE = 0x927C
PIXEL_X, PIXEL_Y = 0xA002, 0xA003
# A JPEG APP1 segment holds at most 65533 bytes, "Exif\0\0" included.
JPEG_EXIF_LIMIT = 65533

# Descriptive first-directory tags worth carrying over; everything else there describes the
# source file's own layout.
_KEEP_IFD0 = frozenset({
    0x010E,  # ImageDescription
    0x010F,  # Make
    0x0110,  # Model
    0x0112,  # Orientation
    0x011A, 0x011B, 0x0128,  # XResolution, YResolution, ResolutionUnit
    0x0131,  # Software
    0x0132,  # DateTime
    0x013B,  # Artist
    0x013C,  # HostComputer
    0x4746, 0x4749,  # Rating, RatingPercent
    0x8298,  # Copyright
    0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F,  # Windows XPTitle … XPSubject
})  # fmt: skip

# Interop is a bare offset into the source's bytes; a UserComment describes how the *source*
# was made (A1111 keeps its parameters there) and must not pass for the output's.
_DROP_SUB = frozenset({INTEROP_IFD, USER_COMMENT})

_UNICODE, _ASCII, _JIS = b"UNICODE\0", b"ASCII\0\0\0", b"JIS\0\0\0\0\0"


def prepare_source_exif(exif: Image.Exif) -> bytes | None:
    """A source's EXIF as embeddable bytes: descriptive tags only, Orientation = 1."""
    out = Image.Exif()
    out.endian = exif.endian or ">"
    for tag in _KEEP_IFD0:
        if tag in exif and not isinstance(exif[tag], dict):
            out[tag] = exif[tag]
    for ifd_tag in (EXIF_IFD, GPS_IFD):
        if ifd_tag in exif:
            ifd = {k: v for k, v in exif.get_ifd(ifd_tag).items() if k not in _DROP_SUB}
            if ifd:
                out[ifd_tag] = ifd
    if not len(out):
        return None
    out[ORIENTATION] = 1
    return _tobytes(out)


def _tobytes(exif: Image.Exif) -> bytes | None:
    try:
        return exif.tobytes()
    except (ValueError, TypeError, KeyError, OverflowError, OSError) as exc:
        log.warning("EXIF metadata could not be written and is left out (%s)", exc)
        return None


def output_exif(
    source: bytes | None,
    size: tuple[int, int],
    comment: str | None,
    limit: int | None = None,
) -> bytes | None:
    """The EXIF for an output: the source's (already prepared) with the new pixel size, plus
    the run parameters as a UserComment when ``comment`` is given.

    With a ``limit`` (JPEG), drop the MakerNote, then the rest of the source's EXIF, then our
    comment, until it fits; a too-large block would make the whole save fail."""
    exif = Image.Exif()
    if source:
        try:
            exif.load(source)
        except (ValueError, TypeError, KeyError, OSError, SyntaxError) as exc:
            log.warning("the source's EXIF metadata is damaged and is left out (%s)", exc)
            exif = Image.Exif()
    if not len(exif) and comment is None:
        return None
    ifd: dict[int, Any] = {}
    if EXIF_IFD in exif or comment is not None:
        ifd = exif.get_ifd(EXIF_IFD) if EXIF_IFD in exif else {}
        ifd.pop(INTEROP_IFD, None)  # a bare offset into the source's bytes
        exif[EXIF_IFD] = ifd
        if PIXEL_X in ifd or PIXEL_Y in ifd or comment is not None:
            ifd[PIXEL_X], ifd[PIXEL_Y] = size
        if comment is not None:
            ifd[USER_COMMENT] = encode_user_comment(comment)
    data = _tobytes(exif)
    if limit is None or data is None or len(data) <= limit:
        return data
    if MAKER_NOTE in ifd:
        del ifd[MAKER_NOTE]
        data = _tobytes(exif)
        if data is not None and len(data) <= limit:
            log.info("dropped the camera MakerNote to fit the JPEG EXIF limit")
            return data
    if comment is not None:
        slim = Image.Exif()
        slim[EXIF_IFD] = {
            USER_COMMENT: encode_user_comment(comment),
            PIXEL_X: size[0],
            PIXEL_Y: size[1],
        }
        data = _tobytes(slim)
        if data is not None and len(data) <= limit:
            log.warning("the source's EXIF is too large for a JPEG and is left out")
            return data
    log.warning("the EXIF metadata is too large for a JPEG and is left out")
    return None


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment the way A1111 writes it (piexif's "unicode"): UTF-16 big-endian."""
    return _UNICODE + text.encode("utf-16-be")


def decode_user_comment(value: object) -> str | None:
    """Read a UserComment leniently: any character-code prefix, either UTF-16 byte order."""
    if isinstance(value, str):
        return value.strip("\0").strip() or None
    if not isinstance(value, bytes | bytearray) or not value:
        return None
    data = bytes(value)
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE:
        text = _decode_utf16(body)
    elif prefix == _JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix in (_ASCII, b"\0" * 8):
        text = _decode_8bit(body)
    else:  # no prefix at all: some writers put the bare text in the tag
        text = _decode_8bit(data)
    text = text.strip("\0").strip()
    return text or None


def _decode_8bit(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode_utf16(body: bytes) -> str:
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16")
    body = body[: len(body) // 2 * 2]
    # Mostly-ASCII text has its zero bytes first in big-endian and second in little-endian.
    zeros_first = body[0::2].count(0)
    zeros_second = body[1::2].count(0)
    encoding = "utf-16-le" if zeros_second > zeros_first else "utf-16-be"
    return body.decode(encoding, errors="replace")


# --- XMP ------------------------------------------------------------------------------------

_XMP_ORIENTATION = re.compile(rb"(tiff:Orientation\s*=\s*[\"']|<tiff:Orientation>\s*)(\d)")


def xmp_orientation(xmp: bytes | None) -> int | None:
    match = _XMP_ORIENTATION.search(xmp or b"")
    return int(match[2]) if match else None


def reset_xmp_orientation(xmp: bytes) -> bytes:
    return _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)


def update_xmp_size(xmp: bytes, size: tuple[int, int]) -> bytes:
    """Rewrite the pixel sizes XMP records (exif:PixelX/YDimension, tiff:ImageWidth/Length)."""
    for names, value in (
        ((b"exif:PixelXDimension", b"tiff:ImageWidth"), size[0]),
        ((b"exif:PixelYDimension", b"tiff:ImageLength"), size[1]),
    ):
        for name in names:
            number = str(value).encode()
            xmp = re.sub(rb"(" + name + rb"\s*=\s*[\"'])\d+", rb"\g<1>" + number, xmp)
            xmp = re.sub(rb"(<" + name + rb">\s*)\d+", rb"\g<1>" + number, xmp)
    return xmp
