"""How close ``philox_randn`` comes to ``torch.randn`` on this machine's CUDA GPU, as JSON.

Not a test: a measurement to run once on a GPU machine (no model files, about half a minute):

    .venv/bin/python -m tests.bench.philox_check            # or: python tests/bench/philox_check.py

For several seeds, SD latent shapes (below and well beyond one wave of the GPU's threads) and the
first three draws on one seeded generator, it prints the largest absolute difference, the
fraction of bit-identical elements and the largest distance in float32 ulps, for two models of
the GPU's ``__sincosf`` (``accurate``: the true sine and cosine rounded, the module's default;
``sfu``: the SFU's angle reduction modelled first), plus the device-independent one-wave rule
against the GPU (its difference is the layout, once a latent exceeds one wave), the float64
path, and the ``"gpu"`` Brownian tree built on the CPU against the same tree built on CUDA. It
also times ``philox_randn`` for a 4 x 256 x 256 latent on the CPU.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

from pipeline.diffusion import noise  # noqa: E402

SEEDS = [0, 1337, 2**32 - 1, 2**40 + 12345]
SHAPES = [(3, 4), (1, 4, 64, 64), (1, 4, 128, 128), (1, 4, 256, 256), (1, 4, 384, 512)]
HUGE = (1, 4, 1024, 1024)  # several loop iterations on any GPU; one seed only


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 bit patterns as integers that count ulps across zero."""
    i = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _stats(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {
        "max_abs": float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()),
        "identical": float((got == ref).mean()),
        "max_ulp": int(np.abs(_ordered(got) - _ordered(ref)).max()),
    }


def _cpu_timing() -> float:
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        noise.philox_randn(1337, (1, 4, 256, 256), sm_count=108, threads_per_sm=2048)
        best = min(best, time.perf_counter() - start)
    return best


def _randn_cases(grid: tuple[int, int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cases = [(seed, shape) for seed in SEEDS for shape in SHAPES] + [(1337, HUGE)]
    for seed, shape in cases:
        numel = math.prod(shape)
        gen = torch.Generator("cuda").manual_seed(seed)
        offset = 0
        for draw in range(1, 4):
            ref = torch.randn(shape, generator=gen, device="cuda").cpu().numpy().ravel()
            every = np.arange(numel)
            row: dict[str, Any] = {"seed": seed, "shape": list(shape), "draw": draw}
            for model in ("accurate", "sfu"):
                got = noise._randn_at(seed, numel, every, offset, torch.float32, grid, model)
                row[model] = _stats(got, ref)
            rule = noise._randn_at(seed, numel, every, offset, torch.float32, None)
            row["one_wave_rule"] = _stats(rule, ref)
            rows.append(row)
            offset += noise._offset_increment(numel, torch.float32, grid)
    return rows


def _double_case(grid: tuple[int, int]) -> dict[str, Any]:
    shape = (1, 4, 256, 256)
    gen = torch.Generator("cuda").manual_seed(5)
    ref = torch.randn(shape, generator=gen, device="cuda", dtype=torch.float64).cpu()
    got = noise._philox_randn(5, shape, 0, torch.float64, "cpu", grid)
    diff = (got - ref).abs()
    return {
        "shape": list(shape),
        "max_abs": float(diff.max()),
        "identical": float((got == ref).double().mean()),
    }


def _brownian_cases() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sigmas = torch.tensor([14.614642, 5.0, 1.2, 0.4, 0.13, 0.0498], device="cuda")
    for shape in ((1, 4, 64, 64), (1, 4, 128, 128)):
        on_cuda = noise.brownian_noise(
            torch.zeros(shape, device="cuda"), sigmas[-1], sigmas[0], 1337
        )
        off = noise.brownian_noise(torch.zeros(shape), sigmas[-1].cpu(), sigmas[0].cpu(), 1337)
        for i in range(len(sigmas) - 1):
            ref = on_cuda(sigmas[i], sigmas[i + 1]).cpu().numpy().ravel()
            got = off(sigmas[i].cpu(), sigmas[i + 1].cpu()).numpy().ravel()
            row: dict[str, Any] = {
                "shape": list(shape),
                "sigmas": [float(sigmas[i]), float(sigmas[i + 1])],
            }
            row.update(_stats(got, ref))
            rows.append(row)
    return rows


def main() -> int:
    warnings.filterwarnings("ignore", message="Should have")  # torchsde's endpoint clamps
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_seconds_philox_randn_4x256x256": round(_cpu_timing(), 4),
    }
    if not torch.cuda.is_available():
        report["error"] = "no CUDA device: nothing to compare with"
        print(json.dumps(report, indent=1))
        return 2
    grid = noise.cuda_grid()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    report.update(
        {
            "device": props.name,
            "cuda": torch.version.cuda,
            "sm_count": grid[0],
            "threads_per_sm": grid[1],
            "one_wave_elements": grid[0] * grid[1],
            "randn": _randn_cases(grid),
            "randn_float64": _double_case(grid),
            "brownian_gpu_tree_on_cpu": _brownian_cases(),
        }
    )
    worst = {
        model: max(row[model]["max_abs"] for row in report["randn"])
        for model in ("accurate", "sfu")
    }
    report["summary"] = {
        "worst_max_abs": worst,
        "mean_identical": {
            model: float(np.mean([row[model]["identical"] for row in report["randn"]]))
            for model in ("accurate", "sfu")
        },
        "brownian_worst_max_abs": max(r["max_abs"] for r in report["brownian_gpu_tree_on_cpu"]),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
