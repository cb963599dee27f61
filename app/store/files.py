"""Small file helpers shared by the stores."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["read_json_or_default", "write_json_atomic"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def read_json_or_default(
    path: Path, build: Callable[[dict[str, Any]], T], default: Callable[[], T], what: str
) -> T:
    """``build`` the JSON object in ``path``; a missing file gives ``default()``, and a damaged
    or invalid one is set aside (``NAME.bad``) with a warning and gives ``default()`` too, so a
    bad edit can never stop the app from starting."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return build(data)
    except FileNotFoundError:
        return default()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s %s is damaged (%s); using defaults", what, path, exc)
        with contextlib.suppress(OSError):
            path.replace(path.with_name(path.name + ".bad"))
        return default()


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
