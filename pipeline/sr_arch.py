"""The two ESRGAN-family super-resolution networks Clarifier runs: RRDBNet and SRVGGNetCompact.

Both are written from the published architecture descriptions (ESRGAN, Wang et al. 2018;
Real-ESRGAN, Wang et al. 2021; BSD-3-Clause in xinntao/Real-ESRGAN and basicsr) with basicsr's
state-dict key names, so that weights saved by basicsr, Real-ESRGAN and most community models load
without renaming. Old-format ESRGAN files (``model.N.*`` keys) are renamed onto these keys by
:mod:`pipeline.sr_models`.

We write them ourselves instead of depending on spandrel because spandrel pulls in torchvision,
whose PyPI wheel breaks transformers next to the CPU torch build.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RRDBNet", "SRVGGNetCompact", "count_parameters", "rrdb_layout"]


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


def count_parameters(net: nn.Module) -> int:
    """Total number of weights, the figure model cards quote (16,697,987 for x4plus)."""
    return sum(math.prod(p.shape) for p in net.parameters())
