"""The manifest of the creative engine's model files: ``resources/models.json``, validated.

Each entry names a file Clarity runs (checkpoint, VAE, ControlNet, LoRA, embedding, pre-upscaler):
the name A1111 and Clarity use, where Clarifier downloads it from (a Hugging Face repo, file and
revision), its size, what is known of its hash and where that fact comes from, its licence and
whether that licence forbids commercial use. The file's own "notes" say what each field promises;
hashes are never guessed. No torch here: the window and the CLI use this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.models.files import MODEL_SUFFIXES, FileHashes, is_sha256
from pipeline.paths import resources_dir

__all__ = ["ROLES", "ModelEntry", "entry_by_id", "human_size", "load_manifest"]

ROLES: tuple[str, ...] = ("checkpoint", "vae", "controlnet", "lora", "embedding", "upscaler")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class ModelEntry:
    """One file of resources/models.json (see its "notes" for what each field promises)."""

    id: str
    role: str
    file: str
    repo: str
    path: str
    revision: str
    size: int | None
    size_exact: bool
    sha256: str | None
    sha256_prefix: str | None
    addnet_hash: str | None
    hash_source: str
    licence: str
    licence_url: str
    licence_verified: bool
    non_commercial: bool
    required: bool
    page: str
    purpose: str
    alt_files: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.file, *self.alt_files)

    @property
    def has_hash(self) -> bool:
        return bool(self.sha256 or self.sha256_prefix or self.addnet_hash)

    @property
    def size_text(self) -> str:
        if self.size is None:
            return "?"
        return ("" if self.size_exact else "≈") + human_size(self.size)

    @property
    def licence_text(self) -> str:
        nc = ", non-commercial" if self.non_commercial else ""
        return f"{self.licence}{nc}"

    def matches(self, hashes: FileHashes) -> bool | None:
        """Whether a file with these hashes is this model; None when nothing is known to compare
        (no hash at all in the manifest)."""
        if self.sha256:
            return hashes.sha256 == self.sha256
        checks = []
        if self.sha256_prefix:
            checks.append(hashes.sha256.startswith(self.sha256_prefix))
        if self.addnet_hash and hashes.addnet is not None:
            checks.append(hashes.addnet.startswith(self.addnet_hash))
        return all(checks) if checks else None


def human_size(size: int) -> str:
    """Three significant digits: 13.3 kB, 335 MB, 2.13 GB."""
    value, unit = float(size), "B"
    for unit in ("B", "kB", "MB", "GB"):
        if value < 999.5 or unit == "GB":
            break
        value /= 1000
    if unit == "B":
        return f"{size} B"
    return f"{value:.{2 if value < 9.995 else 1 if value < 99.95 else 0}f} {unit}"


def _validate(raw: dict[str, Any], where: str) -> ModelEntry:
    try:
        entry = ModelEntry(**{**raw, "alt_files": tuple(raw.get("alt_files") or ())})
    except TypeError as exc:
        raise ModelError(f"{where}: {exc}") from None
    problems = []
    if entry.role not in ROLES:
        problems.append(f"role {entry.role!r} is not one of {', '.join(ROLES)}")
    if entry.sha256 is not None and not is_sha256(entry.sha256):
        problems.append("sha256 is not 64 lowercase hex digits")
    for name in ("sha256_prefix", "addnet_hash"):
        value = getattr(entry, name)
        if value is not None and not (isinstance(value, str) and _HEX.fullmatch(value)):
            problems.append(f"{name} is not lowercase hex")
    if entry.sha256 and entry.sha256_prefix and not entry.sha256.startswith(entry.sha256_prefix):
        problems.append("sha256_prefix does not start sha256")
    if entry.size is not None and (not isinstance(entry.size, int) or entry.size <= 0):
        problems.append("size is not a positive number of bytes")
    if Path(entry.file).suffix.lower() not in MODEL_SUFFIXES:
        problems.append(f"file {entry.file!r} is not a model file")
    if problems:
        raise ModelError(f"{where} ({entry.id}): " + "; ".join(problems))
    return entry


@cache
def _manifest(path: Path) -> tuple[ModelEntry, ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"the model list {path} cannot be read ({exc}); reinstall Clarifier"
        ) from None
    entries = tuple(_validate(raw, str(path)) for raw in data["models"])
    for what in ("id", "file"):
        values = [getattr(e, what).lower() for e in entries]
        if len(set(values)) != len(values):
            raise ModelError(f"{path}: two models share a {what}")
    return entries


def load_manifest() -> list[ModelEntry]:
    """Every model of resources/models.json, validated."""
    return list(_manifest(resources_dir() / "models.json"))


def entry_by_id(model_id: str) -> ModelEntry | None:
    """The entry with this id, or whose file name or stem is this (case-insensitive)."""
    wanted = model_id.strip().lower()
    for entry in load_manifest():
        names = {entry.id.lower()} | {n.lower() for n in entry.names}
        names |= {Path(n).stem.lower() for n in entry.names}
        if wanted in names:
            return entry
    return None
