"""Clarity's hand fix: the crop rule, the JPEG round trip, the feathered paste-back, and (with the
handfix extra installed) MediaPipe's detector on a drawn hand.

References: the crop rule against known answers worked out by hand from Clarity's published
arithmetic and against its invariants on random boxes; the JPEG round trip against OpenCV's own
encoder (what Clarity calls); the mask and the paste-back against a second construction with
Pillow's ImageDraw and Image.paste, step for step as Clarity's handfix describes them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.diffusion import handfix
from pipeline.diffusion.handfix import (
    HandBox,
    Placement,
    blend_mask,
    crop_box,
    detector_available,
    find_hand,
    hand_crop,
    paste_hand,
    require_detector,
)
from pipeline.errors import PipelineError
from tests.unit.imagegen import photo


# --- the crop rule ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        # small hand mid-image: margins 25/30 px, then a 512 window centred on (450, 360)
        (HandBox(400, 300, 500, 420), (1000, 800), Placement(194, 104, 706, 616)),
        # at the left edge: the window starts at 0 and is 512 wide
        (HandBox(10, 300, 110, 400), (1000, 800), Placement(0, 94, 512, 606)),
        # at the right and bottom edges: slid back inside
        (HandBox(900, 700, 990, 790), (1000, 800), Placement(488, 288, 1000, 800)),
        # a big hand: margins only, clipped to the image
        (HandBox(100, 100, 900, 700), (1200, 1000), Placement(0, 0, 1100, 850)),
        # an image narrower than 512: the whole width; landmarks a little outside the image
        (HandBox(-3, 40, 200, 150), (300, 900), Placement(0, 0, 300, 512)),
        # odd sizes: int() truncates each margin, // floors the centre
        (HandBox(301, 257, 338, 290), (777, 555), Placement(63, 17, 575, 529)),
    ],
)
def test_crop_box_known_answers(box: HandBox, size: tuple[int, int], expected: Placement) -> None:
    assert crop_box(box, *size) == expected


def test_crop_box_invariants_on_random_boxes() -> None:
    rng = np.random.default_rng(7)
    for _ in range(2000):
        width, height = (int(v) for v in rng.integers(64, 2400, 2))
        x = np.sort(rng.integers(-5, width + 5, 2))
        y = np.sort(rng.integers(-5, height + 5, 2))
        box = HandBox(int(x[0]), int(y[0]), int(x[1]), int(y[1]))
        got = crop_box(box, width, height)
        for low, high, lo, hi, limit in (
            (got.left, got.right, box.left, box.right, width),
            (got.top, got.bottom, box.top, box.bottom, height),
        ):
            grow = int((hi - lo) * 0.25)
            margin_lo, margin_hi = max(0, lo - grow), min(limit, hi + grow)
            assert 0 <= low < high <= limit
            if margin_hi - margin_lo >= 512:
                assert (low, high) == (margin_lo, margin_hi)  # margins only
            else:
                assert high - low == min(512, limit)  # a full window, inside the image
                assert low <= margin_lo and margin_hi <= high  # that still holds the hand


def test_hand_crop_is_opencvs_default_jpeg_of_the_region() -> None:
    cv2 = pytest.importorskip("cv2")
    rgb = photo("chelsea", (700, 560))
    crop, placement = hand_crop(rgb, HandBox(300, 200, 420, 330))
    assert placement == Placement(104, 9, 616, 521)
    region = rgb[placement.top : placement.bottom, placement.left : placement.right]
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(region, cv2.COLOR_RGB2BGR))
    assert ok
    expected = np.asarray(Image.open(io.BytesIO(encoded.tobytes())).convert("RGB"))
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, expected)
    assert np.abs(crop.astype(int) - region).mean() > 0.1  # a real round trip, not the region


# --- the mask and the paste-back --------------------------------------------------------------
def _drawn_mask(width: int, height: int) -> np.ndarray:
    """The mask as Clarity's handfix describes it: RGB, Pillow rectangles, then the blur."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    inner_w, inner_h = int(width * 0.8), int(height * 0.8)
    x0, y0 = int((width - inner_w) / 2), int((height - inner_h) / 2)
    draw.rectangle([x0, y0, x0 + inner_w, y0 + inner_h], fill=(255, 255, 255))
    border = int(width * 0.1)
    black = (0, 0, 0)
    draw.rectangle([0, 0, width, border], fill=black)
    draw.rectangle([0, height - border, width, height], fill=black)
    draw.rectangle([0, 0, border, height], fill=black)
    draw.rectangle([width - border, 0, width, height], fill=black)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(15)))


@pytest.mark.parametrize("size", [(512, 512), (640, 512), (512, 777), (37, 23), (9, 9)])
def test_blend_mask_matches_the_drawn_one(size: tuple[int, int]) -> None:
    mask = blend_mask(*size)
    drawn = _drawn_mask(*size)
    assert mask.shape == (size[1], size[0]) and mask.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(mask, drawn[..., channel])


def test_blend_mask_shape_of_the_feather() -> None:
    mask = blend_mask(512, 512)
    assert mask[256, 256] == 255 and mask[0, 0] == 0 and mask[0, 256] == 0
    # White from x = 52 (the top-left border is int(0.1·512) + 1 = 52 px) to 460 (the bottom-right
    # border is 51 px), so the feather is symmetric about that span and half-way at its edges.
    assert 110 < mask[256, 52] < 150
    np.testing.assert_array_equal(mask[256, 52:257], mask[256, 460:255:-1])
    assert np.all(np.diff(mask[256, :256].astype(int)) >= 0)  # rises monotonically inward


def _reference_paste(original: np.ndarray, upscaled: np.ndarray, where: Placement) -> np.ndarray:
    """Clarity's paste-back with Pillow: halve, mask, blend in float, paste into RGBA, to RGB."""
    up = Image.fromarray(upscaled)
    up = up.resize((up.width // 2, up.height // 2))  # Pillow's default filter (bicubic)
    mask = _drawn_mask(*up.size) / 255
    crop = original[where.top : where.bottom, where.left : where.right]
    blended = Image.fromarray((np.asarray(up) * mask + crop * (1 - mask)).astype(np.uint8))
    canvas = Image.fromarray(original).convert("RGBA")
    canvas.paste(blended, (where.left, where.top, where.left + up.width, where.top + up.height))
    return np.asarray(canvas.convert("RGB"))


def test_paste_hand_is_clarity_paste_back_at_x2() -> None:
    original = photo("astronaut", (900, 700))
    crop, where = hand_crop(original, HandBox(500, 300, 600, 420))
    assert where == Placement(294, 104, 806, 616)
    upscaled = np.asarray(Image.fromarray(crop).resize((1024, 1024), Image.Resampling.LANCZOS))
    assert where.fits(upscaled.shape)
    got = paste_hand(original, upscaled, where)
    np.testing.assert_array_equal(got, _reference_paste(original, upscaled, where))
    assert got.shape == original.shape  # the original size, not the upscaled one
    outside = np.ones(original.shape[:2], bool)
    outside[where.top : where.bottom, where.left : where.right] = False
    np.testing.assert_array_equal(got[outside], original[outside])
    centre = got[where.top + 200 : where.bottom - 200, where.left + 200 : where.right - 200]
    halved = np.asarray(Image.fromarray(upscaled).resize((512, 512), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(centre, halved[200:-200, 200:-200])  # mask = 1 there


def test_paste_hand_blends_by_the_mask_weight() -> None:
    original = np.full((600, 800, 3), 10, np.uint8)
    where = Placement(100, 50, 612, 562)
    upscaled = np.full((1024, 1024, 3), 200, np.uint8)
    got = paste_hand(original, upscaled, where)
    weight = blend_mask(512, 512) / 255
    expected = (200 * weight + 10 * (1 - weight)).astype(np.uint8)
    np.testing.assert_array_equal(got[50:562, 100:612, 0], expected)
    assert got[306, 356, 1] == 200 and got[50, 100, 2] == 10


def test_paste_hand_resizes_where_clarity_would_fail() -> None:
    original = photo("coffee", (800, 600))
    where = Placement(10, 20, 523, 532)  # 513 wide: ×2 floors to 1024, which halves to 512
    at_x2 = np.zeros((1024, 1024, 3), np.uint8)
    at_x4 = np.zeros((2048, 2048, 3), np.uint8)
    assert not where.fits(at_x2.shape) and not where.fits(at_x4.shape)
    assert Placement(0, 0, 512, 512).fits(at_x2.shape)
    for upscaled in (at_x2, at_x4):
        got = paste_hand(original, upscaled, where)
        assert got.shape == original.shape
        assert got[276, 266].tolist() == [0, 0, 0]  # the crop's centre is the upscaled one


# --- the detector -----------------------------------------------------------------------------
def test_a_missing_detector_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mediapipe(name: str):
        raise ImportError(name)

    monkeypatch.setattr(handfix.importlib, "import_module", no_mediapipe)
    assert not detector_available()
    with pytest.raises(PipelineError, match=r"clarifier\[handfix\].*not installed"):
        require_detector()
    with pytest.raises(PipelineError, match=r"clarifier\[handfix\].*not installed"):
        find_hand(np.zeros((64, 64, 3), np.uint8))

    class TasksOnly:
        __version__ = "1.2.3"

    def tasks_only(name: str):
        if name == "mediapipe":
            return TasksOnly
        raise ImportError(name)

    monkeypatch.setattr(handfix.importlib, "import_module", tasks_only)
    with pytest.raises(PipelineError, match=r"mediapipe 1\.2\.3 has no legacy Hands solution"):
        find_hand(np.zeros((64, 64, 3), np.uint8))


def _capsule(draw: ImageDraw.ImageDraw, start, end, radius: float, fill) -> None:
    for t in np.linspace(0, 1, 40):
        x, y = start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)


def drawn_hand(size: int = 640, scale: float = 0.7) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An open right hand (palm, four fingers with creases and nails, a thumb, the forearm) in
    flat skin tones on blue, shaded and with a little noise; and the skin's left, top and right
    edges above the wrist."""
    background, skin = (70, 90, 120), (226, 178, 140)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    s = scale * size / 640
    cx, cy = size / 2, size * 0.62
    _capsule(draw, (cx, cy + 120 * s), (cx, cy + 400 * s), 62 * s, skin)
    draw.rounded_rectangle(
        [cx - 85 * s, cy - 90 * s, cx + 85 * s, cy + 100 * s], radius=40 * s, fill=skin
    )
    crease = tuple(int(c * 0.8) for c in skin)
    for base, length, angle in ((-62, 150, -12), (-22, 175, -3), (20, 168, 4), (58, 135, 13)):
        a = np.deg2rad(angle)
        x0, y0 = cx + base * s, cy - 80 * s
        x1, y1 = x0 + np.sin(a) * length * s, y0 - np.cos(a) * length * s
        _capsule(draw, (x0, y0), (x1, y1), 19 * s, skin)
        for f in (0.35, 0.68):
            xm, ym = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
            draw.line([xm - 12 * s, ym, xm + 12 * s, ym], fill=crease, width=max(1, int(2 * s)))
        draw.ellipse([x1 - 10 * s, y1 - 8 * s, x1 + 10 * s, y1 + 14 * s], fill=(240, 205, 190))
    _capsule(draw, (cx - 80 * s, cy + 40 * s), (cx - 165 * s, cy - 40 * s), 24 * s, skin)
    _capsule(draw, (cx - 165 * s, cy - 40 * s), (cx - 200 * s, cy - 110 * s), 21 * s, skin)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5 * s))).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    is_skin = (np.abs(pixels - np.array(background)).sum(-1) > 30)[..., None]
    shade = 1.0 - 0.18 * xx[..., None] + 0.08 * (1 - yy[..., None])
    pixels = np.where(is_skin, pixels * shade, pixels)
    pixels += np.random.default_rng(0).normal(0, 3, pixels.shape)
    rgb = np.clip(pixels, 0, 255).astype(np.uint8)
    wrist = int(cy + 100 * s)
    ys, xs = np.nonzero(np.abs(rgb[:wrist].astype(int) - background).sum(-1) > 60)
    return rgb, (int(xs.min()), int(ys.min()), int(xs.max()))


needs_detector = pytest.mark.skipif(
    not detector_available(), reason="the handfix extra (MediaPipe Hands) is not installed"
)


@needs_detector
def test_find_hand_boxes_a_drawn_hand() -> None:
    rgb, (left, top, right) = drawn_hand()
    box = find_hand(rgb)
    assert box is not None
    # The landmarks sit on the joints and fingertips, just inside the skin's edges.
    assert 0 <= box.left - left < 25 and 0 <= box.top - top < 25 and 0 <= right - box.right < 25
    assert 400 < box.bottom < 470  # the wrist landmark, above the forearm
    placement = crop_box(box, rgb.shape[1], rgb.shape[0])
    assert placement.width == 512 and placement.height == 512


@needs_detector
def test_find_hand_finds_nothing_in_a_photo_without_hands() -> None:
    assert find_hand(photo("coffee", (600, 400))) is None
    assert find_hand(np.full((300, 300, 3), 128, np.uint8)) is None
