"""A1111's Restart sampler: Heun steps with restarts (Xu et al. 2023, "Restart Sampling for
Improving Generative Processes"), configured as A1111 v1.7 configures it.

The sampler walks a sigma list with second-order Heun steps (Euler on a step to sigma 0). A
restart jumps back up the noise levels by adding fresh noise, from ``sigma_min`` to ``sigma_max``
of the restart interval, and walks that interval down again on its own Karras grid, ``times``
times over. The restart list maps an interval's lower end to ``[grid_points, times, upper end]``;
each end is snapped to the nearest sigma of the main list.

When no restart list is given, A1111 picks one from the step count ``n = len(sigmas) - 1``:
below 20 steps there is none; from 20 one restart of 9 steps, from 36 two of ``n // 4`` steps,
each from 0.1 to 2. Restarts spend steps, so the main list is then rebuilt as a Karras schedule
of ``n - steps * times`` steps between ``sigmas[-2]`` and ``sigmas[0]`` (it keeps the total at
``n`` steps).

The denoiser is k-diffusion's ``D(x, sigma) -> denoised`` with ``sigma`` of shape ``(batch,)``.
The re-injected noise comes from ``noise(sigma_from, sigma_to)`` (a standard normal like ``x``),
one draw per restart jump in order: A1111's image RNG stream.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["RestartList", "karras_sigmas", "restart", "restart_model_calls", "restart_plan"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[float, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
RestartList = Mapping[float, Sequence[float]]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022): ``n`` sigmas evenly spaced in ``sigma ** (1 / rho)``, then 0."""
    if n < 1:
        raise ValueError(f"a Karras schedule needs at least one step, not {n}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    ramp = np.linspace(0.0, 1.0, n)
    return [float(v) for v in (hi + ramp * (lo - hi)) ** rho] + [0.0]


def _nearest(sigmas: list[float], value: float) -> int:
    return int(np.argmin(np.abs(np.asarray(sigmas) - value)))  # first of equals, like torch


def restart_plan(
    sigmas: Sequence[float] | np.ndarray | torch.Tensor, restart_list: RestartList | None = None
) -> list[tuple[float, float]]:
    """Every step Restart takes, in order, as ``(sigma_from, sigma_to)``.

    A step whose ``sigma_from`` is above the previous step's ``sigma_to`` is a restart jump: noise
    is added first. The number of steps (and callbacks) is ``len(restart_plan(...))``.
    """
    if isinstance(sigmas, torch.Tensor):
        sig = [float(v) for v in sigmas.detach().cpu().double().reshape(-1).tolist()]
    else:
        sig = [float(v) for v in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
    if any(not math.isfinite(v) or v < 0 for v in sig):
        raise ValueError("sigmas must be finite and not negative")
    steps = len(sig) - 1
    if restart_list is None:
        chosen: dict[float, list[float]] = {}
        if steps >= 20:
            restart_steps, restart_times = 9, 1
            if steps >= 36:
                restart_steps, restart_times = steps // 4, 2
            sig = karras_sigmas(steps - restart_steps * restart_times, sig[-2], sig[0])
            chosen = {0.1: [restart_steps + 1, restart_times, 2.0]}
        restart_list = chosen
    by_index: dict[int, Sequence[float]] = {}
    for key, value in restart_list.items():
        if len(value) != 3:
            raise ValueError("a restart entry is [grid points, times, upper sigma]")
        by_index[_nearest(sig, float(key))] = value

    plan: list[tuple[float, float]] = []
    for i in range(len(sig) - 1):
        plan.append((sig[i], sig[i + 1]))
        if i + 1 not in by_index:
            continue
        points, times, upper = by_index[i + 1]
        min_idx, max_idx = i + 1, _nearest(sig, float(upper))
        if max_idx < min_idx:
            grid = karras_sigmas(int(points), sig[min_idx], sig[max_idx])[:-1]
            for _ in range(int(times)):
                plan.extend(itertools.pairwise(grid))
    return plan


def restart_model_calls(
    sigmas: Sequence[float] | np.ndarray | torch.Tensor, restart_list: RestartList | None = None
) -> int:
    """Denoiser evaluations of :func:`restart`: two per Heun step, one per step to sigma 0."""
    return sum(1 if to == 0 else 2 for _, to in restart_plan(sigmas, restart_list))


def restart(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    noise: Noise,
    s_noise: float = 1.0,
    restart_list: RestartList | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Restart sampling from ``x`` at ``sigmas[0]``; see the module docstring for the schedule.

    ``s_noise`` scales the re-injected noise. The callback sees each step's input latent, with
    ``sigma`` the level the step goes to and ``sigma_hat`` the level it starts from, as A1111's.
    """
    plan = restart_plan(sigmas, restart_list)
    ones = x.new_ones((x.shape[0],))
    last: float | None = None
    with torch.no_grad():
        for i, (sigma, sigma_next) in enumerate(plan):
            if last is not None and last < sigma:
                x = x + noise(last, sigma) * s_noise * math.sqrt(sigma**2 - last**2)
            denoised = model(x, sigma * ones)
            d = (x - denoised) / sigma
            if callback is not None:
                callback(
                    {"x": x, "i": i, "sigma": sigma_next, "sigma_hat": sigma, "denoised": denoised}
                )
            dt = sigma_next - sigma
            if sigma_next == 0:
                x = x + d * dt
            else:
                x_2 = x + d * dt
                d_2 = (x_2 - model(x_2, sigma_next * ones)) / sigma_next
                x = x + (d + d_2) / 2 * dt
            last = sigma_next
    return x
