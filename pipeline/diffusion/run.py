"""A creative run from the engine's point of view: find and load the models, run the passes,
then the alpha plane, the mask and the sharpening.

Loaded models stay in a process-wide cache (:class:`pipeline.diffusion.sd_loading.PipelineCache`),
so the worker pays for loading once and later jobs start at once; LoRAs are switched per job from
the prompt's ``<lora:NAME:w>`` tags. The counterpart of :mod:`pipeline.sr.run`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.device import pick_dtype
from pipeline.diffusion.passes import (
    CreativeSettings,
    check_creative_params,
    composite_mask,
    lora_requests,
    run_passes,
)
from pipeline.errors import ImageError, PipelineError
from pipeline.io.load import load_image
from pipeline.params import UpscaleParams
from pipeline.progress import Progress, RunExtras
from pipeline.sr.post import sharpen
from pipeline.sr.preupscale import auto_tile, upscale_plane

if TYPE_CHECKING:
    from pipeline.engine import EngineOptions

__all__ = ["creative_settings", "upscale_creative"]

_PIPELINES = None  # the process-wide PipelineCache, made on first use
_CLARITY_MASK_BLUR = 5  # px at the input size


def creative_settings(
    device: torch.device, *, sr_tile: int, precision: str = "auto"
) -> CreativeSettings:
    """Clarity's constants where the device can afford them; smaller VAE tiles elsewhere (the
    shared GroupNorm statistics make the VAE tile size nearly invisible in the result)."""
    dtype = pick_dtype(device, precision)
    if device.type == "cuda":
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        if total_gib >= 40:
            return CreativeSettings(device, dtype, sr_tile=sr_tile)
        if total_gib >= 16:
            return CreativeSettings(device, dtype, vae_encode_tile=1024, sr_tile=sr_tile)
        return CreativeSettings(
            device, dtype, tile_batch=2, vae_encode_tile=512, vae_decode_tile=64, sr_tile=sr_tile
        )
    # CPU and MPS: about 2.5 KiB of activations per pixel in float32.
    return CreativeSettings(
        device, dtype, tile_batch=2, vae_encode_tile=512, vae_decode_tile=64, sr_tile=sr_tile
    )


def _pipelines():
    global _PIPELINES
    if _PIPELINES is None:
        from pipeline.diffusion.sd_loading import PipelineCache

        _PIPELINES = PipelineCache()
    return _PIPELINES


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    return (rgb.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)


def _load_mask(mask: str) -> np.ndarray:
    if "://" in mask:
        raise ImageError(
            "the local engine reads the mask from a file; download the mask image and give its path"
        )
    image = load_image(mask)
    rgb = image.rgb.astype(np.float32)
    if image.rgb.dtype == np.uint16:
        rgb /= 257.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)


def upscale_creative(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    params: UpscaleParams,
    *,
    device: torch.device,
    options: EngineOptions,
    report: Callable,
    cancel: Callable[[], bool],
) -> tuple[np.ndarray, np.ndarray | None, dict[str, str], RunExtras]:
    # transformers warns at import about optional image processors the engine never uses.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from pipeline.diffusion.prompt_syntax import parse_prompt
    from pipeline.diffusion.samplers import prompt_steps
    from pipeline.diffusion.sd_loading import addnet_hash, file_fingerprint, set_loras
    from pipeline.diffusion.text_encoder import PromptEncoder
    from pipeline.models.store import resolve_models
    from pipeline.sr.loading import load_upscaler

    extras = RunExtras(warnings=check_creative_params(params))
    mask = _load_mask(params.mask) if params.mask else None  # fail before any heavy work
    started = time.perf_counter()
    report(Progress("models", 0, 1, "finding the models"))
    models = resolve_models(params, tuple(options.model_dirs))
    total_steps = prompt_steps(params.scheduler, params.num_inference_steps)
    parsed = parse_prompt(params.prompt, steps=total_steps)
    extras.warnings.extend(parsed.warnings)
    negative = parse_prompt(params.negative_prompt, field="negative_prompt", steps=total_steps)
    extras.warnings.extend(negative.warnings)
    loras = lora_requests(parsed.loras, models.loras)

    sr_tile = options.tile or auto_tile(device)
    settings = creative_settings(
        device, sr_tile=sr_tile, precision=getattr(options, "precision", "auto")
    )
    upscaler = load_upscaler(
        str(models.upscaler or params.upscaler),  # a file found in an ESRGAN/upscale_models folder
        device=device,
        dtype=settings.dtype,
        search_dirs=tuple(options.model_dirs),
    )
    report(Progress("models", 0, 1, "loading Stable Diffusion"))
    pipe = _pipelines().get(
        models.checkpoint,
        vae=models.vae,
        controlnet=models.controlnet,
        config_dir=models.config_dir,
        device=device,
        dtype=settings.dtype,
    )
    set_loras(pipe, loras)
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, models.embeddings)
    extras.timings["load_models"] = time.perf_counter() - started
    report(Progress("models", 1, 1, "models ready"))

    started = time.perf_counter()
    rgb8 = _to_uint8(rgb)
    hand = None
    crop = rgb8  # the whole image, or only the hand (handfix=hands_only)
    if params.handfix == "hands_only":
        from pipeline.diffusion import handfix

        report(Progress("handfix", 0, 1, "finding the hand"))
        box = handfix.find_hand(rgb8)
        if box is None:
            raise PipelineError(
                "no hand found in the image; with handfix=hands_only Clarity upscales only the "
                "first hand it finds and returns no image without one (use handfix=disabled to "
                "upscale the whole image)"
            )
        crop, hand = handfix.hand_crop(rgb8, box)
    try:
        out, log = run_passes(
            crop,
            params,
            pipe=pipe,
            encoder=encoder,
            upscaler=upscaler,
            settings=settings,
            report=report,
            cancel=cancel,
        )
    finally:
        # A cancelled or failed run leaves its activations to the allocator's cache; hand them
        # back so the next job (or another program) gets the memory. The models stay loaded.
        if device.type == "cuda":
            torch.cuda.empty_cache()
    extras.warnings.extend(log.warnings)
    if hand is not None:
        from pipeline.diffusion import handfix

        if not hand.fits(out.shape):
            extras.warnings.append(
                "the upscaled hand, halved, does not match its crop (Clarity gives no image "
                "here); it was resized to fit"
            )
        out = handfix.paste_hand(rgb8, out, hand)
    extras.timings["passes"] = time.perf_counter() - started
    out_size = (out.shape[1], out.shape[0])

    started = time.perf_counter()
    out_alpha = None
    if alpha is not None and hand is not None:
        out_alpha = alpha  # the hand fix keeps the input's size
    elif alpha is not None:
        out_alpha = upscale_plane(
            alpha, params, upscaler, sr_tile, out_size, "alpha", report, cancel
        )
    if mask is not None:
        # Clarity shrinks the result back to the input size to paste the original in; here the
        # original is pre-upscaled to the output size instead, so nothing is lost.
        original = upscale_plane(rgb8, params, upscaler, sr_tile, out_size, "mask", report, cancel)
        feather = _CLARITY_MASK_BLUR * out_size[0] / rgb.shape[1]
        out = composite_mask(out, original, mask, feather)
    if params.sharpen:
        report(Progress("post", 0, 1, "sharpen"))
        out = sharpen(out, params.sharpen)
    extras.timings["post"] = time.perf_counter() - started

    fp = file_fingerprint
    models_info = {
        "checkpoint": models.checkpoint.name,
        "checkpoint_hash": fp(models.checkpoint)[1],
        "vae": models.vae.name if models.vae else "baked",
        "controlnet": models.controlnet.name,
        "upscaler": upscaler.name,
        "upscaler_sha256": upscaler.sha256,
    }
    for path, (te, unet) in loras.items():
        weight = f"{te:g}" if te == unet else f"{te:g}/{unet:g}"
        # A1111 identifies LoRAs by the "addnet" hash (of the tensors, not of the file).
        models_info[f"lora:{path.stem}"] = f"{weight} [{addnet_hash(path)}]"
    for name in encoder.used_embeddings if hasattr(encoder, "used_embeddings") else ():
        models_info[f"embedding:{name}"] = fp(models.embeddings[name])[1]
    return out, out_alpha, models_info, extras
