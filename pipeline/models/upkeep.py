"""Model files already on disk: checking them again, removing Clarifier's own, partial downloads.

No network here (downloading is :mod:`app.models`, the engine knows no transport) and no torch:

* :func:`verify` re-hashes a file found anywhere and compares it with what is known of it;
* :func:`remove` deletes from Clarifier's own folder only — files in people's A1111 or ComfyUI
  folders are never touched;
* :func:`part_file` and :func:`discard` name and delete an unfinished download (a hidden
  ``.NAME.part`` next to where the file will go, with a ``.json`` side file saying what it is),
  so the downloader, :func:`remove` and the window's "partly downloaded" agree on where it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ModelError
from pipeline.models.files import Records, file_hashes
from pipeline.models.store import ROLE_FOLDERS, ModelEntry, find_entry, models_dir, search_roots

__all__ = ["Verification", "discard", "entry_part", "own_root", "part_file", "remove", "verify"]


def own_root(dest_dir: Path | str | None = None) -> Path:
    """The folder downloads go to: ``dest_dir``, else Clarifier's own models folder."""
    return Path(dest_dir).expanduser() if dest_dir else models_dir()


def part_file(folder: Path, name: str) -> Path:
    """Where the unfinished download of ``name`` into ``folder`` is kept."""
    return folder / f".{name}.part"


def entry_part(entry: ModelEntry, root: Path | None = None) -> Path:
    """The unfinished download of a manifest entry in ``root`` (default Clarifier's folder)."""
    return part_file((root or models_dir()) / ROLE_FOLDERS[entry.role][0], entry.file)


def discard(path: Path) -> None:
    """Delete ``path`` and the ``.json`` side file a partial download keeps next to it."""
    for each in (path, path.with_name(path.name + ".json")):
        each.unlink(missing_ok=True)


# --- verify -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    entry: ModelEntry
    path: Path | None
    status: str  # "verified" | "mismatch" | "missing" | "unchecked"
    detail: str

    @property
    def ok(self) -> bool:
        return self.status in ("verified", "unchecked")


def _recorded(entry: ModelEntry, path: Path, roots: Sequence[Path]) -> str | None:
    for root in roots:
        if path.resolve().is_relative_to(root.resolve()):
            return Records(root).first_seen.get(entry.id)
    return None


def verify(entry: ModelEntry, search_dirs: Sequence[Path | str] = ()) -> Verification:
    """Find the entry's file and hash it again (ignoring the cache)."""
    roots = search_roots(search_dirs)
    path = find_entry(entry, roots)
    if path is None:
        return Verification(entry, None, "missing", "not found")
    if path.name.lower() != entry.file.lower():  # an alternative format: nothing to compare
        return Verification(entry, path, "unchecked", f"{path.name} has no published hash")
    hashes = file_hashes(path, use_cache=False)
    first = None if entry.sha256 else _recorded(entry, path, roots)
    if entry.sha256 or first:
        good = hashes.sha256 == (entry.sha256 or first)
        basis = "sha256" if entry.sha256 else "the sha256 recorded when it was downloaded"
    else:
        match = entry.matches(hashes)
        if match is None:
            return Verification(entry, path, "unchecked", "no hash is known for this model")
        good = match
        basis = "the short hash" if entry.sha256_prefix else "the LoRA (addnet) hash"
    detail = f"{'matches' if good else 'does not match'} {basis}"
    return Verification(entry, path, "verified" if good else "mismatch", detail)


# --- remove -----------------------------------------------------------------------------------
def remove(target: ModelEntry | str, *, dest_dir: Path | str | None = None) -> list[Path]:
    """Delete an entry's file (and any partial download) or a link's download from Clarifier's
    own folder; returns what was deleted."""
    root = own_root(dest_dir)
    records = Records(root)
    removed: list[Path] = []
    if isinstance(target, ModelEntry):
        folder = root / ROLE_FOLDERS[target.role][0]
        paths = [folder / n for n in target.names] + [entry_part(target, root)]
        forget = target.id
    else:
        link = records.links.pop(target, None)
        paths = [root / link["file"]] if link else []
        forget = target
    for path in paths:
        if path.exists():
            discard(path)  # with a partial download's side file
            removed.append(path)
    known = records.first_seen.pop(forget, None)
    if not removed and known is None and not isinstance(target, str):
        raise ModelError(
            f"{target.file} is not in Clarifier's models folder ({root}); files in your own "
            "folders are never deleted by Clarifier"
        )
    if not removed and known is None:
        raise ModelError(f"{target} was not downloaded by Clarifier")
    with contextlib.suppress(OSError):
        records.save()
    return removed
