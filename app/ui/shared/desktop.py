"""Show a file in the system file manager, with the file selected where the desktop allows.

Linux has no single command for "reveal": the freedesktop ``FileManager1`` D-Bus interface
(Nautilus, Dolphin, Nemo, Thunar, Caja, ...) selects the file; without it the folder is opened
through the desktop's default handler. macOS uses ``open -R`` and Windows ``explorer /select,``.
Nothing here blocks: the commands run as child processes the event loop watches.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QUrl
from PySide6.QtGui import QDesktopServices

__all__ = ["reveal_command", "show_in_file_manager"]

_DBUS_TIMEOUT_MS = 3000
_running: set[QProcess] = set()  # keeps each child's QProcess alive until it has finished


def reveal_command(path: Path, platform: str = sys.platform) -> list[str] | None:
    """The command that shows ``path`` selected in the file manager, or None where there is
    none to try (then the folder is opened instead)."""
    if platform == "darwin":
        return ["open", "-R", str(path)]
    if platform.startswith("win"):
        return ["explorer", f"/select,{os.path.normpath(path)}"]
    dbus_send = shutil.which("dbus-send")
    if dbus_send is None:
        return None
    # as_uri() percent-encodes commas, which dbus-send would otherwise take as separators.
    return [
        dbus_send,
        "--session",
        "--print-reply",
        f"--reply-timeout={_DBUS_TIMEOUT_MS}",
        "--dest=org.freedesktop.FileManager1",
        "--type=method_call",
        "/org/freedesktop/FileManager1",
        "org.freedesktop.FileManager1.ShowItems",
        f"array:string:{path.absolute().as_uri()}",
        "string:",
    ]


def _open_folder(folder: Path) -> bool:
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


def show_in_file_manager(path: str | os.PathLike[str], parent: QObject | None = None) -> bool:
    """Reveal ``path`` (or, when it is gone, the nearest folder that exists). Returns False only
    when there is nothing on disk to show."""
    target = Path(path).absolute()
    if not target.exists():
        folder = target.parent
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        return folder.is_dir() and _open_folder(folder)
    command = reveal_command(target)
    if command is None:
        return _open_folder(target.parent if target.is_file() else target)
    if sys.platform == "darwin" or sys.platform.startswith("win"):
        # explorer exits 1 even when it worked, so its status says nothing: fire and forget.
        started, _pid = QProcess.startDetached(command[0], command[1:])
        return bool(started) or _open_folder(target.parent)
    process = QProcess(parent)
    _running.add(process)
    fallback_done = False

    def fall_back() -> None:
        nonlocal fallback_done
        if not fallback_done:
            fallback_done = True
            _open_folder(target.parent if target.is_file() else target)

    def finished(code: int, status: QProcess.ExitStatus) -> None:
        if code != 0 or status != QProcess.ExitStatus.NormalExit:
            fall_back()  # no FileManager1 service on this desktop
        _running.discard(process)
        process.deleteLater()

    def errored(error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            fall_back()
            _running.discard(process)
            process.deleteLater()

    process.finished.connect(finished)
    process.errorOccurred.connect(errored)
    process.start(command[0], command[1:])
    return True
