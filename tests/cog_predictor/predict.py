"""A tiny Cog predictor with Clarity's inputs, to test the Cog backend against the real server.

It declares a subset of philz1337x/clarity-upscaler's ``predict()`` inputs (with the same names,
defaults, ranges and choices), so the backend's one parameter mapping and its fitting to the
served schema are checked by a real Cog server's validation. Instead of Stable Diffusion it
resizes the image with Pillow. Like a diffusion model, its time grows with
``num_inference_steps``: each step sleeps ``COG_TEST_STEP_S`` seconds and logs a tqdm-style bar,
so progress, cancel and a re-sent prediction can be tested while it runs.

Test switches (environment): ``COG_TEST_RUNS`` names a file that gets a line when a prediction
starts (``start SEED``) and when it finishes (``done SEED``), so tests can count runs and tell a
cancelled one; ``COG_TEST_SETUP_FAIL`` makes ``setup()`` fail.

Served by coglet, with no container:
``COG_PREDICT_TYPE_STUB=predict.py:Predictor PORT=… python -m cog.server.http``.
"""

# ruff: noqa: B008 - Cog's API declares inputs as Input(...) defaults

from __future__ import annotations

import os
import tempfile
import time

from cog import BasePredictor, Input, Path
from PIL import Image

SCHEDULERS = ["DPM++ 3M SDE Karras", "DPM++ 2M Karras", "Euler a", "Euler", "DDIM", "UniPC"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


class Predictor(BasePredictor):
    def setup(self) -> None:
        print("loading the upscaler")
        if os.environ.get("COG_TEST_SETUP_FAIL"):
            raise RuntimeError("weights file missing: /models/juggernaut_reborn.safetensors")
        self.step_s = float(os.environ.get("COG_TEST_STEP_S") or 0.0)

    def predict(
        self,
        image: Path = Input(description="input image"),
        prompt: str = Input(description="Prompt", default="masterpiece, best quality, highres"),
        negative_prompt: str = Input(description="Negative Prompt", default=""),
        scale_factor: float = Input(description="Scale factor", default=2),
        dynamic: float = Input(description="HDR, try from 3 - 9", ge=1, le=50, default=6),
        creativity: float = Input(description="Creativity", ge=0, le=1, default=0.35),
        resemblance: float = Input(description="Resemblance", ge=0, le=3, default=0.6),
        scheduler: str = Input(
            description="scheduler", choices=SCHEDULERS, default="DPM++ 3M SDE Karras"
        ),
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
        for step in range(1, num_inference_steps + 1):
            time.sleep(self.step_s)  # cancel arrives as an exception between steps
            pct = round(100 * step / num_inference_steps)
            bar = "#" * (pct // 10)
            print(f"{pct:3d}%|{bar:<10}| {step}/{num_inference_steps}", flush=True)
        size = (max(1, round(rgb.width * scale_factor)), max(1, round(rgb.height * scale_factor)))
        out = rgb.resize(size, Image.Resampling.LANCZOS)
        fd, name = tempfile.mkstemp(suffix=f".{output_format}", prefix=f"{seed}-", dir=".")
        os.close(fd)
        out.save(name, FORMATS[output_format])
        print(f"upscaled to {size[0]}x{size[1]}")
        self._note(f"done {seed}")
        return [Path(name)]

    @staticmethod
    def _note(line: str) -> None:
        runs = os.environ.get("COG_TEST_RUNS")
        if runs:
            with open(runs, "a") as fp:
                fp.write(line + "\n")
