"""Keeping a provider's encoded bytes with the run's metadata inserted (pipeline.io.insert).

What "lossless" means is checked three ways: the image data in the file (PNG IDAT, the JPEG
scan from SOS on, WebP's VP8/VP8L/ALPH chunks) is byte for byte the original's; Pillow decodes
the same pixels; and ImageMagick (libpng, libjpeg-turbo and libwebp, decoders independent of
Pillow and of this module) decodes the same pixels and reads the file without complaint. The
metadata is what :func:`pipeline.io.save.save_image` would have written for the same run.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageError
from pipeline.io import icc as _icc
from pipeline.io.insert import Metadata, describe_encoded, insert_metadata, keep_encoded
from pipeline.io.load import SourceInfo, probe_image, read_parameters_text, read_run_info
from pipeline.io.save import save_image
from pipeline.metadata import RunInfo
from pipeline.params import UpscaleParams
from tests.unit import imagegen

MAGICK = shutil.which("convert") and shutil.which("identify")
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
    b'exif:PixelXDimension="48" exif:PixelYDimension="32"/></rdf:RDF></x:xmpmeta>'
)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def source(tmp_path: Path) -> SourceInfo:
    """A camera JPEG with EXIF (make, date), an sRGB profile and XMP: what an output keeps."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0132] = "Canon", "2024:05:01 10:00:00"
    path = tmp_path / "source.jpg"
    Image.fromarray(imagegen.photo("coffee", (48, 32))).save(
        path, exif=exif.tobytes(), icc_profile=_icc.srgb_profile(), xmp=XMP
    )
    return probe_image(path)


def info(prompt: str = "a red fox, détaillé") -> RunInfo:
    params = UpscaleParams(prompt=prompt, mode="creative", seed=99)
    return RunInfo(params, engine="wireflow/x", source_size=(48, 32), output_size=(96, 64))


def image_data(data: bytes) -> bytes:
    """The bytes that hold the pixels, whatever the container says around them."""
    if data.startswith(b"\x89PNG"):
        pos, out = 8, b""
        while pos < len(data):
            (length,) = struct.unpack_from(">I", data, pos)
            if data[pos + 4 : pos + 8] == b"IDAT":
                out += data[pos + 8 : pos + 8 + length]
            pos += 12 + length
        return out
    if data.startswith(b"\xff\xd8"):
        return data[data.index(b"\xff\xda") :]
    pos, out = 12, b""
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if fourcc in (b"VP8 ", b"VP8L", b"ALPH"):
            out += fourcc + data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)
    return out


def decoded(data_or_path) -> np.ndarray:
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as im:
        return np.asarray(im.convert("RGBA"))


def magick(path: Path) -> tuple[bytes, str]:
    """ImageMagick's decode of ``path`` and what it complained about (file name left out)."""
    result = subprocess.run(
        ["convert", str(path), "rgba:-"], capture_output=True, check=True, timeout=60
    )
    return result.stdout, result.stderr.decode("utf-8", "replace").replace(str(path), "FILE")


PHOTO = imagegen.photo("astronaut", (96, 64))
RGBA = np.dstack([PHOTO, imagegen.alpha_mask(96, 64)])


def _palette_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PHOTO).quantize(16).save(buffer, "PNG")
    return buffer.getvalue()


CASES = {
    "png": ("png", encode(PHOTO, "PNG")),
    "png-rgba": ("png", encode(RGBA, "PNG")),
    "png-palette": ("png", _palette_png()),
    "jpg": ("jpg", encode(PHOTO, "JPEG", quality=82)),
    "webp-lossy": ("webp", encode(PHOTO, "WEBP", quality=80)),
    "webp-lossless-rgba": ("webp", encode(RGBA, "WEBP", lossless=True)),
    "webp-lossy-alpha": ("webp", encode(RGBA, "WEBP", quality=80)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_bytes_are_kept_and_the_metadata_is_the_savers(tmp_path, source, case):
    fmt, data = CASES[case]
    run = info()
    path = keep_encoded(tmp_path / "out.png", data, info=run, source=source, fmt=fmt)
    assert path is not None and path.suffix == f".{fmt}"  # the name follows the format
    kept = path.read_bytes()
    assert image_data(kept) == image_data(data) and image_data(data)
    assert np.array_equal(decoded(kept), decoded(data))
    # The run reads back exactly, in the same words the saver writes for it.
    assert read_run_info(path) == run
    reference = save_image(tmp_path / f"ref.{fmt}", PHOTO, info=run, source=source, fmt=fmt)
    assert read_parameters_text(path) == read_parameters_text(reference)
    with Image.open(path) as im, Image.open(reference) as ref:
        assert im.info.get("icc_profile") == ref.info.get("icc_profile") == source.icc_profile
        exif, ref_exif = im.getexif(), ref.getexif()
        assert exif.get(0x010F) == "Canon" and exif.get(0x0132) == "2024:05:01 10:00:00"
        sizes = [
            (e.get_ifd(0x8769).get(0xA002), e.get_ifd(0x8769).get(0xA003)) for e in (exif, ref_exif)
        ]
        assert sizes[0] == sizes[1] and sizes[0] in ((96, 64), (None, None))
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
        xmp = xmp.encode() if isinstance(xmp, str) else xmp
        assert b'exif:PixelXDimension="96"' in xmp and b'exif:PixelYDimension="64"' in xmp
        assert im.size == (96, 64)


@pytest.mark.skipif(not MAGICK, reason="ImageMagick is not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_an_independent_decoder_reads_the_same_pixels_without_complaint(tmp_path, source, case):
    fmt, data = CASES[case]
    original = tmp_path / f"original.{fmt}"
    original.write_bytes(data)
    path = keep_encoded(tmp_path / "out", data, info=info(), source=source, fmt=fmt)
    assert path is not None
    pixels, complaints = magick(path)
    assert pixels == magick(original)[0]
    # No more complaints than about the saver's own file with the same metadata (ImageMagick 6
    # calls any XMP in a WebP "corrupt", Pillow's included).
    reference = save_image(tmp_path / f"ref.{fmt}", PHOTO, info=info(), source=source, fmt=fmt)
    assert complaints == magick(reference)[1]
    described = subprocess.run(["identify", "-verbose", str(path)], capture_output=True, timeout=60)
    shown = described.stdout.decode("utf-8", "replace")
    assert described.returncode == 0 and "sRGB built-in" in shown  # the profile was found
    if fmt == "jpg":
        assert "exif:Make: Canon" in shown
    if fmt == "png":  # a Latin-1 prompt is a tEXt chunk, which ImageMagick shows
        latin = keep_encoded(tmp_path / "latin", data, info=info("a fox"), source=source, fmt=fmt)
        assert latin is not None
        listed = subprocess.run(
            ["identify", "-verbose", str(latin)], capture_output=True, timeout=60
        ).stdout.decode("utf-8", "replace")
        assert "parameters: a fox" in listed


def test_the_providers_own_metadata_is_replaced_not_doubled(tmp_path, source):
    from PIL import PngImagePlugin

    theirs = PngImagePlugin.PngInfo()
    theirs.add_text("parameters", "their prompt\nSteps: 18, Seed: 1")
    theirs.add_text("Software", "ComfyUI")  # anything else stays
    exif = Image.Exif()
    exif[0x0131] = "their upscaler"
    buffer = io.BytesIO()
    Image.fromarray(PHOTO).save(
        buffer, "PNG", pnginfo=theirs, exif=exif.tobytes(), icc_profile=_icc.srgb_profile()
    )
    path = keep_encoded(
        tmp_path / "out.png", buffer.getvalue(), info=info(), source=source, fmt="png"
    )
    assert path is not None
    kept = path.read_bytes()
    for ctype in (b"iCCP", b"eXIf"):
        assert kept.count(ctype) == 1
    assert kept.count(b"parameters\0") == 1 and b"their prompt" not in kept
    assert b"Software\0ComfyUI" in kept
    assert read_run_info(path) == info()
    with Image.open(path) as im:
        assert im.getexif().get(0x0131) is None and im.getexif().get(0x010F) == "Canon"


def test_a_jpeg_profile_larger_than_a_segment_is_split_and_reassembled():
    big = imagegen.display_p3() + bytes(70_000)  # padded: more than one APP2 segment can hold
    data = encode(PHOTO, "JPEG", quality=80)
    out = insert_metadata(data, Metadata(icc_profile=big))
    assert out.count(b"ICC_PROFILE\0") == 2
    with Image.open(io.BytesIO(out)) as im:
        assert im.info["icc_profile"] == big
    assert image_data(out) == image_data(data)


def test_a_simple_webp_becomes_an_extended_one_with_the_right_canvas():
    data = encode(PHOTO, "WEBP", quality=70)
    assert b"VP8X" not in data
    out = insert_metadata(data, Metadata(exif=b"Exif\0\0" + Image.Exif().tobytes()[6:]))
    chunk = out.index(b"VP8X")
    flags, size = out[chunk + 8], out[chunk + 12 : chunk + 18]
    assert flags == 0x08  # EXIF only
    width = int.from_bytes(size[:3], "little") + 1
    height = int.from_bytes(size[3:], "little") + 1
    assert (width, height) == (96, 64)
    assert int.from_bytes(out[4:8], "little") == len(out) - 8


@pytest.mark.parametrize(
    "why",
    ["format", "wide-gamut result", "rotated", "apng", "animated webp", "wide-gamut source",
     "gray source, colour result", "damaged"],
)  # fmt: skip
def test_bytes_that_would_need_more_than_metadata_are_not_kept(tmp_path, source, why):
    data, fmt, src = encode(PHOTO, "PNG"), "png", source
    if why == "format":
        fmt = "jpg"
    elif why == "wide-gamut result":
        data = _with_profile(PHOTO, imagegen.display_p3())
    elif why == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = encode(PHOTO, "JPEG", exif=exif.tobytes())
        fmt = "jpg"
    elif why == "apng":
        buffer = io.BytesIO()
        frames = [Image.fromarray(PHOTO), Image.fromarray(PHOTO[::-1].copy())]
        frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
        data = buffer.getvalue()
    elif why == "animated webp":
        buffer = io.BytesIO()
        frames = [Image.fromarray(PHOTO), Image.fromarray(PHOTO[::-1].copy())]
        frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
        data, fmt = buffer.getvalue(), "webp"
    elif why == "wide-gamut source":
        wide = tmp_path / "wide.png"
        Image.fromarray(PHOTO).save(wide, icc_profile=imagegen.adobe_rgb())
        src = probe_image(wide)
    elif why == "gray source, colour result":
        gray = tmp_path / "gray.png"
        Image.fromarray(PHOTO[:, :, 0]).save(gray)
        src = probe_image(gray)
    else:
        data = data[:-30] + bytes(30)
    assert keep_encoded(tmp_path / "out.png", data, info=info(), source=src, fmt=fmt) is None
    assert not (tmp_path / "out.png").exists()


def test_a_gray_result_of_a_gray_source_is_kept_without_a_colour_profile(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(PHOTO[:, :, 1]).save(gray)
    data = encode(PHOTO[:, :, 1], "PNG")
    path = keep_encoded(
        tmp_path / "out.png", data, info=info(), source=probe_image(gray), fmt="png"
    )
    assert path is not None and image_data(path.read_bytes()) == image_data(data)
    with Image.open(path) as im:
        assert im.mode == "L" and "icc_profile" not in im.info


def test_describe_and_a_failed_write(tmp_path, source):
    described = describe_encoded(CASES["webp-lossless-rgba"][1])
    assert described is not None and (described.format, described.width) == ("webp", 96)
    assert describe_encoded(b"not an image") is None
    with pytest.raises(ValueError):
        insert_metadata(b"GIF89a....", Metadata())
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ImageError, match="cannot create its folder"):
        keep_encoded(
            tmp_path / "a-file" / "out.png", CASES["png"][1], info=info(), source=source, fmt="png"
        )


def _with_profile(array: np.ndarray, profile: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", icc_profile=profile)
    return buffer.getvalue()


def test_a_full_disk_while_writing_is_an_image_error(tmp_path, source, monkeypatch):
    import errno

    from pipeline.io import insert

    def full(target, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(insert, "atomic_write", full)
    with pytest.raises(ImageError, match=r"could not be written \(No space left on device\)"):
        keep_encoded(tmp_path / "out.png", CASES["png"][1], info=info(), source=source, fmt="png")
