"""A faithful run from the engine's point of view: load the pre-upscaler, run it on the colour
and the alpha plane, then the sharpening.

Clarity's pre-upscale alone: deterministic, offline, bundled weights. The counterpart of
:mod:`pipeline.diffusion.run`; :mod:`pipeline.engine` picks one of the two.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.device import pick_dtype
from pipeline.errors import Cancelled, ModelError
from pipeline.models.store import find_upscaler, upscaler_not_found
from pipeline.params import BUNDLED_UPSCALERS, UpscaleParams
from pipeline.progress import CancelFn, Progress, ProgressFn, RunExtras
from pipeline.sr.loading import load_upscaler
from pipeline.sr.post import sharpen
from pipeline.sr.preupscale import auto_tile, upscale_plane

if TYPE_CHECKING:
    from pipeline.engine import EngineOptions

__all__ = ["upscale_faithful"]


def _warnings(params: UpscaleParams) -> list[str]:
    """What the request asks for that a faithful run cannot do."""
    warnings = []
    if params.mask:
        warnings.append(
            "mask has no effect in faithful mode: the whole output is the pre-upscaled original"
        )
    if params.handfix != "disabled":
        warnings.append("handfix has no effect in faithful mode")
    return warnings


def upscale_faithful(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    params: UpscaleParams,
    out_size: tuple[int, int],
    *,
    device: torch.device,
    options: EngineOptions,
    report: ProgressFn,
    cancel: CancelFn,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, str], RunExtras]:
    extras = RunExtras(warnings=_warnings(params))
    started = time.perf_counter()
    name = params.upscaler
    if name not in BUNDLED_UPSCALERS:
        # Found where the creative mode finds it (ESRGAN/, upscale_models/, Clarifier's folder);
        # when it is nowhere, the loader says so with the folders searched.
        found = find_upscaler(name, options.model_dirs)
        if found is None:
            raise ModelError(upscaler_not_found(name, options.model_dirs))
        name = str(found)
    model = load_upscaler(
        name,
        device=device,
        dtype=pick_dtype(device, options.precision),
        search_dirs=tuple(options.model_dirs),
    )
    extras.timings["load_model"] = time.perf_counter() - started
    tile = options.tile or auto_tile(device)

    planes = [("pre-upscale", rgb)] + ([("alpha", alpha)] if alpha is not None else [])
    results: list[np.ndarray] = []
    for stage, plane in planes:
        if cancel():
            raise Cancelled()
        started = time.perf_counter()
        results.append(upscale_plane(plane, params, model, tile, out_size, stage, report, cancel))
        extras.timings[stage] = time.perf_counter() - started

    started = time.perf_counter()
    out_rgb = results[0]
    out_alpha = results[1] if alpha is not None else None
    if params.sharpen:
        report(Progress("post", 0, 1, "sharpen"))
        out_rgb = sharpen(out_rgb, params.sharpen)
    extras.timings["post"] = time.perf_counter() - started
    return out_rgb, out_alpha, {"upscaler": model.name, "upscaler_sha256": model.sha256}, extras
