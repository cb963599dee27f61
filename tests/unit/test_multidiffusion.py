"""The tiled denoiser: equal to the stock diffusers pipeline where the maths coincide; batching
changes nothing; soft injection scales, out-of-memory retries, cancel, the wrap (pattern) mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.diffusion import multidiffusion
from pipeline.diffusion.multidiffusion import TiledDenoiser, TileOutOfMemory, soft_injection_scales
from pipeline.diffusion.tiling import plan_tiles
from pipeline.errors import Cancelled


@pytest.fixture(scope="module")
def pipe():
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DPMSolverMultistepScheduler,
        StableDiffusionControlNetImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    # ControlNet's zero convolutions start at zero; give them weights so the hint matters.
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                p.normal_(0, 0.3)
            if "controlnet_cond_embedding.conv_out" in name:
                p.normal_(0, 0.3)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=32,
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    import json
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        use_karras_sigmas=True,
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
    )
    p = StableDiffusionControlNetImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    return p


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _embeds(pipe):
    cond, uncond = pipe.encode_prompt("a cat", torch.device("cpu"), 1, True, "ugly")
    return cond, uncond


def test_soft_injection_scales_are_clarity_s():
    expected = [0.0994, 0.1205, 0.1461, 0.177, 0.2146, 0.2601, 0.3153, 0.3822, 0.4633, 0.5615,
                0.6806, 0.825, 1.0]  # fmt: skip
    assert soft_injection_scales(13, 1.0) == pytest.approx(expected, abs=5e-5)
    assert soft_injection_scales(13, 0.6)[-1] == pytest.approx(0.6)
    assert soft_injection_scales(13, 0.6)[0] == pytest.approx(0.6 * 0.825**12)


def test_one_tile_equals_the_stock_pipeline(pipe, monkeypatch):
    """With soft injection replaced by the stock uniform scale, one tile covering the canvas
    is exactly diffusers' StableDiffusionControlNetImg2ImgPipeline."""
    monkeypatch.setattr(multidiffusion, "soft_injection_scales", lambda n, r: [r] * n)
    from PIL import Image

    init = _image(64, 96)
    steps, strength, cfg, scale = 6, 0.6, 5.0, 0.7
    stock = pipe(
        "a cat",
        negative_prompt="ugly",
        image=Image.fromarray(init),
        control_image=Image.fromarray(init),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=cfg,
        controlnet_conditioning_scale=scale,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images

    device = torch.device("cpu")
    cond, uncond = _embeds(pipe)
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps, _ = pipe.get_timesteps(steps, strength, device)
    generator = torch.Generator().manual_seed(3)
    image = pipe.image_processor.preprocess(Image.fromarray(init))
    latents = pipe.prepare_latents(image, timesteps[:1], 1, 1, torch.float32, device, generator)
    extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
    plan = plan_tiles(12, 8, 112, 144)
    assert not plan.tiled
    den = TiledDenoiser(
        pipe.unet, pipe.controlnet, init, cond, uncond, plan=plan, guidance=cfg, resemblance=scale
    )
    for t in timesteps:
        model_in = pipe.scheduler.scale_model_input(latents, t)
        eps = den(model_in, t)
        latents = pipe.scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
    assert torch.isfinite(latents).all()
    assert (latents - stock).abs().max().item() < 1e-4
    assert den.stats.calls == len(timesteps)


def _run(pipe, plan, latents, hint, *, guidance=4.0, resemblance=0.6, weighting="uniform", **kw):
    cond, uncond = _embeds(pipe)
    den = TiledDenoiser(
        pipe.unet,
        pipe.controlnet,
        hint,
        cond,
        uncond,
        plan=plan,
        guidance=guidance,
        resemblance=resemblance,
        weighting=weighting,
        **kw,
    )
    with torch.inference_mode():
        return den(latents, torch.tensor(500)), den


@pytest.mark.parametrize("weighting", ["uniform", "gaussian", "cosine"])
def test_batched_tiles_equal_unbatched(pipe, weighting):
    latents = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(1))
    hint = _image(192, 256)
    plan = plan_tiles(32, 24, 12, 10, overlap=4, batch=8)
    assert len(plan.boxes) == 16  # ceil((32-4)/(12-4)) × ceil((24-4)/(10-4))
    batched, den = _run(pipe, plan, latents, hint, weighting=weighting)
    single, _ = _run(pipe, plan.rebatched(1), latents, hint, weighting=weighting)
    assert torch.isfinite(batched).all()
    assert (batched - single).abs().max().item() < 1e-5
    assert den.stats.tile_evals == 2 * 16
    assert den.stats.latent_px == 16 * 12 * 10


def test_tiles_cover_every_latent_pixel_and_blend(pipe):
    """Uniform fusion: where one tile covers a pixel the result is that tile's prediction."""
    latents = torch.randn(1, 4, 16, 40, generator=torch.Generator().manual_seed(2))
    hint = _image(128, 320)
    plan = plan_tiles(40, 16, 16, 16, overlap=4)
    fused, _ = _run(pipe, plan, latents, hint)
    first = plan.boxes[0]
    alone, _ = _run(pipe, plan_tiles(16, 16, 16, 16), latents[..., :16, :16], hint[:128, :128])
    only_first = plan.boxes[1].x  # columns before the second tile starts
    assert first.x == 0
    assert torch.allclose(fused[..., :only_first], alone[..., :only_first], atol=1e-5)
    assert not torch.allclose(fused[..., only_first:16], alone[..., only_first:16], atol=1e-3)


def test_resemblance_and_guidance_matter(pipe):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    hint = _image(64, 64)
    plan = plan_tiles(8, 8, 8, 8)
    base, _ = _run(pipe, plan, latents, hint)
    no_control, den = _run(pipe, plan, latents, hint, resemblance=0.0)
    assert den.controlnet is None  # weight 0 skips ControlNet entirely
    assert not torch.allclose(base, no_control, atol=1e-4)
    cfg1, den1 = _run(pipe, plan, latents, hint, guidance=1.0)
    assert den1.stats.tile_evals == 1  # CFG 1: the conditional half alone
    cond, _ = _embeds(pipe)
    with torch.inference_mode():
        down, mid = pipe.controlnet(
            latents, torch.tensor(500), encoder_hidden_states=cond,
            controlnet_cond=torch.from_numpy(hint).permute(2, 0, 1)[None].float() / 255,
            return_dict=False,
        )  # fmt: skip
        scales = soft_injection_scales(len(down) + 1, 0.6)
        direct = pipe.unet(
            latents, torch.tensor(500), encoder_hidden_states=cond,
            down_block_additional_residuals=[d * s for d, s in zip(down, scales, strict=False)],
            mid_block_additional_residual=mid * scales[-1],
        ).sample  # fmt: skip
    assert torch.allclose(cfg1, direct, atol=1e-5)


class _OOMUnet(torch.nn.Module):
    """A UNet that runs out of memory above a batch size, as a GPU would."""

    def __init__(self, unet: torch.nn.Module, max_batch: int) -> None:
        super().__init__()
        self.inner = unet
        self.max_batch = max_batch
        self.seen: list[int] = []

    def forward(self, x, *args, **kwargs):
        self.seen.append(x.shape[0])
        if x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.inner(x, *args, **kwargs)


def test_out_of_memory_halves_the_batch_and_keeps_the_result(pipe):
    latents = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(5))
    hint = _image(192, 256)
    plan = plan_tiles(32, 24, 12, 10, overlap=4, batch=8)
    reference, _ = _run(pipe, plan, latents, hint)
    flaky = _OOMUnet(pipe.unet, max_batch=4)  # 2 tiles × CFG
    messages: list[str] = []
    cond, uncond = _embeds(pipe)
    den = TiledDenoiser(
        flaky, pipe.controlnet, hint, cond, uncond, plan=plan, guidance=4.0, resemblance=0.6,
        log=messages.append,
    )  # fmt: skip
    with torch.inference_mode():
        out = den(latents, torch.tensor(500))
    assert torch.allclose(out, reference, atol=1e-5)
    assert max(len(b) for b in den.plan.batches) == 2
    assert messages and "out of device memory" in messages[0]
    hopeless = _OOMUnet(pipe.unet, max_batch=1)
    den = TiledDenoiser(
        hopeless, pipe.controlnet, hint, cond, uncond, plan=plan, guidance=4.0, resemblance=0.6
    )
    with pytest.raises(TileOutOfMemory), torch.inference_mode():
        den(latents, torch.tensor(500))


def test_cancel_between_batches(pipe):
    latents = torch.randn(1, 4, 24, 32)
    hint = _image(192, 256)
    plan = plan_tiles(32, 24, 12, 10, overlap=4, batch=2)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        _run(pipe, plan, latents, hint, cancel=cancel)
    assert len(asked) == 3


def test_wrap_mode_is_seamless_on_the_torus(pipe):
    """On a torus, shifting the canvas by a whole tile stride shifts the prediction with it:
    no tile sees an edge."""
    latents = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(6))
    hint = _image(128, 256)
    plan = plan_tiles(32, 16, 12, 12, overlap=4, wrap=True)
    assert plan.wrap and len(plan.boxes) == 4 * 2
    stride_x = plan.boxes[1].x - plan.boxes[0].x
    out, _ = _run(pipe, plan, latents, hint)
    shifted, _ = _run(
        pipe, plan, latents.roll(-stride_x, dims=-1), np.roll(hint, -stride_x * 8, axis=1)
    )
    assert torch.allclose(shifted, out.roll(-stride_x, dims=-1), atol=1e-5)
    # A canvas smaller than a tile gets one tile with wrapped margins: still finite, full cover.
    small = plan_tiles(8, 8, 112, 144, wrap=True)
    assert small.boxes[0].x < 0 and small.boxes[0].w > 8
    res, _ = _run(pipe, small, latents[..., :8, :8], hint[:64, :64])
    assert torch.isfinite(res).all()
