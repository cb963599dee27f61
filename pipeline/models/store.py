"""Finding the creative engine's model files where people already have them.

The files are those of :mod:`pipeline.models.manifest` (plus any LoRA or embedding lying in a
LoRA or embedding folder). They are found by name — case-insensitively, in subfolders too — in

* Clarifier's own folder, ``data_dir()/models``, laid out like A1111 (``Stable-diffusion/``,
  ``VAE/``, ``ControlNet/``, ``Lora/``, ``embeddings/``, ``ESRGAN/``), where downloads go;
* folders people already have (settings ``model_dirs``, ``--models DIR``): an A1111 install or
  its ``models/`` folder, a ComfyUI install or its ``models/`` folder (``checkpoints/``, ``vae/``,
  ``controlnet/``, ``loras/``, ``embeddings/``, ``upscale_models/``), or a plain folder of files;

and, on request, by hash for files renamed since. :func:`resolve_models` turns a request's
parameters into the paths the engine loads, or one :class:`ModelError` listing everything that
is missing with its size, licence and the command that gets it. Downloading is
:mod:`app.models`; nothing is ever fetched implicitly. No torch here: the window
and the CLI use this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ModelError
from pipeline.models import manifest
from pipeline.models.files import MODEL_SUFFIXES, Records, cached_hashes, file_hashes
from pipeline.models.manifest import ROLES, ModelEntry, entry_by_id, human_size, load_manifest
from pipeline.params import BUNDLED_UPSCALERS, UpscaleParams
from pipeline.paths import data_dir

__all__ = [
    "ROLES",
    "ROLE_FOLDERS",
    "Missing",
    "ModelCheck",
    "ModelEntry",
    "ModelsMissing",
    "ResolvedModels",
    "entry_by_id",
    "find_entry",
    "find_models",
    "find_upscaler",
    "human_size",
    "is_link",
    "load_manifest",
    "locate",
    "missing_message",
    "models_dir",
    "resolve_models",
    "role_folders",
    "search_roots",
]

# Folder names per role, matched case-insensitively under a root and under its models/ folder.
# The first is A1111's, the one Clarifier downloads into; the others are ComfyUI's and kin.
ROLE_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("Stable-diffusion", "checkpoints"),
    "vae": ("VAE",),
    "controlnet": ("ControlNet",),
    "lora": ("Lora", "loras", "LyCORIS"),
    "embedding": ("embeddings",),
    "upscaler": ("ESRGAN", "upscale_models", "RealESRGAN"),
}
_EXTRA_FOLDERS = {"controlnet": ("extensions/sd-webui-controlnet/models",)}
_ROLE_SUFFIXES = {
    "lora": (".safetensors", ".pt", ".ckpt"),
    "embedding": (".pt", ".safetensors", ".bin"),
}
CONFIG_FOLDER = "sd15-config"  # a models folder's own diffusers config (tests' tiny models)
_MAX_DEPTH = 4
_LORA_TAG = re.compile(r"<lora:([^:>]+)", re.IGNORECASE)


def models_dir() -> Path:
    """Clarifier's own models folder (A1111 layout), where downloads go."""
    return data_dir() / "models"


def is_link(text: str) -> bool:
    return text.strip().lower().startswith(("https://", "http://"))


# --- folders ----------------------------------------------------------------------------------
def search_roots(search_dirs: Sequence[Path | str] = (), *, own: bool = True) -> list[Path]:
    """The folders to search, in order: those given (when they exist), then Clarifier's own."""
    roots: list[Path] = []
    seen: set[Path] = set()
    for folder in [*search_dirs, *([models_dir()] if own else [])]:
        path = Path(folder).expanduser()
        key = path.resolve()
        if key not in seen and path.is_dir():
            seen.add(key)
            roots.append(path)
    return roots


def _child(base: Path, name: str) -> Path | None:
    """base/name, matching the name case-insensitively (A1111 says Lora, others say lora)."""
    direct = base / name
    if direct.is_dir():
        return direct
    try:
        for child in base.iterdir():
            if child.name.lower() == name.lower() and child.is_dir():
                return child
    except OSError:
        pass
    return None


def role_folders(role: str, roots: Sequence[Path]) -> list[Path]:
    """Every folder under ``roots`` where files of ``role`` live, in search order."""
    found: list[Path] = []
    for root in roots:
        for base in (root, root / "models"):
            for name in (*ROLE_FOLDERS[role], *_EXTRA_FOLDERS.get(role, ())):
                folder = base
                for part in name.split("/"):
                    folder = _child(folder, part) if folder else None
                if folder is not None and folder not in found:
                    found.append(folder)
    return found


def _files_under(folder: Path, depth: int = _MAX_DEPTH) -> Iterator[Path]:
    try:
        children = sorted(folder.iterdir(), key=lambda p: p.name.lower())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if depth > 0:
                yield from _files_under(child, depth - 1)
        elif child.suffix.lower() in MODEL_SUFFIXES:
            yield child


def _candidates(role: str, roots: Sequence[Path]) -> Iterator[Path]:
    """Model files of a role's folders, then the files lying loose in each root (flat)."""
    for folder in role_folders(role, roots):
        yield from _files_under(folder)
    for root in roots:
        yield from _files_under(root, depth=0)


def _find_named(names: Sequence[str], role: str, roots: Sequence[Path]) -> Path | None:
    wanted = {n.lower() for n in names}
    return next((p for p in _candidates(role, roots) if p.name.lower() in wanted), None)


def _find_by_hash(entry: ModelEntry, roots: Sequence[Path]) -> Path | None:
    for path in _candidates(entry.role, roots):
        size = path.stat().st_size
        if entry.size is not None:
            near = size == entry.size if entry.size_exact else abs(size / entry.size - 1) < 0.05
            if not near:
                continue
        if entry.matches(file_hashes(path)):
            return path
    return None


def find_entry(entry: ModelEntry, roots: Sequence[Path], *, by_hash: bool = False) -> Path | None:
    """Where a manifest file is: by name, else (``by_hash``, slow the first time) by its hash."""
    found = _find_named(entry.names, entry.role, roots)
    if found is None and by_hash and entry.has_hash:
        found = _find_by_hash(entry, roots)
    return found


def _scan_role(role: str, roots: Sequence[Path]) -> dict[str, Path]:
    """Every file of a role by stem (first found wins): the names prompts use."""
    found: dict[str, Path] = {}
    for folder in role_folders(role, roots):
        for path in _files_under(folder):
            if path.suffix.lower() in _ROLE_SUFFIXES[role]:
                found.setdefault(path.stem, path)
    return found


def is_verified(entry: ModelEntry, path: Path) -> bool:
    """Whether the file is known (from the hash cache, without hashing) to be this model."""
    hashes = cached_hashes(path)
    return hashes is not None and entry.sha256 is not None and hashes.sha256 == entry.sha256


# --- resolving a request ----------------------------------------------------------------------
@dataclass(frozen=True)
class Missing:
    """A file a request needs that was not found."""

    name: str  # file name, link or path
    role: str
    why: str  # which setting asks for it
    entry: ModelEntry | None = None
    get: str | None = None  # what to pass to `clarifier models download`, when it can be fetched

    def line(self) -> str:
        if self.entry is not None:
            e = self.entry
            size = "size unknown" if e.size is None else e.size_text
            return f"{e.file} ({e.role}, {size}, licence: {e.licence_text}) — {self.why}"
        return f"{self.name} ({self.role}) — {self.why}"


class ModelsMissing(ModelError):
    """Files a creative run needs are not there; ``missing`` says which (the window lists them)."""

    def __init__(self, message: str, missing: Sequence[Missing]) -> None:
        super().__init__(message)
        self.missing = list(missing)


@dataclass
class ModelCheck:
    """What :func:`find_models` found for a request; ``missing`` is empty when it can run."""

    checkpoint: Path | None = None
    vae: Path | None = None
    controlnet: Path | None = None
    upscaler: Path | None = None  # only for a pre-upscaler that is not bundled
    config_dir: Path | None = None
    loras: dict[str, Path] = field(default_factory=dict)
    embeddings: dict[str, Path] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class ResolvedModels:
    """The files a creative run loads. ``loras`` and ``embeddings`` hold every file found, by
    file stem: the prompt's ``<lora:NAME:w>`` and embedding words pick from them."""

    checkpoint: Path
    vae: Path
    controlnet: Path
    config_dir: Path
    loras: dict[str, Path]
    embeddings: dict[str, Path]
    upscaler: Path | None = None  # set when params.upscaler names a file (e.g. 4x-UltraSharp)
    searched: tuple[Path, ...] = ()


def _manifest_file(name: str, role: str) -> ModelEntry | None:
    entry = entry_by_id(name)
    return entry if entry is not None and entry.role == role else None


def _need(check: ModelCheck, role: str, name: str, why: str, by_hash: bool) -> Path | None:
    entry = _manifest_file(name, role)
    found = (
        find_entry(entry, check.searched, by_hash=by_hash)
        if entry
        else _find_named([name], role, check.searched)
    )
    if found is None:
        check.missing.append(Missing(name, role, why, entry, entry.id if entry else None))
    return found


def _link_or_path(check: ModelCheck, text: str, role: str, why: str) -> Path | None:
    if is_link(text):
        found = next((r for r in map(Records, check.searched) if r.link_file(text)), None)
        if found is not None:
            return found.link_file(text)
        check.missing.append(Missing(text, role, f"{why}, not downloaded yet", get=text))
        return None
    path = Path(text).expanduser()
    if path.is_file():
        return path
    check.missing.append(Missing(text, role, f"{why}: no such file; check the path"))
    return None


def _referenced(words: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", words, re.IGNORECASE) is not None


def find_models(
    params: UpscaleParams, search_dirs: Sequence[Path | str] = (), *, by_hash: bool = False
) -> ModelCheck:
    """Find every file a creative run with these parameters needs; never raises for a missing
    file (see ``missing``). ``by_hash`` also hashes files of the right size to find renamed
    ones (slow the first time, then cached)."""
    check = ModelCheck(searched=search_roots(search_dirs))
    roots = check.searched
    if params.custom_sd_model.strip():
        check.checkpoint = _link_or_path(
            check, params.custom_sd_model.strip(), "checkpoint", "custom_sd_model"
        )
    else:
        name = params.sd_model.split(" [")[0].strip()
        check.checkpoint = _need(check, "checkpoint", name, "the selected sd_model", by_hash)
    for role, why in (("vae", "Clarity always uses it"), ("controlnet", "the tile ControlNet")):
        entry = next(e for e in load_manifest() if e.role == role and e.required)
        setattr(check, role, _need(check, role, entry.file, why, by_hash))
    if params.upscaler not in BUNDLED_UPSCALERS:
        check.upscaler = _find_upscaler(check, params.upscaler, by_hash)

    check.loras = _scan_role("lora", roots)
    check.embeddings = _scan_role("embedding", roots)
    for entry in load_manifest():
        if entry.role in ("lora", "embedding"):
            found = find_entry(entry, roots, by_hash=by_hash)
            table = check.loras if entry.role == "lora" else check.embeddings
            if found is not None:
                table.setdefault(Path(entry.file).stem, found)
    for link in filter(None, (s.strip() for s in params.lora_links.split(","))):
        path = _link_or_path(check, link, "lora", "in lora_links")
        if path is not None:
            check.loras[path.stem] = path
    _check_prompt_models(check, params)
    check.config_dir = _config_dir(check)
    return check


def find_upscaler(name: str, search_dirs: Sequence[Path | str] = ()) -> Path | None:
    """The file a pre-upscaler name (``4x-UltraSharp``, a file name or a path) means, looked
    for as the creative mode looks: the folders given, their ESRGAN / upscale_models / RealESRGAN
    folders (A1111, ComfyUI), and Clarifier's own models folder. None if it is not there."""
    return _locate_upscaler(name, search_roots(search_dirs), by_hash=False)


def _locate_upscaler(name: str, roots: Sequence[Path], *, by_hash: bool) -> Path | None:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    found = _find_named([name] + [name + s for s in MODEL_SUFFIXES], "upscaler", roots)
    entry = _manifest_file(name, "upscaler")
    if found is None and entry is not None:
        found = find_entry(entry, roots, by_hash=by_hash)
    return found


def _upscaler_missing(name: str) -> Missing:
    entry = _manifest_file(name, "upscaler")
    return Missing(name, "upscaler", "the selected upscaler", entry, entry.id if entry else None)


def upscaler_not_found(name: str, search_dirs: Sequence[Path | str] = ()) -> str:
    """What to tell someone whose pre-upscaler :func:`find_upscaler` did not find: what it is,
    where it was looked for and how to get it (the creative mode's message, for one file)."""
    heading = (
        f"the pre-upscaler is not one of the bundled ones ({', '.join(BUNDLED_UPSCALERS)}) "
        "and was not found:"
    )
    return missing_message([_upscaler_missing(name)], search_roots(search_dirs), heading=heading)


def _find_upscaler(check: ModelCheck, name: str, by_hash: bool) -> Path | None:
    found = _locate_upscaler(name, check.searched, by_hash=by_hash)
    if found is None:
        check.missing.append(_upscaler_missing(name))
    return found


def _check_prompt_models(check: ModelCheck, params: UpscaleParams) -> None:
    """LoRAs and embeddings from the manifest that the prompts name must be there: without
    them the run would quietly differ from Clarity's."""
    loras_lower = {k.lower() for k in check.loras}
    embeddings_lower = {k.lower() for k in check.embeddings}
    tags = {t.strip().lower() for t in _LORA_TAG.findall(params.prompt)}
    texts = f"{params.prompt}\n{params.negative_prompt}"
    for entry in load_manifest():
        stem = Path(entry.file).stem
        if entry.role == "lora" and stem.lower() in tags and stem.lower() not in loras_lower:
            why = f"named in the prompt (<lora:{stem}:…>)"
            check.missing.append(Missing(entry.file, "lora", why, entry, entry.id))
        elif (
            entry.role == "embedding"
            and stem.lower() not in embeddings_lower
            and _referenced(texts, stem)
        ):
            why = "an embedding named in the prompts"
            check.missing.append(Missing(entry.file, "embedding", why, entry, entry.id))


def _config_dir(check: ModelCheck) -> Path | None:
    for root in check.searched:
        if (root / CONFIG_FOLDER).is_dir():
            return root / CONFIG_FOLDER
    bundled = manifest.resources_dir() / "sd15"
    if bundled.is_dir():
        return bundled
    check.missing.append(
        Missing(str(bundled), "config", "the bundled SD 1.5 config folder; reinstall Clarifier")
    )
    return None


def missing_message(
    missing: Sequence[Missing], searched: Sequence[Path], *, heading: str | None = None
) -> str:
    """One message for everything missing: what, how big, which licence, and how to get it."""
    lines = [heading or f"creative mode needs {len(missing)} model file(s) that were not found:"]
    lines += [f"  - {m.line()}" for m in missing]
    where = [str(p) for p in searched]
    if not any(p == models_dir() for p in searched):
        where.append(f"{models_dir()} (Clarifier's own, empty)")
    lines.append(f"Searched: {', '.join(where)}.")
    # One command for manifest files and LoRA links; a link of another role needs its own.
    together = [m.get for m in missing if m.get and (m.role == "lora" or not is_link(m.get))]
    alone = [m for m in missing if m.get and m.role != "lora" and is_link(m.get)]
    commands = [" ".join(f"'{g}'" if is_link(g) else g for g in dict.fromkeys(together))]
    commands = [c for c in commands if c] + [f"'{m.get}' --role {m.role}" for m in alone]
    if commands:
        lines.append("Download them (licences are shown first):")
        lines += [f"  clarifier models download {c}" for c in commands]
    lines.append(
        "Already have them, e.g. in an A1111 or ComfyUI install? Add that folder: "
        "clarifier upscale ... --models DIR, or remember it with clarifier models locate DIR."
    )
    return "\n".join(lines)


def resolve_models(
    params: UpscaleParams, search_dirs: Sequence[Path | str] = (), *, by_hash: bool = False
) -> ResolvedModels:
    """The files a creative run loads, or one :class:`ModelError` (with ``.missing``) listing
    every file that is not there."""
    check = find_models(params, search_dirs, by_hash=by_hash)
    if check.missing:
        raise ModelsMissing(missing_message(check.missing, check.searched), check.missing)
    # None of these is None once nothing is missing; the asserts tell the type checker.
    assert check.checkpoint is not None
    assert check.vae is not None
    assert check.controlnet is not None
    assert check.config_dir is not None
    return ResolvedModels(
        checkpoint=check.checkpoint,
        vae=check.vae,
        controlnet=check.controlnet,
        config_dir=check.config_dir,
        loras=check.loras,
        embeddings=check.embeddings,
        upscaler=check.upscaler,
        searched=tuple(check.searched),
    )


# --- scanning a folder people already have ----------------------------------------------------
@dataclass(frozen=True)
class Located:
    folder: Path
    layout: str  # "A1111", "ComfyUI" or "plain folder"
    found: list[tuple[ModelEntry, Path]]
    loras: int
    embeddings: int


def _layout(folder: Path) -> str:
    for base in (folder, folder / "models"):
        if _child(base, "checkpoints") or _child(base, "upscale_models"):
            return "ComfyUI"
        if _child(base, "Stable-diffusion") or _child(base, "ESRGAN"):
            return "A1111"
    return "plain folder"


def locate(folder: Path | str, *, by_hash: bool = False) -> Located:
    """Which manifest files a folder (an A1111 or ComfyUI install, or a plain folder) holds."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder")
    roots = [path]
    found = [
        (e, p) for e in load_manifest() if (p := find_entry(e, roots, by_hash=by_hash)) is not None
    ]
    return Located(
        folder=path,
        layout=_layout(path),
        found=found,
        loras=len(_scan_role("lora", roots)),
        embeddings=len(_scan_role("embedding", roots)),
    )
