"""Tiny stand-ins for Clarity's model files and a manifest that describes them.

The bytes are in the real formats (a .safetensors header that matches the file; a PyTorch zip
whose data.pkl only rebuilds containers) but hold a few numbers, so the store's finding, hashing,
downloading and checking can be tested in milliseconds. :func:`fake_resources` writes a
resources folder (models.json + sd15/) whose entries mirror the real manifest's ids, roles and
file names, with the sizes and hashes of the fake bytes; point ``pipeline.models.store
.resources_dir`` at it.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

from pipeline.paths import resources_dir

__all__ = [
    "addnet_of",
    "fake_resources",
    "safetensors_bytes",
    "torch_zip",
    "unsafe_pickle",
]


def safetensors_bytes(count: int, seed: int, metadata: dict[str, str] | None = None) -> bytes:
    rng = random.Random(seed)
    data = struct.pack(f"<{count}f", *(rng.random() for _ in range(count)))
    header: dict[str, object] = {
        "w": {"dtype": "F32", "shape": [count], "data_offsets": [0, len(data)]}
    }
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def addnet_of(data: bytes) -> str:
    """kohya's addnet hash: sha256 of what follows the safetensors header."""
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length :]).hexdigest()


def torch_zip(payload: object, *, protocol: int = 2) -> bytes:
    """A PyTorch-style zip checkpoint whose data.pkl pickles ``payload``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=protocol))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def weights_pickle(seed: int, size: int = 64) -> bytes:
    rng = random.Random(seed)
    return torch_zip(OrderedDict(name=f"fake-{seed}", values=[rng.random() for _ in range(size)]))


class _Boom:
    """Unpickling this calls print(): the kind of code a weights-only load refuses."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def unsafe_pickle() -> bytes:
    return torch_zip(OrderedDict(w=_Boom()))


def _fake_bytes(entry: dict, seed: int, big: dict[str, int]) -> bytes:
    if entry["file"].endswith(".safetensors"):
        return safetensors_bytes(big.get(entry["id"], 64), seed, {"id": entry["id"]})
    if entry["id"] in big:
        return weights_pickle(seed, big[entry["id"]] // 8)
    return weights_pickle(seed)


def fake_resources(folder: Path, *, big: dict[str, int] | None = None) -> dict[str, bytes]:
    """Write ``folder``/models.json (+ an sd15/ config folder) for fake files; returns the bytes
    of each model by id. Checkpoints and VAE/ControlNet get a full sha256, epicrealism only the
    short hash, the LoRAs only their addnet hash (more_details in full, SDXLrender 12 digits),
    as in the real manifest. ``big`` makes some files larger (floats) for transfer tests."""
    real = json.loads((resources_dir() / "models.json").read_text(encoding="utf-8"))
    blobs: dict[str, bytes] = {}
    entries = []
    for seed, entry in enumerate(real["models"]):
        data = _fake_bytes(entry, seed, big or {})
        sha = hashlib.sha256(data).hexdigest()
        fake = {**entry, "size": len(data), "size_exact": True, "sha256": sha}
        fake["sha256_prefix"] = sha[:10]
        fake["addnet_hash"] = None
        if entry["id"] == "epicrealism_naturalSinRC1VAE":
            fake["sha256"] = None
        if entry["role"] == "lora":
            full = addnet_of(data)
            fake.update(sha256=None, sha256_prefix=None)
            fake["addnet_hash"] = full if entry["id"] == "more_details" else full[:12]
        entries.append(fake)
        blobs[entry["id"]] = data
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.json").write_text(
        json.dumps({**real, "models": entries}, indent=1), encoding="utf-8"
    )
    (folder / "sd15").mkdir(exist_ok=True)
    (folder / "sd15" / "model_index.json").write_text("{}", encoding="utf-8")
    return blobs
