"""Taking inputs into the window: dropped or pasted files, folders, image links and image data.

Folders are walked (recursively) and links downloaded off the GUI thread; what cannot be taken
is named in the status bar and nothing else is lost. The same rules as the CLI apply
(:mod:`app.jobs.inputs`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData, Qt, QUrl
from PySide6.QtGui import QColor, QImage, QImageWriter, QPainter, QPaintEvent
from PySide6.QtWidgets import QFileDialog, QWidget

from app.jobs.inputs import InputError, collect_inputs, is_url, save_pasted
from pipeline.io.load import SUPPORTED_SUFFIXES
from pipeline.params import UpscaleParams

if TYPE_CHECKING:
    from app.ui.window.session import Session
    from app.ui.window.state import WindowState
    from app.ui.window.status import Say

__all__ = ["InputIntake", "describe_run", "image_filter"]


def image_filter() -> str:
    patterns = " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))
    return f"Images ({patterns});;All files (*)"


class _DropOverlay(QWidget):
    """A translucent sheet over the centre while something is dragged over the window."""

    def __init__(self, parent: QWidget, text: str) -> None:
        super().__init__(parent)
        self.text = text
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setGeometry(parent.rect())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        highlight = self.palette().highlight().color()
        fill = QColor(highlight)
        fill.setAlpha(50)
        painter.fillRect(self.rect(), fill)
        pen = painter.pen()
        pen.setColor(highlight)
        pen.setWidth(3)
        pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRoundedRect(self.rect().adjusted(8, 8, -8, -8), 14, 14)
        font = painter.font()
        font.setPointSizeF(font.pointSizeF() * 1.8)
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.text)
        painter.end()


class InputIntake:
    """Turns mime data, paths and links into inputs of the window's strip.

    What it found goes to ``add`` (the window's ``add_inputs``, which also says how many were
    new), what it could not take to ``say``. ``parent`` parents the file dialogs; ``session``
    runs the slow parts in the background and downloads links; ``state`` remembers the folder
    the last images were opened from.
    """

    def __init__(
        self,
        parent: QWidget,
        session: Session,
        state: WindowState,
        *,
        add: Callable[[list[Path]], None],
        say: Say,
    ) -> None:
        self._parent = parent
        self._session = session
        self._state = state
        self._add = add
        self._say = say
        self._overlay: _DropOverlay | None = None

    # --- what can be taken ----------------------------------------------------------------------
    @staticmethod
    def accepts(mime: QMimeData) -> bool:
        if mime.hasUrls():
            return any(u.isLocalFile() or u.scheme() in ("http", "https") for u in mime.urls())
        if mime.hasImage():
            return True
        return mime.hasText() and any(_looks_like_input(t) for t in mime.text().splitlines())

    def show_overlay(self, over: QWidget, mime: QMimeData) -> None:
        n = len(mime.urls()) if mime.hasUrls() else 1
        text = "Drop to add this image" if n == 1 else f"Drop to add {n} items"
        self.hide_overlay()
        self._overlay = _DropOverlay(over, text)
        self._overlay.show()

    def hide_overlay(self) -> None:
        if self._overlay is not None:
            self._overlay.deleteLater()
            self._overlay = None

    # --- taking ---------------------------------------------------------------------------------
    def take(self, mime: QMimeData) -> bool:
        """Take dropped or pasted data; returns whether there was anything to take."""
        if mime.hasUrls():
            texts = [u.toLocalFile() if u.isLocalFile() else u.toString() for u in mime.urls()]
            return self.take_texts([t for t in texts if t])
        if mime.hasImage():
            image = mime.imageData()
            if isinstance(image, QImage) and not image.isNull():
                self._session.spawn(self._take_image(image.copy()))
                return True
        if mime.hasText():
            lines = [t.strip().strip('"') for t in mime.text().splitlines()]
            return self.take_texts([t for t in lines if _looks_like_input(t)])
        return False

    def take_texts(self, texts: Sequence[str]) -> bool:
        """Paths (files or folders, also ``file://`` URLs) and image links."""
        paths: list[str] = []
        links: list[str] = []
        for text in texts:
            if is_url(text):
                links.append(text)
            elif text.startswith("file:"):
                paths.append(QUrl(text).toLocalFile())
            else:
                paths.append(str(Path(text).expanduser()))
        if paths:
            self._session.spawn(self._take_paths(paths))
        for link in links:
            self._session.spawn(self._take_link(link))
        return bool(paths or links)

    async def _take_paths(self, paths: list[str]) -> None:
        found, problems = await asyncio.to_thread(_gather, paths)
        self._add(found)
        if problems:
            self._say("; ".join(problems[:3]), error=True)
        elif not found:
            self._say("No images there (looked for " + _suffix_list() + ")", error=True)

    async def _take_link(self, url: str) -> None:
        self._say(f"Downloading {url} …")
        try:
            path = await self._session.fetch(url)
        except InputError as exc:
            self._say(str(exc), error=True)
            return
        self._add([path])

    async def _take_image(self, image: QImage) -> None:
        def store() -> Path:
            data = QByteArray()
            buffer = QBuffer(data)
            buffer.open(QIODevice.OpenModeFlag.WriteOnly)
            # Not QImage.save: its stubs want bytes for the format, and at run time it takes str.
            QImageWriter(buffer, b"PNG").write(image)
            buffer.close()
            return save_pasted(bytes(data.data()))

        try:
            path = await asyncio.to_thread(store)
        except OSError as exc:
            self._say(f"Could not keep the pasted image: {exc}", error=True)
            return
        self._add([path])

    def open_dialog(self) -> None:
        state = self._state
        files, _ = QFileDialog.getOpenFileNames(
            self._parent, "Open images", state.open_dir or str(Path.home()), image_filter()
        )
        if files:
            state.open_dir = str(Path(files[0]).parent)
            self.take_texts(files)

    def open_folder_dialog(self) -> None:
        state = self._state
        folder = QFileDialog.getExistingDirectory(
            self._parent, "Add a folder of images", state.open_dir or str(Path.home())
        )
        if folder:
            state.open_dir = folder
            self.take_texts([folder])


# --- what a run will make -------------------------------------------------------------------------
def describe_run(
    current: Path | None,
    params: UpscaleParams,
    backend: str,
    model: str,
    *,
    seed_locked: bool,
    cap_mp: float,
) -> str:
    """The line under the Upscale button: the current input's size before and after (flagged when
    over the ``cap_mp`` megapixel output cap), the mode, where it runs and the seed."""
    from app.backends.capabilities import backend_info, model_label

    where = backend_info(backend).label
    if model and len(backend_info(backend).models) > 1:
        where += f" · {model_label(backend, model)}"
    size = ""
    if current is not None:
        dims = _probe(current)
        if dims is not None:
            w, h = params.output_size(*dims)
            mp = w * h / 1e6
            size = f"{dims[0]}×{dims[1]} → <b>{w}×{h}</b> ({mp:.1f} MP)"
            if mp > cap_mp:
                size += f" — <b>over the {cap_mp:g} MP output cap</b>"
    seed = f"seed {params.seed}" if seed_locked else "new random seed"
    parts = [p for p in (size, f"{params.mode} · {where} · {seed}") if p]
    return "<br>".join(parts)


_PROBED: dict[tuple[str, float], tuple[int, int] | None] = {}


def _probe(path: Path) -> tuple[int, int] | None:
    """The image's upright size, read from its header (cached: this runs on every edit)."""
    from pipeline.io.load import probe_image

    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return None
    if key not in _PROBED:
        try:
            info = probe_image(path)
            _PROBED[key] = (info.width, info.height)
        except Exception:  # noqa: BLE001 - a bad file shows its error when it runs
            _PROBED[key] = None
    return _PROBED[key]


def _looks_like_input(text: str) -> bool:
    text = text.strip().strip('"')
    if not text:
        return False
    if is_url(text) or text.startswith("file:"):
        return True
    return Path(text).expanduser().exists()


def _suffix_list() -> str:
    return ", ".join(sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES if len(s) <= 5)[:8]) + ", …"


def _gather(paths: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Expand folders; refuse what is missing or not an image, saying why."""
    found: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append(f"{path.name}: no such file or folder")
            continue
        for file, relative in collect_inputs([path]):
            if relative is None and file.suffix.lower() not in SUPPORTED_SUFFIXES:
                problems.append(f"{file.name} is not an image Clarifier reads")
                continue
            found.append(file)
    return found, problems
