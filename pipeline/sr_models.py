"""Load a pre-upscaler: a bundled Real-ESRGAN model or a user's ESRGAN/RRDB or SRVGG file.

Clarity runs 4x-UltraSharp, a community ESRGAN file; people bring many such files, saved by
different tools with different key names. We read the tensors only (safetensors, or pickles with
``torch.load(weights_only=True)`` so a file can never run code), recognise the architecture from
the key names and tensor shapes, rename old formats onto basicsr's keys, and build the network
from :mod:`pipeline.sr_arch`. Every failure is a :class:`~pipeline.errors.ModelError` that says
what is wrong with which file.
"""

from __future__ import annotations

import math
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline import ncnn
from pipeline.errors import ModelError
from pipeline.params import BUNDLED_UPSCALERS
from pipeline.sr_arch import RRDBNet, SRVGGNetCompact

__all__ = [
    "MODEL_SUFFIXES",
    "SRModel",
    "build_net",
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
    arch: str  # "RRDB" | "SRVGG"
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


# --- architecture detection -------------------------------------------------------------------


def build_net(arch: Mapping[str, str | int]) -> nn.Module:
    """Build the (randomly initialised) network an architecture description names."""
    a = {k: str(v) for k, v in arch.items()}
    if a.get("architecture") == "RRDB":
        return RRDBNet(
            num_in_ch=int(a["num_in_ch"]),
            num_out_ch=int(a["num_out_ch"]),
            scale=int(a["scale"]),
            num_feat=int(a["num_feat"]),
            num_block=int(a["num_block"]),
            num_grow_ch=int(a["num_grow_ch"]),
            num_upsample=int(a["num_upsample"]),
        )
    if a.get("architecture") == "SRVGG":
        return SRVGGNetCompact(
            num_in_ch=int(a["num_in_ch"]),
            num_out_ch=int(a["num_out_ch"]),
            num_feat=int(a["num_feat"]),
            num_conv=int(a["num_conv"]),
            upscale=int(a["scale"]),
            act_type=a.get("act_type", "prelu"),
        )
    raise ModelError(f"unknown architecture {a.get('architecture')!r}")


def _indices(keys: object, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.fullmatch(str(k)))})  # type: ignore[attr-defined]


def _rename_classic(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old ESRGAN keys → basicsr keys.

    The old generator is one flattened ``nn.Sequential``: ``model.0`` first conv, ``model.1.sub``
    the trunk (RRDBs, then the trunk conv at index num_block), then per ×2 stage an Upsample, a
    conv and an activation (convs at 3, 6, 9, …), then HR conv and its activation, then the last
    conv."""
    num_block = len(_indices(state, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight"))
    top = _indices(state, r"model\.(\d+)\.weight")
    num_up = (top[-1] - 4) // 3 if top else -1
    if num_up < 0 or top != [0, *range(3, 3 * num_up + 1, 3), 3 * num_up + 2, 3 * num_up + 4]:
        raise ModelError(f"unrecognised old-style ESRGAN layout (top-level layers {top})")
    names = {
        "model.0": "conv_first",
        f"model.1.sub.{num_block}": "conv_body",
        f"model.{3 * num_up + 2}": "conv_hr",
        f"model.{3 * num_up + 4}": "conv_last",
    }
    names.update({f"model.{3 * i}": f"conv_up{i}" for i in range(1, num_up + 1)})
    out = {}
    rdb = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
    for key, value in state.items():
        if m := rdb.fullmatch(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
            continue
        prefix, _, kind = key.rpartition(".")
        if prefix not in names:
            raise ModelError(f"unexpected key {key!r} in an old-style ESRGAN file")
        out[f"{names[prefix]}.{kind}"] = value
    return out


def _rename_trunk(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Early basicsr/ESRGAN keys (``RRDB_trunk``, ``trunk_conv``, ``upconv1``, ``HRconv``)."""
    fixed = {
        "trunk_conv": "conv_body",
        "HRconv": "conv_hr",
        "upconv1": "conv_up1",
        "upconv2": "conv_up2",
        "upconv3": "conv_up3",
    }
    out = {}
    for key, value in state.items():
        new = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2.", key)
        head, dot, rest = new.partition(".")
        out[fixed.get(head, head) + dot + rest] = value
    return out


def _rrdb_arch(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    first = state["conv_first.weight"]
    out_ch = int(state["conv_last.weight"].shape[0])
    num_up = len(_indices(state, r"conv_up(\d+)\.weight"))
    ratio = first.shape[1] / out_ch
    unshuffle = round(math.sqrt(ratio))
    if unshuffle not in (1, 2, 4) or unshuffle * unshuffle != ratio:
        raise ModelError(f"RRDB input has {first.shape[1]} channels for {out_ch} outputs")
    scale = 2**num_up / unshuffle
    if scale < 1 or not scale.is_integer():
        raise ModelError(f"RRDB with {num_up} upsampling stages and unshuffle {unshuffle}")
    blocks = _indices(state, r"body\.(\d+)\.rdb1\.conv1\.weight")
    if blocks != list(range(len(blocks))):
        raise ModelError("RRDB blocks are not numbered 0…n-1")
    gc = state["body.0.rdb1.conv1.weight"].shape[0] if blocks else 32
    return {
        "architecture": "RRDB",
        "scale": str(int(scale)),
        "num_upsample": str(num_up),
        "num_in_ch": str(out_ch),
        "num_out_ch": str(out_ch),
        "num_feat": str(first.shape[0]),
        "num_block": str(len(blocks)),
        "num_grow_ch": str(gc),
    }


def _srvgg_arch(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    layers = _indices(state, r"body\.(\d+)\.weight")
    if layers != list(range(len(layers))) or len(layers) < 5 or len(layers) % 2 == 0:
        raise ModelError(
            "SRVGG layers must be a conv/PReLU chain body.0 … body.2n "
            "(compact models without PReLU weights are not supported)"
        )
    for i in layers:
        if state[f"body.{i}.weight"].ndim != (4 if i % 2 == 0 else 1):
            raise ModelError(f"body.{i}.weight has an unexpected shape for an SRVGG net")
    first = state["body.0.weight"]
    in_ch = int(first.shape[1])
    last = int(state[f"body.{layers[-1]}.weight"].shape[0])
    upscale = round(math.sqrt(last / in_ch))
    if upscale < 1 or upscale * upscale * in_ch != last:
        raise ModelError(f"SRVGG last conv has {last} channels, not channels·scale²")
    return {
        "architecture": "SRVGG",
        "scale": str(upscale),
        "num_in_ch": str(in_ch),
        "num_out_ch": str(in_ch),
        "num_feat": str(first.shape[0]),
        "num_conv": str(len(layers) // 2 - 1),
        "act_type": "prelu",
    }


def detect_architecture(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, str], dict[str, torch.Tensor], bool]:
    """Recognise an ESRGAN-family state dict.

    Returns ``(architecture description, state dict with basicsr keys, classic_esrgan)``."""
    keys = set(state)
    try:
        if "model.0.weight" in keys and any(k.startswith("model.1.sub.") for k in keys):
            renamed = _rename_classic(state)
            return _rrdb_arch(renamed), renamed, True
        if any(k.startswith("RRDB_trunk.") for k in keys):
            renamed = _rename_trunk(state)
            return _rrdb_arch(renamed), renamed, False
        if "conv_first.weight" in keys and "conv_last.weight" in keys:
            return _rrdb_arch(state), dict(state), False
        if "body.0.weight" in keys and not any(k.startswith("conv_") for k in keys):
            return _srvgg_arch(state), dict(state), False
    except KeyError as exc:
        raise ModelError(f"incomplete ESRGAN weights: {exc} is missing") from exc
    sample = ", ".join(sorted(keys)[:5])
    raise ModelError(
        "unknown upscaler architecture: only ESRGAN/RRDB and Real-ESRGAN compact (SRVGG) "
        f"models are supported (first keys: {sample or 'none'})"
    )


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

    if key[0] == "bundled":
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
            sha256=ncnn.file_sha256(path),
            source=str(path),
        )
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model
