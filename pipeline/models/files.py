"""What Clarifier knows about model files on disk, without loading them.

* Hashes: the sha256 (A1111's model hash; its first 10 digits are the ``[hash]`` in ``sd_model``)
  and, for ``.safetensors``, the kohya "addnet" hash A1111 uses to name LoRAs — the sha256 of the
  bytes after the header, so that editing a LoRA's metadata does not change it. Both come from one
  read and are cached by path, size and modification time: hashing 4 GB of checkpoints on every
  start would take longer than the upscale.
* Format checks: a ``.safetensors`` header must describe the file exactly (an HTML error page or a
  truncated download fails); a pickle (``.pt``/``.pth``/``.ckpt``/``.bin``) is accepted from a link
  only when its opcodes call nothing but tensor-rebuilding functions, the same rule as
  ``torch.load(weights_only=True)`` — checked here without importing torch.
* Records: per models folder, the links it downloaded (link → file) and the sha256 first seen for
  files whose true hash no source gives, so a later check can still tell a changed file.

No torch here: the window process uses this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickletools
import re
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.paths import cache_dir

__all__ = [
    "MODEL_SUFFIXES",
    "PICKLE_SUFFIXES",
    "FileHashes",
    "Records",
    "cached_hashes",
    "check_model_file",
    "file_hashes",
    "file_sha256",
    "hash_file",
    "is_sha256",
    "remember_hashes",
    "safe_file_name",
    "write_json",
]

MODEL_SUFFIXES: tuple[str, ...] = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES: tuple[str, ...] = (".ckpt", ".pt", ".pth", ".bin")
_CHUNK = 1 << 20
_MAX_HEADER = 100 << 20  # a safetensors header larger than this is not a model file
_MAX_PICKLE = 256 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")

# What a weights-only pickle may call: containers and tensor rebuilding (torch's own allowlist,
# trimmed to what model files use).
_SAFE_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("__builtin__", "set"),  # protocol-2 pickles name builtins the Python 2 way
        ("__builtin__", "frozenset"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch.storage", "UntypedStorage"),
        ("torch.storage", "TypedStorage"),
    }
)
_SAFE_TORCH_NAMES = re.compile(r"(\w+Storage|float\d*|bfloat16|half|int\d*|uint8|bool)")


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    addnet: str | None  # None for files that are not .safetensors

    @property
    def short(self) -> str:
        """A1111's short model hash."""
        return self.sha256[:10]


# --- hashing ----------------------------------------------------------------------------------
def _cache_file() -> Path:
    return cache_dir() / "model-hashes.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: object) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temp, path)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def file_sha256(path: Path) -> str:
    """The sha256 of the whole file, read now (no cache, no addnet hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_file(path: Path, suffix: str | None = None) -> FileHashes:
    """Hash the file now (no cache): one read gives both the sha256 and the addnet hash.
    ``suffix`` names the kind when ``path`` is a partial download."""
    whole = hashlib.sha256()
    addnet = hashlib.sha256() if (suffix or path.suffix).lower() == ".safetensors" else None
    skip = 0
    with open(path, "rb") as fp:
        if addnet is not None:
            head = fp.read(8)
            whole.update(head)
            skip = int.from_bytes(head, "little") if len(head) == 8 else 0
        while chunk := fp.read(_CHUNK):
            whole.update(chunk)
            if addnet is not None:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                addnet.update(chunk[skip:])
                skip = 0
    return FileHashes(whole.hexdigest(), addnet.hexdigest() if addnet is not None else None)


def file_hashes(path: Path, *, use_cache: bool = True) -> FileHashes:
    """The file's sha256 (and addnet hash), from the cache while the file is unchanged."""
    path = Path(path)
    try:
        stat = path.stat()
        key = str(path.resolve())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    hit = _read_json(_cache_file()).get(key)
    if use_cache and isinstance(hit, dict) and all(hit.get(k) == v for k, v in stamp.items()):
        return FileHashes(hit["sha256"], hit.get("addnet"))
    try:
        hashes = hash_file(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    remember_hashes(path, hashes)
    return hashes


def remember_hashes(path: Path, hashes: FileHashes) -> None:
    """Put a file's hashes in the cache (a finished download keeps its part file's mtime)."""
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        stat = path.stat()
        cache = _read_json(_cache_file())  # re-read: hashing a checkpoint takes seconds
        cache[str(path.resolve())] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": hashes.sha256,
            "addnet": hashes.addnet,
        }
        write_json(_cache_file(), cache)


def cached_hashes(path: Path) -> FileHashes | None:
    """The cached hashes when the file is unchanged since it was hashed, without hashing."""
    try:
        stat = path.stat()
        hit = _read_json(_cache_file()).get(str(path.resolve()))
    except OSError:
        return None
    if (
        isinstance(hit, dict)
        and hit.get("size") == stat.st_size
        and hit.get("mtime_ns") == stat.st_mtime_ns
    ):
        return FileHashes(hit["sha256"], hit.get("addnet"))
    return None


# --- format checks ----------------------------------------------------------------------------
def _check_safetensors(path: Path, label: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fp:
        head = fp.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= min(_MAX_HEADER, size - 8):
            raise ModelError(f"{label} is not a .safetensors file (no valid header)")
        try:
            header = json.loads(fp.read(length))
        except ValueError:
            raise ModelError(f"{label} is not a .safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{label} is not a .safetensors file (bad header)")
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if not ends:
        raise ModelError(f"{label} holds no tensors")
    if max(ends) != size - 8 - length:
        raise ModelError(
            f"{label} is truncated or damaged: its header describes "
            f"{max(ends) + 8 + length} bytes, the file has {size}"
        )


def _pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """Every (module, name) the pickle would import, or ("?", "?") when one cannot be told."""
    found: list[tuple[str, str]] = []
    strings: list[object] = []  # recent pushes, for STACK_GLOBAL
    memo: dict[int, object] = {}
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            found.append((module, name))
        elif op.name == "STACK_GLOBAL":
            pair = strings[-2:]
            ok = len(pair) == 2 and all(isinstance(s, str) for s in pair)
            found.append((str(pair[0]), str(pair[1])) if ok else ("?", "?"))
        elif op.name.startswith("EXT"):
            found.append(("?", "?"))
        elif "UNICODE" in op.name or "STRING" in op.name:
            strings.append(arg)
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
            memo[arg] = strings[-1] if strings else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):  # memo ops: arg is the int index
            strings.append(memo.get(arg) if isinstance(arg, int) else None)
    return found


def _check_pickle(path: Path, label: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(names) != 1 or archive.getinfo(names[0]).file_size > _MAX_PICKLE:
                raise ModelError(f"{label}: not a PyTorch weights file")
            data = archive.read(names[0])
    except (zipfile.BadZipFile, OSError):
        raise ModelError(
            f"{label} is an old-style or unknown pickle that cannot be checked without "
            "running it; only .safetensors files and plain PyTorch weight files are accepted "
            "from links"
        ) from None
    try:
        imports = _pickle_globals(data)
    except ValueError as exc:
        raise ModelError(f"{label}: damaged pickle ({exc})") from None
    unsafe = sorted(
        {
            f"{m}.{n}"
            for m, n in imports
            if (m, n) not in _SAFE_GLOBALS and not (m == "torch" and _SAFE_TORCH_NAMES.fullmatch(n))
        }
    )
    if unsafe:
        raise ModelError(
            f"{label} is a pickle that would run code when loaded ({', '.join(unsafe[:5])}); "
            "it was not kept. Ask for a .safetensors version of this model."
        )


def check_model_file(path: Path, suffix: str | None = None, label: str | None = None) -> None:
    """Refuse a file that is not model weights Clarifier can load safely: a .safetensors whose
    header matches its size, or a PyTorch pickle that only rebuilds tensors (weights-only).
    ``suffix`` names the kind when ``path`` is a partial download."""
    suffix = (suffix or path.suffix).lower()
    label = label or path.name
    if suffix == ".safetensors":
        _check_safetensors(path, label)
    elif suffix in PICKLE_SUFFIXES:
        _check_pickle(path, label)
    else:
        raise ModelError(f"{label}: not a model file (expected {', '.join(MODEL_SUFFIXES)})")


def safe_file_name(name: str) -> str | None:
    """A name from a link or a Content-Disposition header, made safe to create in a folder
    (no folders, no characters Windows refuses); None when nothing usable is left."""
    name = re.split(r"[/\\]", name.strip())[-1].strip().strip(".")
    name = re.sub(r'[<>:"|?*\x00-\x1f]', "_", name)
    return name or None


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


# --- records ----------------------------------------------------------------------------------
class Records:
    """``clarifier-models.json`` in a models folder: which link each downloaded file came from,
    and the sha256 first seen for files no source gives a hash for."""

    FILE = "clarifier-models.json"

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / self.FILE
        data = _read_json(self.path)
        self.links: dict[str, dict[str, Any]] = dict(data.get("links") or {})
        self.first_seen: dict[str, str] = dict(data.get("first_seen") or {})

    def save(self) -> None:
        write_json(self.path, {"links": self.links, "first_seen": self.first_seen})

    def link_file(self, url: str) -> Path | None:
        """The file a link was downloaded to, if it is still there."""
        record = self.links.get(url)
        if not record:
            return None
        path = self.path.parent / record["file"]
        return path if path.is_file() else None
