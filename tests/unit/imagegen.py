"""Builders for the image test corpus: good files of every kind, and bad ones.

Everything is generated in the test's own folder; nothing is downloaded. Colour profiles are
built here too (LittleCMS can only create sRGB, Lab and XYZ profiles, and the system has no
.icc files): a minimal ICC v2 matrix/TRC builder for RGB and gray, and a small lut16-based CMYK
input profile.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms
from skimage import data as skdata

# --- pictures -------------------------------------------------------------------------------------


@functools.cache
def _photo(name: str) -> np.ndarray:
    return getattr(skdata, name)()


def photo(name: str = "astronaut", size: tuple[int, int] | None = (96, 64)) -> np.ndarray:
    """A real photo from scikit-image (astronaut, chelsea, coffee), resized to ``size`` (w, h).

    Small and deliberately not square, so a wrong rotation changes the shape."""
    array = _photo(name)
    if size is None:
        return array.copy()
    return np.array(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))


def photo16(name: str = "astronaut", size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A 16-bit RGB picture whose low bytes matter (so dropping them is detectable)."""
    base = photo(name, size).astype(np.uint16) * 257
    noise = np.random.default_rng(7).integers(0, 200, base.shape, dtype=np.uint16)
    return base - np.minimum(base, noise)


def gradient16(width: int = 300, height: int = 8) -> np.ndarray:
    """A 16-bit gray ramp covering the whole range, including values far above 255."""
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    return np.tile(row, (height, 1))


def alpha_mask(width: int, height: int, dtype: type = np.uint8) -> np.ndarray:
    """Opaque disc in the middle, a soft edge, fully transparent corners."""
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
    top = np.iinfo(dtype).max
    return (np.clip((1.0 - r) * 4.0, 0.0, 1.0) * top).round().astype(dtype)


# --- colour profiles ------------------------------------------------------------------------------

D65 = (0.3127, 0.3290)
DISPLAY_P3 = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_RGB = ((0.640, 0.330), (0.210, 0.710), (0.150, 0.060))
_D50 = np.array([0.9642, 1.0, 0.8249])
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _rgb_to_xyz_d50(primaries: tuple[tuple[float, float], ...], white: tuple[float, float]):
    columns = np.stack([_xyz(p) for p in primaries], axis=1)
    white_xyz = _xyz(white)
    m = columns * np.linalg.solve(columns, white_xyz)
    # Bradford adaptation of the colorants to the D50 profile connection space.
    src, dst = _BRADFORD @ white_xyz, _BRADFORD @ _D50
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(dst / src) @ _BRADFORD
    return adapt @ m


def _s15(values) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _xyz_tag(values) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(values)


def _text_desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 12 + b"\0" * 67
    )  # no Unicode or ScriptCode description


def _text(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def srgb_curve() -> bytes:
    """The sRGB tone curve as a 1024-entry 'curv' table (what many v2 profiles carry)."""
    x = np.linspace(0, 1, 1024)
    y = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return b"curv\0\0\0\0" + struct.pack(">I", 1024) + (y * 65535).round().astype(">u2").tobytes()


def gamma_curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]):
    """Assemble an ICC v2.1 profile from (signature, data) tags, sharing identical data."""
    table, blobs, offsets = [], b"", {}
    start = 128 + 4 + 12 * len(tags)
    for sig, payload in tags:
        if payload not in offsets:
            offsets[payload] = start + len(blobs)
            blobs += payload + b"\0" * (-len(payload) % 4)
        table.append(struct.pack(">4sII", sig, offsets[payload], len(payload)))
    body = struct.pack(">I", len(tags)) + b"".join(table) + blobs
    size = 128 + len(body)
    header = (
        struct.pack(">I", size)
        + b"none"
        + bytes([2, 0x10, 0, 0])
        + device_class
        + space
        + pcs
        + b"\0" * 12  # date
        + b"acsp"
        + b"APPL"
        + b"\0" * 4  # flags
        + b"\0" * 8  # manufacturer, model
        + b"\0" * 8  # attributes
        + struct.pack(">I", 0)  # intent
        + _s15(_D50)
        + b"none"
        + b"\0" * 44
    )
    assert len(header) == 128
    return header + body


def rgb_profile(
    primaries=DISPLAY_P3, white=D65, curve: bytes | None = None, name: str = "Test RGB"
) -> bytes:
    """A matrix/TRC display profile (ICC v2) for the given primaries and tone curve."""
    m = _rgb_to_xyz_d50(primaries, white)
    trc = curve if curve is not None else srgb_curve()
    return _profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        [
            (b"desc", _text_desc(name)),
            (b"cprt", _text("No copyright")),
            (b"wtpt", _xyz_tag(_D50)),
            (b"rXYZ", _xyz_tag(m[:, 0])),
            (b"gXYZ", _xyz_tag(m[:, 1])),
            (b"bXYZ", _xyz_tag(m[:, 2])),
            (b"rTRC", trc),
            (b"gTRC", trc),
            (b"bTRC", trc),
        ],
    )


def display_p3() -> bytes:
    return rgb_profile(DISPLAY_P3, D65, srgb_curve(), "Test Display P3")


def adobe_rgb() -> bytes:
    return rgb_profile(ADOBE_RGB, D65, gamma_curve(563 / 256), "Test Adobe RGB (1998)")


def gray_profile(gamma: float = 1.8) -> bytes:
    return _profile(
        b"mntr",
        b"GRAY",
        b"XYZ ",
        [
            (b"desc", _text_desc(f"Test Gray {gamma}")),
            (b"cprt", _text("No copyright")),
            (b"wtpt", _xyz_tag(_D50)),
            (b"kTRC", gamma_curve(gamma)),
        ],
    )


def cmyk_profile() -> bytes:
    """A CMYK input profile: a 2-point lut16 from CMYK to XYZ through a naive ink model."""
    srgb_d50 = _rgb_to_xyz_d50(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), D65)
    clut = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = np.array([1 - c, 1 - m, 1 - y]) * (1 - k) * 0.95 + 0.02
                    clut.append(srgb_d50 @ (rgb**2.2))
    grid = np.clip(np.array(clut) / (65535 / 32768), 0, 1)  # XYZ as u1Fixed15 in 0…65535
    identity = np.array([0, 65535], ">u2").tobytes()
    lut = (
        b"mft2\0\0\0\0"
        + bytes([4, 3, 2, 0])
        + _s15([1, 0, 0, 0, 1, 0, 0, 0, 1])
        + struct.pack(">HH", 2, 2)
        + identity * 4
        + (grid * 65535).round().astype(">u2").tobytes()
        + identity * 3
    )
    return _profile(
        b"scnr",
        b"CMYK",
        b"XYZ ",
        [
            (b"desc", _text_desc("Test CMYK")),
            (b"cprt", _text("No copyright")),
            (b"wtpt", _xyz_tag(_D50)),
            (b"A2B0", lut),
        ],
    )


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def cms_convert(image: Image.Image, src: bytes, dst: bytes, mode: str = "RGB") -> np.ndarray:
    """The reference conversion, straight from ImageCms."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(src))
    target = ImageCms.ImageCmsProfile(io.BytesIO(dst))
    return np.asarray(ImageCms.profileToProfile(image, source, target, outputMode=mode))


# --- good files -----------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray, mode: str | None = None, **options) -> Path:
    """Save with Pillow (format from the suffix unless ``format=`` is given)."""
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **options)
    return path


def png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG written by OpenCV (an encoder independent of ours): gray, RGB or RGBA."""
    import cv2

    if array.ndim == 3:
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(array))
    return path


def png_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for ctype, data in chunks:
        out += struct.pack(">I", len(data)) + ctype + data
        out += struct.pack(">I", zlib.crc32(ctype + data))
    return out


def raw_png(width: int, height: int, depth: int, ctype: int, rows: bytes, extra=()) -> bytes:
    """A PNG from already-filtered scanlines (each row starts with its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0)
    return png_chunks([(b"IHDR", ihdr), *extra, (b"IDAT", zlib.compress(rows)), (b"IEND", b"")])


def oriented_jpeg(path: Path, upright: np.ndarray, orientation: int, **exif_tags) -> Path:
    """Store ``upright`` rotated/flipped so that EXIF ``orientation`` turns it back upright."""
    transpose = Image.Transpose
    method = {2: transpose.FLIP_LEFT_RIGHT, 3: transpose.ROTATE_180, 4: transpose.FLIP_TOP_BOTTOM,
              5: transpose.TRANSPOSE, 6: transpose.ROTATE_90, 7: transpose.TRANSVERSE,
              8: transpose.ROTATE_270}  # fmt: skip
    image = Image.fromarray(upright)
    if orientation != 1:
        image = image.transpose(method[orientation])  # its own inverse, except 6 ↔ 8
    exif = Image.Exif()
    exif[0x0112] = orientation
    for tag, value in exif_tags.items():
        exif[{"make": 0x010F, "model": 0x0110}[tag]] = value
    suffix = path.suffix.lower()
    options = {"quality": 100, "subsampling": 0} if suffix in (".jpg", ".jpeg") else {}
    if suffix == ".webp":
        options = {"lossless": True}
    image.save(path, exif=exif.tobytes(), **options)
    return path


def animated(path: Path, frames: int = 3, size: tuple[int, int] = (40, 30)) -> list[np.ndarray]:
    """An animated GIF, WebP or APNG (by suffix) of solid, distinct frames; returns them."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    arrays = [np.full((size[1], size[0], 3), colours[i % 4], np.uint8) for i in range(frames)]
    images = [Image.fromarray(a) for a in arrays]
    options = {"lossless": True} if path.suffix == ".webp" else {}
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0, **options)
    return arrays


# --- bad files ------------------------------------------------------------------------------------


def truncated(path: Path, good: Path, keep: float = 0.5) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def bomb_png(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A 200-byte PNG whose header claims a 3.6-gigapixel image."""
    rows = zlib.compress(b"\0" * 64)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(png_chunks([(b"IHDR", ihdr), (b"IDAT", rows), (b"IEND", b"")]))
    return path


def text_bomb_png(path: Path) -> Path:
    """A tiny PNG with a zTXt chunk that inflates to 50 MB."""
    good = raw_png(1, 1, 8, 2, b"\0\0\0\0")
    bomb = (b"zTXt", b"comment\0\0" + zlib.compress(b"A" * 50_000_000, 9))
    chunks = good[8:]
    path.write_bytes(good[:8] + chunks[:25] + png_chunks([bomb])[8:] + chunks[25:])
    return path


def zip_file(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hello")
    return path


def random_bytes(path: Path, size: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(1234).integers(0, 256, size, np.uint8).tobytes())
    return path
