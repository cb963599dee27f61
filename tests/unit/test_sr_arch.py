"""The hand-written networks have basicsr's keys, sizes and output shapes; the registry is the one
description of each.

Every registry entry round-trips: a small network built from a description, its weights written
in each key layout the entry accepts, is detected back to the same description and weights. A toy
architecture registered in a test (the registry monkeypatched, no other function touched) is then
detected, built, loaded from a file, named in the error for unknown weights and converted from
ncnn: the proof that adding an architecture is its network and one entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.errors import ModelError
from pipeline.sr import arch, ncnn
from pipeline.sr.arch import (
    Architecture,
    KeyLayout,
    NcnnMapping,
    RRDBNet,
    SRVGGNetCompact,
    build_net,
    count_parameters,
    detect_architecture,
    rrdb_layout,
)
from pipeline.sr.loading import clear_model_cache, load_upscaler

CPU = torch.device("cpu")


def test_rrdbnet_defaults_are_real_esrgan_x4plus() -> None:
    with torch.device("meta"):
        net = RRDBNet()
    assert count_parameters(net) == 16_697_987
    keys = set(net.state_dict())
    for key in (
        "conv_first.weight",
        "body.22.rdb3.conv5.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.weight",
        "conv_hr.weight",
        "conv_last.bias",
    ):
        assert key in keys
    assert "conv_up3.weight" not in keys


def test_srvgg_defaults_are_realesr_animevideov3_sized() -> None:
    with torch.device("meta"):
        net = SRVGGNetCompact()
    assert count_parameters(net) == 621_424
    assert [k for k in net.state_dict() if k.startswith("body.34")] == [
        "body.34.weight",
        "body.34.bias",
    ]


@pytest.mark.parametrize(("scale", "first_in"), [(1, 48), (2, 12), (4, 3), (8, 3)])
def test_rrdbnet_scales(scale: int, first_in: int) -> None:
    net = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    assert net.conv_first.in_channels == first_in
    assert hasattr(net, "conv_up3") == (scale == 8)
    with torch.inference_mode():
        y = net(torch.rand(1, 3, 8, 12))
    assert y.shape == (1, 3, 8 * scale, 12 * scale)


def test_invalid_configurations() -> None:
    with pytest.raises(ValueError, match="scale"):
        RRDBNet(scale=3)
    with pytest.raises(ValueError, match="cannot give"):
        RRDBNet(scale=4, num_upsample=1)
    with pytest.raises(ValueError, match="activation"):
        SRVGGNetCompact(act_type="gelu")


def test_srvgg_adds_the_nearest_upsampled_input() -> None:
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2).eval()
    torch.nn.init.zeros_(net.body[-1].weight)
    torch.nn.init.zeros_(net.body[-1].bias)
    x = torch.rand(1, 3, 5, 6)
    with torch.inference_mode():
        y = net(x)
    assert torch.equal(y, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


# --- every registry entry round-trips ----------------------------------------------------------

State = dict[str, torch.Tensor]


def rrdb(scale: int, num_upsample: int | None = None, num_block: int = 2) -> dict[str, str]:
    up = rrdb_layout(scale)[0] if num_upsample is None else num_upsample
    return {
        "architecture": "RRDB",
        "scale": str(scale),
        "num_upsample": str(up),
        "num_in_ch": "3",
        "num_out_ch": "3",
        "num_feat": "8",
        "num_block": str(num_block),
        "num_grow_ch": "4",
    }


def srvgg(scale: int, num_conv: int = 3) -> dict[str, str]:
    return {
        "architecture": "SRVGG",
        "scale": str(scale),
        "num_in_ch": "3",
        "num_out_ch": "3",
        "num_feat": "8",
        "num_conv": str(num_conv),
        "act_type": "prelu",
    }


# Small descriptions per entry; an entry without any fails test_every_entry_and_layout_is_covered.
SMALL: dict[str, list[dict[str, str]]] = {
    "RRDB": [rrdb(1), rrdb(2), rrdb(4), rrdb(8), rrdb(2, num_upsample=1, num_block=1)],
    "SRVGG": [srvgg(1), srvgg(2), srvgg(3), srvgg(4, num_conv=1)],
}


def to_classic(state: State, desc: Mapping[str, str]) -> State:
    """basicsr keys → old ESRGAN ``model.N`` keys (the flattened Sequential of the original)."""
    num_up, blocks = int(desc["num_upsample"]), int(desc["num_block"])
    fixed = {
        "conv_first": "model.0",
        "conv_body": f"model.1.sub.{blocks}",
        "conv_hr": f"model.{3 * num_up + 2}",
        "conv_last": f"model.{3 * num_up + 4}",
    }
    fixed.update({f"conv_up{i}": f"model.{3 * i}" for i in range(1, num_up + 1)})
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        else:
            head, kind = key.rsplit(".", 1)
            out[f"{fixed[head]}.{kind}"] = value
    return out


def to_trunk(state: State, desc: Mapping[str, str]) -> State:
    """basicsr keys → early basicsr keys (``RRDB_trunk``, ``trunk_conv``, ``upconvN``, …)."""
    names = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}
    names.update({f"conv_up{i}": f"upconv{i}" for i in range(1, 4)})
    out = {}
    for key, value in state.items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", key)
        head, _, rest = key.partition(".")
        out[names.get(head, head) + "." + rest] = value
    return out


def same(state: State, desc: Mapping[str, str]) -> State:
    return dict(state)


# The inverse of every layout's rename, keyed by (architecture, layout).
ENCODE: dict[tuple[str, str], Callable[[State, Mapping[str, str]], State]] = {
    ("RRDB", "classic"): to_classic,
    ("RRDB", "trunk"): to_trunk,
    ("RRDB", "basicsr"): same,
    ("SRVGG", "basicsr"): same,
}


def assert_round_trip(
    entry: Architecture,
    layout: KeyLayout,
    desc: Mapping[str, str],
    encode: Callable[[State, Mapping[str, str]], State],
) -> None:
    torch.manual_seed(0)
    net = build_net(desc).eval()
    state = net.state_dict()
    written = encode(state, desc)
    claims = [
        (e.name, la.name) for e in arch.REGISTRY for la in e.layouts if la.matches(set(written))
    ]
    assert claims[0] == (entry.name, layout.name), "an earlier layout would claim these weights"
    found, renamed, classic = detect_architecture(written)
    assert found == desc
    assert classic == layout.classic_esrgan
    assert renamed.keys() == state.keys()
    assert all(torch.equal(renamed[k], state[k]) for k in state)
    rebuilt = build_net(found).eval()
    rebuilt.load_state_dict(renamed, strict=True)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), net(x))


def test_every_entry_and_layout_is_covered() -> None:
    names = [entry.name for entry in arch.REGISTRY]
    assert len(set(names)) == len(names)
    assert set(SMALL) == set(names)
    layouts = {(e.name, la.name) for e in arch.REGISTRY for la in e.layouts}
    assert set(ENCODE) == layouts


@pytest.mark.parametrize(
    ("name", "layout", "desc"),
    [
        pytest.param(entry.name, layout.name, desc, id=f"{entry.name}-{layout.name}-{n}")
        for entry in arch.REGISTRY
        for layout in entry.layouts
        for n, desc in enumerate(SMALL.get(entry.name, []))
    ],
)
def test_every_entry_round_trips(name: str, layout: str, desc: dict[str, str]) -> None:
    entry = arch.architecture(name)
    key_layout = next(la for la in entry.layouts if la.name == layout)
    assert_round_trip(entry, key_layout, desc, ENCODE[(name, layout)])


# --- a toy architecture needs only its network and one entry -----------------------------------


class ToyNet(nn.Module):
    """The smallest network that upscales: one conv and a PixelShuffle."""

    def __init__(self, channels: int = 3, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.toy_conv = nn.Conv2d(channels, channels * scale * scale, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.toy_conv(x))


def toy_params(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    out_ch, in_ch = state["toy_conv.weight"].shape[:2]
    return {"scale": str(math.isqrt(out_ch // in_ch)), "channels": str(in_ch)}


TOY = Architecture(
    name="TOY",
    title="Toy",
    layouts=(
        KeyLayout("plain", lambda keys: "toy_conv.weight" in keys),
        KeyLayout(
            "nested",
            lambda keys: "toy.conv.weight" in keys,
            lambda state: {k.replace("toy.conv.", "toy_conv."): v for k, v in state.items()},
        ),
    ),
    read_params=toy_params,
    build=lambda desc: ToyNet(int(desc["channels"]), int(desc["scale"])),
    ncnn=NcnnMapping(
        lambda layers, weights: (
            [la.type for la, _ in weights] == ["Convolution"]
            and any(la.type == "PixelShuffle" for la in layers)
        ),
        lambda layers, weights: {f"toy_conv.{k}": v for k, v in weights[0][1].items()},
    ),
)
TOY_DESC = {"architecture": "TOY", "scale": "2", "channels": "3"}


def nested(state: State, desc: Mapping[str, str]) -> State:
    return {k.replace("toy_conv.", "toy.conv."): v for k, v in state.items()}


@pytest.fixture
def fresh_cache():
    clear_model_cache()
    yield
    clear_model_cache()


def register_toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arch, "REGISTRY", (*arch.REGISTRY, TOY))


def test_a_registered_toy_is_detected_built_and_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    torch.manual_seed(2)
    net = ToyNet().eval()
    path = tmp_path / "2x-toy.safetensors"
    save_file(net.state_dict(), str(path))
    with pytest.raises(ModelError, match=r"unknown upscaler architecture") as unknown:
        load_upscaler(str(path), device=CPU, dtype=torch.float32)
    assert "RRDB" in str(unknown.value) and "SRVGG" in str(unknown.value)
    assert "TOY" not in str(unknown.value)

    register_toy(monkeypatch)
    for layout, encode in zip(TOY.layouts, (same, nested), strict=True):
        assert_round_trip(TOY, layout, TOY_DESC, encode)
    model = load_upscaler(str(path), device=CPU, dtype=torch.float32)
    assert (model.arch, model.scale, model.classic_esrgan, model.alignment) == ("TOY", 2, False, 1)
    x = torch.rand(1, 3, 5, 7)
    with torch.inference_mode():
        assert torch.equal(model.net(x), net(x))
    assert isinstance(build_net({"architecture": "TOY", "scale": 3, "channels": 1}), ToyNet)
    with pytest.raises(ModelError, match=r"Real-ESRGAN compact \(SRVGG\) and Toy \(TOY\)"):
        detect_architecture({"encoder.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match=r"known: RRDB, SRVGG, TOY"):
        build_net({"architecture": "GAN"})


def write_toy_ncnn(folder: Path, net: ToyNet) -> tuple[Path, Path]:
    """``net`` in ncnn format: one fp32 convolution (tag 0, then OIHW weights and the biases)."""
    w = net.toy_conv.weight.detach().numpy()
    b = net.toy_conv.bias.detach().numpy()
    lines = [
        "7767517",
        "3 3",
        "Input in 0 1 data",
        f"Convolution conv 1 1 data c 0={w.shape[0]} 1=3 4=1 5=1 6={w.size}",
        f"PixelShuffle shuffle 1 1 c out 0={net.scale}",
    ]
    (folder / "toy.param").write_text("\n".join(lines) + "\n")
    blob = np.zeros(1, "<u4").tobytes() + w.astype("<f4").tobytes() + b.astype("<f4").tobytes()
    (folder / "toy.bin").write_bytes(blob)
    return folder / "toy.param", folder / "toy.bin"


def test_ncnn_conversion_derives_from_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(3)
    net = ToyNet()
    param, binary = write_toy_ncnn(tmp_path, net)
    with pytest.raises(ModelError, match=r"none of the architectures .*\(RRDB, SRVGG\)"):
        ncnn.convert(param, binary)
    register_toy(monkeypatch)
    state, desc = ncnn.convert(param, binary)
    assert desc == TOY_DESC
    assert state.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value), key
