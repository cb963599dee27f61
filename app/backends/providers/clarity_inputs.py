"""The philz1337x/clarity-upscaler input schema, shared by Replicate and self-hosted Cog.

Both backends run the same model (Cog serves the image Replicate hosts), so what it takes and
what it answers is defined once, here, rather than in either backend:

* :func:`clarity_input`: THE mapping from :class:`UpscaleParams` to Clarity's ``predict()``
  inputs, refusing what the model cannot express; :func:`effective_params`, the parameters as
  Clarity runs them (for the output's metadata);
* :func:`input_schema` and :func:`fit_input`: fit those inputs to the schema the server
  actually serves (an older deployed version may lack some);
* :func:`progress_of`, :func:`outputs_of` and :func:`no_image`: read a prediction's logs and
  output, which both protocols report in Cog's own shape.

Pure functions without I/O, kept apart so neither backend imports the other's protocol code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.backends.base import ErrorKind, JobError
from app.backends.remote.fields import as_hosted
from pipeline.params import UpscaleParams

__all__ = [
    "clarity_input",
    "effective_params",
    "fit_input",
    "input_schema",
    "no_image",
    "outputs_of",
    "progress_of",
]

_DEFAULTS = UpscaleParams()
# Clarifier's own engine choices, which Clarity's model makes for itself: at their defaults
# nothing is lost by leaving them out; a changed value would be silently ignored there.
_LOCAL_ONLY = {
    "upscaler": "another pre-upscaler (Clarity always uses 4x-UltraSharp)",
    "upscaler_channel_order": "the local pre-upscaler's channel order",
    "noise_source": "the local engine's noise source (Clarity draws its noise on the GPU)",
    "creative": "the ClarityAI creative upscaler's knobs (Segmind hosts that model)",
    "flux": "the ClarityAI flux upscaler's knobs (Segmind hosts that model)",
}
_PROGRESS = re.compile(r"(\d{1,3})%\|")


def clarity_input(params: UpscaleParams, provider: str) -> dict[str, Any]:
    """Clarity's ``predict()`` inputs for ``params``, without ``image``/``mask`` (sent apart).

    ``seed`` is None when the person asked for a random one: the caller draws it, because
    Clarity's schema defaults to 1337 rather than randomizing. Raises
    ``JobError(invalid_request)`` naming every setting ``provider`` cannot take."""
    refused: dict[str, list[str]] = {}
    for name, what in _LOCAL_ONLY.items():
        if not as_hosted(name, getattr(params, name)):
            refused.setdefault(name, []).append(f"{provider} has no setting for {what}")
    links = [link.strip() for link in params.lora_links.split(",") if link.strip()]
    for link in links:
        if not _is_url(link):
            refused.setdefault("lora_links", []).append(
                f"{provider} can only fetch LoRAs from URLs, not {link!r}"
            )
    if params.custom_sd_model and not _is_url(params.custom_sd_model):
        refused.setdefault("custom_sd_model", []).append(
            f"{provider} can only fetch a custom checkpoint from a URL"
        )
    if refused:
        listed = "; ".join(f"{k}: {' / '.join(v)}" for k, v in refused.items())
        raise JobError(
            ErrorKind.invalid_request,
            f"{provider} cannot run these settings ({listed}). Reset them, or run the job locally.",
            details={"fields": refused},
        )
    return {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "scale_factor": params.scale_factor,
        "dynamic": params.dynamic,
        "creativity": params.creativity,
        "resemblance": params.resemblance,
        "tiling_width": params.tiling_width,
        "tiling_height": params.tiling_height,
        "sd_model": params.sd_model,
        "scheduler": params.scheduler,
        "num_inference_steps": params.num_inference_steps,
        "seed": params.seed,
        "multistep_factor": params.multistep_factor,
        "downscaling": params.downscaling,
        "downscaling_resolution": params.downscaling_resolution,
        "lora_links": ",".join(links),
        "custom_sd_model": params.custom_sd_model,
        "sharpen": params.sharpen,
        "handfix": params.handfix,
        "pattern": params.pattern,
        "output_format": params.output_format,
    }


_DEFAULT_INPUT = clarity_input(_DEFAULTS, "Clarity")


def effective_params(params: UpscaleParams) -> UpscaleParams:
    """The parameters as Clarity runs them, for the output's metadata: always the diffusion
    pass, whatever ``mode`` the person had selected for the local engine."""
    return params if params.mode == "creative" else params.replace(mode="creative")


def input_schema(openapi: Any) -> dict[str, Any] | None:
    """The ``Input`` properties of a Cog OpenAPI document, or None when it has none."""
    try:
        props = openapi["components"]["schemas"]["Input"]["properties"]
    except (KeyError, TypeError):
        return None
    return props if isinstance(props, dict) and props else None


def fit_input(
    inputs: dict[str, Any], schema: Mapping[str, Any] | None, where: str
) -> dict[str, Any]:
    """``inputs`` without what the served model does not declare.

    A deployed Clarity version (or a self-built image) may predate some inputs. One at its
    default is dropped, as the model behaves that way anyway; one the person changed is refused,
    since the model would silently ignore it (or fail on an unexpected argument)."""
    if schema is None:
        return dict(inputs)
    fitted: dict[str, Any] = {}
    refused: dict[str, list[str]] = {}
    for name, value in inputs.items():
        if name in schema:
            fitted[name] = value
        elif name in _DEFAULT_INPUT and value != _DEFAULT_INPUT[name] and name != "seed":
            refused[name] = [f"the model {where} serves has no {name!r} input"]
        elif name in ("image", "mask") and value:
            refused[name] = [f"the model {where} serves takes no {name}"]
    if refused:
        raise JobError(
            ErrorKind.invalid_request,
            f"The model {where} serves is older than Clarifier's Clarity settings and cannot take "
            f"{', '.join(sorted(refused))}. Reset them, or update the model.",
            details={"fields": refused},
        )
    return fitted


def progress_of(logs: Any) -> tuple[float | None, str]:
    """Progress (0…1) from the last tqdm bar in a prediction's logs, and its last plain line."""
    if not isinstance(logs, str) or not logs:
        return None, ""
    bars = _PROGRESS.findall(logs[-4000:])
    progress = min(1.0, int(bars[-1]) / 100) if bars else None
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", logs[-4000:]) if ln.strip()]
    plain = [ln for ln in lines if not _PROGRESS.search(ln)]
    return progress, (plain[-1][:160] if plain else "")


def outputs_of(output: Any) -> tuple[str, ...]:
    """Clarity returns ``list[Path]``; a model returning one file gives a plain string."""
    if isinstance(output, str):
        return (output,) if output else ()
    if isinstance(output, list):
        return tuple(item for item in output if isinstance(item, str) and item)
    return ()


def no_image(label: str, inputs: Any) -> JobError:
    """Clarity's hand-fix quirk: with ``hands_only`` and no hands found it returns nothing."""
    why = ""
    if isinstance(inputs, Mapping) and inputs.get("handfix") == "hands_only":
        why = " Clarity returns nothing when handfix is 'hands_only' and it finds no hands."
    return JobError(ErrorKind.model_failed, f"{label} finished the job but returned no image.{why}")


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))
