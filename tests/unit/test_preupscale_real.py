"""The bundled Real-ESRGAN models on real photos: a sensible result, and no measurable seams.

Seams are measured against an untiled run of the same (reflect-padded) image; the default
margins of :func:`pipeline.sr.preupscale.default_margin` must keep them within 1 LSB (uint8).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.sr.loading import load_upscaler
from pipeline.sr.preupscale import default_margin, pre_upscale

CPU = torch.device("cpu")


def low_res(name: str = "astronaut") -> np.ndarray:
    """A real photo downscaled ×¼ with bicubic: the classic synthetic low-resolution input."""
    from skimage import data

    hr = Image.fromarray(getattr(data, name)())
    return np.asarray(hr.resize((hr.width // 4, hr.height // 4), Image.BICUBIC))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def seam_diff(model_id: str, img: np.ndarray, tile: int) -> int:
    model = load_upscaler(model_id, device=CPU, dtype=torch.float32)
    # Some tile's context must stop short of the image, or tiling changes nothing to measure.
    assert tile + default_margin(model) < max(img.shape[:2])
    untiled = pre_upscale(img, 4, model, tile=4096)
    tiled = pre_upscale(img, 4, model, tile=tile)
    return int(np.abs(untiled.astype(int) - tiled).max())


def test_x4plus_gives_a_sensible_upscale() -> None:
    lr = np.ascontiguousarray(low_res()[20:84, 40:104])  # 64×64: face and helmet
    model = load_upscaler("realesrgan-x4plus", device=CPU, dtype=torch.float32)
    # The tiling margin is not what this test is about; a small one keeps it fast.
    sr = pre_upscale(lr, 4, model, tile=4096, margin=8)
    assert sr.shape == (256, 256, 3)
    back = np.asarray(Image.fromarray(sr).resize((64, 64), Image.BICUBIC))
    assert psnr(back, lr) > 28, "the ×4 result must stay consistent with its input"
    bicubic = np.asarray(Image.fromarray(lr).resize((256, 256), Image.BICUBIC))
    assert np.abs(sr.astype(int) - bicubic).mean() > 2, "it must do more than interpolate"

    def sharpness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(float), axis=1)).mean())

    assert sharpness(sr) > sharpness(bicubic)


def test_compact_model_has_no_seams() -> None:
    img = np.ascontiguousarray(low_res("coffee")[30:70, 40:88])  # 48×40 in 16 px tiles
    assert seam_diff("realesr-animevideov3", img, 16) <= 1


def test_rrdb_anime_model_has_no_seams() -> None:
    model = load_upscaler("realesrgan-x4plus-anime", device=CPU, dtype=torch.float32)
    assert default_margin(model) == 48
    img = np.ascontiguousarray(low_res()[30:54, 0:128])  # 128×24: three seams at 32 px tiles
    assert seam_diff("realesrgan-x4plus-anime", img, 32) <= 1


@pytest.mark.slow
def test_x4plus_has_no_seams_at_four_tile_corners() -> None:
    """About two minutes on 2 CPU cores (run with ``-m slow``)."""
    model = load_upscaler("realesrgan-x4plus", device=CPU, dtype=torch.float32)
    assert default_margin(model) == 72
    from skimage import data

    half = Image.fromarray(data.astronaut()).resize((256, 256), Image.BICUBIC)
    img = np.ascontiguousarray(np.asarray(half)[8:248, 8:248])  # 240², four 120 px tiles
    assert seam_diff("realesrgan-x4plus", img, 120) <= 1
