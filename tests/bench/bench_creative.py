"""Benchmark of the creative engine: tiling overhead, memory flatness, tile-step and pass times.

    python -m tests.bench.bench_creative         # tiny models + one full-size tile-step
    python -m tests.bench.bench_creative --full  # + the whole 1024²→2048² full-size pass

Sections (each prints ratios measured within this one run, since these machines are noisy):

1. **Tiling overhead** at Clarity's defaults (112×144 latent tiles, overlap 4): UNet latent pixels
   processed per output latent pixel, per model call and over a whole run (steps × CFG), at ×2, ×4
   and ×8 from a 1024² input. Pure arithmetic over the real tile planner.
2. **Peak RSS** of a whole creative run with the tiny random models at 4, 16 and 64 MP outputs,
   each in a fresh process. The pre-upscale is swapped for Lanczos here (ESRGAN on a 32 MP input
   takes hours on a CPU and is benchmarked by bench_faithful); everything after it — VAE encode,
   tiled diffusion, VAE decode, saving — is the real code. Memory must stay flat: what grows is
   the uint8 images themselves (3 bytes per pixel each).
3. **Time per tile-step**: one 112×144-latent tile through ControlNet + UNet with CFG, with the tiny
   models and with full-size SD1.5 shapes (random weights; speed and memory are honest, the
   picture is not). fp16 on CUDA, fp32 on CPU.
4. ``--full``: the whole 1024²→2048² creative pass with full-size random-weight models, the
   engine's speed target (≤ 2.5 s on one H100). On a CPU this takes hours; it is estimated from
   section 3 instead unless asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# -- 1. tiling overhead ------------------------------------------------------------------------


def tiling_overhead() -> None:
    from pipeline.diffusion.tiling import plan_tiles
    from pipeline.params import UpscaleParams

    print("\n## 1. Tiling overhead at Clarity defaults (from 1024×1024)")
    print(
        "| scale | passes | tiles per pass | UNet px per canvas px (per call) "
        "| UNet px per output px (whole run, steps × CFG) |"
    )
    print("|---|---|---|---|---|")
    for scale in (2, 4, 8):
        params = UpscaleParams(scale_factor=scale, mode="creative")
        w = h = 1024
        tiles, ratios, work = [], [], 0
        for factor, creativity, _seed in params.passes():
            w, h = int(w * factor // 8 * 8), int(h * factor // 8 * 8)
            plan = plan_tiles(w // 8, h // 8, params.tiling_width, params.tiling_height)
            px = sum(b.w * b.h for b in plan.boxes)
            steps = int(min(creativity, 0.999) * params.num_inference_steps) + 1
            tiles.append(len(plan.boxes))
            ratios.append(px / (w * h / 64))
            work += steps * px * 2
        per_out = work / (w * h / 64)
        print(
            f"| ×{scale} | {len(tiles)} | {', '.join(map(str, tiles))} | "
            f"{', '.join(f'{r:.2f}' for r in ratios)} | {per_out:.1f} |"
        )


# -- 2. peak RSS -----------------------------------------------------------------------------


def _make_input(megapixels: float, out_dir: Path) -> Path:
    """A textured input for a ×2 run to ``megapixels``, built row-band by row-band in uint8."""
    import numpy as np

    from pipeline.io.save import save_image

    src = out_dir / f"in-{megapixels:g}.png"
    if src.exists():
        return src
    side = int((megapixels * 1e6) ** 0.5 / 2) // 8 * 8
    img = np.empty((side, side, 3), np.uint8)
    x = np.arange(side, dtype=np.uint32)
    rng = np.random.default_rng(0)
    for y in range(side):
        img[y, :, 0] = x % 256
        img[y, :, 1] = y % 256
        img[y, :, 2] = ((x ^ y) % 256) | rng.integers(0, 16, side, dtype=np.uint32)
    save_image(src, img)
    return src


def _rss_child(models: Path, megapixels: float, out_dir: Path) -> dict:
    """Runs in a fresh process: one creative run to a ``megapixels`` output."""
    import torch

    import pipeline.diffusion.passes as creative
    from pipeline.engine import EngineOptions, upscale_file
    from pipeline.params import UpscaleParams
    from pipeline.sr.post import lanczos_resize

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))

    def lanczos_pre_upscale(image, scale, _model, **_kw):
        h, w = image.shape[:2]
        return lanczos_resize(image, (int(w * scale // 8 * 8), int(h * scale // 8 * 8)))

    creative.pre_upscale = lanczos_pre_upscale
    src = _make_input(megapixels, out_dir)  # in the parent: its memory must not count here
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # One sampler step and 48×48 latent tiles: memory does not depend on either (the
    # attention over a 112×144 tile dominates a tiny model's time on a CPU, not its memory).
    params = UpscaleParams(
        mode="creative",
        scale_factor=2,
        num_inference_steps=4,
        creativity=0.2,
        tiling_width=48,
        tiling_height=48,
        seed=1,
    )
    started = time.perf_counter()
    result = upscale_file(
        src,
        out_dir / f"out-{megapixels:g}.png",
        params,
        options=EngineOptions(device="cpu", model_dirs=(models,), max_output_pixels=80_000_000),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w, h = result.info.output_size
    return {
        "mp": w * h / 1e6,
        "base_mib": base / 1024,
        "peak_mib": peak / 1024,
        "seconds": time.perf_counter() - started,
    }


def peak_rss(models: Path, sizes: list[float]) -> None:
    print(
        "\n## 2. Peak RSS of a creative ×2 run (tiny models, Lanczos pre-upscale, 48² latent "
        "tiles, 1 step), a fresh process each"
    )
    print("| output MP | peak RSS MiB | growth over imports MiB | MiB per output MP | time s |")
    print("|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in sizes:
            _make_input(mp, Path(tmp))
            out = subprocess.run(
                [sys.executable, "-m", "tests.bench.bench_creative", "--rss-child", str(mp),
                 "--models", str(models), "--tmp", tmp],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                print(f"| {mp} | failed: {out.stderr.strip().splitlines()[-1:]} |")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            growth = row["peak_mib"] - row["base_mib"]
            print(
                f"| {row['mp']:.1f} | {row['peak_mib']:.0f} | {growth:.0f} | "
                f"{growth / row['mp']:.1f} | {row['seconds']:.1f} |"
            )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        ga, gb = a["peak_mib"] - a["base_mib"], b["peak_mib"] - b["base_mib"]
        grown = b["mp"] - a["mp"]
        print(f"\nOutput grew ×{b['mp'] / a['mp']:.1f}.")
        print(f"Peak RSS per added output MP: {(b['peak_mib'] - a['peak_mib']) / grown:.1f} MiB.")
        over = gb / max(ga, 1)
        print(f"Peak RSS grew ×{b['peak_mib'] / a['peak_mib']:.2f}, over imports ×{over:.2f}.")
        print(f"A float32 canvas would have cost {12 * grown:.0f} MiB more; the uint8 images alone")
        print(f"(input + output) {3.75 * grown:.0f} MiB more.")


# -- 3./4. tile-step and pass times ------------------------------------------------------------


def _full_size_models(device, dtype):
    from diffusers import ControlNetModel, UNet2DConditionModel

    cfg = ROOT / "resources" / "sd15"
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
    controlnet = ControlNetModel.from_config(ControlNetModel.load_config(cfg / "controlnet"))
    return unet.to(device, dtype).eval(), controlnet.to(device, dtype).eval()


def tile_step(unet, controlnet, device, dtype, *, hidden: int, repeats: int) -> float:
    import numpy as np
    import torch

    from pipeline.diffusion.multidiffusion import TiledDenoiser
    from pipeline.diffusion.tiling import plan_tiles

    plan = plan_tiles(112, 144, 112, 144)
    hint = np.random.default_rng(0).integers(0, 255, (1152, 896, 3), dtype=np.uint8)
    cond = torch.randn(1, 77, hidden)
    den = TiledDenoiser(
        unet, controlnet, hint, cond, torch.randn(1, 77, hidden), plan=plan, guidance=6.0,
        resemblance=0.6, dtype=dtype,
    )  # fmt: skip
    x = torch.randn(1, 4, 144, 112, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            den(x, torch.tensor(500))
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return min(times[1:]) if repeats else times[0]


def tile_steps(models: Path, device_name: str) -> float | None:
    import torch

    from pipeline.device import default_dtype, pick_device
    from pipeline.diffusion.sd_loading import load_pipeline

    device = pick_device(device_name)
    dtype = default_dtype(device)
    print(f"\n## 3. Time per tile-step (112×144 latent, ControlNet + UNet, CFG) on {device}")
    pipe = load_pipeline(
        models / "Stable-diffusion" / "juggernaut_reborn.safetensors",
        vae=None,
        controlnet=models / "ControlNet" / "control_v11f1e_sd15_tile.pth",
        config_dir=models / "sd15-config",
        device=device,
        dtype=dtype,
    )
    tiny = tile_step(
        pipe.unet, pipe.controlnet, device, dtype,
        hidden=pipe.text_encoder.config.hidden_size, repeats=3,
    )  # fmt: skip
    print(f"- tiny models: {tiny * 1000:.1f} ms")
    del pipe
    started = time.perf_counter()
    unet, controlnet = _full_size_models(device, dtype)
    print(f"- full-size SD1.5 shapes built in {time.perf_counter() - started:.1f} s")
    full = tile_step(
        unet, controlnet, device, dtype, hidden=768, repeats=1 if device.type == "cuda" else 0
    )
    print(f"- full-size SD1.5 ({dtype}): {full:.2f} s per tile-step")
    calls = 7 * 6  # 1024²→2048² at defaults: 7 steps × 6 tiles (one batch of 6 per call)
    print(
        f"- 1024²→2048² at Clarity defaults = {calls} tile-steps ≈ {calls * full:.0f} s of "
        "diffusion (estimate; batching 6 tiles per call is faster on a GPU)"
    )
    del unet, controlnet
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return full


def full_pass(device_name: str) -> None:
    """The speed target: a whole 1024²→2048² run at defaults with full-size random models."""
    import numpy as np
    import torch

    from pipeline.device import pick_device
    from pipeline.diffusion.passes import CreativeSettings, run_passes
    from pipeline.diffusion.run import creative_settings
    from pipeline.params import UpscaleParams

    device = pick_device(device_name)
    settings: CreativeSettings = creative_settings(device, sr_tile=512)
    print(f"\n## 4. Whole 1024²→2048² pass, full-size random SD1.5, on {device}")
    from diffusers import AutoencoderKL

    unet, controlnet = _full_size_models(device, settings.dtype)
    cfg = ROOT / "resources" / "sd15"
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")).to(device).eval()

    class Pipe:
        pass

    pipe = Pipe()
    pipe.unet, pipe.controlnet, pipe.vae = unet, controlnet, vae
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        DPMSolverMultistepScheduler.load_config(cfg / "scheduler")
    )

    class Encoder:
        def encode_pair(self, _p, _n):
            g = torch.Generator().manual_seed(0)
            return torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)

    class Lanczos:
        pass

    import pipeline.diffusion.passes as creative
    from pipeline.sr.post import lanczos_resize

    creative.pre_upscale = lambda img, s, _m, **_k: lanczos_resize(
        img, (int(img.shape[1] * s // 8 * 8), int(img.shape[0] * s // 8 * 8))
    )
    img = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    params = UpscaleParams(mode="creative", scale_factor=2, seed=1337)
    for label in ("warm-up", "timed"):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out, log = run_passes(
            img, params, pipe=pipe, encoder=Encoder(), upscaler=Lanczos(), settings=settings,
            report=lambda _s: None, cancel=lambda: False,
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(
            f"- {label}: {seconds:.2f} s, output {out.shape[1]}×{out.shape[0]}, "
            f"{log.model_calls} model calls, tiles {log.tiles}, peak GPU {peak:.1f} GiB"
        )
    print(f"- target ≤ 2.5 s on one H100: ratio {seconds / 2.5:.2f} of the target")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run the whole full-size pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="4,16,64", help="output megapixels for the RSS runs")
    parser.add_argument("--rss-child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help="a tiny models folder (built if omitted)")
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--only-rss", action="store_true", help="sections 1 and 2 only")
    args = parser.parse_args(argv)
    if args.rss_child:
        print(json.dumps(_rss_child(args.models, args.rss_child, args.tmp)))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiling_overhead()
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models
        if models is None:
            from tests.tiny_models import build_tiny_models

            models = Path(tmp) / "models"
            build_tiny_models(models)
        peak_rss(models, [float(s) for s in args.sizes.split(",")])
        if not args.only_rss:
            tile_steps(models, args.device)
    if args.full:
        full_pass(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
