"""A virtual X screen for real-window tests and the start-up benchmark: Xvfb, xdotool and
ImageMagick's ``import`` (Debian packages listed in packaging/debian-packages.txt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["MISSING", "XScreen", "until", "virtual_screen"]

MISSING = [tool for tool in ("Xvfb", "xdotool", "import") if shutil.which(tool) is None]


def until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class XScreen:
    def __init__(self, display: str) -> None:
        self.display = display
        self.env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=30, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def xdotool(self, *args: str, check: bool = True) -> str:
        return self.run("xdotool", *args, check=check)

    def find_window(self, title_regex: str, timeout: float = 20) -> str:
        def search() -> str:
            found = self.xdotool("search", "--onlyvisible", "--name", title_regex, check=False)
            return found.splitlines()[-1] if found else ""

        return until(search, timeout, f"a window named {title_regex!r}")

    def key(self, window: str, *keys: str) -> None:
        self.xdotool("windowactivate", "--sync", window, check=False)
        self.xdotool("windowfocus", "--sync", window, check=False)
        for key in keys:
            self.xdotool("key", "--clearmodifiers", key)
            time.sleep(0.15)

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        out = self.xdotool("getwindowgeometry", "--shell", window)
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return (int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"]))

    def screenshot(self, path: Path, window: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run("import", "-window", window or "root", str(path))
        return path


@contextmanager
def virtual_screen(size: Sequence[int] = (1600, 1000)) -> Iterator[XScreen]:
    """Start Xvfb on a free display number, and stop it afterwards."""
    read, write = os.pipe()
    server = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write),
            "-screen",
            "0",
            f"{size[0]}x{size[1]}x24",
            "-nolisten",
            "tcp",
            "+extension",
            "GLX",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield XScreen(f":{number}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
