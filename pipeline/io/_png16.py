"""A small PNG reader and writer for what Pillow cannot do: 16-bit colour.

Pillow reads 16-bit RGB(A) and gray+alpha PNGs as 8-bit and cannot write them at all. This
module decodes and encodes 16-bit PNGs of every colour type, and walks the chunks of any PNG
(text, ICC, EXIF) without decoding its pixels.

OpenCV (a dependency of the bundled Real-ESRGAN package) does the pixel work when it can be
imported, being several times faster; otherwise zlib and numpy do. Unfiltering is the part that
resists vectorising: the Sub, Average and Paeth filters predict each pixel from its
already-decoded left neighbour. Pixels on one anti-diagonal (x + y = d) depend only on the two
diagonals before it, so we decode a whole diagonal per numpy step: H + W steps, not H × W.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import BinaryIO, NamedTuple

import numpy as np

__all__ = [
    "SIGNATURE",
    "PngError",
    "PngHeader",
    "decode",
    "decode_numpy",
    "encode",
    "encode_numpy",
    "iccp_chunk",
    "iter_chunks",
    "opencv",
    "read_header",
    "text_chunk",
]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip
_MAX_CHUNK = 2**31 - 1


class PngError(ValueError):
    """The PNG is damaged; the message says how."""


class PngHeader(NamedTuple):
    """The IHDR chunk."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def channels(self) -> int:
        return _CHANNELS[self.colour_type]


def read_header(head: bytes) -> PngHeader | None:
    """Parse the IHDR from the first 29+ bytes of a file; None if they are not a PNG's."""
    if len(head) < 29 or head[:8] != SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _, _, interlace = struct.unpack_from(">IIBBBBB", head, 16)
    if ctype not in _CHANNELS:
        return None
    return PngHeader(width, height, depth, ctype, interlace)


def iter_chunks(fp: BinaryIO, want: Iterable[bytes] = ()) -> Iterator[tuple[bytes, bytes | None]]:
    """Yield ``(type, data)`` for every chunk from the start of ``fp``; data only for the types
    in ``want`` (others are skipped with a seek, so IDAT is never read unless asked for)."""
    wanted = set(want)
    fp.seek(0)
    if fp.read(8) != SIGNATURE:
        raise PngError("not a PNG file")
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise PngError("the file ends before its IEND chunk")
        length, ctype = struct.unpack(">I4s", head)
        if length > _MAX_CHUNK:
            raise PngError(f"a {ctype!r} chunk claims {length} bytes")
        if ctype in wanted:
            data = fp.read(length)
            if len(data) < length:
                raise PngError(f"the {ctype.decode('latin-1')} chunk is cut short")
            fp.seek(4, 1)  # CRC; Pillow already checked the chunks it parsed
            yield ctype, data
        else:
            fp.seek(length + 4, 1)
            yield ctype, None
        if ctype == b"IEND":
            return


# --- decoding ------------------------------------------------------------------------------


@functools.cache
def opencv() -> ModuleType | None:
    """OpenCV's module, or None when it cannot be imported."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def decode(fp: BinaryIO) -> tuple[np.ndarray, bytes | None]:
    """Decode a 16-bit PNG to an H×W×C uint16 array in the file's own channel layout (gray,
    gray+alpha, RGB or RGBA); also return the raw tRNS chunk (a transparent colour key), if any.
    """
    fp.seek(0)
    header = read_header(fp.read(33))
    if header is None or header.bit_depth != 16:
        raise PngError("not a 16-bit PNG")
    if header.width == 0 or header.height == 0:
        raise PngError("the image has no pixels")
    trns = None
    for ctype, data in iter_chunks(fp, (b"tRNS",)):
        if ctype == b"tRNS":
            trns = data
        if ctype == b"IDAT":  # tRNS comes before the pixel data
            break
    cv2 = opencv()
    if cv2 is not None:
        fp.seek(0)
        buffer = np.frombuffer(fp.read(), np.uint8)
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if pixels is not None and pixels.shape[:2] == (header.height, header.width):
            return _from_cv2(pixels, header.channels), trns
        # OpenCV refuses some damaged files the numpy decoder reports on more precisely.
    idat = [d for t, d in iter_chunks(fp, (b"IDAT",)) if t == b"IDAT" and d is not None]
    return decode_numpy(header, idat), trns


def _from_cv2(pixels: np.ndarray, channels: int) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] >= 3:
        pixels = pixels[:, :, [2, 1, 0, *range(3, pixels.shape[2])]]  # BGR(A) → RGB(A)
    if channels <= 2 and pixels.shape[2] >= 3:  # OpenCV widens gray+alpha to BGRA
        pixels = pixels[:, :, [0, 3]] if pixels.shape[2] == 4 else pixels[:, :, :1]
    return np.ascontiguousarray(pixels.astype(np.uint16, copy=False))


def decode_numpy(header: PngHeader, idat: list[bytes]) -> np.ndarray:
    """The pure numpy decoder behind :func:`decode`."""
    width, height, channels = header.width, header.height, header.channels
    bpp = 2 * channels
    passes = _passes(width, height, header.interlace)
    expected = sum(h * (1 + w * bpp) for _, _, w, h in passes if w and h)  # empty passes: no rows
    raw = _inflate(idat, expected)
    out = np.empty((height, width, channels), np.uint16)
    pos = 0
    for (x0, y0, dx, dy), (_, _, w, h) in zip(
        _adam7_or_full(header.interlace), passes, strict=True
    ):
        if w == 0 or h == 0:
            continue
        size = h * (1 + w * bpp)
        rows = np.frombuffer(raw, np.uint8, size, pos).reshape(h, 1 + w * bpp)
        pos += size
        pixels = _unfilter(rows, w, bpp).view(">u2").reshape(h, w, channels)
        out[y0::dy, x0::dx] = pixels
    return out


def _adam7_or_full(interlace: int) -> tuple[tuple[int, int, int, int], ...]:
    return _ADAM7 if interlace else ((0, 0, 1, 1),)


def _passes(width: int, height: int, interlace: int) -> list[tuple[int, int, int, int]]:
    return [
        (x0, y0, max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy))
        for x0, y0, dx, dy in _adam7_or_full(interlace)
    ]


def _inflate(chunks: list[bytes], expected: int) -> bytes:
    # Bounded: a hostile stream cannot make us allocate more than the header promises.
    inflater = zlib.decompressobj()
    out = bytearray()
    try:
        for chunk in chunks:
            out += inflater.decompress(chunk, expected + 1 - len(out))
            if len(out) > expected:
                break
    except zlib.error as exc:
        raise PngError(f"the compressed pixel data is damaged ({exc})") from None
    if len(out) < expected:
        raise PngError(f"the pixel data is cut short ({len(out)} of {expected} bytes)")
    return bytes(out[:expected])


def _unfilter(rows: np.ndarray, width: int, bpp: int) -> np.ndarray:
    """Undo the PNG row filters of one (sub-)image: rows is h × (1 + width·bpp) uint8."""
    height = rows.shape[0]
    filters = rows[:, 0].astype(np.int16)
    if int(filters.max()) > 4:
        raise PngError(f"unknown row filter {int(filters.max())}")
    data = rows[:, 1:].reshape(height * width, bpp)
    # Reconstructed pixels with a zero row above and a zero column to the left.
    recon = np.zeros(((height + 1) * (width + 1), bpp), np.int16)
    step = max(width - 1, 1)
    for d in range(height + width - 1):
        y0, y1 = max(0, d - width + 1), min(height - 1, d)
        n = y1 - y0 + 1
        at = width + 2 + d + y0 * width
        here = slice(at, at + (n - 1) * width + 1, width)
        left = slice(at - 1, at - 1 + (n - 1) * width + 1, width)
        up = slice(at - width - 1, at - width - 1 + (n - 1) * width + 1, width)
        upleft = slice(at - width - 2, at - width - 2 + (n - 1) * width + 1, width)
        src = d + y0 * (width - 1)
        filtered = data[src : src + (n - 1) * step + 1 : step] if n > 1 else data[src : src + 1]
        kind = filters[y0 : y1 + 1, None]
        a, b, c = recon[left], recon[up], recon[upleft]
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.where(
            kind == 4,
            paeth,
            np.where(kind == 3, (a + b) >> 1, np.where(kind == 2, b, np.where(kind == 1, a, 0))),
        )
        recon[here] = (filtered + pred) & 0xFF
    grid = recon.reshape(height + 1, width + 1, bpp)[1:, 1:]
    return grid.astype(np.uint8).reshape(height, width * bpp)


# --- encoding ------------------------------------------------------------------------------


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def text_chunk(key: str, text: str) -> tuple[bytes, bytes]:
    """A tEXt chunk, or an uncompressed UTF-8 iTXt chunk when ``text`` is not Latin-1."""
    try:
        return b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1")
    except UnicodeEncodeError:
        return b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")


def iccp_chunk(icc: bytes) -> tuple[bytes, bytes]:
    return b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)


def _filter_rows(block: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Filter a block of rows (h × stride uint8, ``prev`` = the row above it) choosing, per row,
    the filter with the smallest sum of absolute values (libpng's heuristic)."""
    x = block.astype(np.int16)
    up = np.vstack([prev[None].astype(np.int16), x[:-1]])
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]) & 0xFF
    signed = np.where(candidates > 127, 256 - candidates, candidates)
    best = signed.sum(axis=2).argmin(axis=0)
    chosen = np.take_along_axis(candidates, best[None, :, None], 0)[0]
    return np.hstack([best[:, None], chosen]).astype(np.uint8)


def encode(fp: BinaryIO, pixels: np.ndarray, chunks: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Write ``pixels`` (H×W×C uint16, C = 1…4: gray, gray+alpha, RGB, RGBA) as a 16-bit PNG.

    ``chunks`` (iCCP, tEXt/iTXt, eXIf, ...) are written before the pixel data, where every
    reader finds them without decoding the image."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    cv2 = opencv()
    if cv2 is not None and pixels.shape[2] != 2:  # OpenCV cannot write gray+alpha
        order = [2, 1, 0, 3][: pixels.shape[2]] if pixels.shape[2] >= 3 else [0]
        ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, order]))
        if ok:
            # Keep OpenCV's header and pixel data, and put our own chunks in between.
            png = io.BytesIO(buffer.tobytes())
            kept = [(t, d) for t, d in iter_chunks(png, (b"IHDR", b"IDAT")) if d is not None]
            fp.write(SIGNATURE)
            fp.write(_chunk(*kept[0]))
            for ctype, data in chunks:
                fp.write(_chunk(ctype, data))
            for ctype, data in kept[1:]:
                fp.write(_chunk(ctype, data))
            fp.write(_chunk(b"IEND", b""))
            return
    encode_numpy(fp, pixels, chunks)


def encode_numpy(
    fp: BinaryIO,
    pixels: np.ndarray,
    chunks: Iterable[tuple[bytes, bytes]] = (),
    compress_level: int = 6,
) -> None:
    """The pure numpy encoder behind :func:`encode`."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = 2 * channels
    fp.write(SIGNATURE)
    fp.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0)))
    for ctype_, data in chunks:
        fp.write(_chunk(ctype_, data))
    rows = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, width * bpp)
    deflater = zlib.compressobj(compress_level)
    prev = np.zeros(width * bpp, np.uint8)
    block_rows = max(1, (1 << 20) // max(1, width * bpp))  # ~1 MB of pixels per step
    for start in range(0, height, block_rows):
        block = rows[start : start + block_rows]
        data = deflater.compress(_filter_rows(block, prev, bpp).tobytes())
        if data:
            fp.write(_chunk(b"IDAT", data))
        prev = block[-1]
    fp.write(_chunk(b"IDAT", deflater.flush()))
    fp.write(_chunk(b"IEND", b""))
