"""MultiDiffusion tile placement: Clarity's tile counts and batches, full-size tiles, coverage."""

from __future__ import annotations

import itertools
import math

import pytest

from pipeline.diffusion.tiling import WRAP_MARGIN, plan_tiles, unet_pixels_ratio


@pytest.mark.parametrize(
    ("out_px", "tiles", "batches"),
    [
        ((1024, 1024), 2, [2]),
        ((1536, 1024), 2, [2]),
        ((2048, 2048), 6, [6]),
        ((3072, 2048), 8, [8]),
        ((4096, 4096), 20, [7, 7, 6]),
    ],
)
def test_clarity_default_tile_counts(out_px, tiles, batches):
    """The table of clarity-pipeline.md §2.7 (112×144 latent tiles, overlap 4, batch 8)."""
    w, h = out_px[0] // 8, out_px[1] // 8
    plan = plan_tiles(w, h, 112, 144)
    assert len(plan.boxes) == tiles
    assert [len(b) for b in plan.batches] == batches
    assert sorted(i for b in plan.batches for i in b) == list(range(tiles))


def test_small_canvas_is_one_tile_and_tiles_clamp():
    plan = plan_tiles(64, 80, 112, 144)
    assert not plan.tiled and plan.boxes[0].w == 64 and plan.boxes[0].h == 80
    plan = plan_tiles(128, 128, 112, 144)  # 1024² output: tiles clamped to 112×128 at x 0, 16
    assert [(b.x, b.y, b.w, b.h) for b in plan.boxes] == [(0, 0, 112, 128), (16, 0, 112, 128)]


@pytest.mark.parametrize(
    ("w", "h", "tw", "th"), [(300, 217, 112, 144), (97, 61, 16, 16), (256, 40, 64, 32)]
)
def test_tiles_are_full_size_cover_everything_and_overlap_at_least_4(w, h, tw, th):
    plan = plan_tiles(w, h, tw, th, overlap=4)
    cover = [[0] * w for _ in range(h)]
    for b in plan.boxes:
        assert (b.w, b.h) == (min(tw, w), min(th, h))
        assert 0 <= b.x <= w - b.w and 0 <= b.y <= h - b.h
        for y in range(b.y, b.y + b.h):
            for x in range(b.x, b.x + b.w):
                cover[y][x] += 1
    assert min(min(row) for row in cover) >= 1
    xs = sorted({b.x for b in plan.boxes})
    assert all(b - a <= min(tw, w) - 4 for a, b in itertools.pairwise(xs))
    cols = 1 if tw >= w else math.ceil((w - 4) / (tw - 4))
    assert len(xs) == cols


def test_rebatching_keeps_tiles():
    plan = plan_tiles(512, 512, 112, 144)
    small = plan.rebatched(2)
    assert small.boxes == plan.boxes
    assert max(len(b) for b in small.batches) == 2


def test_tiling_overhead_ratio():
    assert unet_pixels_ratio(plan_tiles(100, 100, 112, 144)) == 1.0
    ratio = unet_pixels_ratio(plan_tiles(256, 256, 112, 144))
    assert ratio == pytest.approx(6 * 112 * 144 / (256 * 256))


def test_wrap_plan_covers_the_torus():
    plan = plan_tiles(200, 100, 64, 48, overlap=8, wrap=True)
    cover = [[0] * 200 for _ in range(100)]
    for b in plan.boxes:
        for y in range(b.y, b.y + b.h):
            for x in range(b.x, b.x + b.w):
                cover[y % 100][x % 200] += 1
    assert min(min(row) for row in cover) >= 1
    one = plan_tiles(40, 30, 112, 144, wrap=True)
    (box,) = one.boxes
    assert (box.w, box.h) == (40 + 2 * WRAP_MARGIN, 30 + 2 * WRAP_MARGIN)
    assert (box.x, box.y) == (-WRAP_MARGIN, -WRAP_MARGIN)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="bad tiling"):
        plan_tiles(0, 10, 16, 16)
