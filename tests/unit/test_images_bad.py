"""Bad inputs: every one gives an ImageError that names the file and says what is wrong."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageError
from pipeline.io import load
from pipeline.io.load import load_image, probe_image, read_parameters_text
from tests.unit import imagegen as gen


def _good_png(tmp_path: Path) -> Path:
    return gen.save(tmp_path / "good.png", gen.photo("coffee", (200, 150)))


def _good_jpeg(tmp_path: Path) -> Path:
    return gen.save(tmp_path / "good.jpg", gen.photo("coffee", (200, 150)), quality=90)


# name → (builder, words the message must contain)
BAD: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "empty": (lambda d: _write(d / "empty.png", b""), ("empty",)),
    "truncated png": (
        lambda d: gen.truncated(d / "cut.png", _good_png(d), 0.5),
        ("truncated or damaged",),
    ),
    "png cut in its header": (
        lambda d: gen.truncated(d / "head.png", _good_png(d), 0.002),
        ("truncated or damaged",),
    ),
    "truncated jpeg": (
        lambda d: gen.truncated(d / "cut.jpg", _good_jpeg(d), 0.5),
        ("truncated or damaged",),
    ),
    "corrupt png data": (lambda d: _corrupt(_good_png(d)), ("truncated or damaged",)),
    "text named .png": (
        lambda d: _write(d / "notes.png", b"Shopping list:\n- milk\n- eggs\n" * 5),
        ("not an image", "text file"),
    ),
    "pdf named .jpg": (
        lambda d: _write(d / "scan.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + b"x" * 200),
        ("not an image", "PDF"),
    ),
    "zip": (lambda d: gen.zip_file(d / "photos.zip"), ("ZIP",)),
    "html page": (
        lambda d: _write(d / "download.jpg", b"<!DOCTYPE html><html><body>404</body></html>"),
        ("web page",),
    ),
    "svg": (
        lambda d: _write(d / "logo.png", b'<?xml version="1.0"?><svg xmlns="x"></svg>'),
        ("SVG",),
    ),
    "random bytes": (lambda d: gen.random_bytes(d / "noise.png"), ("not a readable PNG",)),
    "random bytes, no suffix": (lambda d: gen.random_bytes(d / "noise"), ("unrecognised",)),
    "text chunk bomb": (lambda d: gen.text_bomb_png(d / "text_bomb.png"), ("text chunk",)),
    "missing": (lambda d: d / "nowhere.png", ("does not exist",)),
    "folder": (lambda d: _mkdir(d / "folder.png"), ("folder",)),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _corrupt(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 40
    data[start : start + 400] = bytes(np.random.default_rng(5).integers(0, 256, 400, np.uint8))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_give_a_plain_image_error(tmp_path: Path, case: str) -> None:
    build, words = BAD[case]
    path = build(tmp_path)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert caught.value.path == str(path)
    for word in words:
        assert word in message, message
    assert "Traceback" not in message and "Error(" not in message
    assert len(message) < 400


@pytest.mark.parametrize("case", ["empty", "text named .png", "pdf named .jpg", "missing"])
def test_probe_and_metadata_readers_fail_the_same_way(tmp_path: Path, case: str) -> None:
    build, words = BAD[case]
    path = build(tmp_path)
    for reader in (probe_image, read_parameters_text):
        with pytest.raises(ImageError, match=words[0]):
            reader(path)


def test_bytes_input_errors_have_no_path() -> None:
    with pytest.raises(ImageError, match=r"^this is not an image: it looks like a PDF"):
        load_image(b"%PDF-1.4 hello")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="file path or bytes"):
        load_image(12)  # type: ignore[arg-type]


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _good_png(tmp_path)

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(load, "open", deny, raising=False)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_heic_without_pillow_heif_says_how_to_install(tmp_path: Path) -> None:
    if load._HEIF_INSTALLED:
        pytest.skip("pillow-heif is installed")
    path = _write(tmp_path / "phone.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    with pytest.raises(ImageError, match=r"pip install clarifier\[heif\]"):
        load_image(path)
    assert ".heic" not in load.SUPPORTED_SUFFIXES


def test_mislabelled_png_loads_with_a_warning(tmp_path: Path) -> None:
    picture = gen.photo()
    path = tmp_path / "holiday.jpg"
    Image.fromarray(picture).save(path, format="PNG")
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb, picture)
    assert loaded.source.format == "PNG"
    assert any(".jpg" in w and "PNG" in w for w in loaded.warnings), loaded.warnings


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = gen.bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 300
    limit_before = Image.MAX_IMAGE_PIXELS
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageError) as caught:
            load_image(path)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 10_000_000  # refused before any decoding
    message = str(caught.value)
    assert "60000×60000" in message and "3600.0 MP" in message and "64.0 MP" in message
    info = probe_image(path)  # the header alone is harmless to read
    assert (info.width, info.height) == (60000, 60000)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # Pillow's global is restored


def test_pillow_limit_does_not_refuse_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With Pillow's own limit far below the caller's cap, the caller's cap still decides.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    picture = gen.photo("coffee", (200, 150))
    path = gen.save(tmp_path / "big.png", picture)
    np.testing.assert_array_equal(load_image(path, max_pixels=10**6).rgb, picture)
    with pytest.raises(ImageError, match="output cap"):
        load_image(path, max_pixels=200 * 150 - 1)
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert load_image(path, max_pixels=None).rgb.shape == (150, 200, 3)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_does_not_stop_loading(tmp_path: Path) -> None:
    picture = gen.photo()
    path = tmp_path / "bad_exif.png"
    Image.fromarray(picture).save(path, exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + b"\x01" * 20)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb, picture)
    assert loaded.source.exif is None


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_unreadable_file_mode(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = _good_png(tmp_path)
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)
