"""Parameter presets: read-only built-ins from ``resources/presets`` and the user's own.

A preset stores parameters, never an image. Its ``params`` may be partial (a built-in names only
what it changes); applying it lays those values over a base set of parameters. User presets live
in ``<data dir>/presets`` as one JSON file each; built-ins can be copied but never written.

File format::

    {"clarifier_preset": 1, "name": "Portrait", "description": "...",
     "params": {"version": 1, "sd_model": "...", "creativity": 0.3}}
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.store.files import write_json_atomic
from pipeline.errors import ParamsError
from pipeline.params import PARAMS_VERSION, UpscaleParams
from pipeline.paths import data_dir, resources_dir

__all__ = ["Preset", "PresetError", "PresetStore"]

_FORMAT = 1


class PresetError(Exception):
    """A preset cannot be found, read, written or applied; the message says why."""


@dataclass(frozen=True)
class Preset:
    name: str
    params: Mapping[str, Any]
    description: str = ""
    builtin: bool = False
    path: Path | None = field(default=None, compare=False)

    def apply(self, base: UpscaleParams | None = None) -> UpscaleParams:
        """``base`` (defaults if None) with this preset's values laid over it."""
        merged = (base or UpscaleParams()).to_dict()
        overlay = dict(self.params)
        merged["version"] = overlay.pop("version", PARAMS_VERSION)
        for key, value in overlay.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        try:
            return UpscaleParams.from_dict(merged)
        except ParamsError as exc:
            raise PresetError(f"preset {self.name!r} has invalid parameters: {exc}") from exc

    def to_file_dict(self) -> dict[str, Any]:
        return {
            "clarifier_preset": _FORMAT,
            "name": self.name,
            "description": self.description,
            "params": dict(self.params),
        }


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "preset"


def read_preset_file(path: Path, *, builtin: bool = False) -> Preset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PresetError(f"cannot read preset file {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"preset file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise PresetError(f"preset file {path} has no 'params' object")
    if data.get("clarifier_preset", _FORMAT) > _FORMAT:
        raise PresetError(f"preset file {path} comes from a newer Clarifier")
    preset = Preset(
        name=str(data.get("name") or path.stem),
        params=data["params"],
        description=str(data.get("description", "")),
        builtin=builtin,
        path=path,
    )
    preset.apply()  # refuse a preset whose parameters do not validate, at load time
    return preset


class PresetStore:
    def __init__(self, builtin_dir: Path | None = None, user_dir: Path | None = None) -> None:
        self.builtin_dir = builtin_dir or resources_dir() / "presets"
        self.user_dir = user_dir or data_dir() / "presets"

    def _read_dir(self, folder: Path, builtin: bool) -> list[Preset]:
        presets = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                presets.append(read_preset_file(path, builtin=builtin))
            except PresetError:
                continue  # one damaged user file must not hide the others
        return presets

    def list(self) -> list[Preset]:
        """Built-ins first (in file order), then the user's presets by name."""
        user = sorted(self._read_dir(self.user_dir, False), key=lambda p: p.name.lower())
        return self._read_dir(self.builtin_dir, True) + user

    def get(self, name: str) -> Preset:
        presets = self.list()
        for preset in presets:
            if name.lower() in (preset.name.lower(), _slug(preset.name)):
                return preset
        names = [p.name for p in presets]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PresetError(f"no preset called {name!r}.{hint} Available: {', '.join(names)}")

    def _find(self, name: str) -> Preset | None:
        try:
            return self.get(name)
        except PresetError:
            return None

    def save(
        self,
        name: str,
        params: UpscaleParams | Mapping[str, Any],
        description: str = "",
        *,
        overwrite: bool = False,
    ) -> Preset:
        name = name.strip()
        if not name:
            raise PresetError("a preset needs a name")
        existing = self._find(name)
        if existing is not None and existing.builtin:
            raise PresetError(f"{existing.name!r} is a built-in preset; choose another name")
        if existing is not None and not overwrite:
            raise PresetError(f"a preset called {existing.name!r} already exists")
        data = params.to_dict() if isinstance(params, UpscaleParams) else dict(params)
        preset = Preset(name=name, params=data, description=description)
        preset.apply()
        path = existing.path if existing and existing.path else self._free_path(name)
        write_json_atomic(path, preset.to_file_dict())
        return Preset(name, data, description, False, path)

    def _free_path(self, name: str) -> Path:
        path = self.user_dir / f"{_slug(name)}.json"
        n = 2
        while path.exists():
            path = self.user_dir / f"{_slug(name)}-{n}.json"
            n += 1
        return path

    def _user(self, name: str) -> Preset:
        preset = self.get(name)
        if preset.builtin:
            raise PresetError(f"{preset.name!r} is a built-in preset and cannot be changed")
        return preset

    def delete(self, name: str) -> None:
        preset = self._user(name)
        assert preset.path is not None
        preset.path.unlink(missing_ok=True)

    def rename(self, old: str, new: str) -> Preset:
        preset = self._user(old)
        clash = self._find(new)
        if clash is not None and clash.path != preset.path:
            raise PresetError(f"a preset called {clash.name!r} already exists")
        renamed = Preset(new.strip(), preset.params, preset.description)
        assert preset.path is not None
        write_json_atomic(preset.path, renamed.to_file_dict())
        return Preset(renamed.name, renamed.params, renamed.description, False, preset.path)

    def export(self, name: str, path: Path) -> Path:
        return write_json_atomic(path, self.get(name).to_file_dict())

    def import_file(self, path: Path, *, overwrite: bool = False) -> Preset:
        preset = read_preset_file(path)
        return self.save(preset.name, preset.params, preset.description, overwrite=overwrite)
