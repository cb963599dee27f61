"""The test predictor's concurrent twin: an ``async`` ``predict()``, which Cog runs several at a
time (``COG_MAX_CONCURRENCY`` slots; past the last it answers 409), to test a pool of servers with
different capacities.

It takes the Clarity inputs the pool tests change (the image, the steps, the seed, the scale and
the format, with philz1337x/clarity-upscaler's names, defaults and ranges); the backend drops
the others at their defaults, as for any older served model. Like ``predict.py`` it resizes with
Pillow, sleeps ``COG_TEST_STEP_S`` per step (without blocking the other slots) and notes each
prediction's start and end in ``COG_TEST_RUNS``.

Served by coglet, with no container (copied in as ``predict.py``): ``COG_MAX_CONCURRENCY=2
COG_PREDICT_TYPE_STUB=predict.py:Predictor PORT=… python -m cog.server.http``.
"""

# ruff: noqa: B008 - Cog's API declares inputs as Input(...) defaults

from __future__ import annotations

import asyncio
import os
import tempfile

from cog import BasePredictor, Input, Path
from PIL import Image

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.step_s = float(os.environ.get("COG_TEST_STEP_S") or 0.0)

    async def predict(
        self,
        image: Path = Input(description="input image"),
        scale_factor: float = Input(description="Scale factor", default=2),
        num_inference_steps: int = Input(
            description="Number of denoising steps", ge=1, le=100, default=18
        ),
        seed: int = Input(description="Random seed", default=1337),
        output_format: str = Input(
            description="Format of the output images", choices=list(FORMATS), default="png"
        ),
    ) -> list[Path]:
        self._note(f"start {seed}")
        with Image.open(image) as src:
            rgb = src.convert("RGB")
        for _ in range(num_inference_steps):
            await asyncio.sleep(self.step_s)
        size = (max(1, round(rgb.width * scale_factor)), max(1, round(rgb.height * scale_factor)))
        fd, name = tempfile.mkstemp(suffix=f".{output_format}", prefix=f"{seed}-", dir=".")
        os.close(fd)
        rgb.resize(size, Image.Resampling.LANCZOS).save(name, FORMATS[output_format])
        self._note(f"done {seed}")
        return [Path(name)]

    @staticmethod
    def _note(line: str) -> None:
        runs = os.environ.get("COG_TEST_RUNS")
        if runs:
            with open(runs, "a") as fp:
                fp.write(line + "\n")
