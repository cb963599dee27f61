"""The 16-bit PNG codec behind pipeline.io.load, checked against a byte-by-byte reference."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.io import _png16
from pipeline.io.load import load_image
from tests.unit import imagegen as gen

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # fmt: skip


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filter(image: np.ndarray, first_filter: int = 0) -> bytes:
    """Filter rows the slow, obvious way, cycling through all five filter types."""
    height = image.shape[0]
    rows = image.astype(">u2").reshape(height, -1).view(np.uint8).reshape(height, -1)
    bpp = 2 * (image.shape[2] if image.ndim == 3 else 1)
    out = bytearray()
    prev = bytes(rows.shape[1])
    for y in range(height):
        row = rows[y].tobytes()
        kind = (first_filter + y) % 5
        out.append(kind)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            out.append((x - pred) & 0xFF)
        prev = row
    return bytes(out)


def _png(image: np.ndarray, interlace: bool = False, extra: tuple = ()) -> bytes:
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[image.shape[2]]
    height, width = image.shape[:2]
    if interlace:
        data = b"".join(
            _filter(image[y0::dy, x0::dx], k)
            for k, (x0, y0, dx, dy) in enumerate(ADAM7)
            if image[y0::dy, x0::dx].size
        )
    else:
        data = _filter(image)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, int(interlace))
    return gen.png_chunks([(b"IHDR", ihdr), *extra, (b"IDAT", zlib.compress(data)), (b"IEND", b"")])


def _image(height: int, width: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(height * 100 + width + channels)
    smooth = np.linspace(0, 60000, width * height * channels).reshape(height, width, channels)
    return (smooth + rng.integers(0, 5000, (height, width, channels))).astype(np.uint16)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize(
    ("height", "width", "channels"), [(7, 11, 3), (13, 5, 4), (9, 1, 1), (1, 9, 2), (10, 10, 3)]
)
def test_numpy_decoder_matches_the_reference(
    height: int, width: int, channels: int, interlace: bool
) -> None:
    image = _image(height, width, channels)
    data = _png(image, interlace)
    header = _png16.read_header(data)
    idat = [d for t, d in _png16.iter_chunks(io.BytesIO(data), (b"IDAT",)) if t == b"IDAT"]
    np.testing.assert_array_equal(_png16.decode_numpy(header, idat), image)
    pixels, _ = _png16.decode(io.BytesIO(data))  # the OpenCV path agrees
    np.testing.assert_array_equal(pixels, image)


def test_numpy_encoder_is_read_back_by_pillow_and_opencv() -> None:
    import cv2

    for channels in (1, 2, 3, 4):
        image = _image(23, 17, channels)
        fp = io.BytesIO()
        _png16.encode_numpy(fp, image, [_png16.text_chunk("parameters", "ü ✓")])
        header = _png16.read_header(fp.getvalue())
        assert (header.width, header.height, header.bit_depth) == (17, 23, 16)
        decoded = cv2.imdecode(np.frombuffer(fp.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
        if channels >= 3:
            np.testing.assert_array_equal(decoded[:, :, [2, 1, 0, 3][:channels]], image)
        elif channels == 1:
            np.testing.assert_array_equal(decoded, image[:, :, 0])
        with Image.open(fp) as im:
            assert im.text["parameters"] == "ü ✓"


def test_encoder_puts_metadata_before_the_pixels() -> None:
    fp = io.BytesIO()
    chunks = [_png16.iccp_chunk(gen.display_p3()), (b"eXIf", b"MM\0*\0\0\0\x08\0\0")]
    _png16.encode(fp, _image(8, 8, 3), chunks)
    order = [t for t, _ in _png16.iter_chunks(fp)]
    assert order[:3] == [b"IHDR", b"iCCP", b"eXIf"] and order[-1] == b"IEND"
    assert order.count(b"IDAT") >= 1 and order.index(b"IDAT") > 2
    with Image.open(fp) as im:
        assert im.info["icc_profile"] == gen.display_p3()


def test_damaged_data_is_reported() -> None:
    data = _png(_image(16, 16, 3))
    header = _png16.read_header(data)
    idat = [d for t, d in _png16.iter_chunks(io.BytesIO(data), (b"IDAT",)) if t == b"IDAT"]
    with pytest.raises(_png16.PngError, match="cut short"):
        _png16.decode_numpy(header, [idat[0][: len(idat[0]) // 2]])
    with pytest.raises(_png16.PngError, match="damaged"):
        _png16.decode_numpy(header, [b"\x78\x9c" + b"\xff" * 50])
    with pytest.raises(_png16.PngError, match="IEND"):
        list(_png16.iter_chunks(io.BytesIO(data[:-12])))


def test_colour_key_transparency(tmp_path: Path) -> None:
    image = _image(6, 6, 3)
    image[0, 0] = (1, 2, 3)
    path = tmp_path / "key.png"
    path.write_bytes(_png(image, extra=[(b"tRNS", struct.pack(">HHH", 1, 2, 3))]))
    loaded = load_image(path)
    assert loaded.alpha[0, 0] == 0 and (loaded.alpha.ravel()[1:] == 65535).all()
    np.testing.assert_array_equal(loaded.rgb, image)


def test_truncated_16bit_png_is_an_image_error(tmp_path: Path) -> None:
    from pipeline.errors import ImageError

    good = tmp_path / "good.png"
    good.write_bytes(_png(_image(40, 40, 3)))
    path = gen.truncated(tmp_path / "cut.png", good, 0.6)
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(path)
