"""Turning what a person gives (files, folders, links, pasted images) into input files.

The CLI and the window share these rules: folders are walked recursively in name order, hidden
files and folders are skipped, only image suffixes are taken, and our own output folder is never
re-read. An image link is downloaded into Clarifier's data folder first, so every backend (the
local one included) gets a file, and the history can show where it came from.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pipeline.io.load import SUPPORTED_SUFFIXES
from pipeline.paths import data_dir

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "InputError",
    "collect_inputs",
    "fetch_url",
    "inbox_dir",
    "is_url",
    "save_pasted",
]

MAX_DOWNLOAD_BYTES = 200 * 2**20  # a 200 MB image is far beyond any camera's JPEG
_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/bmp": ".bmp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
}


class InputError(Exception):
    """An input could not be taken; the message says why, in plain words."""


def inbox_dir() -> Path:
    """Where downloaded and pasted inputs are kept (they must outlive the run for re-runs)."""
    return data_dir() / "inputs"


def is_url(text: str) -> bool:
    return text.strip().lower().startswith(("http://", "https://"))


def collect_inputs(
    paths: Sequence[str | Path], out_dir: Path | None = None
) -> list[tuple[Path, Path | None]]:
    """Expand folders recursively; pair each file with its path relative to the folder given
    (``None`` for a file given directly)."""
    found: list[tuple[Path, Path | None]] = []
    out_resolved = out_dir.resolve() if out_dir else None
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                root_path = Path(root)
                if out_resolved and root_path.resolve().is_relative_to(out_resolved):
                    continue  # never re-upscale our own outputs
                for name in sorted(files):
                    file = root_path / name
                    if not name.startswith(".") and file.suffix.lower() in SUPPORTED_SUFFIXES:
                        found.append((file, file.relative_to(path)))
        else:
            found.append((path, None))
    return found


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"


def _free(folder: Path, stem: str, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    candidate, n = folder / f"{stem}{suffix}", 0
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def _name_from_url(url: str) -> tuple[str, str]:
    name = unquote(Path(urlsplit(url).path).name)
    stem, suffix = os.path.splitext(name)
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")[:80] or f"download-{_stamp()}"
    return stem, suffix.lower()


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    folder: Path | None = None,
    *,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download an image link into ``folder`` (the inbox by default) and return the file.

    Refuses, with a message, what is not an image, too big, or not reachable; a partial download
    never stays behind."""
    import httpx  # here, not at the top: the window imports this module while it starts

    folder = folder or inbox_dir()
    stem, suffix = _name_from_url(url)
    try:
        async with client.stream("GET", url, follow_redirects=True, timeout=60) as response:
            if response.status_code >= 400:
                raise InputError(f"{url} answered {response.status_code}; nothing was downloaded")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind and not kind.startswith("image/") and kind != "application/octet-stream":
                raise InputError(f"{url} is not an image (the server says {kind})")
            if suffix not in SUPPORTED_SUFFIXES:
                suffix = _TYPES.get(kind, suffix or ".png")
            if suffix not in SUPPORTED_SUFFIXES:
                raise InputError(f"{url} is not an image type Clarifier reads ({kind or suffix})")
            size = int(response.headers.get("content-length") or 0)
            if size > max_bytes:
                raise InputError(f"{url} is {size / 2**20:.0f} MB, more than Clarifier downloads")
            target = _free(folder, stem, suffix)
            part = target.with_name(target.name + ".part")
            received = 0
            try:
                with part.open("wb") as fh:
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > max_bytes:
                            raise InputError(
                                f"{url} is more than {max_bytes // 2**20} MB; download stopped"
                            )
                        fh.write(chunk)
                part.replace(target)
            finally:
                part.unlink(missing_ok=True)
    except httpx.HTTPError as exc:
        raise InputError(f"could not download {url}: {exc or type(exc).__name__}") from None
    return target


def save_pasted(data: bytes, folder: Path | None = None, suffix: str = ".png") -> Path:
    """Keep pasted image bytes as a file in the inbox (atomically)."""
    target = _free(folder or inbox_dir(), f"pasted-{_stamp()}", suffix)
    part = target.with_name(target.name + ".part")
    part.write_bytes(data)
    part.replace(target)
    return target
