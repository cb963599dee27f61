"""The hand-written RRDBNet and SRVGGNetCompact have basicsr's keys, sizes and output shapes."""

from __future__ import annotations

import pytest
import torch

from pipeline.sr_arch import RRDBNet, SRVGGNetCompact, count_parameters


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
