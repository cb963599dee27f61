"""Benchmark of the faithful mode's pre-upscale: memory stays flat; what tiling costs.

Prints, in one run:

(a) wall time and peak RSS of a faithful ×4 at growing input sizes, each size in a fresh
    subprocess (so each peak is that size's own), with the peak minus the uint8 output buffer,
    the one allocation that has to grow with the image;
(b) throughput (output megapixels/s) of the tiled path against plain untiled inference (the whole
    image as one tensor) at a size both can do, as a ratio.

Defaults finish in about 8 minutes on a 2-core CPU: the compact ``realesr-animevideov3`` for the
size sweep up to the 64 MP output cap (2000×2000 → 8000×8000), plus a single-tile
``realesrgan-x4plus`` run and an x4plus comparison at 384² (4 tiles). The tiling cost is the
context margin (24 px for the compact net, 72 px for x4plus, see ``default_margin``): larger tiles
amortise it.

    .venv/bin/python -m tests.bench.bench_faithful
    .venv/bin/python tests/bench/bench_faithful.py --sizes 250,500 --tile 256

The full x4plus sweep (about two hours on 2 CPU cores; minutes on a GPU):

    .venv/bin/python -m tests.bench.bench_faithful --model realesrgan-x4plus \\
        --sizes 250,500,1000,2000 --compare-size 384

``--device cuda`` runs on a GPU (fp16); RSS then measures host memory only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

MIB = 2**20


def _image(size: int):
    """A natural-looking ``size``×``size`` RGB test image (skimage's astronaut, resized)."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        base = Image.fromarray(data.astronaut())
    except ImportError:  # pragma: no cover - skimage is a dev dependency
        rng = np.random.default_rng(0)
        base = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    return np.asarray(base.resize((size, size), Image.LANCZOS))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _child(job: dict) -> dict:
    """One measurement in this (fresh) process."""
    import psutil
    import torch

    from pipeline.device import default_dtype, describe_device, pick_device
    from pipeline.sr.loading import load_upscaler
    from pipeline.sr.preupscale import default_margin, plan_tiles, pre_upscale

    device = pick_device(job["device"])
    model = load_upscaler(job["model"], device=device, dtype=default_dtype(device))
    img = _image(job["size"])
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if job["mode"] == "tiled":
        out = pre_upscale(img, 4, model, tile=job["tile"])
    else:
        with torch.inference_mode():
            x = torch.from_numpy(img).to(device).permute(2, 0, 1)[None]
            y = model.net(x.to(default_dtype(device)) / 255).float().clamp_(0, 1)
            out = (y[0].permute(1, 2, 0) * 255).round_().to(torch.uint8).cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {
        **job,
        "device_name": describe_device(device),
        "wall_s": wall,
        "peak_rss": _peak_rss(),
        "baseline_rss": baseline,
        "out_bytes": out.nbytes,
        "out_mp": out.shape[0] * out.shape[1] / 1e6,
        "tiles": len(plan_tiles(job["size"], job["size"], job["tile"], model.alignment)),
        "margin": default_margin(model),
    }


def _spawn(job: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_faithful", "--child", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    return (
        f"{r['model']:<24} {r['size']:>5}² → {r['out_mp']:5.1f} MP {r['wall_s']:7.1f} s "
        f"{r['out_mp'] / r['wall_s']:6.3f} MP/s | peak RSS {r['peak_rss'] / MIB:5.0f} MiB, "
        f"before the run {r['baseline_rss'] / MIB:4.0f}, output {r['out_bytes'] / MIB:4.0f}, "
        f"peak−output {(r['peak_rss'] - r['out_bytes']) / MIB:4.0f} MiB "
        f"| {r['tiles']} tiles, margin {r['margin']}"
    )


def _compare(base: dict, model: str, size: int) -> None:
    tiled = _spawn({**base, "model": model, "size": size})
    plain = _spawn({**base, "mode": "untiled", "model": model, "size": size})
    print(
        f"  {model}, {size}² input, tile {base['tile']} ({tiled['tiles']} tiles, "
        f"margin {tiled['margin']}):"
    )
    for name, r in (("tiled", tiled), ("untiled", plain)):
        print(
            f"    {name:<8} {r['wall_s']:7.1f} s  {r['out_mp'] / r['wall_s']:6.3f} MP/s  "
            f"peak RSS {r['peak_rss'] / MIB:6.0f} MiB"
        )
    ratio = (tiled["out_mp"] / tiled["wall_s"]) / (plain["out_mp"] / plain["wall_s"])
    print(f"    throughput tiled / untiled = {ratio:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3", help="upscaler for the sweep")
    parser.add_argument("--sizes", default="250,500,1000,2000", help="input sides, comma-separated")
    parser.add_argument("--tile", type=int, default=256, help="pre-upscale tile size (input px)")
    parser.add_argument(
        "--compare-size",
        type=int,
        default=512,
        help="input side for the tiled vs untiled comparison of --model (0: skip)",
    )
    parser.add_argument(
        "--x4plus-size",
        type=int,
        default=256,
        help="input side of the extra realesrgan-x4plus run in (a) (0: skip)",
    )
    parser.add_argument(
        "--x4plus-compare-size",
        type=int,
        default=384,
        help="input side of the realesrgan-x4plus tiled vs untiled comparison (0: skip)",
    )
    parser.add_argument("--device", default="cpu", help="auto, cuda, mps or cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    base = {"device": args.device, "tile": args.tile, "mode": "tiled"}
    print("(a) faithful ×4, each size in a fresh process")
    runs = [{**base, "model": args.model, "size": int(s)} for s in args.sizes.split(",")]
    if args.x4plus_size and args.model != "realesrgan-x4plus":
        runs.append({**base, "model": "realesrgan-x4plus", "size": args.x4plus_size})
    results = []
    for job in runs:
        results.append(_spawn(job))
        print(_row(results[-1]), flush=True)
    print(f"device: {results[0]['device_name']}")
    sweep = [r for r in results if r["model"] == args.model]
    if len(sweep) > 1:
        rest = [(r["peak_rss"] - r["out_bytes"]) / MIB for r in sweep]
        print(
            f"peak RSS minus output across the sweep: {min(rest):.0f} … {max(rest):.0f} MiB "
            f"(outputs {sweep[0]['out_bytes'] / MIB:.0f} … {sweep[-1]['out_bytes'] / MIB:.0f} MiB)"
        )

    print("\n(b) tiled vs plain untiled inference (whole image as one tensor), fresh processes")
    if args.compare_size:
        _compare(base, args.model, args.compare_size)
    if args.x4plus_compare_size and args.model != "realesrgan-x4plus":
        _compare(base, "realesrgan-x4plus", args.x4plus_compare_size)
    return 0


try:
    import pytest
except ImportError:  # pragma: no cover - the script runs without pytest too
    pytest = None

if pytest is not None:

    @pytest.mark.bench
    def test_bench_smoke() -> None:
        """The benchmark runs end to end on a tiny size.

        ``pytest -m bench tests/bench/bench_faithful.py``"""
        result = _spawn(
            {
                "device": "cpu",
                "tile": 64,
                "mode": "tiled",
                "model": "realesr-animevideov3",
                "size": 96,
            }
        )
        assert result["out_mp"] == pytest.approx(384 * 384 / 1e6)


if __name__ == "__main__":
    sys.exit(main())
