"""The engine as one function: an image and parameters in, an upscaled image and its metadata out.

:func:`upscale` is what every local run goes through (the worker process calls it; tests call it
directly). It takes a progress callback and a cancel check, polled between tiles, and returns the
result with the :class:`~pipeline.metadata.RunInfo` needed to reproduce it.

This module only dispatches: it prepares the input (Clarity's downscaling, transparent edges),
hands it to the run of the mode asked for, and wraps what comes back. The modes:

* ``faithful`` (:mod:`pipeline.sr.run`) — Clarity's pre-upscale alone: the ESRGAN-family model,
  tiled, then Lanczos to ``floor8(W·s) × floor8(H·s)``. Deterministic, offline, bundled weights.
* ``creative`` (:mod:`pipeline.diffusion.run`) — Clarity's generative upscale: per ×2 pass, the
  pre-upscale, then tiled img2img with an SD1.5 checkpoint, ControlNet tile, LoRAs and embeddings,
  and a tiled VAE. Needs the model files (:mod:`pipeline.models.store`); the diffusion libraries
  are imported only when a creative run starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.device import pick_device
from pipeline.errors import Cancelled
from pipeline.io.load import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    LoadedImage,
    bleed_transparent,
    check_output_size,
    load_image,
)
from pipeline.io.save import save_image
from pipeline.metadata import RunInfo
from pipeline.params import UpscaleParams
from pipeline.progress import CancelFn, Progress, ProgressFn
from pipeline.sr.post import downscale_like_clarity, lanczos_resize
from pipeline.sr.run import upscale_faithful

__all__ = ["EngineOptions", "FileResult", "UpscaleResult", "upscale", "upscale_file"]


@dataclass(frozen=True)
class EngineOptions:
    """How (not what) to run: device and memory knobs that do not change the result's meaning."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    precision: str = "auto"  # "auto" (fp16 on CUDA, fp32 elsewhere) | "fp16" | "bf16" | "fp32"
    tile: int | None = None  # pre-upscaler tile in input pixels; None picks one for the device
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    model_dirs: Sequence[Path] = ()


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


_DOWNSCALING_INPUT_LIMIT = 400_000_000


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
    src_h, src_w = image.rgb.shape[:2]
    out_w, out_h = check_output_size(src_w, src_h, params, options.max_output_pixels)

    rgb, alpha = image.rgb, image.alpha
    if params.downscaling:
        rgb = downscale_like_clarity(rgb, params.downscaling_resolution)
        if alpha is not None:
            alpha = lanczos_resize(alpha, (rgb.shape[1], rgb.shape[0]))
    if alpha is not None:
        # Transparent pixels often hold black or junk; the model would smear it into the edges.
        rgb = bleed_transparent(rgb, alpha)

    device = pick_device(options.device)
    if params.mode == "creative":
        from pipeline.diffusion.run import upscale_creative

        out_rgb, out_alpha, models, extras = upscale_creative(
            rgb, alpha, params, device=device, options=options, report=report, cancel=should_stop
        )
    else:
        out_rgb, out_alpha, models, extras = upscale_faithful(
            rgb,
            alpha,
            params,
            (out_w, out_h),
            device=device,
            options=options,
            report=report,
            cancel=should_stop,
        )
    info = RunInfo(
        params=params,
        engine=f"local/{params.mode}",
        models=models,
        source_size=(src_w, src_h),
        output_size=(out_rgb.shape[1], out_rgb.shape[0]),
        clarifier_version=__version__,
    )
    return UpscaleResult(out_rgb, out_alpha, info, extras.timings, extras.warnings)


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
