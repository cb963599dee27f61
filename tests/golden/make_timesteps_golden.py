"""Regenerate ``tests/golden/timesteps/*.json``: reference runs of A1111's DDIM, PLMS, UniPC and
Restart samplers on a toy model, computed by code independent of ``pipeline``.

The references:

* **DDIM** and **PLMS**: diffusers' ``DDIMScheduler`` and ``PNDMScheduler(skip_prk_steps=True)``
  (the CompVis/LDM algorithms), stepped over A1111's grid. A1111 walks its handed grid
  ``ts[:t_enc]`` from the top down to ``ts[0]``: each step goes from ``t`` to
  ``t - 1000 // steps``, which is exactly diffusers' step rule, so diffusers is handed the
  descending ``ts[1:t_enc]`` (PLMS: with its second timestep repeated, diffusers' improved-Euler
  start).
* **UniPC**: diffusers' ``UniPCMultistepScheduler`` (ported by the UniPC authors) with the bh1/bh2
  variant, order, lower-order-final and data prediction that A1111 uses. diffusers builds its own
  integer grid, so its sigma list is replaced by A1111's: ``len(timesteps)`` steps, uniform in
  continuous time ``t = (n + 1) / 1000`` from ``timesteps[-1] / 1000 + 1 / 1000`` (img2img) or 1
  to ``1 / 1000``, with half-log-alpha linear between training steps (written here from the UniPC
  / DPM-Solver discrete noise schedule); the model is fed ``1000 * t - 1``. diffusers' step
  returns the predictor's latent and corrects it in the next call, A1111 corrects within the
  step: the model inputs and the final latent are the same, and those are what is recorded.
* **Restart**: k-diffusion 0.1.1.post1's ``sample_heun``, ``get_sigmas_karras`` and ``to_d``, with
  the restart schedule of Xu et al. 2023 as A1111 configures it (restart list chosen by step
  count, the main list rebuilt as Karras, noise re-injected from the stream at each jump up).

Every run records each model call's inputs ``(t or sigma, x)`` and the final latent; stochastic
runs draw from a fixed noise list stored with the case, in order.

Reference environment (outside the repository; torch only from its local CPU wheel)::

    python3 -m venv /tmp/tsref
    /tmp/tsref/bin/pip install torch==2.13.0
    /tmp/tsref/bin/pip install diffusers==0.42.1 numpy scipy tqdm
    /tmp/tsref/bin/pip download --no-deps k-diffusion==0.1.1.post1 -d /tmp/tsref/dl
    /tmp/tsref/bin/python -m zipfile -e /tmp/tsref/dl/k_diffusion-0.1.1.post1-py3-none-any.whl \
        /tmp/tsref/kd
    KDIFFUSION_SRC=/tmp/tsref/kd /tmp/tsref/bin/python tests/golden/make_timesteps_golden.py

k-diffusion's ``sampling.py`` is imported on its own, with stubs for the modules it imports but
these references do not use (``torchdiffeq``, ``torchsde``, ``k_diffusion.utils``).

The toy models and the SD1.5 schedule below are imported by ``tests/unit/test_sampling_timesteps``
so test and references share one definition; they need only torch and numpy.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

SHAPE = (2, 1, 2, 3)  # two batch elements: per-element timesteps and broadcasting are exercised
OUT = Path(__file__).resolve().parent / "timesteps"


# --- shared with the test ---------------------------------------------------------------------


def sd15_alphas_cumprod() -> np.ndarray:
    """SD1.5's training schedule (scaled linear betas 0.00085..0.012 over 1000 steps), float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def toy_pattern(like: torch.Tensor) -> torch.Tensor:
    """A fixed spatial pattern of ``like``'s shape: the model is not elementwise-symmetric."""
    k = torch.arange(like.numel(), dtype=torch.float64).reshape(like.shape)
    return (0.8 * torch.sin(0.37 * k + 0.5)).to(like.dtype)


def _per_batch(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, nonlinear noise predictor ``eps(x, t)``; ``t``: training steps, ``(B,)``."""
    u = _per_batch(t, x) / 1000.0
    a = 0.6 + 0.3 * torch.cos(3.0 * u)
    b = 0.25 * torch.sin(2.0 * u + 0.3)
    c = 0.2 + 0.1 * u
    return torch.tanh(x) * a + x * b + toy_pattern(x) * c


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A deterministic, nonlinear k-diffusion denoiser ``D(x, sigma)``; ``sigma``: ``(B,)``."""
    s = _per_batch(sigma, x)
    return (
        0.7 * torch.tanh(x) / (1.0 + 0.3 * s)
        + x * 0.4 / (1.0 + s**2)
        + toy_pattern(x) * 0.5 * s / (1.0 + s)
    )


def toy_check() -> dict:
    """Values of the toy models at fixed inputs, stored with the golden data."""
    x = torch.linspace(-2.0, 2.0, math.prod(SHAPE), dtype=torch.float64).reshape(SHAPE)
    return {
        "eps_t": [500.0, 37.5],
        "eps": toy_eps(x, torch.tensor([500.0, 37.5], dtype=torch.float64)).reshape(-1).tolist(),
        "denoiser_sigma": [3.0, 0.25],
        "denoiser": toy_denoiser(x, torch.tensor([3.0, 0.25], dtype=torch.float64))
        .reshape(-1)
        .tolist(),
    }


# --- A1111's plan, written from its description -----------------------------------------------


def ref_grid(steps: int, discard: bool = False) -> list[int]:
    n = steps + int(discard)
    return [min(max(v + 1, 0), 999) for v in range(0, 1000, 1000 // n)]


def ref_plan(steps: int, strength: float, acp: np.ndarray, discard: bool = False):
    grid = ref_grid(steps, discard)
    t_enc = int(min(strength, 0.999) * steps)
    a = float(acp[grid[t_enc]])
    return grid, grid[:t_enc], math.sqrt(a), math.sqrt(1.0 - a)


# --- helpers ----------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(seed: int, count: int = 1) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(count)]


def _flat(x: torch.Tensor) -> list[float]:
    return [float(f"{v:.15g}") for v in x.detach().double().reshape(-1).tolist()]


class Recorder:
    """Wraps a model, recording every call's ``(t, x)``."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append({"t": float(t.reshape(-1)[0]), "x": _flat(x)})
        return self.fn(x, t)


def _tensor_t(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype)


def _start(case: dict, steps: int, strength: float, acp, discard: bool, seed: int):
    grid, sched, sa, s1 = ref_plan(steps, strength, acp, discard)
    x0, n0 = _randn(seed, 2)
    case["plan"] = {"timesteps": sched, "sqrt_alpha": sa, "sqrt_one_minus_alpha": s1}
    return grid, sched, x0 * sa + n0 * s1


# --- DDIM and PLMS (diffusers) ------------------------------------------------------------------


def _sd15_scheduler(cls, acp, **flags):
    sched = cls(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        **flags,
    )
    sched.alphas_cumprod = torch.from_numpy(acp.copy())  # the float64 schedule both sides use
    return sched


def ddim_case(name, acp, *, steps, strength=None, eta=0.0, discard=False, seed=0):
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    case: dict = {"name": name, "sampler": "ddim", "eta": eta, "steps": steps}
    case.update({"strength": strength, "discard": discard})
    if strength is None:  # txt2img: the whole grid from pure noise
        grid = ref_grid(steps, discard)
        handed, x = grid, _randn(seed)[0]
        case["plan"] = None
    else:
        grid, handed, x = _start(case, steps, strength, acp, discard, seed)
    case["timesteps"], case["start"] = handed, _flat(x)
    run = handed[1:][::-1]
    noise = _randn(seed + 1000, len(run)) if eta > 0 else []
    case["noise"] = [_flat(n) for n in noise]
    sched = _sd15_scheduler(
        DDIMScheduler, acp, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    sched.set_timesteps(steps + int(discard))
    assert sched.num_inference_steps is not None
    assert 1000 // sched.num_inference_steps == grid[1] - grid[0]
    model = Recorder(toy_eps)
    for k, t in enumerate(run):
        eps = model(x, _tensor_t(x, t))
        drawn = noise[k] if eta > 0 else None
        x = sched.step(eps, t, x, eta=eta, variance_noise=drawn, return_dict=False)[0]
    case["calls"], case["final"] = model.calls, _flat(x)
    return case


def plms_case(name, acp, *, steps, strength, discard=False, seed=0):
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler

    case: dict = {"name": name, "sampler": "plms", "steps": steps}
    case.update({"strength": strength, "discard": discard})
    grid, handed, x = _start(case, steps, strength, acp, discard, seed)
    case["timesteps"], case["start"], case["noise"] = handed, _flat(x), []
    run = handed[1:][::-1]
    stride = grid[1] - grid[0]
    sched = _sd15_scheduler(
        PNDMScheduler, acp, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
    )
    sched.set_timesteps(steps + int(discard))
    assert sched.num_inference_steps is not None
    assert 1000 // sched.num_inference_steps == stride
    model = Recorder(toy_eps)
    for t in [run[0], run[0] - stride, *run[1:]]:  # diffusers repeats the 2nd timestep
        x = sched.step(model(x, _tensor_t(x, t)), t, x, return_dict=False)[0]
    case["calls"], case["final"] = model.calls, _flat(x)
    return case


# --- UniPC (diffusers, on A1111's continuous grid) -------------------------------------------


def _log_alpha(acp: np.ndarray, t: float) -> float:
    """Half log alpha at continuous time t; step n at (n + 1) / N, linear in between."""
    grid = (np.arange(len(acp)) + 1.0) / len(acp)
    return float(np.interp(t, grid, 0.5 * np.log(acp)))


def _lambda(acp: np.ndarray, t: float) -> float:
    la = _log_alpha(acp, t)
    return la - 0.5 * math.log(1.0 - math.exp(2.0 * la))


def _t_of_lambda(acp: np.ndarray, lam: float) -> float:
    la = -0.5 * math.log1p(math.exp(-2.0 * lam))
    grid = (np.arange(len(acp)) + 1.0) / len(acp)
    return float(np.interp(la, (0.5 * np.log(acp))[::-1], grid[::-1]))


def unipc_times(acp, t_start: float, n: int, skip_type: str) -> list[float]:
    t_end = 1.0 / len(acp)
    if skip_type == "time_uniform":
        return np.linspace(t_start, t_end, n + 1).tolist()
    if skip_type == "time_quadratic":
        return (np.linspace(t_start**0.5, t_end**0.5, n + 1) ** 2).tolist()
    lams = np.linspace(_lambda(acp, t_start), _lambda(acp, t_end), n + 1)
    return [_t_of_lambda(acp, float(v)) for v in lams]


def unipc_case(
    name,
    acp,
    *,
    steps,
    strength=None,
    variant="bh1",
    order=3,
    lower_order_final=True,
    skip_type="time_uniform",
    seed=0,
):
    from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

    case: dict = {"name": name, "sampler": "unipc", "steps": steps, "strength": strength}
    case.update({"variant": variant, "order": order, "lower_order_final": lower_order_final})
    case.update({"skip_type": skip_type, "discard": False})
    if strength is None:
        handed, x = ref_grid(steps), _randn(seed)[0]
        case["plan"], t_start, case["is_img2img"] = None, 1.0, False
    else:
        _, handed, x = _start(case, steps, strength, acp, False, seed)
        t_start, case["is_img2img"] = handed[-1] / 1000 + 1 / 1000, True
    case["timesteps"], case["start"], case["noise"] = handed, _flat(x), []
    n = len(handed)
    times = unipc_times(acp, t_start, n, skip_type)
    sigmas = []
    for t in times:
        alpha = math.exp(_log_alpha(acp, t))
        sigmas.append(math.sqrt(1.0 - alpha * alpha) / alpha)
    sched = _sd15_scheduler(
        UniPCMultistepScheduler,
        acp,
        solver_order=order,
        solver_type=variant,
        lower_order_final=lower_order_final,
        predict_x0=True,
        final_sigmas_type="sigma_min",
    )
    sched.set_timesteps(n)
    sched.sigmas = torch.tensor(sigmas, dtype=torch.float64)  # A1111's grid, final level included
    sched.timesteps = torch.arange(n, 0, -1)  # labels only: the solver indexes sigmas by step
    sched.set_begin_index(0)
    model = Recorder(toy_eps)
    for k in range(n):
        eps = model(x, _tensor_t(x, (times[k] - 1 / 1000) * 1000))
        x = sched.step(eps, sched.timesteps[k], x, return_dict=False)[0]
    case["calls"], case["final"] = model.calls, _flat(x)
    return case


# --- Restart (k-diffusion) ----------------------------------------------------------------------


def load_kdiffusion_sampling():
    src = Path(os.environ.get("KDIFFUSION_SRC", "/tmp/tsref/kd"))
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    vars(utils)["append_dims"] = append_dims  # the one utils function the Heun path needs
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(src / "k_diffusion")]
    vars(pkg)["utils"] = utils
    stubs = {"k_diffusion": pkg, "k_diffusion.utils": utils}
    for name in ("torchdiffeq", "torchsde"):
        stub = types.ModuleType(name)
        vars(stub)["odeint"] = None
        stubs[name] = stub
    sys.modules.update(stubs)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "k_diffusion.sampling", src / "k_diffusion" / "sampling.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["k_diffusion.sampling"] = module
    spec.loader.exec_module(module)
    return module


def ref_restart(kd, model, x, sigmas, noise, s_noise, restart_list):
    """Restart as Heun runs (k-diffusion) between the restart points, noise added at each jump."""
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            r_steps, r_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = kd.get_sigmas_karras(
                steps - r_steps * r_times, sigmas[-2].item(), sigmas[0].item()
            )
            restart_list = {0.1: [r_steps + 1, r_times, 2]}
    at = {int(torch.argmin((sigmas - k).abs())): v for k, v in restart_list.items()}
    done, draws = 0, list(noise)
    for idx in sorted(at):
        if idx == 0 or idx >= len(sigmas):
            continue
        r_points, r_times, r_max = at[idx]
        max_idx = int(torch.argmin((sigmas - r_max).abs()))
        if max_idx >= idx:
            continue
        x = kd.sample_heun(model, x, sigmas[done : idx + 1], disable=True)
        done = idx
        grid = kd.get_sigmas_karras(r_points, sigmas[idx].item(), sigmas[max_idx].item())[:-1]
        for _ in range(r_times):
            jump = (grid[0] ** 2 - sigmas[idx] ** 2) ** 0.5
            x = x + draws.pop(0) * s_noise * jump
            x = kd.sample_heun(model, x, grid, disable=True)
    x = kd.sample_heun(model, x, sigmas[done:], disable=True)
    return x, len(noise) - len(draws)


def restart_case(kd, name, *, sigmas, s_noise=1.0, restart_list=None, seed=0, draws=4, note=""):
    case: dict = {"name": name, "sampler": "restart", "note": note, "s_noise": s_noise}
    case["restart_list"] = (
        None if restart_list is None else [[k, *v] for k, v in restart_list.items()]
    )
    case["sigmas"] = [float(v) for v in sigmas.tolist()]
    x = _randn(seed)[0] * float(sigmas[0])
    noise = _randn(seed + 1000, draws)
    case["start"], case["noise"] = _flat(x), [_flat(n) for n in noise]
    model = Recorder(toy_denoiser)
    x, used = ref_restart(kd, model, x, sigmas, noise, s_noise, restart_list)
    case["calls"], case["final"], case["noise_used"] = model.calls, _flat(x), used
    return case


def a1111_karras_img2img(kd, steps: int, strength: float, acp) -> torch.Tensor:
    """A1111's img2img sigma list for a Karras sampler: the full schedule's last t_enc + 1 steps."""
    model_sigmas = np.sqrt((1 - acp) / acp)
    full = kd.get_sigmas_karras(steps, float(model_sigmas[0]), float(model_sigmas[-1]))
    t_enc = int(min(strength, 0.999) * steps)
    return full[steps - t_enc - 1 :]


# --- main ---------------------------------------------------------------------------------------


def write(name: str, cases: list[dict]) -> None:
    OUT.mkdir(exist_ok=True)
    data = {"shape": list(SHAPE), "toy_check": toy_check(), "cases": cases}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"{path}: {len(cases)} cases, {sum(len(c['calls']) for c in cases)} model calls")


def main() -> None:
    torch.set_default_dtype(torch.float64)  # references in float64: differences are the sampler's
    acp = sd15_alphas_cumprod()
    write(
        "ddim",
        [
            ddim_case("img2img 18 steps 0.35", acp, steps=18, strength=0.35, seed=1),
            ddim_case(
                "img2img 20 steps 0.75 eta 0.6", acp, steps=20, strength=0.75, eta=0.6, seed=2
            ),
            ddim_case(
                "img2img 25 steps 0.5 discard", acp, steps=25, strength=0.5, discard=True, seed=3
            ),
            ddim_case("txt2img 10 steps eta 1", acp, steps=10, eta=1.0, seed=4),
        ],
    )
    write(
        "plms",
        [
            plms_case("img2img 18 steps 0.35", acp, steps=18, strength=0.35, seed=5),
            plms_case(
                "img2img 30 steps 0.6 discard", acp, steps=30, strength=0.6, discard=True, seed=6
            ),
            plms_case("img2img 20 steps 0.1 (one step)", acp, steps=20, strength=0.1, seed=7),
        ],
    )
    write(
        "unipc",
        [
            unipc_case("img2img 18 steps 0.35", acp, steps=18, strength=0.35, seed=8),
            unipc_case("img2img 20 steps 0.5", acp, steps=20, strength=0.5, seed=9),
            unipc_case(
                "img2img 24 steps 0.6 bh2 order 2 no lower final",
                acp,
                steps=24,
                strength=0.6,
                variant="bh2",
                order=2,
                lower_order_final=False,
                seed=10,
            ),
            unipc_case("txt2img 12 steps", acp, steps=12, seed=11),
            unipc_case(
                "img2img 30 steps 0.45 time quadratic",
                acp,
                steps=30,
                strength=0.45,
                skip_type="time_quadratic",
                seed=12,
            ),
            unipc_case(
                "img2img 16 steps 0.7 logSNR order 4",
                acp,
                steps=16,
                strength=0.7,
                order=4,
                skip_type="logSNR",
                seed=13,
            ),
        ],
    )
    kd = load_kdiffusion_sampling()
    write(
        "restart",
        [
            restart_case(
                kd,
                "img2img 18 steps 0.35 (7 steps, no restart)",
                sigmas=a1111_karras_img2img(kd, 18, 0.35, acp),
                seed=14,
            ),
            restart_case(
                kd,
                "img2img 40 steps 0.6 (25 steps, one restart)",
                sigmas=a1111_karras_img2img(kd, 40, 0.6, acp),
                seed=15,
            ),
            restart_case(
                kd,
                "img2img 60 steps 0.7 (43 steps, two restarts)",
                sigmas=a1111_karras_img2img(kd, 60, 0.7, acp),
                s_noise=1.003,
                seed=16,
            ),
            restart_case(
                kd,
                "txt2img 12 steps, custom restart list",
                sigmas=a1111_karras_img2img(kd, 12, 1.0, acp),
                restart_list={0.5: [4, 2, 3.0], 5.0: [3, 1, 9.0]},
                s_noise=0.9,
                seed=17,
            ),
        ],
    )


if __name__ == "__main__":
    main()
