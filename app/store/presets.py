"""Parameter presets: read-only built-ins from ``resources/presets`` and the user's own.

A preset stores parameters, never an image. Its ``params`` may be partial (a built-in names only
what it changes); applying it lays those values over a base set of parameters. User presets live
in ``<data dir>/presets`` as one JSON file each; built-ins can be copied but never written.

A preset may also ``prefer`` model files for a parameter: an ordered list whose first *installed*
entry is the value applied. Only the pre-upscaler can be preferred; every entry is a bundled
upscaler or one of the model manifest (``resources/models.json``), and the last must be bundled,
so the choice is always defined. "Installed" means what a creative run's model lookup
(:mod:`pipeline.models.store`) will find: the manifest file, by name, in the model folders (the
settings' ``model_dirs`` unless given, then Clarifier's own folder). :meth:`Preset.resolve`
says what was chosen, where the file is and under which licence; the presets bar shows it.
"Clarity default" prefers Clarity's own 4x-UltraSharp (non-commercial licence) over the bundled
Real-ESRGAN x4plus. A Clarifier without preferences ignores the key.

File format::

    {"clarifier_preset": 1, "name": "Portrait", "description": "...",
     "params": {"version": 1, "sd_model": "...", "creativity": 0.3},
     "prefer": {"upscaler": ["4x-UltraSharp", "realesrgan-x4plus"]}}
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.store.files import write_json_atomic
from app.store.settings import load_settings
from pipeline.errors import ModelError, ParamsError
from pipeline.models.manifest import ModelEntry, entry_by_id
from pipeline.models.store import find_entry, search_roots
from pipeline.params import BUNDLED_UPSCALERS, PARAMS_VERSION, UpscaleParams
from pipeline.paths import data_dir, resources_dir

__all__ = ["PREFERABLE", "Choice", "Preset", "PresetError", "PresetStore"]

_FORMAT = 1
# Parameters a preset may prefer installed model files for, with the words people read.
PREFERABLE: dict[str, str] = {"upscaler": "Pre-upscaler"}


class PresetError(Exception):
    """A preset cannot be found, read, written or applied; the message says why."""


@dataclass(frozen=True)
class Choice:
    """What a preset's preference for one parameter resolved to, and why."""

    field: str  # the parameter, e.g. "upscaler"
    candidates: tuple[str, ...]  # the preference, most wanted first
    value: str  # the first installed candidate: the value applied
    path: Path | None  # where its file was found; None for a model bundled with Clarifier
    entry: ModelEntry | None  # its model-manifest entry (licence, page), when it has one

    @property
    def passed_over(self) -> tuple[str, ...]:
        """The candidates ahead of the chosen one: not installed."""
        return self.candidates[: self.candidates.index(self.value)]

    @property
    def non_commercial(self) -> bool:
        return self.entry is not None and self.entry.non_commercial

    def describe(self) -> str:
        """One plain line: what is used, from where, under which licence, and what is not."""
        label = PREFERABLE.get(self.field, self.field)
        if self.path is None:
            text = f"{label}: {self.value} (bundled with Clarifier)."
        else:
            text = f"{label}: {self.value}, found at {self.path}."
        if self.entry is not None:
            text += f" Licence: {self.entry.licence}"
            text += " (non-commercial use only)." if self.entry.non_commercial else "."
        for name in self.passed_over:
            entry = entry_by_id(name)
            licence = f", {entry.licence_text}" if entry is not None else ""
            text += (
                f" {name} is preferred but not installed"
                f" (clarifier models download {name}{licence})."
            )
        return text


def _candidate_file(name: str, roots: Sequence[Path]) -> tuple[bool, Path | None]:
    """Whether a preferred upscaler is there to use, and its file (None when bundled)."""
    if name in BUNDLED_UPSCALERS:
        return True, None
    entry = entry_by_id(name)
    found = find_entry(entry, roots) if entry is not None else None
    return found is not None, found


def _settings_model_dirs() -> tuple[str, ...]:
    return load_settings().model_dirs


@dataclass(frozen=True)
class Preset:
    name: str
    params: Mapping[str, Any]
    description: str = ""
    builtin: bool = False
    path: Path | None = field(default=None, compare=False)
    prefer: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def resolve(self, model_dirs: Sequence[Path | str] | None = None) -> list[Choice]:
        """Each preference's first installed candidate, found in ``model_dirs`` (the settings'
        model folders if None) and Clarifier's own models folder. Never raises for a missing
        file: the last candidate is always bundled."""
        if not self.prefer:
            return []
        dirs = _settings_model_dirs() if model_dirs is None else model_dirs
        roots = search_roots(dirs)
        choices = []
        for name, candidates in self.prefer.items():
            for candidate in candidates:
                installed, path = _candidate_file(candidate, roots)
                if installed:
                    break
            else:  # unreachable for a checked preset: the last candidate is bundled
                candidate, path = candidates[-1], None
            choices.append(Choice(name, tuple(candidates), candidate, path, entry_by_id(candidate)))
        return choices

    def apply(
        self,
        base: UpscaleParams | None = None,
        *,
        model_dirs: Sequence[Path | str] | None = None,
    ) -> UpscaleParams:
        """``base`` (defaults if None) with this preset's values laid over it, preferences
        resolved as :meth:`resolve` does for ``model_dirs``."""
        return self.apply_choices(base, self.resolve(model_dirs))

    def apply_choices(self, base: UpscaleParams | None, choices: Sequence[Choice]) -> UpscaleParams:
        """As :meth:`apply`, with preferences already resolved (what the person was shown)."""
        return self._merged(base, {choice.field: choice.value for choice in choices})

    def check(self) -> None:
        """Refuse, as :class:`PresetError`, parameters or preferences that cannot apply, without
        looking for any file: every candidate of every preference must give valid parameters."""
        self._merged(None, {})
        for name, candidates in self.prefer.items():
            for candidate in candidates:
                self._merged(None, {name: candidate})

    def _merged(self, base: UpscaleParams | None, chosen: Mapping[str, str]) -> UpscaleParams:
        merged = (base or UpscaleParams()).to_dict()
        overlay = {**self.params, **chosen}
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
        data: dict[str, Any] = {
            "clarifier_preset": _FORMAT,
            "name": self.name,
            "description": self.description,
            "params": dict(self.params),
        }
        if self.prefer:
            data["prefer"] = {name: list(values) for name, values in self.prefer.items()}
        return data


def _read_prefer(raw: object, params: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    """A preset file's ``prefer`` object, checked: see the module docstring for the rules."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PresetError(f"{where}: 'prefer' is not an object")
    prefer: dict[str, tuple[str, ...]] = {}
    for name, values in raw.items():
        if name not in PREFERABLE:
            allowed = ", ".join(PREFERABLE)
            raise PresetError(f"{where}: 'prefer' names {name!r}; only {allowed} can be preferred")
        if name in params:
            raise PresetError(f"{where}: {name!r} is both in 'params' and in 'prefer'")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise PresetError(f"{where}: 'prefer' {name!r} is not a list of names")
        if len(set(values)) != len(values):
            raise PresetError(f"{where}: 'prefer' {name!r} names a model twice")
        for value in values:
            entry = _manifest_entry(value)
            if value not in BUNDLED_UPSCALERS and (entry is None or entry.role != "upscaler"):
                raise PresetError(
                    f"{where}: 'prefer' {name!r} names {value!r}, which is neither bundled "
                    f"({', '.join(BUNDLED_UPSCALERS)}) nor an upscaler of the model list"
                )
        if values[-1] not in BUNDLED_UPSCALERS:
            raise PresetError(
                f"{where}: 'prefer' {name!r} must end with a bundled upscaler "
                f"({', '.join(BUNDLED_UPSCALERS)}), so that it always resolves"
            )
        prefer[name] = tuple(values)
    return prefer


def _manifest_entry(name: str) -> ModelEntry | None:
    try:
        return entry_by_id(name)
    except ModelError as exc:  # an unreadable resources/models.json
        raise PresetError(str(exc)) from exc


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
        prefer=_read_prefer(data.get("prefer"), data["params"], f"preset file {path}"),
    )
    preset.check()  # refuse a preset whose parameters do not validate, at load time
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
        prefer: Mapping[str, Sequence[str]] | None = None,
    ) -> Preset:
        """Save a user preset; ``prefer`` as in a preset file (an imported one keeps its own)."""
        name = name.strip()
        if not name:
            raise PresetError("a preset needs a name")
        existing = self._find(name)
        if existing is not None and existing.builtin:
            raise PresetError(f"{existing.name!r} is a built-in preset; choose another name")
        if existing is not None and not overwrite:
            raise PresetError(f"a preset called {existing.name!r} already exists")
        data = params.to_dict() if isinstance(params, UpscaleParams) else dict(params)
        raw_prefer = {k: list(v) for k, v in prefer.items()} if prefer else None
        checked = _read_prefer(raw_prefer, data, f"preset {name!r}")
        preset = Preset(name=name, params=data, description=description, prefer=checked)
        preset.check()
        path = existing.path if existing and existing.path else self._free_path(name)
        write_json_atomic(path, preset.to_file_dict())
        return Preset(name, data, description, False, path, checked)

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
        renamed = Preset(new.strip(), preset.params, preset.description, prefer=preset.prefer)
        assert preset.path is not None
        write_json_atomic(preset.path, renamed.to_file_dict())
        return Preset(
            renamed.name, renamed.params, renamed.description, False, preset.path, preset.prefer
        )

    def export(self, name: str, path: Path) -> Path:
        return write_json_atomic(path, self.get(name).to_file_dict())

    def import_file(self, path: Path, *, overwrite: bool = False) -> Preset:
        preset = read_preset_file(path)
        return self.save(
            preset.name,
            preset.params,
            preset.description,
            overwrite=overwrite,
            prefer=preset.prefer,
        )
