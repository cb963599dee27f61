"""Thumbnails for the queue, the history and the input strip, decoded off the GUI thread.

Decoding even a small JPEG takes milliseconds and a 30-megapixel PNG output takes seconds, so
:class:`ThumbnailLoader` never decodes on the GUI thread: :meth:`ThumbnailLoader.request`
answers at once from a bounded LRU cache, or returns None and emits ``ready`` (or ``failed``)
later. Entries are keyed by path, modification time, file size and thumbnail size, so a file
rewritten in place (a re-run to the same output name) shows its new pixels.

Requests are served newest first with a few decodes at a time: when a list scrolls quickly the
rows now on screen are decoded before the ones scrolled past.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections import OrderedDict

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal
from PySide6.QtGui import QImage

__all__ = ["ThumbnailError", "ThumbnailLoader", "decode_thumbnail"]

log = logging.getLogger(__name__)

# (path, mtime_ns, file size, thumbnail size); a missing file has mtime and file size -1.
_Key = tuple[str, int, int, int]

_MAX_PENDING = 256  # older requests beyond this are dropped; a repaint asks again
_MAX_ERRORS = 1024


class ThumbnailError(Exception):
    """A thumbnail cannot be made; the message is plain and names no internals."""


def _register_heif() -> bool:
    """Let Pillow open HEIC/HEIF photos when the optional pillow-heif is installed."""
    if importlib.util.find_spec("pillow_heif") is None:
        return False
    import pillow_heif  # pyright: ignore[reportMissingImports]  # the optional heif extra

    pillow_heif.register_heif_opener()
    return True


def _open(path: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ThumbnailError("The file no longer exists.") from None
    except UnidentifiedImageError:
        if _register_heif():
            try:
                return Image.open(path)
            except UnidentifiedImageError:
                pass
        raise ThumbnailError("This file is not an image Clarifier can read.") from None
    except Image.DecompressionBombError:
        raise ThumbnailError("This image is too large to preview.") from None
    except OSError as exc:
        raise ThumbnailError(f"The file cannot be read ({exc.strerror or exc}).") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by scaling (Pillow's own convert would clip)."""
    mode = image.mode
    if mode.startswith("I;16"):
        scaled = np.asarray(image, dtype=np.float32) / 257.0
    elif mode == "I":
        data = np.asarray(image, dtype=np.float32)
        scaled = data / 257.0 if data.size and data.max() > 255 else data
    elif mode == "F":
        data = np.nan_to_num(np.asarray(image, dtype=np.float32))
        scaled = data * 255.0 if data.size and data.max() <= 1.0 else data
    else:
        return image
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def decode_thumbnail(path: str, size: int) -> QImage:
    """An upright thumbnail fitting ``size``×``size``, as a QImage ready to paint. Safe to call
    from any thread (QImage, unlike QPixmap, is not tied to the GUI thread)."""
    with _open(path) as image:
        try:
            if image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: ten times faster.
                image.draft("RGB" if image.mode == "RGB" else None, (size, size))
            image = ImageOps.exif_transpose(image)
            try:
                image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
            except ValueError:  # a mode the resampler does not take: convert, then shrink
                image = _to_8bit(image)
                image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
            image = _to_8bit(image)
            alpha = _has_alpha(image)
            image = image.convert("RGBA" if alpha else "RGB")
        except Image.DecompressionBombError:
            raise ThumbnailError("This image is too large to preview.") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ThumbnailError(f"The image is damaged or incomplete ({exc}).") from None
    w, h = image.size
    if alpha:
        data = image.tobytes("raw", "RGBA")
        qimage = QImage(data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
        return qimage.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
    data = image.tobytes("raw", "RGB")
    qimage = QImage(data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return qimage.convertToFormat(QImage.Format.Format_RGB32)  # a copy: owns its pixels


class _Relay(QObject):
    """Lives in the GUI thread; a worker emits on it and the loader's slot runs there."""

    done = Signal(object, object, str)  # key, QImage or None, error message


class _Decode(QRunnable):
    def __init__(self, key: _Key, relay: _Relay) -> None:
        super().__init__()
        self._key = key
        self._relay = relay

    def run(self) -> None:
        path, _, _, size = self._key
        image: QImage | None = None
        error = ""
        try:
            image = decode_thumbnail(path, size)
        except ThumbnailError as exc:
            error = str(exc)
        except Exception as exc:  # a decoder bug must cost one thumbnail, not the thread
            log.exception("thumbnail of %s failed", path)
            error = f"The image cannot be previewed ({type(exc).__name__})."
        with contextlib.suppress(RuntimeError):  # the loader was deleted while this ran
            self._relay.done.emit(self._key, image, error)


class ThumbnailLoader(QObject):
    """Decodes thumbnails in the thread pool and keeps the recent ones.

    ``request`` returns a cached QImage or None; after None, exactly one of ``ready`` or
    ``failed`` follows for that path (unless a newer request for the same path and size
    superseded it). A file that failed is not decoded again until it changes on disk."""

    ready = Signal(str, QImage)
    failed = Signal(str, str)

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        max_count: int = 600,
        max_bytes: int = 96 * 2**20,
        max_running: int = 3,
        pool: QThreadPool | None = None,
    ) -> None:
        super().__init__(parent)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._max_running = max(1, max_running)
        self._pool = pool or QThreadPool.globalInstance()
        self._cache: OrderedDict[_Key, QImage] = OrderedDict()
        self._bytes = 0
        self._errors: OrderedDict[_Key, str] = OrderedDict()
        self._pending: list[_Key] = []  # served last-in, first-out
        self._running: set[_Key] = set()
        self._wanted: dict[tuple[str, int], _Key] = {}
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done)

    # --- asking -------------------------------------------------------------------------------
    @staticmethod
    def _key(path: str, size: int) -> _Key:
        try:
            st = os.stat(path)
        except OSError:
            return (path, -1, -1, size)
        return (path, st.st_mtime_ns, st.st_size, size)

    def request(self, path: str | os.PathLike[str], size: int) -> QImage | None:
        """The thumbnail of ``path`` fitting ``size`` pixels, or None (then ``ready`` or
        ``failed`` follows). Only a stat on this thread."""
        path = os.fspath(path)
        size = max(1, int(size))
        key = self._key(path, size)
        self._wanted[(path, size)] = key
        image = self._cache.get(key)
        if image is not None:
            self._cache.move_to_end(key)
            return image
        if key in self._errors:
            return None
        if key[1] == -1:
            self._fail_later(key, "The file no longer exists.")
            return None
        if key in self._running:
            return None
        if key in self._pending:
            self._pending.remove(key)
        self._pending.append(key)
        if len(self._pending) > _MAX_PENDING:
            dropped = self._pending.pop(0)
            if self._wanted.get((dropped[0], dropped[3])) == dropped:
                del self._wanted[(dropped[0], dropped[3])]
        self._pump()
        return None

    def error(self, path: str | os.PathLike[str], size: int) -> str | None:
        """Why the thumbnail of ``path`` could not be made, if it failed as the file is now."""
        return self._errors.get(self._key(os.fspath(path), max(1, int(size))))

    def invalidate(self, path: str | os.PathLike[str]) -> None:
        """Forget ``path`` (every size): the next request decodes it again."""
        path = os.fspath(path)
        for key in [k for k in self._cache if k[0] == path]:
            self._drop(key)
        for key in [k for k in self._errors if k[0] == path]:
            del self._errors[key]

    def clear(self) -> None:
        self._cache.clear()
        self._errors.clear()
        self._pending.clear()
        self._bytes = 0

    @property
    def cached_count(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    # --- working ------------------------------------------------------------------------------
    def _fail_later(self, key: _Key, message: str) -> None:
        """Record a failure and report it from the event loop, as a decode failure would be:
        a caller never gets a signal inside its own ``request`` call."""
        self._remember_error(key, message)
        QTimer.singleShot(0, self, lambda: self._announce_failure(key, message))

    def _announce_failure(self, key: _Key, message: str) -> None:
        if self._wanted.get((key[0], key[3])) == key:
            self.failed.emit(key[0], message)

    def _remember_error(self, key: _Key, message: str) -> None:
        self._errors[key] = message
        while len(self._errors) > _MAX_ERRORS:
            self._errors.popitem(last=False)

    def _pump(self) -> None:
        while self._pending and len(self._running) < self._max_running:
            key = self._pending.pop()
            self._running.add(key)
            self._pool.start(_Decode(key, self._relay))

    def _drop(self, key: _Key) -> None:
        image = self._cache.pop(key, None)
        if image is not None:
            self._bytes -= image.sizeInBytes()

    def _store(self, key: _Key, image: QImage) -> None:
        path, _, _, size = key
        for old in [k for k in self._cache if k[0] == path and k[3] == size and k != key]:
            self._drop(old)  # an older version of a rewritten file
        self._drop(key)
        self._cache[key] = image
        self._bytes += image.sizeInBytes()
        while self._cache and (len(self._cache) > self.max_count or self._bytes > self.max_bytes):
            oldest = next(iter(self._cache))
            if oldest == key:
                break
            self._drop(oldest)

    def _on_done(self, key: _Key, image: QImage | None, error: str) -> None:
        self._running.discard(key)
        wanted = self._wanted.get((key[0], key[3])) == key
        if image is not None and not image.isNull():
            self._store(key, image)
            if wanted:
                self.ready.emit(key[0], image)
        else:
            message = error or "The image cannot be previewed."
            self._remember_error(key, message)
            if wanted:
                self.failed.emit(key[0], message)
        self._pump()
