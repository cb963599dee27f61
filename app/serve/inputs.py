"""Clarity's inputs, as a network client sends them, turned into the engine's parameters.

The served model takes exactly philz1337x/clarity-upscaler's inputs. Apart from the two images
they are :class:`~pipeline.params.UpscaleParams` fields of the same name (the parameter type was
built on that schema), so the mapping is a copy plus ``mode="creative"``: Clarity always runs the
diffusion pass. Clarifier's own engine choices (pre-upscaler, noise source) stay at their
defaults, which is what Clarifier's ``cog`` backend sends, so a job gives the same pixels here
as on the computer that sent it.

A client on the network may name files only by http(s) link: ``custom_sd_model`` and
``lora_links`` also take paths on the local engine, which would let a client read files on the
server, so paths are refused here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pipeline.errors import ParamsError
from pipeline.models.store import is_link
from pipeline.params import UpscaleParams

__all__ = [
    "CLARITY_INPUTS",
    "IMAGE_INPUTS",
    "URI",
    "ImageUrl",
    "InputRefused",
    "params_from_inputs",
]

# In the order Clarity's predict() declares them (the schema's x-order).
CLARITY_INPUTS: tuple[str, ...] = (
    "image",
    "prompt",
    "negative_prompt",
    "scale_factor",
    "dynamic",
    "creativity",
    "resemblance",
    "tiling_width",
    "tiling_height",
    "sd_model",
    "scheduler",
    "num_inference_steps",
    "seed",
    "multistep_factor",
    "downscaling",
    "downscaling_resolution",
    "lora_links",
    "custom_sd_model",
    "sharpen",
    "mask",
    "handfix",
    "pattern",
    "output_format",
)
IMAGE_INPUTS: tuple[str, ...] = ("image", "mask")  # URLs; fetched apart (app.serve.fetch)


class _Format(str):
    """A JSON-schema ``format``, carried as :data:`typing.Annotated` metadata."""


URI = _Format("uri")
# An image input: a URL the server fetches itself (app.serve.fetch), published with
# ``format: uri`` as Cog publishes its ``Path`` inputs. Cog sees a plain ``str`` (it strips the
# annotation), so it hands the URL over instead of downloading it with no size limit.
ImageUrl = Annotated[str, URI]


class InputRefused(ValueError):
    """An input this server will not take; the message names it and says why."""


def params_from_inputs(values: Mapping[str, Any]) -> UpscaleParams:
    """The engine's parameters for one prediction's inputs (without the images, which are
    fetched apart; a mask's local file is set by the caller). Raises :class:`InputRefused`
    naming every input that is unknown, out of range or a server-side path."""
    unknown = sorted(set(values) - set(CLARITY_INPUTS))
    if unknown:
        raise InputRefused(f"unknown inputs: {', '.join(unknown)}")
    fields = {k: v for k, v in values.items() if k not in IMAGE_INPUTS}
    refused = _paths(fields)
    if refused:
        raise InputRefused("; ".join(refused))
    try:
        return UpscaleParams(mode="creative", **fields)
    except ParamsError as exc:
        raise InputRefused(str(exc)) from None


def _paths(fields: Mapping[str, Any]) -> list[str]:
    refused = []
    model = fields.get("custom_sd_model")
    if isinstance(model, str) and model.strip() and not is_link(model):
        refused.append(
            "custom_sd_model: this server takes an http(s) link to a checkpoint, not a path"
        )
    links = fields.get("lora_links")
    if isinstance(links, str):
        paths = [s.strip() for s in links.split(",") if s.strip() and not is_link(s)]
        if paths:
            refused.append(
                f"lora_links: this server takes http(s) links only, not {', '.join(paths)}"
            )
    return refused
