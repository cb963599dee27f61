"""Segmind's values: Clarifier's parameters mapped onto each model's inputs, and read back.

Segmind hosts three upscalers that take different inputs: the open Clarity upscaler takes
Clarifier's own names, the ClarityAI creative and flux upscalers a smaller set of their own.

* :func:`map_params`: THE mapping from :class:`UpscaleParams` to one model's request fields,
  refusing what that model cannot express; :func:`effective_params`, the parameters as Segmind
  actually runs them (for the output's metadata). Each model's defaults are its own page's
  (seeds 000–002): a prompt left at Clarifier's default (the open model's page default, with
  its LoRA tags) goes to the creative and flux models as *their* pages' default prompts; the
  ``creative.*`` and ``flux.*`` knobs default to their pages' values already. The scale factor
  stays the person's choice (those pages default to ×4, Clarifier to ×2);
* :func:`sync_suits`: whether the page advises the v1 sync call for a model ("Sync is simplest
  for fast image … calls", async "for … long-running (>~60s)" ones, by each page's typical time);
* :func:`number` and :func:`find_output`: read a billing number and the output image out of an
  answer, whichever of the v2 (JSON body) or v1 sync (headers) shapes it came in.

Pure functions without I/O, kept apart from :mod:`app.backends.providers.segmind` (the v2
protocol and its errors) so that it and :mod:`app.backends.providers.segmind_sync` (the v1 sync
mode) can share them without importing each other.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from app.backends.base import ErrorKind, JobError
from app.backends.remote.fields import as_hosted
from pipeline.params import UpscaleParams

__all__ = [
    "CLARITY",
    "CREATIVE",
    "DEFAULT_PROMPTS",
    "FLUX",
    "TYPICAL_SECONDS",
    "effective_params",
    "find_output",
    "is_url",
    "map_params",
    "number",
    "sync_suits",
]

CLARITY, CREATIVE, FLUX = (
    "clarity-upscaler",
    "clarityai-creative-upscaler",
    "clarityai-flux-upscaler",
)
_DEFAULTS = UpscaleParams()
# Each page's default prompt (seed 002's is Clarifier's own default).
DEFAULT_PROMPTS = {
    CLARITY: _DEFAULTS.prompt,
    CREATIVE: "Maximize detail with vibrant color enhancement.",
    FLUX: "A serene landscape with mountains and a clear sky.",
}
# Each page's typical run time ("~18.25s", "~139.80s", "~343.97s") and its advice: async for
# "long-running (>~60s)" jobs, sync for fast ones.
TYPICAL_SECONDS = {CLARITY: 18.25, CREATIVE: 139.80, FLUX: 343.97}
_SYNC_UNDER = 60.0
# Clarifier's own switches: Segmind's models run Clarity's built-in behaviour for them. At their
# defaults nothing is lost by leaving them out; a changed value would be silently ignored there.
_LOCAL_ONLY = {
    "pattern": "Clarifier's seamless-texture switch",
    "multistep_factor": "Clarity's hidden multi-pass creativity factor",
    "upscaler": "another pre-upscaler (Segmind's Clarity uses 4x-UltraSharp)",
    "upscaler_channel_order": "the local pre-upscaler's channel order",
    "noise_source": "the local engine's noise source",
}
# Features of the open Clarity model that the ClarityAI creative and flux models do not have.
_CLARITY_ONLY = {
    "mask": "a preservation mask",
    "lora_links": "LoRA links (the flux model takes one link as flux.lora_link)",
    "custom_sd_model": "a custom checkpoint",
    "handfix": "hand fixing",
    "downscaling": "downscaling before the upscale",
    "sharpen": "sharpening",
}
_CLARITY_FIELDS = (
    "scale_factor", "creativity", "resemblance", "dynamic", "sharpen", "handfix", "sd_model",
    "scheduler", "tiling_width", "tiling_height", "num_inference_steps", "downscaling",
    "downscaling_resolution", "output_format", "prompt", "negative_prompt",
)  # fmt: skip
# The open model's knobs that the ClarityAI models have no input for (they have their own -10..10
# knobs instead), and each family's knobs, which only its own model reads.
_OPEN_ONLY = {
    "creativity": "the open model's creativity (use creative.creativity)",
    "resemblance": "the open model's resemblance (use creative.resemblance)",
    "dynamic": "the open model's dynamic/CFG (use creative.dynamic)",
    "negative_prompt": "a negative prompt",
    "sd_model": "a choice of checkpoint",
    "scheduler": "a choice of scheduler",
    "tiling_width": "a tile width",
    "tiling_height": "a tile height",
    "num_inference_steps": "a number of steps",
    "downscaling_resolution": "a downscaling resolution",
}
_KNOBS = {
    CREATIVE: ("creative", "the ClarityAI creative upscaler's knobs"),
    FLUX: ("flux", "the ClarityAI flux upscaler's knobs"),
}
_EXTRA_NETWORK = re.compile(r"<\w+:[^>]*>")
_IMAGE_B64 = ("iVBORw0KGgo", "/9j/", "UklGR")  # PNG, JPEG, WebP

_Refuse = Callable[[str, str], None]


# --- parameters in ----------------------------------------------------------------------------
def effective_params(model: str, params: UpscaleParams) -> UpscaleParams:
    """The parameters as they actually run at Segmind's ``model``, for the output's metadata:
    always the diffusion pass (``mode="creative"``); the ClarityAI models take no seed."""
    changes: dict[str, Any] = {}
    if params.mode != "creative":
        changes["mode"] = "creative"
    if model != CLARITY and params.seed is not None:
        changes["seed"] = None
    if model != CLARITY and params.prompt == _DEFAULTS.prompt:
        changes["prompt"] = DEFAULT_PROMPTS[model]  # the model's own default runs
    return params.replace(**changes) if changes else params


def sync_suits(model: str) -> bool:
    """Whether ``model``'s page gives it a typical time short enough for the v1 sync call."""
    return TYPICAL_SECONDS.get(model, float("inf")) < _SYNC_UNDER


def map_params(model: str, params: UpscaleParams) -> dict[str, Any]:
    """``params`` as Segmind's ``model`` takes them; a :class:`JobError` (invalid_request)
    naming every setting it cannot express."""
    refused: dict[str, list[str]] = {}

    def refuse(name: str, why: str) -> None:
        refused.setdefault(name, []).append(why)

    for name, what in _LOCAL_ONLY.items():
        if not as_hosted(name, getattr(params, name)):
            refuse(name, f"Segmind's {model} has no setting for {what}")
    for knobs_model, (group, what) in _KNOBS.items():
        if model != knobs_model and getattr(params, group) != getattr(_DEFAULTS, group):
            refuse(group, f"Segmind's {model} does not read {what}")
    if model == CLARITY:
        fields = _clarity_fields(params, refuse)
    else:
        for name, what in {**_CLARITY_ONLY, **_OPEN_ONLY}.items():
            if getattr(params, name) != getattr(_DEFAULTS, name):
                refuse(name, f"Segmind's {model} does not support {what}")
        if params.seed is not None and params.seed != _DEFAULTS.seed:
            refuse("seed", f"Segmind's {model} takes no seed (it draws its own)")
        fields = _clarityai_fields(model, params, refuse)
    if refused:
        listed = "; ".join(f"{k}: {' / '.join(v)}" for k, v in refused.items())
        raise JobError(
            ErrorKind.invalid_request,
            f"Segmind cannot run these settings ({listed}). Reset them, or run the job locally.",
            details={"fields": refused},
        )
    return fields


def _clarity_fields(p: UpscaleParams, refuse: _Refuse) -> dict[str, Any]:
    # The open model's inputs carry Clarifier's names (seed 002); whole numbers go as ints.
    fields: dict[str, Any] = {name: _plain(getattr(p, name)) for name in _CLARITY_FIELDS}
    if p.seed is not None:  # blank randomizes at Segmind
        fields["seed"] = p.seed
    links = [link.strip() for link in p.lora_links.split(",") if link.strip()]
    for link in links:
        if not is_url(link):
            refuse("lora_links", f"Segmind can only fetch LoRAs from URLs, not {link!r}")
    if links:
        fields["lora_links"] = ",".join(links)
    if p.custom_sd_model:
        if not is_url(p.custom_sd_model):
            refuse("custom_sd_model", "Segmind can only fetch a custom checkpoint from a URL")
        fields["custom_sd_model"] = p.custom_sd_model
    return fields


def _clarityai_fields(model: str, p: UpscaleParams, refuse: _Refuse) -> dict[str, Any]:
    scale = p.scale_factor
    if not float(scale).is_integer() or not 2 <= scale <= 16:
        refuse("scale_factor", f"{model} takes a whole scale factor from 2 to 16")
    fields: dict[str, Any] = {"scale_factor": int(scale)}
    if model == CREATIVE:
        knobs = p.creative
        fields.update(
            creativity=knobs.creativity,
            resemblance=knobs.resemblance,
            dynamic=knobs.dynamic,
            fractality=knobs.fractality,
            style=knobs.style,
        )
    else:
        fields["creativity"] = p.flux.creativity
        if p.flux.lora_link:
            if not is_url(p.flux.lora_link):
                refuse("flux.lora_link", "Segmind can only fetch a LoRA from a URL")
            fields["lora_link"] = p.flux.lora_link
    # Clarifier's default is the open model's page default; these models have their own. Any
    # other prompt loses its <lora:…> tags: A1111 syntax for the open model, noise to these.
    if p.prompt == _DEFAULTS.prompt:
        prompt = DEFAULT_PROMPTS[model]
    else:
        prompt = re.sub(r"\s+", " ", _EXTRA_NETWORK.sub("", p.prompt)).strip(" ,")
    if prompt:
        fields["prompt"] = prompt
    return fields


def _plain(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# --- values out -------------------------------------------------------------------------------
def number(value: Any) -> float | None:
    """``value`` (a JSON number or a header's text) as a float; None if it is not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def find_output(value: Any) -> str | None:
    """The first URL-like string in ``output`` (a string, list or object), or a base64 image
    as a data URL."""
    if isinstance(value, str):
        text = value.strip()
        if is_url(text) or text.startswith("data:image/"):
            return text
        if text.startswith(_IMAGE_B64):
            try:
                base64.b64decode(text[:64] + "=" * (-len(text[:64]) % 4), validate=True)
            except (binascii.Error, ValueError):
                return None
            mime = {"i": "image/png", "/": "image/jpeg", "U": "image/webp"}[text[0]]
            return f"data:{mime};base64,{text}"
        return None
    items: list[Any] = []
    if isinstance(value, Mapping):
        first = ("url", "image", "images", "output")
        items = [value[k] for k in first if k in value]
        items += [v for k, v in value.items() if k not in first]
    elif isinstance(value, list | tuple):
        items = list(value)
    for item in items:
        found = find_output(item)
        if found:
            return found
    return None
