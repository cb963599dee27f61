"""The creative mode end to end, on the tiny A1111-format models loaded through the real code:
sizes, seeds, the multi-pass plan, mask, sharpen, pattern, alpha, progress, cancel, out-of-memory
retries and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.diffusion.passes as creative
from pipeline.engine import EngineOptions, upscale, upscale_file
from pipeline.errors import Cancelled, ModelError, ParamsError, PipelineError
from pipeline.io import LoadedImage, SourceInfo, load_image, read_run_info, save_image
from pipeline.params import UpscaleParams
from pipeline.progress import Progress
from pipeline.sr.post import sharpen

UPSCALER = "realesr-animevideov3"  # the compact bundled net keeps the tests fast


def _image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, 128 + 60 * np.sin(xx / 5.0)], axis=-1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _loaded(rgb: np.ndarray, alpha: np.ndarray | None = None) -> LoadedImage:
    h, w = rgb.shape[:2]
    source = SourceInfo(
        path=None, format="PNG", mode="RGB", width=w, height=h, bit_depth=8, grayscale=False,
        has_alpha=alpha is not None, frames=1, icc_profile=None, exif=None, xmp=None,
    )  # fmt: skip
    return LoadedImage(rgb=rgb, alpha=alpha, source=source)


@pytest.fixture(scope="module")
def options(tiny_models_dir):
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core box
    return EngineOptions(device="cpu", model_dirs=(tiny_models_dir,))


def _params(**kw) -> UpscaleParams:
    base = {"mode": "creative", "upscaler": UPSCALER, "num_inference_steps": 6, "seed": 7}
    return UpscaleParams(**(base | kw))


def _run(options, params, rgb=None, **kw):
    return upscale(_loaded(_image() if rgb is None else rgb), params, options=options, **kw)


def test_creative_run_is_sized_seeded_and_reproducible(options):
    first = _run(options, _params())
    assert first.rgb.shape == (80, 112, 3) and first.rgb.dtype == np.uint8
    again = _run(options, _params())
    assert np.array_equal(first.rgb, again.rgb)
    other = _run(options, _params(seed=8))
    assert np.abs(first.rgb.astype(int) - other.rgb.astype(int)).mean() > 1
    assert first.info.engine == "local/creative"
    models = first.info.models
    assert models["checkpoint"] == "juggernaut_reborn.safetensors"
    assert models["controlnet"] == "control_v11f1e_sd15_tile.pth"
    assert models["lora:more_details"].startswith("0.5 [")
    assert "embedding:JuggernautNegative-neg" in models


def test_multi_pass_plan_follows_clarity(options, monkeypatch):
    """×3 runs as ×2 then ×1.5, creativity × 0.8 and seed + 1 on the second pass, each pass
    floored to 8 px."""
    calls = []
    real = creative.img2img

    def spy(name, init_latent, **kw):
        calls.append((kw["strength"], kw["seed"], tuple(init_latent.shape)))
        return real(name, init_latent, **kw)

    monkeypatch.setattr(creative, "img2img", spy)
    result = _run(options, _params(scale_factor=3, creativity=0.5))
    assert [(s, seed) for s, seed, _ in calls] == [(0.5, 7), (pytest.approx(0.4), 8)]
    assert calls[0][2] == (1, 4, 80 // 8, 112 // 8)
    assert result.rgb.shape == (120, 168, 3)  # floor8(80·1.5) × floor8(112·1.5)
    assert result.info.output_size == (168, 120)


def test_sharpen_is_applied_after_the_diffusion(options):
    plain = _run(options, _params())
    sharp = _run(options, _params(sharpen=2.0))
    assert np.array_equal(sharp.rgb, sharpen(plain.rgb, 2.0))


def test_mask_keeps_the_original_at_full_resolution(options, tmp_path):
    """White keeps the (pre-upscaled) original; the output is not shrunk back as Clarity does."""
    mask = np.zeros((40, 56), np.uint8)
    mask[:, :28] = 255
    save_image(tmp_path / "mask.png", np.repeat(mask[..., None], 3, axis=-1))
    plain = _run(options, _params())
    faithful = upscale(_loaded(_image()), _params(mode="faithful", scale_factor=2), options=options)
    masked = _run(options, _params(mask=str(tmp_path / "mask.png")))
    assert masked.rgb.shape == plain.rgb.shape == faithful.rgb.shape
    left, right = slice(0, 16), slice(96, 112)  # 4 feather radii from the edge at x = 56
    diff = lambda a, b: np.abs(a.astype(int) - b.astype(int)).max()  # noqa: E731
    assert diff(masked.rgb[:, left], faithful.rgb[:, left]) <= 1
    assert diff(masked.rgb[:, right], plain.rgb[:, right]) <= 1


def test_pattern_runs_on_a_torus(options, monkeypatch):
    plans = []
    real = creative.plan_tiles

    def spy(*args, **kw):
        plan = real(*args, **kw)
        plans.append(plan)
        return plan

    monkeypatch.setattr(creative, "plan_tiles", spy)
    result = _run(options, _params(pattern=True))
    assert result.rgb.shape == (80, 112, 3)
    wrapped = [p for p in plans if p.wrap]
    assert wrapped and wrapped[0].boxes[0].x < 0  # one tile with wrapped margins


def test_alpha_is_upscaled_alongside(options):
    alpha = np.zeros((40, 56), np.uint8)
    alpha[10:30, 10:40] = 255
    result = upscale(_loaded(_image(), alpha), _params(), options=options)
    assert result.alpha is not None and result.alpha.shape == (80, 112)
    assert result.alpha[40, 50] > 200 and result.alpha[2, 2] < 50


def test_progress_reports_every_stage_with_eta_and_preview(options):
    events: list[Progress] = []
    _run(options, _params(), progress=events.append)
    stages = [e.stage for e in events]
    for stage in ("models", "pre-upscale", "encode", "diffusion", "decode"):
        assert stage in stages
    order = [stages.index(s) for s in ("models", "pre-upscale", "encode", "diffusion", "decode")]
    assert order == sorted(order)
    diffusion = [e for e in events if e.stage == "diffusion"]
    previews = [e.preview for e in diffusion if e.preview is not None]
    assert previews and previews[0].dtype == np.uint8 and previews[0].shape[2] == 3
    assert diffusion[-1].done == diffusion[-1].total == 3  # int(6 · 0.35) + 1 steps
    assert "step" in diffusion[-1].message


def test_cancel_during_diffusion(options):
    seen = []

    def progress(p: Progress) -> None:
        seen.append(p.stage)

    with pytest.raises(Cancelled):
        _run(options, _params(), progress=progress, cancel=lambda: "diffusion" in seen)


class _FlakyUnet(torch.nn.Module):
    """Out of memory for batches (or tiles) above a size, as a small GPU would be."""

    def __init__(self, inner, max_batch: int, max_px: int) -> None:
        super().__init__()
        self.inner, self.max_batch, self.max_px = inner, max_batch, max_px

    def forward(self, x, *args, **kwargs):
        if x.shape[0] > self.max_batch or x.shape[-1] * x.shape[-2] > self.max_px:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return self.inner(x, *args, **kwargs)

    @property
    def config(self):
        return self.inner.config


def test_out_of_memory_halves_batch_then_tile(options, monkeypatch):
    import pipeline.diffusion.run as run

    real_get = run._pipelines().get

    def flaky_get(*args, **kw):
        pipe = real_get(*args, **kw)
        unet = pipe.unet if not isinstance(pipe.unet, _FlakyUnet) else pipe.unet.inner
        monkeypatch.setattr(pipe, "unet", _FlakyUnet(unet, max_batch=2, max_px=16 * 16))
        return pipe

    monkeypatch.setattr(run._pipelines(), "get", flaky_get)
    rgb = _image(128, 128)  # a 32×32 latent canvas: one 32×32 tile, too big for this "GPU"
    result = _run(options, _params(tiling_width=32, tiling_height=32), rgb=rgb)
    assert result.rgb.shape == (256, 256, 3)
    text = " ".join(result.warnings)
    assert "16×16" in text  # the tile was halved (one tile per batch was still too much)
    assert "tiles per batch" in text  # and the 9 smaller tiles needed smaller batches


def test_missing_models_are_listed(tmp_path):
    options = EngineOptions(device="cpu", model_dirs=(tmp_path,))
    with pytest.raises(ModelError) as info:
        _run(options, _params())
    message = str(info.value)
    assert "juggernaut_reborn" in message and "control_v11f1e_sd15_tile" in message
    assert "clarifier models download" in message


def test_unknown_lora_in_prompt_is_refused(options):
    with pytest.raises(ModelError, match="no_such_lora"):
        _run(options, _params(prompt="a cat <lora:no_such_lora:0.7>"))


def test_refused_sampler_settings_and_handfix_without_its_detector(options, monkeypatch):
    # A1111's UniPC (order 3) needs three img2img steps in every pass; refused before loading.
    with pytest.raises(ParamsError, match="UniPC") as info:
        _run(options, _params(scheduler="UniPC", creativity=0.1))
    assert info.value.fields == ["creativity"]
    from pipeline.diffusion import handfix

    def missing():
        raise PipelineError("handfix=hands_only needs MediaPipe: pip install 'clarifier[handfix]'")

    monkeypatch.setattr(handfix, "require_detector", missing)
    with pytest.raises(PipelineError, match="handfix"):
        _run(options, _params(handfix="hands_only"))


def test_file_round_trip_keeps_the_parameters(options, tmp_path):
    src = tmp_path / "in.png"
    save_image(src, _image())
    result = upscale_file(src, tmp_path / "out.png", _params(seed=11), options=options)
    info = read_run_info(result.output)
    assert info is not None and info.params.seed == 11 and info.params.mode == "creative"
    assert load_image(result.output).rgb.shape == (80, 112, 3)


def test_prompt_editing_and_and_reach_the_model_call_by_call(options, monkeypatch):
    """``[a cat:a dog:2]`` switches after model call 2 (A1111 counts calls from 0 against the
    run's full 6 steps), the ``AND`` part rides along at its own weight, and the negative
    prompt is the last embedding of every call."""
    from pipeline.diffusion.multidiffusion import TiledDenoiser

    seen: list[list[torch.Tensor]] = []
    real = TiledDenoiser.predict

    def spy(self, model_input, t, embeddings):
        seen.append([e.clone() for e in embeddings])
        return real(self, model_input, t, embeddings)

    monkeypatch.setattr(TiledDenoiser, "predict", spy)
    prompt = "[a cat:a dog:2] AND a tree :0.5"
    _run(options, _params(prompt=prompt, negative_prompt="blurry", creativity=0.5))
    # DPM++ 3M SDE Karras at 6 steps × 0.5: t_enc 3, four model calls, one embedding per part.
    assert len(seen) == 4 and all(len(call) == 3 for call in seen)
    first = [call[0] for call in seen]
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])
    assert not torch.equal(first[2], first[3])
    assert all(torch.equal(call[1], seen[0][1]) for call in seen)  # "a tree" never changes
    assert all(torch.equal(call[2], seen[0][2]) for call in seen)  # the negative prompt
    assert not torch.equal(seen[0][1], seen[0][0])


def test_hands_only_upscales_the_hand_crop_and_pastes_it_back(options, monkeypatch):
    """handfix=hands_only as Clarity runs it: the crop around the first hand is what goes
    through the passes, the result is blended back into the image at its own size; no hand,
    no image (the detector is stood in for; its own tests need the handfix extra)."""
    from pipeline.diffusion import handfix

    monkeypatch.setattr(handfix, "require_detector", lambda: None)
    found = iter([handfix.HandBox(30, 20, 60, 50), None])
    monkeypatch.setattr(handfix, "find_hand", lambda rgb: next(found))
    import pipeline.diffusion.run as run_module

    sizes = []
    real = run_module.run_passes

    def spy(rgb, params, **kw):
        sizes.append(rgb.shape)
        return real(rgb, params, **kw)

    monkeypatch.setattr(run_module, "run_passes", spy)
    image = _image(80, 96)
    result = _run(options, _params(handfix="hands_only"), rgb=image)
    # The crop is at least 512 px a side, clamped to this small image: all of it here.
    assert sizes == [(80, 96, 3)]
    assert result.rgb.shape == image.shape and result.info.output_size == (96, 80)
    centre = (slice(30, 50), slice(35, 60))
    assert not np.array_equal(result.rgb[centre], image[centre])  # the upscaled hand
    with pytest.raises(PipelineError, match="no hand found"):
        _run(options, _params(handfix="hands_only"), rgb=image)
