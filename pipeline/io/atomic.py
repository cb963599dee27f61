"""Atomic file replacement: a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import ImageError

__all__ = ["atomic_write"]


def atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file next to ``target``, then rename it into place: readers
    see the old file or the whole new one, never a torn write. ``write(fp)`` fills the file;
    what it returns is ignored (so ``lambda fp: fp.write(data)`` will do)."""
    if target.is_dir():
        raise ImageError("a folder of that name is in the way", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create its folder ({exc.strerror or exc})", target) from exc
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, flags, 0o666)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise ImageError(f"cannot write in its folder ({exc.strerror or exc})", target) from exc
    else:
        raise ImageError("cannot create a temporary file in its folder", target)
    try:
        with os.fdopen(fd, "wb") as fp:
            write(fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
