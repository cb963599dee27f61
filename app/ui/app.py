"""``clarifier gui``: start the window on a Qt event loop that also runs asyncio (qasync).

This is the one module that imports qasync. The window paints before anything slow happens: the
job controller, the HTTP client, the GPU probe and the model scan all start from the event loop
once the window is on screen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import qasync
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app import APP_ID
from app.ui.window.theme import apply_theme
from pipeline.paths import resources_dir

__all__ = ["app_icon", "build_parser", "main", "make_loop"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarifier gui",
        description="Open the Clarifier window (optionally with images or folders to upscale).",
    )
    parser.add_argument("inputs", nargs="*", help="images, folders or image links to add")
    parser.add_argument(
        "--theme", choices=("system", "light", "dark"), help="colour scheme (default: remembered)"
    )
    parser.add_argument(
        "--ready-file",
        help=argparse.SUPPRESS,  # tests and the start-up benchmark: written after the first paint
    )
    return parser


def app_icon() -> QIcon:
    """The window's icon, from the same hicolor files the desktop entry installs."""
    icon = QIcon()
    for png in sorted((resources_dir() / "icons" / "hicolor").glob(f"*/apps/{APP_ID}.png")):
        icon.addFile(str(png))
    return icon


def make_loop(app: QApplication) -> asyncio.AbstractEventLoop:
    """An asyncio event loop that runs on Qt's; tests use it too.

    ``asyncio.to_thread`` work (folder walks, model scans, image encoding) runs on plain Python
    threads rather than qasync's default QThreads: a QThread still alive when the interpreter
    exits aborts the process, and plain threads are simply joined."""
    loop = qasync.QEventLoop(app)
    loop.set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="clarifier"))
    asyncio.set_event_loop(loop)
    return loop


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("CLARIFIER_LOG", "WARNING").upper())
    QApplication.setApplicationName("Clarifier")
    QApplication.setOrganizationName("Clarifier")
    QApplication.setDesktopFileName(APP_ID)  # the Wayland app id: the launcher's name
    QApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
    )
    app = QApplication(sys.argv[:1])
    app.setWindowIcon(app_icon())
    loop = make_loop(app)

    from app.ui.window.main_window import MainWindow  # the widgets; still no torch, no httpx

    window = MainWindow()
    apply_theme(args.theme or window.saved_theme())
    window.show()
    if args.ready_file:
        ready = Path(args.ready_file)
        window.first_paint.connect(lambda: ready.write_text("painted\n", encoding="utf-8"))
    inputs = list(args.inputs)
    # Start the controller on the first turn of the loop after the window has painted.
    QTimer.singleShot(0, lambda: window.start(inputs))

    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)
    try:
        loop.run_until_complete(closed.wait())
    finally:  # what qasync's ``with loop:`` does (its loop class is built at run time, untyped)
        loop.stop()
        loop.close()
    return window.exit_code


if __name__ == "__main__":
    sys.exit(main())
