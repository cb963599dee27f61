"""Clarity's pre-upscale: the size rule, seam-free tiling, the fused Lanczos resize, callbacks.

Most tests use tiny random-weight nets (the tiling and resize logic does not care about the
weights); the real bundled models are used where the weights are the point.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import Cancelled, ImageError, OutOfMemory, ParamsError
from pipeline.params import floor8
from pipeline.sr.arch import RRDBNet, SRVGGNetCompact
from pipeline.sr.loading import SRModel
from pipeline.sr.preupscale import (
    _Runner,
    border_pad,
    default_margin,
    model_passes,
    plan_tiles,
    pre_upscale,
    pre_upscale_size,
    reflect_index,
)


def tiny(arch: str = "RRDB", scale: int = 4, *, classic: bool = False, seed: int = 0) -> SRModel:
    torch.manual_seed(seed)
    if arch == "RRDB":
        net: torch.nn.Module = RRDBNet(scale=scale, num_feat=8, num_block=2, num_grow_ch=4)
    else:
        net = SRVGGNetCompact(num_feat=8, num_conv=4, upscale=scale)
        # Random PReLU slopes make the net less linear than the 0.25 default.
        for layer in net.body:
            if isinstance(layer, torch.nn.PReLU):
                layer.weight.data.uniform_(-0.5, 0.5)
    net.eval().requires_grad_(False)
    return SRModel("tiny", net, scale, arch, classic, "0" * 64, "test")


def photo(h: int, w: int, *, y: int = 120, x: int = 180) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[y : y + h, x : x + w])


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def untiled_reference(model: SRModel, img: np.ndarray) -> np.ndarray:
    """The whole image reflect-padded by the border pad, one model call, the pad cropped away."""
    m, s = border_pad(model), model.scale
    padded = np.pad(img, ((m, m), (m, m), (0, 0)), mode="reflect")
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = model.net(x).clamp(0, 1)
    y = (y[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return y[m * s : (m + img.shape[0]) * s, m * s : (m + img.shape[1]) * s]


# --- geometry ---------------------------------------------------------------------------------


def test_reflect_index_matches_numpy_pad_for_any_width() -> None:
    for size in (1, 2, 3, 7):
        line = np.arange(size)
        for pad in (0, 1, 5, 20):
            expected = np.pad(line, pad, mode="reflect") if size > 1 else np.zeros(size + 2 * pad)
            assert list(reflect_index(-pad, size + pad, size)) == list(expected)


@pytest.mark.parametrize(
    ("w", "h", "tile", "align"),
    [(37, 29, 16, 1), (300, 17, 256, 1), (64, 64, 64, 1), (50, 41, 20, 4)],
)
def test_plan_tiles_cover_the_image_once(w: int, h: int, tile: int, align: int) -> None:
    cover = np.zeros((h, w), dtype=int)
    for t in plan_tiles(w, h, tile, align):
        assert t.x1 - t.x0 <= tile and t.y1 - t.y0 <= tile
        assert t.x0 % align == 0 and t.y0 % align == 0
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize(
    ("scale", "passes"), [(1, 0), (1.5, 1), (2, 1), (3, 1), (4, 1), (5, 2), (16, 2), (100, 3)]
)
def test_size_rule_and_model_passes(scale: float, passes: int) -> None:
    w, h = 13, 10
    assert model_passes(w, h, scale, 4) == passes
    if scale > 16:
        return
    calls = []
    model = tiny()
    inner = model.net.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return inner(x)

    model.net.forward = counting  # type: ignore[method-assign]
    out = pre_upscale(photo(h, w), scale, model, tile=1024)
    assert (
        out.shape
        == (floor8(h * scale), floor8(w * scale), 3)
        == (*pre_upscale_size(w, h, scale)[::-1], 3)
    )
    assert len(calls) == passes


def test_scale_one_is_only_the_floor8_resize() -> None:
    img = photo(21, 30)
    out = pre_upscale(img, 1, tiny())
    expected = np.asarray(Image.fromarray(img).resize((24, 16), Image.LANCZOS))
    assert np.array_equal(out, expected)
    small = photo(16, 24)
    assert np.array_equal(pre_upscale(small, 1, tiny()), small)


def test_too_small_output_is_refused() -> None:
    with pytest.raises(ImageError, match="8×8"):
        pre_upscale(photo(20, 20), 0.3, tiny())


# --- tiling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["RRDB", "SRVGG"])
def test_single_tile_equals_reflect_padded_whole_image(arch: str) -> None:
    model = tiny(arch)
    img = photo(18, 26)  # even sides: ×4 is already a multiple of 8, so no resize follows
    assert max_diff(pre_upscale(img, 4, model, tile=4096), untiled_reference(model, img)) == 0


@pytest.mark.parametrize("arch", ["RRDB", "SRVGG"])
@pytest.mark.parametrize("scale", [4, 2, 3.3, 5])
def test_tiled_equals_untiled(arch: str, scale: float) -> None:
    model = tiny(arch)
    # 16 px tiles divide neither side; the two-pass case runs its second pass on 4× the size.
    img = photo(29, 38) if scale < 5 else photo(11, 14)
    untiled = pre_upscale(img, scale, model, tile=4096)
    tiled = pre_upscale(img, scale, model, tile=16)
    assert max_diff(tiled, untiled) <= 1, f"measured {max_diff(tiled, untiled)}"


@pytest.mark.parametrize("scale", [1, 2])
def test_pixel_unshuffle_models_tile_at_aligned_origins(scale: int) -> None:
    model = tiny("RRDB", scale)
    assert model.alignment == 4 // scale
    img = photo(23, 30)  # odd sizes: the windows are extended by reflection to a multiple
    untiled = pre_upscale(img, 2, model, tile=4096)
    tiled = pre_upscale(img, 2, model, tile=16)
    assert max_diff(tiled, untiled) <= 1


def test_image_smaller_than_one_tile() -> None:
    model = tiny("SRVGG")
    img = photo(10, 12)
    assert max_diff(pre_upscale(img, 4, model, tile=16), untiled_reference(model, img)) <= 1


@pytest.mark.parametrize("scale", [4, 2.5])
def test_alpha_mask_single_channel(scale: float) -> None:
    model = tiny("RRDB")
    alpha = photo(26, 33)[:, :, 1].copy()
    out = pre_upscale(alpha, scale, model, tile=16)
    assert out.ndim == 2 and out.dtype == np.uint8
    assert out.shape == pre_upscale_size(33, 26, scale)[::-1]
    assert max_diff(out, pre_upscale(alpha, scale, model, tile=4096)) <= 1
    if scale == 4:
        rgb = pre_upscale(np.repeat(alpha[:, :, None], 3, axis=2), 4, model, tile=16)
        mean = np.round(rgb.astype(np.float64).mean(axis=2))
        assert np.abs(out - mean).max() <= 1


def test_uint16_matches_uint8_and_keeps_its_depth() -> None:
    model = tiny("SRVGG")
    img8 = photo(18, 22)
    img16 = img8.astype(np.uint16) * 257
    for scale in (4, 1.5):
        out16 = pre_upscale(img16, scale, model, tile=16)
        out8 = pre_upscale(img8, scale, model, tile=16)
        assert out16.dtype == np.uint16
        assert np.abs(out16 / 257.0 - out8).max() <= 1.0
        assert max_diff(out16, pre_upscale(img16, scale, model, tile=4096)) <= 257


# --- fused Lanczos resize ---------------------------------------------------------------------


def nearest_model() -> SRModel:
    """An SRVGG whose body outputs zero: exactly nearest-neighbour ×4, free of float rounding,
    so that a difference can only come from the resize."""
    model = tiny("SRVGG")
    torch.nn.init.zeros_(model.net.body[-1].weight)
    torch.nn.init.zeros_(model.net.body[-1].bias)
    return model


@pytest.mark.parametrize("scale", [1.1, 1.25, 1.5, 2, 2.5, 3, 3.7])
@pytest.mark.parametrize("channels", [3, 1])
def test_fused_resize_equals_global_pil_resize(scale: float, channels: int) -> None:
    model = nearest_model()
    img = np.random.default_rng(7).integers(0, 256, (57, 70, channels), dtype=np.uint8)
    full = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    size = pre_upscale_size(70, 57, scale)
    if channels == 3:
        expected = np.asarray(Image.fromarray(full).resize(size, Image.LANCZOS))
    else:
        plane = Image.fromarray(full[:, :, 0]).resize(size, Image.LANCZOS)
        expected = np.asarray(plane)[:, :, None]
    for tile in (16, 24, 4096):
        out = pre_upscale(img, scale, model, tile=tile)
        assert max_diff(out, expected) <= 1, f"tile {tile}: {max_diff(out, expected)}"
        assert np.mean(out != expected) < 1e-3


def test_fused_resize_uint16() -> None:
    img = np.random.default_rng(8).integers(0, 65536, (30, 41, 3), dtype=np.uint16)
    full = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    size = pre_upscale_size(41, 30, 2.5)
    planes = [Image.fromarray(np.ascontiguousarray(full[:, :, c])) for c in range(3)]
    expected = np.stack([np.asarray(p.resize(size, Image.LANCZOS)) for p in planes], axis=2)
    assert max_diff(pre_upscale(img, 2.5, nearest_model(), tile=16), expected) <= 1


def test_tiled_model_and_fused_resize_together() -> None:
    model = tiny("SRVGG")
    img = photo(31, 43)
    full = _Runner(model, False, default_margin(model)).run(img, 0, 0, 43, 31)
    expected = np.asarray(
        Image.fromarray(full).resize(pre_upscale_size(43, 31, 2.5), Image.LANCZOS)
    )
    assert max_diff(pre_upscale(img, 2.5, model, tile=16), expected) <= 1


def test_fused_resize_on_the_second_pass_matches_global_resize() -> None:
    model = tiny("RRDB")
    img = photo(10, 13)
    runner = _Runner(model, False, default_margin(model))
    first = runner.run(img, 0, 0, 13, 10)
    second = runner.run(first, 0, 0, 52, 40)
    expected = np.asarray(
        Image.fromarray(second).resize(pre_upscale_size(13, 10, 6), Image.LANCZOS)
    )
    assert max_diff(pre_upscale(img, 6, model, tile=16), expected) <= 1


def test_model_never_sees_more_than_a_tile() -> None:
    model = tiny("SRVGG")
    shapes = []
    inner = model.net.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape[-2:]))
        return inner(x)

    model.net.forward = spy  # type: ignore[method-assign]
    pre_upscale(photo(60, 70), 1.5, model, tile=16)
    limit = 16 + 2 * default_margin(model) + 8  # + the resize support of the fused path
    assert len(shapes) == 20 and max(max(s) for s in shapes) <= limit


# --- callbacks, errors ------------------------------------------------------------------------


def test_progress_is_monotone_with_a_fixed_total() -> None:
    seen: list[tuple[int, int]] = []
    pre_upscale(photo(20, 20), 5, tiny("SRVGG"), tile=16, progress=lambda d, t: seen.append((d, t)))
    totals = {t for _, t in seen}
    assert len(totals) == 1
    total = totals.pop()
    assert total == 4 + 25  # 20×20 in 16-px tiles, then 80×80
    assert [d for d, _ in seen] == list(range(1, total + 1))


def test_cancel_between_tiles() -> None:
    done: list[int] = []
    with pytest.raises(Cancelled):
        pre_upscale(
            photo(40, 40),
            2,
            tiny("SRVGG"),
            tile=16,
            cancel=lambda: len(done) >= 3,
            progress=lambda d, t: done.append(d),
        )
    assert done == [1, 2, 3]


def test_cancel_inside_a_tile() -> None:
    polls: list[int] = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 2  # the first poll is before the tile: this one is inside it

    model = tiny("RRDB")
    with pytest.raises(Cancelled):
        pre_upscale(photo(20, 20), 4, model, tile=4096, cancel=cancel)
    assert len(polls) == 3
    assert not model.net.body[0]._forward_pre_hooks, "the cancel hooks are removed again"


def test_channel_order() -> None:
    model = tiny("RRDB")
    img = photo(17, 21)
    bgr = pre_upscale(img, 2, model, channel_order="bgr", tile=16)
    flipped = pre_upscale(
        np.ascontiguousarray(img[:, :, ::-1]), 2, model, channel_order="rgb", tile=16
    )
    assert np.array_equal(bgr, flipped[:, :, ::-1])
    assert not np.array_equal(bgr, pre_upscale(img, 2, model, channel_order="rgb", tile=16))
    assert np.array_equal(
        pre_upscale(img, 2, model, tile=16),
        pre_upscale(img, 2, model, channel_order="rgb", tile=16),
    )
    classic = tiny("RRDB", classic=True)
    assert np.array_equal(pre_upscale(img, 2, classic, tile=16), bgr)


class _OOMNet(torch.nn.Module):
    """Raises CUDA-style out-of-memory above a pixel budget."""

    def __init__(self, inner: torch.nn.Module, budget: int) -> None:
        super().__init__()
        self.inner, self.budget, self.unshuffle = inner, budget, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] * x.shape[-2] > self.budget:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_retries_with_half_tiles() -> None:
    model = tiny("SRVGG")
    img = photo(40, 40)
    expected = pre_upscale(img, 4, model, tile=32, margin=24)
    window = 32 + 2 * 24
    limited = SRModel("oom", _OOMNet(model.net, window * window - 1), 4, "SRVGG", False, "", "")
    assert max_diff(pre_upscale(img, 4, limited, tile=32, margin=24), expected) <= 1
    hopeless = SRModel("oom", _OOMNet(model.net, 10), 4, "SRVGG", False, "", "")
    with pytest.raises(OutOfMemory, match="tile"):
        pre_upscale(img, 4, hopeless, tile=32, margin=24)


def test_bad_inputs() -> None:
    model = tiny("SRVGG")
    with pytest.raises(ImageError):
        pre_upscale(np.zeros((8, 8, 3), np.float32), 2, model)
    with pytest.raises(ImageError):
        pre_upscale(np.zeros((8, 8, 4), np.uint8), 2, model)
    with pytest.raises(ParamsError):
        pre_upscale(np.zeros((8, 8, 3), np.uint8), 2, model, channel_order="grb")
    with pytest.raises(ParamsError):
        pre_upscale(np.zeros((8, 8, 3), np.uint8), float("nan"), model)
    with pytest.raises(ParamsError):
        pre_upscale(np.zeros((8, 8, 3), np.uint8), 2, model, tile=4)
