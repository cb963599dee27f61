"""Full-size SD1.5 shapes (random weights, built from the bundled configs): the tiled denoiser and
the tiled VAE run on the real architecture. Slow on a CPU: ``pytest -m slow``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.diffusion import tiled_vae
from pipeline.diffusion.multidiffusion import TiledDenoiser
from pipeline.diffusion.tiling import plan_tiles
from pipeline.paths import resources_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models():
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    cfg = resources_dir() / "sd15"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
    controlnet = ControlNetModel.from_config(ControlNetModel.load_config(cfg / "controlnet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
    return unet.eval(), controlnet.eval(), vae.eval()


def test_full_size_tiled_model_call_batches_exactly(models):
    unet, controlnet, _ = models
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    latents = torch.randn(1, 4, 24, 40, generator=torch.Generator().manual_seed(0))
    hint = np.random.default_rng(0).integers(0, 255, (192, 320, 3), dtype=np.uint8)
    cond, uncond = torch.randn(1, 77, 768), torch.randn(1, 77, 768)
    plan = plan_tiles(40, 24, 24, 24, overlap=4, batch=2)
    assert len(plan.boxes) == 2
    outs = []
    for p in (plan, plan.rebatched(1)):
        den = TiledDenoiser(
            unet, controlnet, hint, cond, uncond, plan=p, guidance=6.0, resemblance=0.6
        )
        with torch.inference_mode():
            outs.append(den(latents, torch.tensor(300)))
    assert outs[0].shape == latents.shape and torch.isfinite(outs[0]).all()
    assert (outs[0] - outs[1]).abs().max().item() < 1e-3


def test_full_size_vae_tiles_round_trip(models):
    *_, vae = models
    image = np.random.default_rng(1).integers(0, 255, (192, 256, 3), dtype=np.uint8)
    latent = tiled_vae.encode(
        vae, image, tile=128, generator=None, device="cpu", dtype=torch.float32
    )
    assert latent.shape == (1, 4, 24, 32)
    out = tiled_vae.decode(vae, latent, tile=16, device="cpu", dtype=torch.float32)
    assert out.shape == (192, 256, 3) and out.dtype == np.uint8
