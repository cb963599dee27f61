"""The Cog runner: Clarifier's engine with philz1337x/clarity-upscaler's inputs.

``clarifier serve`` and the image ``packaging/cog`` builds both load this class (Cog's
``predict.py:Runner``). The inputs are Clarity's, by the names, types, defaults and ranges
Replicate publishes; defaults, choices and descriptions come from each field's spec in
:class:`~pipeline.params.UpscaleParams` (Clarifier's parameter type is Clarity's schema), and the
three inputs Replicate publishes without bounds (``scale_factor``, ``seed``,
``downscaling_resolution``) are published without them here too; the engine still refuses a
value outside its own range, naming it. The output is a list with one image, which Cog returns
as a data URI (or uploads, with ``--upload-url``).

It is a plain class, not a ``cog.BaseRunner``: Cog finds ``setup`` and ``run`` by name, and
both are coroutines here (Cog runs them on one event loop, which the engine's worker process
belongs to; a cancel arrives as :class:`asyncio.CancelledError` and stops the run between
steps). The work itself is :class:`~app.serve.engine.ServedEngine`'s.
"""

# ruff: noqa: B008 - Cog's API declares inputs as Input(...) defaults

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cog import Input, Path

from app.serve.engine import ServeConfig, ServedEngine
from app.serve.inputs import ImageUrl
from pipeline.params import UpscaleParams

__all__ = ["Runner"]

_DEFAULTS = UpscaleParams()


def _clarity(name: str, *, bounded: bool = True, choices: Sequence[Any] | None = None) -> Any:
    """The ``Input(...)`` of a Clarity input, from its parameter spec."""
    spec = UpscaleParams.spec(name)
    listed = choices if choices is not None else spec.choices
    return Input(
        default=getattr(_DEFAULTS, name),
        description=spec.help,
        ge=spec.minimum if bounded else None,
        le=spec.maximum if bounded else None,
        choices=list(listed) if listed is not None else None,
    )


class Runner:
    """Clarity's ``predict()``, run by Clarifier's engine."""

    engine: ServedEngine

    async def setup(self) -> None:
        self.engine = ServedEngine(ServeConfig.from_environment())
        await self.engine.start()

    async def run(
        self,
        image: ImageUrl = Input(description="The image to upscale: an http(s) or data: URL."),
        prompt: str = _clarity("prompt"),
        negative_prompt: str = _clarity("negative_prompt"),
        scale_factor: float = _clarity("scale_factor", bounded=False),
        dynamic: float = _clarity("dynamic"),
        creativity: float = _clarity("creativity"),
        resemblance: float = _clarity("resemblance"),
        tiling_width: int = _clarity("tiling_width"),
        tiling_height: int = _clarity("tiling_height"),
        sd_model: str = _clarity("sd_model"),
        scheduler: str = _clarity("scheduler"),
        num_inference_steps: int = _clarity("num_inference_steps"),
        seed: int = _clarity("seed", bounded=False),
        multistep_factor: float = _clarity("multistep_factor"),
        downscaling: bool = _clarity("downscaling"),
        downscaling_resolution: int = _clarity("downscaling_resolution", bounded=False),
        lora_links: str = _clarity("lora_links"),
        custom_sd_model: str = _clarity("custom_sd_model"),
        sharpen: float = _clarity("sharpen"),
        mask: ImageUrl | None = Input(
            default=None,
            description="Mask image (an http(s) or data: URL): white keeps the original.",
        ),
        handfix: str = _clarity("handfix"),
        pattern: bool = _clarity("pattern"),
        output_format: str = _clarity("output_format", choices=("webp", "jpg", "png")),
    ) -> list[Path]:
        inputs = {name: value for name, value in locals().items() if name != "self"}
        return [Path(await self.engine.run(inputs))]
