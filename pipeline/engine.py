"""The engine as one function: an image and parameters in, an upscaled image and its metadata out.

:func:`upscale` is what every local run goes through (the worker process calls it; tests call it
directly). It takes a progress callback and a cancel check, polled between tiles, and returns the
result with the :class:`~pipeline.metadata.RunInfo` needed to reproduce it.

Modes:

* ``faithful`` — Clarity's pre-upscale alone: the ESRGAN-family model, tiled, then Lanczos to
  ``floor8(W·s) × floor8(H·s)``. Deterministic, offline, bundled weights.
* ``creative`` — Clarity's generative upscale (:mod:`pipeline.creative`): per ×2 pass, the
  pre-upscale, then tiled img2img with an SD1.5 checkpoint, ControlNet tile, LoRAs and embeddings,
  and a tiled VAE. Needs the model files (:mod:`pipeline.model_store`); the diffusion libraries
  are imported only when a creative run starts.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline import __version__
from pipeline.device import pick_device, pick_dtype
from pipeline.errors import Cancelled
from pipeline.images import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    LoadedImage,
    bleed_transparent,
    check_output_size,
    load_image,
    save_image,
)
from pipeline.metadata import RunInfo
from pipeline.params import UpscaleParams
from pipeline.post import downscale_like_clarity, lanczos_resize, sharpen
from pipeline.preupscale import pre_upscale
from pipeline.sr_models import SRModel, load_upscaler

__all__ = ["EngineOptions", "FileResult", "Progress", "UpscaleResult", "upscale", "upscale_file"]


@dataclass(frozen=True)
class EngineOptions:
    """How (not what) to run: device and memory knobs that do not change the result's meaning."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    precision: str = "auto"  # "auto" (fp16 on CUDA, fp32 elsewhere) | "fp16" | "bf16" | "fp32"
    tile: int | None = None  # pre-upscaler tile in input pixels; None picks one for the device
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    model_dirs: Sequence[Path] = ()


@dataclass(frozen=True)
class Progress:
    stage: str  # "load", "models", "pre-upscale", "encode", "diffusion", "decode", "alpha", ...
    done: int
    total: int
    message: str = ""
    preview: np.ndarray | None = None
    eta_s: float | None = None  # seconds left for the diffusion, once it can be estimated


@dataclass
class UpscaleResult:
    rgb: np.ndarray
    alpha: np.ndarray | None
    info: RunInfo
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class FileResult:
    output: Path
    info: RunInfo
    timings: dict[str, float]
    warnings: list[str]


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]

_DOWNSCALING_INPUT_LIMIT = 400_000_000


def auto_tile(device: torch.device) -> int:
    """A pre-upscaler tile for the device. Bigger tiles waste less on their context margins
    (x4plus needs 72 px a side to be seam-free), smaller ones need less memory: at 256 px an
    x4plus tile peaks near 2.5 GB of RAM on a CPU, and fp16 on a GPU needs about a third per
    pixel."""
    if device.type == "cuda":
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        return 384 if total_gib < 8 else 512 if total_gib < 16 else 768 if total_gib < 40 else 1024
    return 512 if device.type == "mps" else 256


def upscale(
    image: LoadedImage,
    params: UpscaleParams,
    *,
    options: EngineOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> UpscaleResult:
    """Upscale one loaded image. Raises a :class:`~pipeline.errors.PipelineError` subclass for
    anything a person can fix (bad params, too large, missing model, cancelled, out of memory)."""
    options = options or EngineOptions()
    report = progress or (lambda _p: None)
    should_stop = cancel or (lambda: False)
    params = params.with_resolved_seed()
    warnings: list[str] = []
    timings: dict[str, float] = {}
    src_h, src_w = image.rgb.shape[:2]
    out_w, out_h = check_output_size(src_w, src_h, params, options.max_output_pixels)

    if params.mode == "faithful":
        if params.mask:
            warnings.append(
                "mask has no effect in faithful mode: the whole output is the pre-upscaled original"
            )
        if params.handfix != "disabled":
            warnings.append("handfix has no effect in faithful mode")

    rgb, alpha = image.rgb, image.alpha
    if params.downscaling:
        rgb = downscale_like_clarity(rgb, params.downscaling_resolution)
        if alpha is not None:
            alpha = lanczos_resize(alpha, (rgb.shape[1], rgb.shape[0]))
    if alpha is not None:
        # Transparent pixels often hold black or junk; the model would smear it into the edges.
        rgb = bleed_transparent(rgb, alpha)

    started = time.perf_counter()
    device = pick_device(options.device)
    if params.mode == "creative":
        from pipeline.creative_run import upscale_creative

        out_rgb, out_alpha, models, extra = upscale_creative(
            rgb, alpha, params, device=device, options=options, report=report, cancel=should_stop
        )
        warnings.extend(extra.warnings)
        timings.update(extra.timings)
        return UpscaleResult(
            out_rgb,
            out_alpha,
            RunInfo(
                params=params,
                engine="local/creative",
                models=models,
                source_size=(src_w, src_h),
                output_size=(out_rgb.shape[1], out_rgb.shape[0]),
                clarifier_version=__version__,
            ),
            timings,
            warnings,
        )
    model = load_upscaler(
        params.upscaler,
        device=device,
        dtype=pick_dtype(device, options.precision),
        search_dirs=tuple(options.model_dirs),
    )
    timings["load_model"] = time.perf_counter() - started
    tile = options.tile or auto_tile(device)

    planes = [("pre-upscale", rgb)] + ([("alpha", alpha)] if alpha is not None else [])
    results: list[np.ndarray] = []
    for stage, plane in planes:
        if should_stop():
            raise Cancelled()
        started = time.perf_counter()
        results.append(
            upscale_plane(plane, params, model, tile, (out_w, out_h), stage, report, should_stop)
        )
        timings[stage] = time.perf_counter() - started

    started = time.perf_counter()
    out_rgb = results[0]
    out_alpha = results[1] if alpha is not None else None
    if params.sharpen:
        report(Progress("post", 0, 1, "sharpen"))
        out_rgb = sharpen(out_rgb, params.sharpen)
    timings["post"] = time.perf_counter() - started

    info = RunInfo(
        params=params,
        engine=f"local/{params.mode}",
        models={"upscaler": model.name, "upscaler_sha256": model.sha256},
        source_size=(src_w, src_h),
        output_size=(out_rgb.shape[1], out_rgb.shape[0]),
        clarifier_version=__version__,
    )
    return UpscaleResult(out_rgb, out_alpha, info, timings, warnings)


def upscale_plane(
    plane: np.ndarray,
    params: UpscaleParams,
    model: SRModel,
    tile: int,
    out_size: tuple[int, int],
    stage: str,
    report: ProgressFn,
    should_stop: CancelFn,
) -> np.ndarray:
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


def upscale_file(
    input_path: str | Path,
    output_path: str | Path,
    params: UpscaleParams,
    *,
    options: EngineOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> FileResult:
    """Load, upscale and save one file atomically, with its parameters embedded."""
    options = options or EngineOptions()
    report = progress or (lambda _p: None)
    started = time.perf_counter()
    report(Progress("load", 0, 1, Path(input_path).name))
    # Outputs are never smaller than inputs, so an input over the cap can only fail -- unless
    # Clarity's downscaling shrinks it first; then only the decompression-bomb limit applies.
    limit = (
        max(options.max_output_pixels, _DOWNSCALING_INPUT_LIMIT)
        if params.downscaling
        else options.max_output_pixels
    )
    image = load_image(input_path, max_pixels=limit)
    load_time = time.perf_counter() - started
    result = upscale(image, params, options=options, progress=progress, cancel=cancel)
    if cancel and cancel():
        raise Cancelled()
    started = time.perf_counter()
    report(Progress("save", 0, 1, Path(output_path).name))
    written = save_image(
        output_path,
        result.rgb,
        result.alpha,
        info=result.info,
        source=image.source,
        fmt=result.info.params.output_format,
    )
    timings = {"load": load_time, **result.timings, "save": time.perf_counter() - started}
    return FileResult(written, result.info, timings, image.warnings + result.warnings)
