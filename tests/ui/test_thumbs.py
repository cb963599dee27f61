"""Thumbnails: decoded off the GUI thread, upright, 8-bit, cached with bounds, refreshed when
the file changes, and a plain message when they cannot be made."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QCoreApplication, QThread
from PySide6.QtGui import QImage

from app.ui.shared import thumbs
from app.ui.shared.thumbs import ThumbnailLoader, decode_thumbnail


def wait_ready(qtbot: Any, loader: ThumbnailLoader, path: Path, size: int) -> QImage:
    with qtbot.waitSignal(loader.ready, timeout=5000) as ready:
        assert loader.request(str(path), size) is None
    assert ready.args[0] == str(path)
    return ready.args[1]


def test_decodes_in_the_pool_and_answers_from_the_cache(
    qtbot: Any, photo_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = thumbs.decode_thumbnail

    def counting(path: str, size: int) -> QImage:
        threads.append(threading.get_ident())
        return real(path, size)

    monkeypatch.setattr(thumbs, "decode_thumbnail", counting)
    loader = ThumbnailLoader()
    seen_on: list[QThread] = []
    loader.ready.connect(lambda *_: seen_on.append(QThread.currentThread()))

    image = wait_ready(qtbot, loader, photo_file, 64)
    assert (image.width(), image.height()) == (64, 64)
    assert threads and threads[0] != threading.get_ident()  # decoded off the GUI thread
    assert seen_on == [QCoreApplication.instance().thread()]  # announced on the GUI thread
    # The astronaut's suit is white: a real picture, not an empty image.
    colours = {image.pixel(x, y) for x in range(0, 64, 4) for y in range(0, 64, 4)}
    assert len(colours) > 50

    cached = loader.request(str(photo_file), 64)
    assert cached is not None and cached.cacheKey() == image.cacheKey()
    assert len(threads) == 1  # no second decode
    assert loader.cached_count == 1 and loader.cached_bytes == image.sizeInBytes()


def test_upright_and_eight_bit(qtbot: Any, tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90° clockwise
    Image.new("RGB", (200, 100), (200, 30, 30)).save(rotated, exif=exif)
    image = decode_thumbnail(str(rotated), 64)
    assert (image.width(), image.height()) == (32, 64)

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 60), 32896, np.uint16)).save(deep)  # half of 65535
    assert Image.open(deep).mode.startswith("I;16")
    grey = decode_thumbnail(str(deep), 30).pixelColor(5, 5)
    assert abs(grey.red() - 128) <= 1 and grey.red() == grey.green() == grey.blue()

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (20, 20), (0, 255, 0, 64)).save(clear)
    pixel = decode_thumbnail(str(clear), 20)
    assert pixel.hasAlphaChannel() and pixel.pixelColor(3, 3).alpha() == 64


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("broken.png", "truncated", "damaged"),
        ("notes.png", b"just some text, not a picture", "not an image"),
        ("gone.png", None, "no longer exists"),
    ],
)
def test_unreadable_files_fail_in_plain_words(
    qtbot: Any, tmp_path: Path, photo_file: Path, name: str, content: Any, words: str
) -> None:
    path = tmp_path / name
    if content == "truncated":
        path.write_bytes(photo_file.read_bytes()[:400])
    elif content is not None:
        path.write_bytes(content)
    loader = ThumbnailLoader()
    with qtbot.waitSignal(loader.failed, timeout=5000) as failed:
        assert loader.request(str(path), 48) is None
    assert failed.args[0] == str(path)
    assert words in failed.args[1]
    assert loader.error(str(path), 48) == failed.args[1]
    with qtbot.assertNotEmitted(loader.failed, wait=50):  # not tried again until it changes
        assert loader.request(str(path), 48) is None


def test_a_rewritten_file_shows_its_new_pixels(qtbot: Any, tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    Image.new("RGB", (50, 50), (255, 0, 0)).save(path)
    loader = ThumbnailLoader()
    assert wait_ready(qtbot, loader, path, 32).pixelColor(10, 10).red() == 255

    Image.new("RGB", (50, 50), (0, 0, 255)).save(path)
    later = path.stat().st_mtime + 5
    os.utime(path, (later, later))
    blue = wait_ready(qtbot, loader, path, 32)
    assert blue.pixelColor(10, 10).blue() == 255
    assert loader.request(str(path), 32).pixelColor(10, 10).blue() == 255
    assert loader.cached_count == 1  # the old version was dropped


def test_the_cache_is_bounded_by_count_and_bytes(qtbot: Any, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (64, 64), (i * 80, 0, 0)).save(path)
        paths.append(path)
    loader = ThumbnailLoader(max_count=2)
    for path in paths:
        wait_ready(qtbot, loader, path, 64)
    assert loader.cached_count == 2
    assert loader.request(str(paths[2]), 64) is not None  # the newest stays
    assert loader.request(str(paths[1]), 64) is not None
    with qtbot.waitSignal(loader.ready):  # the oldest was evicted: decoded again
        assert loader.request(str(paths[0]), 64) is None

    small = ThumbnailLoader(max_bytes=64 * 64 * 4 + 1)  # room for one 64×64 RGB32 image
    for path in paths[:2]:
        wait_ready(qtbot, small, path, 64)
    assert small.cached_count == 1 and small.cached_bytes <= small.max_bytes
