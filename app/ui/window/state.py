"""What the window remembers between sessions: its layout and the last parameters.

Kept in ``window.json`` beside the settings. A damaged file is set aside and ignored (the window
must always open); the parameters are stored as ``UpscaleParams.to_dict()`` and re-validated on
load, so a file from an older version can never start the window with a bad value.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.store.files import read_json_or_default, write_json_atomic
from pipeline.errors import ParamsError
from pipeline.params import UpscaleParams
from pipeline.paths import config_dir

__all__ = ["WindowState", "load_window_state", "save_window_state", "window_state_path"]

log = logging.getLogger(__name__)


@dataclass
class WindowState:
    geometry: str = ""  # QMainWindow.saveGeometry(), base64
    layout: str = ""  # QMainWindow.saveState(), base64
    params: dict[str, Any] = field(default_factory=dict)
    backend: str = "local"
    model: str = ""
    seed_locked: bool = False
    compare_mode: str = "slider"
    theme: str = "system"
    open_dir: str = ""

    def restored_params(self) -> UpscaleParams:
        try:
            return UpscaleParams.from_dict(self.params) if self.params else UpscaleParams()
        except ParamsError as exc:
            log.warning("remembered parameters are no longer valid (%s); using defaults", exc)
            return UpscaleParams()

    @staticmethod
    def pack(data: bytes | bytearray | memoryview) -> str:
        return base64.b64encode(bytes(data)).decode("ascii")

    @staticmethod
    def unpack(text: str) -> bytes:
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except ValueError:
            return b""


def window_state_path() -> Path:
    return config_dir() / "window.json"


def load_window_state(path: Path | None = None) -> WindowState:
    def build(data: dict[str, Any]) -> WindowState:
        known = WindowState.__dataclass_fields__
        return WindowState(**{k: v for k, v in data.items() if k in known})

    return read_json_or_default(path or window_state_path(), build, WindowState, "window state")


def save_window_state(state: WindowState, path: Path | None = None) -> None:
    try:
        write_json_atomic(path or window_state_path(), asdict(state))
    except OSError as exc:  # a full disk must not stop the window from closing
        log.warning("could not save the window state: %s", exc)
