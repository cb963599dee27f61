"""Model weight files: read them without running code, say what they are, identify them.

People keep SD model files from many sources, in the wrong folders and under misleading names.
This module reads any of them safely (``.safetensors`` directly, pickles only through
``torch.load(weights_only=True)``, so a file can never run code), recognises what a state dict
is from its key names (SD 1.5 or SDXL checkpoint, LoRA, ControlNet, VAE, embedding, upscaler),
and computes the identities the engine needs: a cheap stamp (path, size, mtime) to notice a
changed file, and the hashes A1111 writes into image metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import threading
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pipeline.errors import ModelError, PipelineError
from pipeline.io.atomic import atomic_write
from pipeline.models.files import file_sha256
from pipeline.paths import cache_dir

__all__ = [
    "LDM_TEXT_ENCODER",
    "LDM_UNET",
    "LDM_VAE",
    "WEIGHT_SUFFIXES",
    "FileHash",
    "addnet_hash",
    "describe_weights",
    "file_fingerprint",
    "file_stamp",
    "read_expected",
    "read_weights",
    "require_file",
    "tensors_only",
    "wrong_kind",
]

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Key prefixes of an A1111/LDM single-file SD checkpoint.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_TEXT_ENCODER = "cond_stage_model.transformer."
_HASH_STORE_SIZE = 500


# --- reading --------------------------------------------------------------------------


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is an existing weights file; otherwise a ModelError naming ``what``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"{what} not found: {path}; check the models folder, or download it again")
    if not path.is_file():
        raise ModelError(f"{what} {path} is a folder, not a weights file")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelError(
            f"{what} {path} has an unsupported file type; use {', '.join(WEIGHT_SUFFIXES)}"
        )
    return path


def _load_pickle(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers, so a file cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip pickles


def read_weights(path: Path, what: str = "model file") -> dict[str, Any]:
    """Every top-level entry of a weights file, on the CPU, read without running any code.

    Pickles nested under ``state_dict`` are unwrapped. Non-tensor entries are kept (an A1111
    embedding keeps its vectors under ``string_to_param``); callers filter."""
    path = require_file(path, what)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:
            raise ModelError(
                f"{what} {path} cannot be read: it is damaged or incomplete ({exc}); "
                "download it again"
            ) from exc
    try:
        obj = _load_pickle(path)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "WeightsUnpickler error: Unsupported" in str(exc):
            raise ModelError(
                f"{what} {path} contains Python objects besides weights and was not loaded, "
                "because opening it could run code. Convert it to .safetensors with a tool you "
                "trust, or get a .safetensors version of the model"
            ) from exc
        raise ModelError(f"{what} {path} is damaged or incomplete; download it again") from exc
    except Exception as exc:
        raise ModelError(
            f"{what} {path} cannot be read: it is damaged, incomplete or not a PyTorch file "
            f"({type(exc).__name__}: {exc}); download it again"
        ) from exc
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelError(f"{what} {path} holds a {type(obj).__name__}, not model weights")
    return {str(k): v for k, v in obj.items()}


def _peek_keys(path: Path, what: str) -> list[str] | None:
    """A ``.safetensors`` file's tensor names, from its header alone (None for pickles)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:
        raise ModelError(
            f"{what} {path} cannot be read: it is damaged or incomplete ({exc}); download it again"
        ) from exc


def read_expected(path: Path, what: str, expected: Collection[str], fix: str) -> dict[str, Any]:
    """:func:`read_weights`, refusing a file that does not look like one of ``expected`` (a
    :func:`describe_weights` answer). A ``.safetensors`` file is judged from its header before
    its tensors are read, so a 6 GB SDXL checkpoint in the wrong slot fails at once."""
    path = require_file(path, what)
    keys = _peek_keys(path, what)
    if keys is not None and (looks := describe_weights(keys)) not in expected:
        raise wrong_kind(path, what, looks, fix)
    state = read_weights(path, what)
    if keys is None and (looks := describe_weights(state)) not in expected:
        raise wrong_kind(path, what, looks, fix)
    return state


def tensors_only(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def describe_weights(keys: Iterable[object]) -> str:
    """What a set of state-dict keys (or the state dict) looks like, in words ("an SDXL
    checkpoint", "a LoRA")."""
    names = [str(k) for k in keys]

    def has(*parts: str) -> bool:
        return any(p in k for k in names for p in parts)

    def starts(*parts: str) -> bool:
        return any(k.startswith(parts) for k in names)

    if has("string_to_param", "emb_params") or (names and set(names) <= {"clip_l", "clip_g"}):
        return "a textual-inversion embedding"
    if has("lora_down", "lora_up", "lora_A.", "lora_B.", "hada_w1", "lokr_w1") or starts("lora_"):
        return "an SDXL LoRA" if starts("lora_te1_", "lora_te2_") else "a LoRA"
    if has("double_blocks.", "single_blocks."):
        return "a Flux model"
    if has("joint_blocks."):
        return "an SD 3 model"
    if starts("conditioner.embedders."):
        return "an SDXL checkpoint"
    if starts("cond_stage_model.model."):
        return "an SD 2.x checkpoint"
    if starts("control_model.") or has(
        "input_hint_block.", "controlnet_cond_embedding.", "zero_convs."
    ):
        return "a ControlNet"
    if starts(LDM_UNET) and starts(LDM_TEXT_ENCODER):
        return "an SD 1.5 checkpoint"
    if starts(LDM_UNET):
        return "a UNet without text encoder"
    if starts(LDM_VAE, "encoder.conv_in.", "decoder.conv_in."):
        return "a VAE"
    if starts("down_blocks.", "up_blocks.", "mid_block."):
        return "a diffusers-format model weights file (load its whole folder instead)"
    if starts("text_model.", "embeddings.token_embedding."):
        return "a text encoder"
    if has("conv_first.", "RRDB_trunk.", "model.1.sub.") or starts("body.0."):
        return "an ESRGAN upscaler"
    return "an unknown model"


def wrong_kind(path: Path, what: str, looks: str, fix: str) -> ModelError:
    return ModelError(f"{path} was given as the {what} but looks like {looks}; {fix}")


# --- identity and hashes -------------------------------------------------------------------------


class FileHash(NamedTuple):
    """A file's sha256 and A1111's short hash (its first 10 hex digits, "Model hash")."""

    sha256: str
    short: str


def file_stamp(path: Path) -> tuple[object, ...]:
    """What identifies a file version cheaply: resolved path, size, mtime. For a folder, the
    stamps of every file in it."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return (str(path), *(file_stamp(p) for p in files))
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


_hash_lock = threading.Lock()
_hash_memory: dict[tuple[object, ...], str] = {}


def _hash_store() -> Path:
    return cache_dir() / "file_hashes.json"


def file_fingerprint(path: Path) -> FileHash:
    """sha256 of a model file, cached in memory and on disk by (path, size, mtime): hashing a
    2 GB checkpoint takes seconds, and the metadata of every output needs it."""
    path = require_file(Path(path), "model file")
    stamp = file_stamp(path)
    key = json.dumps(stamp)
    with _hash_lock:
        digest = _hash_memory.get(stamp)
        if digest is None:
            store: dict[str, str] = {}
            with contextlib.suppress(OSError, ValueError):
                store = dict(json.loads(_hash_store().read_text()))
            digest = store.get(key) or file_sha256(path)
            _hash_memory[stamp] = digest
            if store.get(key) != digest:
                store.pop(key, None)
                store[key] = digest  # newest last; the oldest are dropped past the limit
                store = dict(list(store.items())[-_HASH_STORE_SIZE:])
                data = json.dumps(store, indent=0).encode()
                with contextlib.suppress(PipelineError, OSError):  # the cache is a nicety
                    atomic_write(_hash_store(), lambda f: f.write(data))
    return FileHash(digest, digest[:10])


def addnet_hash(path: Path) -> str:
    """The hash A1111 prints for a ``.safetensors`` LoRA ("Lora hashes", 12 hex digits): the
    sha256 of the file after its JSON header, so that editing metadata keeps it stable.
    [Written from A1111's documented behaviour; check against a real file.]"""
    path = require_file(Path(path), "LoRA")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        f.seek(8 + size)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
