"""Loading an image for the compare view, off the GUI thread.

One :class:`LoadTask` per requested file runs in ``QThreadPool.globalInstance()``: it reads the
header (the size is known at once, so the view can lay out before any pixel is decoded), shows a
cheap preview where there is one (a JPEG decoded at 1/8 scale by the DCT, then a nearest-sampled
copy of the decoded pixels), decodes with :func:`pipeline.io.load.load_image` (EXIF orientation,
ICC to sRGB, 16-bit), and builds the :class:`~app.ui.compare.pyramid.Pyramid`. Results travel
back through :class:`LoadRelay` signals tagged with the slot and a generation number, so the view
ignores results of a request it has since replaced; a replaced or abandoned task notices its
cancel flag between strips and stops early, freeing its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps
from PySide6.QtCore import QObject, QRunnable, Signal
from PySide6.QtGui import QImage

from app.ui.compare.pyramid import BuildCancelled, Pyramid, build_pyramid, preview_image
from pipeline.errors import ImageError
from pipeline.io.load import load_image, probe_image

log = logging.getLogger(__name__)

# The viewer shows anything the engine could have written (its output cap is configurable), so
# it has its own, generous limit: about 1.3 GB of display pyramid.
VIEW_MAX_PIXELS = 300_000_000
_DRAFT_MIN_PIXELS = 4_000_000  # below this a full decode is quick enough on its own


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none (AttributeError)
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give freed decode buffers back to the system. glibc keeps freed blocks below its
    (adaptive, up to 32 MB) mmap threshold inside its heaps, and Pillow decodes in such
    blocks: after a 64 MP load that is about 250 MB the process holds but no longer uses.
    A no-op where there is no glibc."""
    if _TRIM is not None:
        _TRIM(0)


class LoadRelay(QObject):
    """Signals from load tasks to the view: (slot, generation, payload). Lives in the GUI
    thread as the view's child, so deliveries are queued there and die with the view."""

    sized = Signal(str, int, int, int)  # slot, generation, width, height
    preview = Signal(str, int, object)  # a small QImage of the whole picture
    progress = Signal(str, int, float)  # 0..1, or -1 while decoding (no measurable progress)
    done = Signal(str, int, object)  # the Pyramid
    failed = Signal(str, int, str)  # a plain-language message


def friendly_error(path: str, exc: BaseException) -> str:
    """What to tell a person when a picture cannot be shown (never a traceback)."""
    name = Path(path).name or path
    if isinstance(exc, ImageError):
        return f"Could not show {name}: {exc.reason}."
    if isinstance(exc, MemoryError):
        return f"Could not show {name}: there is not enough free memory for an image this large."
    return f"Could not show {name}: an unexpected error occurred ({type(exc).__name__})."


def _draft_preview(path: str) -> QImage | None:
    """A JPEG decoded at reduced scale (milliseconds for tens of megapixels), upright."""
    with Image.open(path) as im:
        if im.format != "JPEG" or im.width * im.height < _DRAFT_MIN_PIXELS:
            return None
        im.draft("RGB", (im.width // 8, im.height // 8))
        small = ImageOps.exif_transpose(im.convert("RGB"))
    data = small.tobytes()
    return QImage(
        data, small.width, small.height, small.width * 3, QImage.Format.Format_RGB888
    ).copy()


class LoadTask(QRunnable):
    """Decode one file and build its pyramid; report through the relay."""

    def __init__(self, relay: LoadRelay, slot: str, generation: int, path: str) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._relay = relay
        self._slot = slot
        self._gen = generation
        self._path = path
        self.cancel = threading.Event()

    def _emit(self, name: str, *payload: object) -> None:
        if self.cancel.is_set():
            raise BuildCancelled
        try:
            getattr(self._relay, name).emit(self._slot, self._gen, *payload)
        except RuntimeError:  # the view (and its relay) was deleted: nobody is waiting
            self.cancel.set()
            raise BuildCancelled from None

    def run(self) -> None:
        outcome: tuple[str, object] | None = None
        try:
            outcome = ("done", self._load())
        except BuildCancelled:
            pass
        except Exception as exc:  # anything a decoder raises becomes a message, not a crash
            if not isinstance(exc, ImageError | MemoryError):
                log.exception("could not load %s for the compare view", self._path)
            outcome = ("failed", friendly_error(self._path, exc))
        # Here the decoded arrays (and any traceback holding them) are gone.
        release_freed_memory()
        if outcome is not None:
            with contextlib.suppress(BuildCancelled):
                self._emit(*outcome)

    def _load(self) -> Pyramid:
        info = probe_image(self._path)
        self._emit("sized", info.width, info.height)
        try:
            draft = _draft_preview(self._path)
        except Exception:  # noqa: BLE001 - only a preview: the full decode reports problems
            draft = None
        if draft is not None:
            self._emit("preview", draft)
        self._emit("progress", -1.0)
        loaded = load_image(self._path, max_pixels=VIEW_MAX_PIXELS)
        for note in loaded.warnings:
            log.info("%s", note)
        rgb, alpha = loaded.rgb, loaded.alpha
        del loaded
        if draft is None and rgb.shape[0] * rgb.shape[1] >= _DRAFT_MIN_PIXELS:
            self._emit("preview", preview_image(rgb, alpha))
        return build_pyramid(
            rgb,
            alpha,
            cancelled=self.cancel.is_set,
            progress=lambda f: self._emit("progress", f),
        )
