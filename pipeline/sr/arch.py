"""The ESRGAN-family networks Clarifier runs, and the one registry that describes each of them.

Two networks, written from the published architecture descriptions (ESRGAN, Wang et al. 2018;
Real-ESRGAN, Wang et al. 2021; BSD-3-Clause in xinntao/Real-ESRGAN and basicsr) with basicsr's
state-dict key names, so that weights saved by basicsr, Real-ESRGAN and most community models load
without renaming: RRDBNet and SRVGGNetCompact.

:data:`REGISTRY` holds one :class:`Architecture` per network (as spandrel, the library chaiNNer
uses, does): its name, the key layouts its weights come in and how each is renamed onto the
network's own keys, how the hyper-parameters (the *description*, a dict of strings fit for
safetensors metadata) are read from the weights, how the network is built from a description, and
optionally how the bundled ncnn weights map onto it. Everything else derives from the registry:
:func:`detect_architecture` (which :mod:`pipeline.sr.loading` runs on a person's file),
:func:`build_net`, the ncnn conversion in :mod:`pipeline.sr.ncnn` and the error for unknown
weights. Adding an architecture is writing its ``nn.Module`` and one registry entry.

We write the networks ourselves instead of depending on spandrel because spandrel pulls in
torchvision, whose PyPI wheel breaks transformers next to the CPU torch build.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

    from pipeline.sr.ncnn import NcnnLayer

    # read_weights' answer: each weight-owning ncnn layer with its arrays, in file order.
    NcnnWeights: TypeAlias = Sequence[tuple[NcnnLayer, Mapping[str, np.ndarray]]]

__all__ = [
    "REGISTRY",
    "Architecture",
    "KeyLayout",
    "NcnnMapping",
    "RRDBNet",
    "SRVGGNetCompact",
    "architecture",
    "build_net",
    "count_parameters",
    "detect_architecture",
    "rrdb_layout",
]

StateDict: TypeAlias = Mapping[str, torch.Tensor]


# --- the registry -------------------------------------------------------------------------------


def _same_keys(state: StateDict) -> dict[str, torch.Tensor]:
    return dict(state)


@dataclass(frozen=True)
class KeyLayout:
    """One way an architecture's weights are keyed in the wild, renamed onto the network's keys.

    ``matches`` looks at the key names only, and a match claims the file: weights that match but
    do not add up are an error about this architecture (what is wrong with the ESRGAN file), not a
    reason to try the next layout and end with "unknown"."""

    name: str
    matches: Callable[[frozenset[str]], bool]
    rename: Callable[[StateDict], dict[str, torch.Tensor]] = _same_keys
    # Old ESRGAN files, which A1111 and Clarity feed BGR; the runner follows them (channel "auto").
    classic_esrgan: bool = False


@dataclass(frozen=True)
class NcnnMapping:
    """How an architecture appears in ncnn format (the bundled Real-ESRGAN weights).

    ``matches`` sees the parsed layers and the weight-owning ones; ``state`` names the weight
    arrays with the network's keys, or raises :class:`ModelError` when they do not form it."""

    matches: Callable[[Sequence[NcnnLayer], NcnnWeights], bool]
    state: Callable[[Sequence[NcnnLayer], NcnnWeights], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Architecture:
    """One network, described once.

    ``read_params`` reads the hyper-parameters from weights with the network's own keys: strings,
    ``scale`` among them (the loader and the runner read it); :meth:`describe` adds
    ``architecture``. ``build`` makes the randomly initialised network of a description; a network
    whose input sides must be multiples of a factor says so in an ``unshuffle`` attribute.
    ``layouts`` are tried in order, so a layout whose keys are a superset of another's comes
    first."""

    name: str  # the description's "architecture", and SRModel.arch
    title: str  # for people, in error messages
    layouts: tuple[KeyLayout, ...]
    read_params: Callable[[StateDict], dict[str, str]]
    build: Callable[[Mapping[str, str]], nn.Module]
    ncnn: NcnnMapping | None = None

    def describe(self, state: StateDict) -> dict[str, str]:
        """The description of weights with the network's own keys."""
        return {"architecture": self.name, **self.read_params(state)}

    @property
    def label(self) -> str:
        return f"{self.title} ({self.name})"


def _known() -> str:
    *rest, last = [a.label for a in REGISTRY]
    return f"{', '.join(rest)} and {last}" if rest else last


def architecture(name: str | None) -> Architecture:
    """The registry entry called ``name``."""
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    names = ", ".join(a.name for a in REGISTRY)
    raise ModelError(f"unknown architecture {name!r} (known: {names})")


def build_net(arch: Mapping[str, str | int]) -> nn.Module:
    """Build the (randomly initialised) network an architecture description names."""
    desc = {k: str(v) for k, v in arch.items()}
    return architecture(desc.get("architecture")).build(desc)


def detect_architecture(
    state: StateDict,
) -> tuple[dict[str, str], dict[str, torch.Tensor], bool]:
    """Recognise a state dict by the first registry layout that matches its keys.

    Returns ``(architecture description, state dict with the network's keys, classic_esrgan)``."""
    keys = frozenset(state)
    for entry in REGISTRY:
        for layout in entry.layouts:
            if not layout.matches(keys):
                continue
            try:
                renamed = layout.rename(state)
                return entry.describe(renamed), renamed, layout.classic_esrgan
            except KeyError as exc:
                raise ModelError(f"incomplete {entry.title} weights: {exc} is missing") from exc
    sample = ", ".join(sorted(keys)[:5])
    raise ModelError(
        f"unknown upscaler architecture: only {_known()} models are supported "
        f"(first keys: {sample or 'none'})"
    )


def _indices(keys: Iterable[object], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.fullmatch(str(k)))})


def count_parameters(net: nn.Module) -> int:
    """Total number of weights, the figure model cards quote (16,697,987 for x4plus)."""
    return sum(math.prod(p.shape) for p in net.parameters())


# --- RRDB: ESRGAN and Real-ESRGAN ---------------------------------------------------------------


def rrdb_layout(scale: int) -> tuple[int, int]:
    """``(num_upsample, unshuffle)`` for an RRDBNet of ``scale``, as Real-ESRGAN builds them.

    Real-ESRGAN keeps the two ×2 upsampling stages of the ×4 net for every scale and folds the
    input with pixel-unshuffle for ×2 (factor 2) and ×1 (factor 4); ×8 adds a third stage."""
    layouts = {1: (2, 4), 2: (2, 2), 4: (2, 1), 8: (3, 1)}
    if scale not in layouts:
        raise ValueError(f"RRDBNet scale must be one of 1, 2, 4, 8, not {scale}")
    return layouts[scale]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; the block output is scaled by 0.2 before the skip."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, again scaled by 0.2 before the skip."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator.

    ``scale`` 4 and 8 upsample with 2 or 3 nearest-×2 + conv stages; 2 and 1 keep the ×4 body and
    pixel-unshuffle the input first (Real-ESRGAN x2plus style). ``num_upsample`` overrides the
    number of ×2 stages for old ESRGAN files that reach ×1/×2 with fewer stages instead.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        *,
        num_upsample: int | None = None,
    ) -> None:
        super().__init__()
        if num_upsample is None:
            num_upsample, unshuffle = rrdb_layout(scale)
        else:
            factor = 2**num_upsample / scale
            unshuffle = round(factor)
            if unshuffle < 1 or unshuffle != factor or unshuffle not in (1, 2, 4):
                raise ValueError(f"{num_upsample} upsampling stages cannot give scale {scale}")
        self.scale = scale
        self.unshuffle = unshuffle
        self.num_upsample = num_upsample
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for i in range(1, num_upsample + 1):
            self.add_module(f"conv_up{i}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.num_upsample + 1):
            up = getattr(self, f"conv_up{i}")
            feat = self.lrelu(up(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def _rename_classic(state: StateDict) -> dict[str, torch.Tensor]:
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


def _rename_trunk(state: StateDict) -> dict[str, torch.Tensor]:
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


def _rrdb_params(state: StateDict) -> dict[str, str]:
    """The pixel-unshuffle factor from the first conv's input channels, and with it and the
    number of ×2 stages the scale."""
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
        "scale": str(int(scale)),
        "num_upsample": str(num_up),
        "num_in_ch": str(out_ch),
        "num_out_ch": str(out_ch),
        "num_feat": str(first.shape[0]),
        "num_block": str(len(blocks)),
        "num_grow_ch": str(gc),
    }


def _build_rrdb(desc: Mapping[str, str]) -> nn.Module:
    return RRDBNet(
        num_in_ch=int(desc["num_in_ch"]),
        num_out_ch=int(desc["num_out_ch"]),
        scale=int(desc["scale"]),
        num_feat=int(desc["num_feat"]),
        num_block=int(desc["num_block"]),
        num_grow_ch=int(desc["num_grow_ch"]),
        num_upsample=int(desc["num_upsample"]),
    )


def _rrdb_in_ncnn(layers: Sequence[NcnnLayer], weights: NcnnWeights) -> bool:
    # Convolutions only (the LeakyReLUs are fused into them), upsampled by Interp, not shuffled.
    return all(layer.type == "Convolution" for layer, _ in weights) and not any(
        layer.type == "PixelShuffle" for layer in layers
    )


def _rrdb_from_ncnn(layers: Sequence[NcnnLayer], weights: NcnnWeights) -> dict[str, np.ndarray]:
    """The convolutions in module order; each stage's nearest ×2 is an ``Interp`` layer, and the
    activations must sit where RRDBNet has them (LeakyReLU 0.2), so that the mapping is proven."""
    upsample = sum(1 for la in layers if la.type == "Interp" and la.get_int(0) == 1)
    body = len(weights) - 4 - upsample
    if body < 15 or body % 15:
        raise ModelError(f"{len(weights)} convolutions do not form an RRDBNet")
    names = ["conv_first"]
    leaky = [False]
    for b in range(body // 15):
        for r in range(1, 4):
            names += [f"body.{b}.rdb{r}.conv{c}" for c in range(1, 6)]
            leaky += [True, True, True, True, False]
    names += ["conv_body", *(f"conv_up{i}" for i in range(1, upsample + 1)), "conv_hr", "conv_last"]
    leaky += [False, *([True] * upsample), True, False]
    state: dict[str, np.ndarray] = {}
    for name, expect_leaky, (layer, arrays) in zip(names, leaky, weights, strict=True):
        slope = layer.leaky_slope()
        if (slope is not None and abs(slope - 0.2) < 1e-6) != expect_leaky:
            raise ModelError(f"ncnn layer {layer.name} does not match the RRDBNet activations")
        for kind, array in arrays.items():
            state[f"{name}.{kind}"] = array
    return state


RRDB_ARCH = Architecture(
    name="RRDB",
    title="ESRGAN",
    layouts=(
        KeyLayout(
            "classic",
            lambda keys: (
                "model.0.weight" in keys and any(k.startswith("model.1.sub.") for k in keys)
            ),
            _rename_classic,
            classic_esrgan=True,
        ),
        # Before "basicsr": these files have conv_first and conv_last too.
        KeyLayout(
            "trunk", lambda keys: any(k.startswith("RRDB_trunk.") for k in keys), _rename_trunk
        ),
        KeyLayout(
            "basicsr", lambda keys: "conv_first.weight" in keys and "conv_last.weight" in keys
        ),
    ),
    read_params=_rrdb_params,
    build=_build_rrdb,
    ncnn=NcnnMapping(_rrdb_in_ncnn, _rrdb_from_ncnn),
)


# --- SRVGG: Real-ESRGAN compact -----------------------------------------------------------------


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style net: plain convs at low resolution, one PixelShuffle at the
    end, and the nearest-upsampled input added so the body only learns the residual."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        if act_type not in ("prelu", "relu", "leakyrelu"):
            raise ValueError(f"unknown activation {act_type!r}")
        if num_in_ch != num_out_ch:
            raise ValueError(
                "SRVGGNetCompact adds the upsampled input, so in and out channels match"
            )
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.upscale = upscale
        self.scale = upscale
        self.unshuffle = 1
        layers: list[nn.Module] = [
            nn.Conv2d(num_in_ch, num_feat, 3, 1, 1),
            self._act(act_type, num_feat),
        ]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), self._act(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    @staticmethod
    def _act(act_type: str, num_feat: int) -> nn.Module:
        if act_type == "prelu":
            return nn.PReLU(num_parameters=num_feat)
        if act_type == "relu":
            return nn.ReLU(inplace=True)
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=float(self.upscale), mode="nearest")


def _srvgg_params(state: StateDict) -> dict[str, str]:
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
        "scale": str(upscale),
        "num_in_ch": str(in_ch),
        "num_out_ch": str(in_ch),
        "num_feat": str(first.shape[0]),
        "num_conv": str(len(layers) // 2 - 1),
        "act_type": "prelu",
    }


def _build_srvgg(desc: Mapping[str, str]) -> nn.Module:
    return SRVGGNetCompact(
        num_in_ch=int(desc["num_in_ch"]),
        num_out_ch=int(desc["num_out_ch"]),
        num_feat=int(desc["num_feat"]),
        num_conv=int(desc["num_conv"]),
        upscale=int(desc["scale"]),
        act_type=desc.get("act_type", "prelu"),
    )


def _srvgg_in_ncnn(layers: Sequence[NcnnLayer], weights: NcnnWeights) -> bool:
    return any(layer.type == "PReLU" for layer, _ in weights)


def _srvgg_from_ncnn(layers: Sequence[NcnnLayer], weights: NcnnWeights) -> dict[str, np.ndarray]:
    """The conv/PReLU chain in order, then one PixelShuffle whose factor the last conv must fit."""
    kinds = [layer.type for layer, _ in weights]
    if len(kinds) < 5 or kinds != ["Convolution", "PReLU"] * (len(kinds) // 2) + ["Convolution"]:
        raise ModelError("ncnn network with PReLU layers is not an SRVGGNetCompact")
    shuffles = [la.get_int(0) for la in layers if la.type == "PixelShuffle"]
    if len(shuffles) != 1:
        raise ModelError("an SRVGGNetCompact has exactly one PixelShuffle layer")
    state = {}
    for i, (_, arrays) in enumerate(weights):
        for kind, array in arrays.items():
            state[f"body.{i}.{kind}"] = array
    # The scale is read back from the last conv's channels; the PixelShuffle must agree with it.
    in_ch, out = state["body.0.weight"].shape[1], state[f"body.{len(kinds) - 1}.weight"].shape[0]
    if out != in_ch * shuffles[0] ** 2:
        raise ModelError(
            f"the last convolution's {out} channels do not fit PixelShuffle ×{shuffles[0]}"
        )
    return state


SRVGG_ARCH = Architecture(
    name="SRVGG",
    title="Real-ESRGAN compact",
    layouts=(
        KeyLayout(
            "basicsr",
            lambda keys: "body.0.weight" in keys and not any(k.startswith("conv_") for k in keys),
        ),
    ),
    read_params=_srvgg_params,
    build=_build_srvgg,
    ncnn=NcnnMapping(_srvgg_in_ncnn, _srvgg_from_ncnn),
)


# Detection tries the entries in this order. Tests swap in a longer tuple to add a toy network.
REGISTRY: tuple[Architecture, ...] = (RRDB_ARCH, SRVGG_ARCH)
