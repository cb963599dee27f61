"""The creative mode: Clarity's generative upscale, pass by pass.

One pass (Clarity runs ×2 passes for larger factors, creativity × multistep_factor and seed + 1
each time, see :meth:`UpscaleParams.passes`):

1. pre-upscale the pass input with the ESRGAN-family model to ``floor8(W·s) × floor8(H·s)``;
2. the ControlNet tile hint: the pass input (not the ESRGAN output, as Clarity) resized bicubic
   to that canvas;
3. tiled VAE encode of the pre-upscaled image (posterior sample × scaling factor);
4. noise it to A1111's start sigma for ``creativity`` and run the sampler, every model call a
   tiled MultiDiffusion call with ControlNet soft injection and CFG = ``dynamic``;
5. tiled VAE decode; the result is the next pass's input.

Then the mask (white keeps the original) is composited at full output resolution, feathered, over
the pre-upscaled original, and ``sharpen`` applied.

Device out-of-memory first halves the tile batch (same result), then halves the tile and
restarts the pass (a different tiling, so the output changes a little; it is logged).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageFilter

from pipeline.diffusion import tiled_vae
from pipeline.diffusion.multidiffusion import TiledDenoiser, TileOutOfMemory
from pipeline.diffusion.samplers import (
    Guidance,
    check_sampler,
    check_steps,
    img2img,
    model_calls,
    prompt_steps,
)
from pipeline.diffusion.tiling import TilePlan, plan_tiles
from pipeline.errors import ModelError, OutOfMemory, PipelineError
from pipeline.params import UpscaleParams, floor8
from pipeline.progress import Progress
from pipeline.sr.post import lanczos_resize
from pipeline.sr.preupscale import pre_upscale

if TYPE_CHECKING:
    # diffusers' top-level names are lazy re-exports that pyright does not count as exported.
    from diffusers import StableDiffusionControlNetImg2ImgPipeline  # pyright: ignore[reportPrivateImportUsage]

    from pipeline.sr.loading import SRModel

__all__ = ["CreativeSettings", "composite_mask", "latent_preview", "run_passes"]

# Keturn's published least-squares fit from SD1.5 latents to RGB: a cheap live preview.
_LATENT_RGB = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)
_PREVIEW_SIDE = 256
_MIN_TILE = 16  # latent px, the smallest tile Clarity offers: below it a retry gives up
_VAE_WRAP_PX = 32  # wrapped context around a pattern image for the VAE


@dataclass(frozen=True)
class CreativeSettings:
    """How the passes run: hidden Clarity constants and device knobs."""

    device: torch.device
    dtype: torch.dtype  # UNet, ControlNet, text encoder
    vae_dtype: torch.dtype = torch.float32
    overlap: int = 4  # latent px, Clarity's
    tile_batch: int = 8  # Clarity's
    weighting: str = "uniform"  # Clarity's; "gaussian" / "cosine" need less overlap
    vae_encode_tile: int | None = 2048  # px, Clarity's
    vae_decode_tile: int | None = 128  # latent px, Clarity's
    sr_tile: int = 256  # ESRGAN tile, input px


class Conditioning(Protocol):
    """The encoded prompts: one ``(schedule, weight)`` per ``AND`` part of the prompt and the
    negative prompt's schedule; a schedule's ``at(model_call)`` is the embedding in force."""

    @property
    def conds(self) -> Sequence[tuple[Any, float]]: ...

    @property
    def uncond(self) -> Any: ...

    def cond_batch(self, step: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class _Part:
    """``AND`` part ``index`` of the prompt at a model call, padded to the longest part's token
    length as A1111 stacks the parts (:meth:`Conditioning.cond_batch`)."""

    conditioning: Conditioning
    index: int

    def at(self, step: int) -> torch.Tensor:
        return self.conditioning.cond_batch(step)[self.index : self.index + 1]


def _guidance(conditioning: Conditioning, scale: float) -> Guidance:
    conds = conditioning.conds
    if len(conds) == 1:
        return Guidance(conds, conditioning.uncond, scale)
    parts = tuple((_Part(conditioning, i), weight) for i, (_, weight) in enumerate(conds))
    return Guidance(parts, conditioning.uncond, scale)


class PromptPairEncoder(Protocol):
    """Turns the prompt and the negative prompt into their conditioning
    (:class:`pipeline.diffusion.text_encoder.PromptEncoder`)."""

    def encode_conditioning(self, prompt: str, negative: str, total_steps: int) -> Conditioning: ...


@dataclass
class PassLog:
    warnings: list[str] = field(default_factory=list)
    tiles: list[int] = field(default_factory=list)  # tile count per pass
    model_calls: int = 0
    unet_latent_px: int = 0


def latent_preview(latent: torch.Tensor) -> np.ndarray:
    """A small RGB image of a latent through the linear approximation (no VAE)."""
    lat = latent[0].float()
    _, h, w = lat.shape
    k = max(1, math.ceil(max(h, w) / _PREVIEW_SIDE))
    if k > 1:
        lat = torch.nn.functional.avg_pool2d(lat[None], k, ceil_mode=True)[0]
    rgb = torch.einsum("chw,cr->hwr", lat, _LATENT_RGB.to(lat.device))
    return ((rgb + 1) * 127.5).clamp(0, 255).byte().cpu().numpy()


def _bicubic(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))


def composite_mask(
    generated: np.ndarray, original: np.ndarray, mask: np.ndarray, feather_px: float
) -> np.ndarray:
    """White in ``mask`` keeps ``original``. All three at the output size; the mask is feathered
    with a Gaussian of ``feather_px`` (Clarity blurs radius 5 at the input size)."""
    size = (generated.shape[1], generated.shape[0])
    m = Image.fromarray(mask if mask.ndim == 2 else mask[..., 0]).resize(
        size, Image.Resampling.BILINEAR
    )
    if feather_px > 0:
        m = m.filter(ImageFilter.GaussianBlur(feather_px))
    a = np.asarray(m, dtype=np.float32)[..., None] / 255.0
    out = original.astype(np.float32) * a + generated.astype(np.float32) * (1 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class _Clock:
    """ETA over the model calls of all passes, from the time per latent pixel so far."""

    def __init__(self, total_work: float) -> None:
        self.total = total_work
        self.done = 0.0
        self.start = time.perf_counter()
        self.eta: float | None = None

    def advance(self, work: float) -> float | None:
        self.done += work
        elapsed = time.perf_counter() - self.start
        if self.done > 0 and elapsed >= 0.5:
            self.eta = elapsed / self.done * max(0.0, self.total - self.done)
        return self.eta


def _pre_upscale(
    image: np.ndarray, scale: float, model: SRModel, *, wrap: bool, **kw: Any
) -> np.ndarray:
    """The ESRGAN pre-upscale; for a pattern the model sees the opposite edges around the image
    (wrap padding, as Clarity pads by W/8), so what it invents at one edge continues at the
    other."""
    if not wrap:
        return pre_upscale(image, scale, model, **kw)
    h, w = image.shape[:2]
    pad_x, pad_y = max(8, w // 8), max(8, h // 8)
    big = pre_upscale(np.pad(image, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="wrap"),
                      scale, model, **kw)  # fmt: skip
    kx, ky = big.shape[1] / (w + 2 * pad_x), big.shape[0] / (h + 2 * pad_y)
    box = (round(pad_x * kx), round(pad_y * ky), round((pad_x + w) * kx), round((pad_y + h) * ky))
    size = (floor8(w * scale), floor8(h * scale))
    return lanczos_resize(big[box[1] : box[3], box[0] : box[2]], size)


def _wrap_pad(rgb: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="wrap")


def run_passes(
    rgb: np.ndarray,
    params: UpscaleParams,
    *,
    pipe: StableDiffusionControlNetImg2ImgPipeline,
    encoder: PromptPairEncoder,
    upscaler: SRModel,
    settings: CreativeSettings,
    report: Callable[[Progress], None],
    cancel: Callable[[], bool],
) -> tuple[np.ndarray, PassLog]:
    """All of Clarity's passes on an 8-bit RGB image; returns the final RGB and a log.

    ``pipe`` holds the loaded components (``unet``, ``controlnet``, ``vae``, ``scheduler``);
    ``encoder`` turns a prompt pair into embeddings
    (:class:`pipeline.diffusion.text_encoder.PromptEncoder`).
    """
    log = PassLog()
    passes = params.passes()
    conditioning = encoder.encode_conditioning(
        params.prompt,
        params.negative_prompt,
        prompt_steps(params.scheduler, params.num_inference_steps),
    )
    sizes = []
    w, h = rgb.shape[1], rgb.shape[0]
    for scale, creativity, _seed in passes:
        w, h = floor8(w * scale), floor8(h * scale)
        sizes.append((w, h, creativity))
    clock = _Clock(sum(_pass_work(pw, ph, c, params) for pw, ph, c in sizes))
    current = rgb
    for index, (scale, creativity, seed) in enumerate(passes):
        tile = (params.tiling_width, params.tiling_height)
        while True:
            try:
                current = _one_pass(
                    current,
                    params,
                    index=index,
                    count=len(passes),
                    scale=scale,
                    creativity=creativity,
                    seed=int(seed if seed is not None else 0),
                    tile=tile,
                    conditioning=conditioning,
                    pipe=pipe,
                    upscaler=upscaler,
                    settings=settings,
                    report=report,
                    cancel=cancel,
                    clock=clock,
                    log=log,
                )
                break
            except TileOutOfMemory as exc:
                _free(settings.device)
                if max(tile) // 2 < _MIN_TILE:
                    raise OutOfMemory(
                        "out of device memory even with one small tile per batch; close other "
                        "programs that use the GPU, or run on the CPU (--device cpu)"
                    ) from exc
                tile = (max(_MIN_TILE, tile[0] // 2), max(_MIN_TILE, tile[1] // 2))
                message = (
                    f"out of device memory: pass {index + 1} restarted with {tile[0]}×{tile[1]} "
                    "latent tiles (smaller tiles change the result slightly)"
                )
                log.warnings.append(message)
                report(Progress("diffusion", 0, 0, message))
    return current, log


def _pass_work(w: int, h: int, creativity: float, params: UpscaleParams) -> float:
    plan = plan_tiles(w // 8, h // 8, params.tiling_width, params.tiling_height)
    steps = params.num_inference_steps
    calls = model_calls(params.scheduler, steps, creativity)
    if calls is None:  # DPM adaptive: about two calls per step of the fixed-step schedule
        calls = 2 * (int(min(creativity, 0.999) * steps) + 1)
    return calls * sum(b.w * b.h for b in plan.boxes)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _one_pass(
    image: np.ndarray,
    params: UpscaleParams,
    *,
    index: int,
    count: int,
    scale: float,
    creativity: float,
    seed: int,
    tile: tuple[int, int],
    conditioning: Conditioning,
    pipe: StableDiffusionControlNetImg2ImgPipeline,
    upscaler: SRModel,
    settings: CreativeSettings,
    report: Callable[[Progress], None],
    cancel: Callable[[], bool],
    clock: _Clock,
    log: PassLog,
) -> np.ndarray:
    label = f"pass {index + 1}/{count}" if count > 1 else ""

    def stage_report(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: report(Progress(stage, done, total, label))

    pre = _pre_upscale(
        image,
        scale,
        upscaler,
        wrap=params.pattern,
        channel_order=params.upscaler_channel_order,
        tile=settings.sr_tile,
        progress=stage_report("pre-upscale"),
        cancel=cancel,
    )
    out_h, out_w = pre.shape[:2]
    hint = _bicubic(image, (out_w, out_h))
    wrap = params.pattern
    vae = pipe.vae
    vae_pad = _VAE_WRAP_PX if wrap else 0
    to_encode = _wrap_pad(pre, vae_pad) if wrap else pre
    latent = tiled_vae.encode(
        vae,
        to_encode,
        tile=settings.vae_encode_tile,
        generator=torch.Generator("cpu").manual_seed(seed),
        device=settings.device,
        dtype=settings.vae_dtype,
        cancel=cancel,
        progress=stage_report("encode"),
    )
    if vae_pad:
        p = vae_pad // 8
        latent = latent[..., p:-p, p:-p]
    latent = latent.to(settings.device, torch.float32)
    del to_encode, pre

    plan = plan_tiles(
        latent.shape[-1],
        latent.shape[-2],
        tile[0],
        tile[1],
        overlap=settings.overlap,
        batch=settings.tile_batch,
        wrap=wrap,
    )
    log.tiles.append(len(plan.boxes))
    latent = _denoise(
        latent,
        params,
        plan=plan,
        hint=hint,
        creativity=creativity,
        seed=seed,
        conditioning=conditioning,
        pipe=pipe,
        settings=settings,
        report=report,
        cancel=cancel,
        clock=clock,
        log=log,
        label=label,
    )
    del hint
    if wrap:
        p = vae_pad // 8
        latent = torch.cat([latent[..., -p:, :], latent, latent[..., :p, :]], dim=-2)
        latent = torch.cat([latent[..., -p:], latent, latent[..., :p]], dim=-1)
    out = tiled_vae.decode(
        vae,
        latent,
        tile=settings.vae_decode_tile,
        device=settings.device,
        dtype=settings.vae_dtype,
        cancel=cancel,
        progress=stage_report("decode"),
    )
    if vae_pad:
        out = out[vae_pad:-vae_pad, vae_pad:-vae_pad]
    return np.ascontiguousarray(out)


def _denoise(
    latent: torch.Tensor,
    params: UpscaleParams,
    *,
    plan: TilePlan,
    hint: np.ndarray,
    creativity: float,
    seed: int,
    conditioning: Conditioning,
    pipe: StableDiffusionControlNetImg2ImgPipeline,
    settings: CreativeSettings,
    report: Callable[[Progress], None],
    cancel: Callable[[], bool],
    clock: _Clock,
    log: PassLog,
    label: str,
) -> torch.Tensor:
    steps = params.num_inference_steps
    expected = model_calls(params.scheduler, steps, creativity)
    tile_px = plan.tile_w * plan.tile_h
    prefix = f"{label} · " if label else ""
    calls = 0

    def total() -> int:
        return max(expected or 0, calls, 1)

    def message(step: int) -> str:
        return f"{prefix}step {step}/{expected}" if expected else f"{prefix}step {step}"

    def on_batch(done: int, count: int) -> None:
        # During model call ``calls + 1``: its tiles, batch by batch.
        eta = clock.advance(tile_px * len(denoiser.plan.batches[done - 1]))
        tiles = f" · tiles {done}/{count}" if plan.tiled else ""
        report(Progress("diffusion", calls, total(), message(calls + 1) + tiles, eta_s=eta))

    def on_call(n: int) -> None:
        nonlocal calls
        calls = n

    def on_step(info: dict[str, Any]) -> None:
        preview = latent_preview(info["denoised"])
        report(
            Progress("diffusion", calls, total(), message(calls), preview=preview, eta_s=clock.eta)
        )

    denoiser = TiledDenoiser(
        pipe.unet,
        pipe.controlnet,
        hint,
        None,
        None,
        plan=plan,
        resemblance=params.resemblance,
        weighting=settings.weighting,
        dtype=settings.dtype,
        cancel=cancel,
        on_batch=on_batch,
        log=lambda msg: log.warnings.append(msg),
    )
    guidance = _guidance(conditioning, params.dynamic)
    with torch.inference_mode():
        x = img2img(
            params.scheduler,
            latent,
            steps=steps,
            strength=creativity,
            seed=seed,
            model=denoiser,
            guidance=guidance,
            noise_source=params.noise_source,
            scheduler_config=dict(pipe.scheduler.config),
            on_call=on_call,
            callback=on_step,
        )
    log.model_calls += denoiser.stats.calls
    log.unet_latent_px += denoiser.stats.latent_px
    if not torch.isfinite(x).all():
        raise PipelineError(
            "the diffusion produced NaN/inf values (usually fp16 overflow); try --device cpu "
            "or a float32 run"
        )
    return x


def check_creative_params(params: UpscaleParams) -> list[str]:
    """Refusals and warnings for creative-mode parameters this engine cannot honour, checked
    before any model is loaded."""
    check_sampler(params.scheduler)
    for _scale, creativity, _seed in params.passes():
        check_steps(params.scheduler, params.num_inference_steps, creativity)
    warnings = []
    if params.handfix == "hands_only":
        from pipeline.diffusion.handfix import require_detector

        require_detector()
        if params.scale_factor != 2:
            warnings.append(
                "Clarity's hand fix produces an image only at scale 2 (it halves the upscaled "
                "hand); at this scale the hand is resized to fit"
            )
    if params.handfix == "image_and_hands":
        warnings.append("handfix=image_and_hands does nothing in Clarity either; ignored")
    return warnings


def lora_requests(parsed_loras: list, available: Mapping[str, Path]) -> dict[Path, tuple]:
    """Map the prompt's ``<lora:NAME:w>`` requests onto files (names match case-insensitively)."""
    by_name = {name.lower(): path for name, path in available.items()}
    chosen: dict[Path, tuple] = {}
    missing = []
    for req in parsed_loras:
        path = by_name.get(req.name.lower())
        if path is None:
            missing.append(req.name)
            continue
        chosen[path] = (req.te_weight, req.unet_weight)
    if missing:
        names = ", ".join(missing)
        raise ModelError(
            f"the prompt asks for LoRA {names}, which is not in any models folder; put the "
            "file(s) in a Lora folder, add a link to lora_links, or remove the <lora:…> tag"
        )
    return chosen
