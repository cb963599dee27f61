"""Clarity's pre-upscale (stage A), tiled so that memory is bounded by the tile, not the image.

The rule is A1111's ``Upscaler.upscale`` as Clarity runs it: the destination is
``floor8(W·scale) × floor8(H·scale)``; while the image is smaller than that (at most three times)
the ESRGAN model runs on it, then one Lanczos resize lands on the destination size.

Tiling. Each model pass walks the image in tiles of ``tile`` input pixels. A tile is run with a
context margin of real neighbouring pixels on every side (:func:`default_margin`), and where the
image ends, with the few reflected pixels (:func:`border_pad`) that an untiled run pads the whole
image with. Only the tile's own part of the output is kept, so a tiled run equals an untiled run
to within rounding (measured: ≤ 1 LSB, see :func:`default_margin`), and an image that fits in one
tile costs no more than an untiled run. Tensors on the device are tile-sized; nothing image-sized
is ever float.

Fused resize. On the last model pass we do not build the ×4 intermediate: each row of tiles
fills a full-width strip of model output (a few rows taller than the tiles, for the filter
support), which Pillow Lanczos-resizes straight into the destination rows the strip owns, using
``resize(..., box=...)`` with a float box in source coordinates. The horizontal pass then sees the
same box and pixels as a global resize (bit-identical) and only the vertical weights see the
offset, so the result matches ``Image.resize`` of the whole intermediate to within 1 LSB
(measured: ≤ 1 LSB in under 0.1 % of the samples). The strip costs ``tile × width × scale²``
bytes, not the image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby, pairwise

import numpy as np
import torch
from PIL import Image

from pipeline.errors import Cancelled, FieldError, ImageError, OutOfMemory, ParamsError
from pipeline.params import CHANNEL_ORDERS, UpscaleParams, floor8
from pipeline.progress import Progress
from pipeline.sr.arch import RRDBNet, SRVGGNetCompact
from pipeline.sr.loading import SRModel
from pipeline.sr.post import lanczos_resize

__all__ = [
    "DEFAULT_TILE",
    "MAX_MODEL_PASSES",
    "Tile",
    "auto_tile",
    "border_pad",
    "default_margin",
    "model_passes",
    "plan_tiles",
    "pre_upscale",
    "pre_upscale_size",
    "reflect_index",
    "upscale_plane",
]

DEFAULT_TILE = 256
MAX_MODEL_PASSES = 3  # A1111 gives up after three model passes and lets Lanczos do the rest

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def _ceil_to(x: int, step: int) -> int:
    return -(-x // step) * step


def default_margin(model: SRModel) -> int:
    """Context margin (input px) that makes tiled output equal untiled output to ≤ 1 LSB (uint8).

    SRVGG: the receptive field is only ``num_conv + 2`` px, so a margin beyond it sees exactly
    what the whole image would (animevideov3: 24 px; measured max 1 LSB, from float summation
    order). RRDB: the receptive field is far wider (15 px per block) and the zero padding at a tile
    edge fades slowly. Measured on real photos (astronaut, coffee, chelsea; 24 px tiles, uint8 max
    diff): x4plus-anime (6 blocks) 24 px → 15, 32 → 8, 40 → 4, 48 → 1; x4plus (23 blocks)
    32 px → 20, 48 → 5 (single seam), 64 → 2 (at four-tile corners), 72 → 1, 80 → 1. Nets that
    pixel-unshuffle their input run at 1/f resolution, so their margin is f times larger in
    input pixels. The price is work: a 256 px tile with 72 px margins computes 2.4× its area.
    """
    net = model.net
    if isinstance(net, SRVGGNetCompact):
        convs = sum(isinstance(layer, torch.nn.Conv2d) for layer in net.body)
        return max(16, _ceil_to(convs + 2, 8))
    if isinstance(net, RRDBNet):
        blocks = len(net.body)
        measured = 48 if blocks <= 6 else 72
        return model.alignment * max(16, min(_ceil_to(15 * blocks + 4, 8), measured))
    return 32 * model.alignment


def border_pad(model: SRModel) -> int:
    """Reflected pixels around the whole image. ncnn's Real-ESRGAN pre-pads by 10 px; with the
    same padding the converted models were checked to give ncnn's own output, borders included,
    within 1 LSB. Rounded up to the pixel-unshuffle alignment."""
    return _ceil_to(10, model.alignment)


def pre_upscale_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The destination size of a pre-upscale: Clarity's floor-to-8 of ``size × scale``."""
    return floor8(width * scale), floor8(height * scale)


def model_passes(width: int, height: int, scale: float, model_scale: int) -> int:
    """How many times the model runs: until the image reaches the destination, at most 3.

    A scale of 1 or less never runs the model (only the resize), nor does a scale so close to 1
    that flooring to 8 leaves the destination no larger than the input."""
    dest_w, dest_h = pre_upscale_size(width, height, scale)
    passes = 0
    while passes < MAX_MODEL_PASSES and (width < dest_w or height < dest_h) and scale > 1:
        passes += 1
        width, height = width * model_scale, height * model_scale
        if model_scale == 1:  # a 1× model (denoiser) runs once, like A1111's shape check
            break
    return passes


@dataclass(frozen=True)
class Tile:
    """A tile's core: the input pixels ``[x0, x1) × [y0, y1)`` whose output it owns."""

    x0: int
    y0: int
    x1: int
    y1: int

    def split(self, align: int) -> list[Tile]:
        """Four (or fewer) sub-tiles, cut at multiples of ``align``: the half-size retry."""
        xs = _cuts(self.x0, self.x1, align)
        ys = _cuts(self.y0, self.y1, align)
        return [Tile(a, c, b, d) for c, d in pairwise(ys) for a, b in pairwise(xs)]


def _cuts(lo: int, hi: int, align: int) -> list[int]:
    mid = lo + (hi - lo) // 2 // align * align
    return [lo, mid, hi] if lo < mid < hi else [lo, hi]


def _edges(size: int, tile: int, align: int) -> list[int]:
    step = max(align, tile // align * align)
    count = math.ceil(size / step)
    # Spread the tiles evenly (each at most ``step``) so that no thin sliver pays a whole margin.
    even = _ceil_to(math.ceil(size / count), align)
    return [*range(0, size, even), size]


def plan_tiles(width: int, height: int, tile: int, align: int = 1) -> list[Tile]:
    """Tile cores covering a ``width × height`` input, row by row, with origins at multiples of
    ``align`` and sides of at most ``tile`` (rounded down to ``align``)."""
    xs, ys = _edges(width, tile, align), _edges(height, tile, align)
    return [Tile(x0, y0, x1, y1) for y0, y1 in pairwise(ys) for x0, x1 in pairwise(xs)]


def reflect_index(start: int, stop: int, size: int) -> np.ndarray:
    """Source indices of positions ``start … stop-1`` along an axis of ``size`` pixels, reflected
    at the borders without repeating the edge pixel (``numpy.pad(mode="reflect")``, any width)."""
    idx = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


# --- resizing ---------------------------------------------------------------------------------


def _pil_resize(
    array: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Pillow Lanczos on an H×W×C uint8/uint16 array (uint16 per channel: no 16-bit RGB mode)."""
    if array.dtype == np.uint8 and array.shape[2] == 3:
        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS, box=box))
    planes = []
    for c in range(array.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(array[:, :, c]))
        planes.append(np.asarray(plane.resize(size, Image.Resampling.LANCZOS, box=box)))
    return np.stack(planes, axis=2)


@dataclass(frozen=True)
class _Axis:
    """One axis of the last model pass (``n_in`` input px, model scale ``s``) mapped onto the
    ``n_out`` destination px. Each destination pixel belongs to the tile whose core contains its
    sample centre, so the tiles partition the destination however the cores are cut."""

    n_in: int
    s: int
    n_out: int
    align: int

    @property
    def identity(self) -> bool:
        return self.n_out == self.n_in * self.s

    def dest(self, a: int, b: int) -> tuple[int, int]:
        if self.identity:
            return a * self.s, b * self.s
        n_src = self.n_in * self.s

        def first(x: int) -> int:  # smallest j with (j + 0.5)·n_src / n_out >= x·s, exactly
            return -((n_src - 2 * x * self.s * self.n_out) // (2 * n_src))

        return first(a), first(b) if b < self.n_in else self.n_out

    def source(self, j0: int, j1: int) -> tuple[int, int]:
        """The input range whose model output covers the filter support of dest ``[j0, j1)``."""
        if self.identity:
            return j0 // self.s, j1 // self.s
        ratio = self.n_in * self.s / self.n_out
        support = 3.0 * max(ratio, 1.0)  # Pillow's Lanczos support, widened when downscaling
        lo = math.floor(j0 * ratio - support) - 2
        hi = math.ceil(j1 * ratio + support) + 2
        lo = max(0, math.floor(lo / self.s) // self.align * self.align)
        return lo, min(self.n_in, math.ceil(hi / self.s))

    def box(self, j0: int, j1: int, src0: int) -> tuple[float, float]:
        """Dest ``[j0, j1)`` in the coordinates of model output that starts at input ``src0``."""
        if self.identity:
            return float(j0 - src0 * self.s), float(j1 - src0 * self.s)
        ratio = self.n_in * self.s / self.n_out
        return j0 * ratio - src0 * self.s, j1 * ratio - src0 * self.s


def _resize_strip(
    strip: np.ndarray, dest_w: int, rows: tuple[float, float], dest_rows: int
) -> np.ndarray:
    """Resize a full-width strip of model output into ``dest_rows`` destination rows.

    Pillow resizes horizontally first, rounding to the image's depth in between. Giving it the
    full width (box x = 0 … width, as in a global resize) makes that pass bit-identical to the
    global one; only the vertical weights see the strip's offset, and their float rounding can
    flip at most 1 LSB. (Per-tile boxes in both directions can compound to 2 LSB; measured.)
    """
    by0, by1 = rows
    width = strip.shape[1]
    if by0.is_integer() and by1 - by0 == dest_rows:  # vertical identity: crop, as Pillow skips it
        strip, by0, by1 = strip[int(by0) : int(by1)], 0.0, float(dest_rows)
        if width == dest_w:
            return strip
    return _pil_resize(strip, (dest_w, dest_rows), (0.0, by0, float(width), by1))


# --- the model --------------------------------------------------------------------------------


class _DeviceOOM(Exception):
    pass


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


@contextmanager
def _cancel_points(net: torch.nn.Module, cancel: CancelFn | None) -> Iterator[None]:
    """Poll ``cancel`` before every block of the net's body as well, so that a cancel does not
    wait for a whole tile (an x4plus tile with its margins takes most of a minute on a CPU)."""
    body = getattr(net, "body", None)
    if cancel is None or not isinstance(body, torch.nn.Module):
        yield
        return

    def check(_module: torch.nn.Module, _args: object) -> None:
        if cancel():
            raise Cancelled("pre-upscale cancelled")

    handles = [block.register_forward_pre_hook(check) for block in body.children()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Runner:
    """Runs the model on one window of an image and returns its output as uint8/uint16."""

    model: SRModel
    bgr: bool
    margin: int
    cancel: CancelFn | None = None

    def run(self, src: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Model output for input ``[x0, x1) × [y0, y1)``, computed with up to ``margin`` px of
        real context on every side, and cropped back: shape ``((y1-y0)·s, (x1-x0)·s, C)``.

        Beyond the image the context is only the :func:`border_pad` of reflected pixels that an
        untiled run pads the whole image with, so a tile at the image edge sees exactly what the
        untiled run sees there, and a small image pays no margin at all."""
        h, w = src.shape[:2]
        s = self.model.scale
        y_lo, y_hi = self._window(y0, y1, h)
        x_lo, x_hi = self._window(x0, x1, w)
        rows = reflect_index(y_lo, y_hi, h)
        cols = reflect_index(x_lo, x_hi, w)
        out = self._infer(src[rows[:, None], cols[None, :]])
        top, left = y0 - y_lo, x0 - x_lo
        return out[top * s : (top + y1 - y0) * s, left * s : (left + x1 - x0) * s]

    def _window(self, lo: int, hi: int, size: int) -> tuple[int, int]:
        a, pad = self.model.alignment, border_pad(self.model)
        start = max(lo - self.margin, -pad)
        stop = min(hi + self.margin, size + pad)
        # Pixel-unshuffle nets need sides that are multiples of ``a``: extend the window.
        return start, start + _ceil_to(max(stop, hi) - start, a)

    def _infer(self, window: np.ndarray) -> np.ndarray:
        net = self.model.net
        param = next(net.parameters())
        peak = 65535.0 if window.dtype == np.uint16 else 255.0
        x = torch.from_numpy(window.astype(np.int32) if peak > 255 else window)
        x = x.to(param.device).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / peak
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.bgr:
            x = x.flip(1)
        try:
            with _cancel_points(net, self.cancel):
                y = net(x.to(param.dtype))
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if _is_oom(exc):
                raise _DeviceOOM from exc
            raise
        y = y.to(torch.float32).clamp_(0, 1)
        if window.shape[2] == 1:
            y = y.mean(dim=1, keepdim=True)
        elif self.bgr:
            y = y.flip(1)
        y = (y * peak).round_().squeeze(0).permute(1, 2, 0)
        out = y.to(torch.int32 if peak > 255 else torch.uint8).cpu().numpy()
        return out.astype(np.uint16) if peak > 255 else out


# --- the public call --------------------------------------------------------------------------


def pre_upscale(
    image: np.ndarray,
    scale: float,
    model: SRModel,
    *,
    channel_order: str = "auto",
    tile: int = DEFAULT_TILE,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """Upscale ``image`` by ``scale`` the way Clarity's pre-upscale does.

    ``image`` is H×W×3 or H×W (e.g. an alpha mask), uint8 or uint16; the result has the same
    dtype and layout and size ``pre_upscale_size(W, H, scale)``. ``channel_order`` "auto" feeds
    classic ESRGAN files BGR (as A1111/Clarity do) and everything else RGB. ``progress(done,
    total)`` is called after every tile; ``cancel()`` is polled between tiles (and between the
    blocks of the net within a tile) and a True answer raises :class:`Cancelled`. Device
    out-of-memory retries the tile as four half-size tiles once, then raises
    :class:`OutOfMemory`. ``margin`` overrides :func:`default_margin`.
    """
    array = _check_image(image)
    if channel_order not in CHANNEL_ORDERS:
        raise ParamsError(FieldError("upscaler_channel_order", channel_order, "auto, rgb or bgr"))
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
        raise ParamsError(FieldError("pre_upscale_tile", tile, "an integer of at least 16"))
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ParamsError(FieldError("scale_factor", scale, "a positive number"))
    if not math.isfinite(scale):
        raise ParamsError(FieldError("scale_factor", scale, "a positive number"))
    h, w = array.shape[:2]
    dest_w, dest_h = pre_upscale_size(w, h, scale)
    if dest_w < 8 or dest_h < 8:
        raise ImageError(
            f"a {w}×{h} image at ×{scale:g} gives {dest_w}×{dest_h}; at least 8×8 is needed"
        )
    bgr = channel_order == "bgr" or (channel_order == "auto" and model.classic_esrgan)
    passes = model_passes(w, h, scale, model.scale)
    s, a = model.scale, model.alignment
    plans = [plan_tiles(w * s**k, h * s**k, tile, a) for k in range(passes)]
    total = sum(len(p) for p in plans) or 1
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise Cancelled("pre-upscale cancelled")

    if passes == 0:
        check_cancel()
        out = array if (dest_w, dest_h) == (w, h) else _pil_resize(array, (dest_w, dest_h))
        step()
        return _restore(out.copy() if out is array else out, image)

    margin = default_margin(model) if margin is None else _ceil_to(max(0, margin), a)
    runner = _Runner(model, bgr, margin, cancel)
    state = {"split": False}
    with torch.inference_mode():
        src = array
        for k in range(passes - 1):
            hh, ww = src.shape[:2]
            inter = np.empty((hh * s, ww * s, src.shape[2]), dtype=src.dtype)

            def store(core: Tile, src: np.ndarray = src, inter: np.ndarray = inter) -> None:
                out = runner.run(src, core.x0, core.y0, core.x1, core.y1)
                inter[core.y0 * s : core.y1 * s, core.x0 * s : core.x1 * s] = out

            for core in plans[k]:
                check_cancel()
                _with_oom_retry(store, core, a, tile, state, model)
                step()
            src = inter

        # Last pass: one strip of full-width model output per row of tiles, resized into the
        # destination rows it owns (see _resize_strip for why full width).
        hh, ww = src.shape[:2]
        ay = _Axis(hh, s, dest_h, a)
        dest = np.empty((dest_h, dest_w, src.shape[2]), dtype=src.dtype)
        for (y0, y1), row in groupby(plans[-1], key=lambda t: (t.y0, t.y1)):
            i0, i1 = ay.dest(y0, y1)
            sy0, sy1 = ay.source(i0, i1) if i0 < i1 else (y0, y0)
            strip = np.empty(((sy1 - sy0) * s, ww * s, src.shape[2]), dtype=src.dtype)

            def fill(
                rect: Tile, src: np.ndarray = src, strip: np.ndarray = strip, top: int = sy0
            ) -> None:
                out = runner.run(src, rect.x0, rect.y0, rect.x1, rect.y1)
                strip[(rect.y0 - top) * s : (rect.y1 - top) * s, rect.x0 * s : rect.x1 * s] = out

            for core in row:
                check_cancel()
                if sy1 > sy0:
                    _with_oom_retry(fill, Tile(core.x0, sy0, core.x1, sy1), a, tile, state, model)
                step()
            if i0 < i1:
                dest[i0:i1] = _resize_strip(strip, dest_w, ay.box(i0, i1, sy0), i1 - i0)
    return _restore(dest, image)


def _with_oom_retry(
    work: Callable[[Tile], None],
    core: Tile,
    align: int,
    tile: int,
    state: dict[str, bool],
    model: SRModel,
) -> None:
    """Run ``work`` on a tile; on device OOM, once, as four half-size tiles (and keep splitting
    the following tiles, which would run out of memory the same way)."""
    device = next(model.net.parameters()).device
    if not state["split"]:
        try:
            work(core)
            return
        except _DeviceOOM:
            state["split"] = True
            _free_device_memory(device)
    try:
        for part in core.split(align):
            work(part)
    except _DeviceOOM as exc:
        _free_device_memory(device)
        raise OutOfMemory(
            f"the {device.type.upper()} ran out of memory pre-upscaling tiles of {tile} px "
            f"(and of {tile // 2} px); lower the pre-upscale tile size"
        ) from exc


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"the image must be a numpy array, not {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"the image must be 8- or 16-bit, not {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ImageError(f"the image must be H×W×3 or H×W, not {'×'.join(map(str, image.shape))}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("the image is empty")
    return image


def _restore(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    return out[:, :, 0] if like.ndim == 2 else out


# --- one plane of a run ---------------------------------------------------------------------------


def auto_tile(device: torch.device) -> int:
    """A pre-upscaler tile for the device. Bigger tiles waste less on their context margins
    (x4plus needs 72 px a side to be seam-free), smaller ones need less memory: at 256 px an
    x4plus tile peaks near 2.5 GB of RAM on a CPU, and fp16 on a GPU needs about a third per
    pixel."""
    if device.type == "cuda":
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        return 384 if total_gib < 8 else 512 if total_gib < 16 else 768 if total_gib < 40 else 1024
    return 512 if device.type == "mps" else 256


def upscale_plane(
    plane: np.ndarray,
    params: UpscaleParams,
    model: SRModel,
    tile: int,
    out_size: tuple[int, int],
    stage: str,
    report: Callable[[Progress], None],
    should_stop: CancelFn,
) -> np.ndarray:
    """Pre-upscale one plane (colour, alpha or a mask's original) to exactly ``out_size``,
    reporting its tiles as ``stage``; a seamless pattern is run wrapped around itself."""

    def tiles_done(done: int, total: int) -> None:
        report(Progress(stage, done, total))

    run = functools.partial(
        pre_upscale,
        scale=params.scale_factor,
        model=model,
        channel_order=params.upscaler_channel_order,
        tile=tile,
        progress=tiles_done,
        cancel=should_stop,
    )
    if not params.pattern:
        out = run(plane)
        # Creative runs floor every ×2 pass to 8 px; one pre-upscale can land a few px away.
        same = (out.shape[1], out.shape[0]) == out_size
        return out if same else lanczos_resize(out, out_size)
    # Seamless-texture mode: the model sees the opposite edges around the image (wrap padding),
    # so what it invents at one edge continues at the other; then the centre is cut out.
    h, w = plane.shape[:2]
    pad_x, pad_y = max(8, w // 8), max(8, h // 8)
    widths = ((pad_y, pad_y), (pad_x, pad_x)) + (((0, 0),) if plane.ndim == 3 else ())
    padded = np.pad(plane, widths, mode="wrap")
    big = run(padded)
    kx, ky = big.shape[1] / padded.shape[1], big.shape[0] / padded.shape[0]
    box = (round(pad_x * kx), round(pad_y * ky), round((pad_x + w) * kx), round((pad_y + h) * ky))
    centre = big[box[1] : box[3], box[0] : box[2]]
    return lanczos_resize(centre, out_size)
