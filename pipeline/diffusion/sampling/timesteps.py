"""A1111's "timestep" samplers (DDIM, PLMS, UniPC) and their img2img plan.

These work on the VP latent with a noise-prediction model ``model(x, t) -> eps``, where ``t`` is a
tensor of shape ``(batch,)`` in ``x``'s dtype holding the model's training timestep (whole numbers
for DDIM and PLMS, fractional for UniPC). What they compute is what A1111 v1.7 computes:

* **The grid.** ``a1111_timesteps(steps)`` is ``clip(range(0, 1000, 1000 // steps) + 1, 0, 999)``,
  ascending, built for one step more when the penultimate sigma is discarded. When ``steps`` does
  not divide 1000 it holds more than ``steps`` entries (18 steps: 19).
* **img2img.** ``t_enc = int(min(strength, 0.999) * steps)``; the latent is noised to
  ``ts[t_enc]`` and the sampler is handed ``ts[:t_enc]`` (:func:`timestep_img2img_plan`).
* **DDIM and PLMS** walk the handed grid from its last entry down, one step per neighbouring pair:
  ``len(timesteps) - 1`` steps, the last landing on ``alphas_cumprod[timesteps[0]]`` (step 1 of the
  model, not step 0). For img2img that is ``t_enc - 1`` steps, the first taken at ``ts[t_enc - 1]``
  although the latent was noised to ``ts[t_enc]``: A1111's one-step mismatch, kept.
* **UniPC** (Zhao et al. 2023, the multistep B(h) predictor-corrector) solves in continuous time
  ``t = (n + 1) / N`` for training step ``n`` with half-log-alpha linear between steps, over
  ``len(timesteps)`` steps from ``timesteps[-1] / 1000 + 1 / 1000`` (img2img) or 1 (txt2img) to
  ``1 / N``, predicting data (x0), with A1111's defaults: variant bh1, order 3, lower order at the
  end, steps uniform in time.

Callbacks get ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` once per step, like k-diffusion's;
``sigma`` and ``sigma_hat`` are the step's VE noise level ``sqrt((1 - a) / a)`` (A1111 passes 0).
``*_model_calls`` say how many model evaluations a run makes, for progress.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "UNIPC_SKIP_TYPES",
    "UNIPC_VARIANTS",
    "a1111_timesteps",
    "ddim",
    "ddim_model_calls",
    "plms",
    "plms_model_calls",
    "timestep_img2img_plan",
    "unipc",
    "unipc_model_calls",
]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[float, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
Timesteps = Sequence[int] | np.ndarray | torch.Tensor
Alphas = Sequence[float] | np.ndarray | torch.Tensor

UNIPC_VARIANTS = ("bh1", "bh2")
UNIPC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")

_TRAIN_STEPS = 1000  # A1111 hard-codes the SD training length in its grid and in UniPC's time input


# --- the plan ---------------------------------------------------------------------------------


def a1111_timesteps(steps: int, discard: bool = False) -> torch.Tensor:
    """A1111's ascending timestep grid for ``steps`` (one more when ``discard``), as int64."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number of 1 or more, not {steps!r}")
    n = steps + int(bool(discard))
    stride = _TRAIN_STEPS // n
    if stride < 1:
        raise ValueError(f"A1111's timestep grid holds at most {_TRAIN_STEPS} steps, not {n}")
    grid = torch.arange(0, _TRAIN_STEPS, stride, dtype=torch.int64) + 1
    return grid.clamp(0, _TRAIN_STEPS - 1)


def timestep_img2img_plan(
    steps: int, strength: float, alphas_cumprod: Alphas, discard: bool = False
) -> tuple[torch.Tensor, float, float]:
    """A1111's img2img plan for DDIM/PLMS/UniPC.

    Returns ``(timesteps_sched, sqrt_alpha, sqrt_one_minus_alpha)``: the grid handed to the sampler
    (``ts[:t_enc]``, possibly empty) and the factors of the start latent
    ``x0 * sqrt_alpha + noise * sqrt_one_minus_alpha``, taken at ``ts[t_enc]``.
    ``t_enc`` counts ``steps`` before the discarded step is added, as A1111 does.
    """
    if isinstance(strength, bool) or not isinstance(strength, int | float):
        raise ValueError(f"strength must be a number from 0 to 1, not {strength!r}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be a number from 0 to 1, not {strength!r}")
    grid = a1111_timesteps(steps, discard)
    acp = _alphas(alphas_cumprod)
    t_enc = int(min(float(strength), 0.999) * steps)
    a = float(acp[int(grid[t_enc])])
    return grid[:t_enc].clone(), math.sqrt(a), math.sqrt(1.0 - a)


def ddim_model_calls(timesteps: Timesteps) -> int:
    """Model evaluations (and callbacks) of :func:`ddim` over ``timesteps``."""
    return max(len(_steps_list(timesteps)) - 1, 0)


def plms_model_calls(timesteps: Timesteps) -> int:
    """Model evaluations of :func:`plms`: one per step plus one for its improved-Euler start.

    It calls back once per step, ``len(timesteps) - 1`` times.
    """
    n = ddim_model_calls(timesteps)
    return n + 1 if n else 0


def unipc_model_calls(timesteps: Timesteps) -> int:
    """Model evaluations (and callbacks) of :func:`unipc`: one per step.

    The first data prediction comes from the start latent; each later one is the corrector's
    evaluation, reused by the next step; the last step runs no corrector.
    """
    return len(_steps_list(timesteps))


# --- DDIM and PLMS ----------------------------------------------------------------------------


def ddim(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Timesteps,
    alphas_cumprod: Alphas,
    *,
    noise: Noise | None = None,
    eta: float = 0.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) over A1111's ascending ``timesteps``, walked from the top.

    ``eta`` scales the fresh noise of each step (0: the deterministic sampler). Given ``noise``,
    every step draws ``noise(sigma, sigma_next)`` (the step's VE levels) once, in order, whatever
    ``eta``: A1111 draws from its image RNG stream on each step and multiplies by zero when
    ``eta`` is 0. Without ``noise`` nothing is drawn, which needs ``eta == 0``.
    """
    ts = _steps_list(timesteps)
    acp = _alphas(alphas_cumprod)
    _check_grid(ts, acp)
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be from 0 to 1, not {eta!r}")
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 needs a noise source")
    with torch.no_grad():
        for i, index in enumerate(range(len(ts) - 1, 0, -1)):
            t, t_prev = ts[index], ts[index - 1]
            a_t, a_prev = float(acp[t]), float(acp[t_prev])
            e_t = model(x, _time(x, t))
            pred_x0 = (x - math.sqrt(1.0 - a_t) * e_t) / math.sqrt(a_t)
            sigma_t = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
            x_next = math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev - sigma_t**2) * e_t
            if noise is not None:
                x_next = x_next + sigma_t * noise(_level(a_t), _level(a_prev))
            x = x_next
            if callback is not None:
                level = _level(a_t)
                callback({"x": x, "i": i, "sigma": level, "sigma_hat": level, "denoised": pred_x0})
    return x


def plms(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Timesteps,
    alphas_cumprod: Alphas,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """PLMS, the pseudo linear multistep sampler of Liu et al. 2022 as Latent Diffusion runs it.

    The first step is a pseudo improved-Euler step (two model calls); later steps combine the
    current noise prediction with up to three earlier ones (Adams-Bashforth of order 2 to 4).
    """
    ts = _steps_list(timesteps)
    acp = _alphas(alphas_cumprod)
    _check_grid(ts, acp)
    history: list[torch.Tensor] = []

    def to_prev(
        x_t: torch.Tensor, e: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_prev = float(acp[ts[index]]), float(acp[ts[index - 1]])
        pred_x0 = (x_t - math.sqrt(1.0 - a_t) * e) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev) * e, pred_x0

    with torch.no_grad():
        for i, index in enumerate(range(len(ts) - 1, 0, -1)):
            e_t = model(x, _time(x, ts[index]))
            if not history:
                x_euler, _ = to_prev(x, e_t, index)
                e_used = (e_t + model(x_euler, _time(x, ts[index - 1]))) / 2
            elif len(history) == 1:
                e_used = (3 * e_t - history[-1]) / 2
            elif len(history) == 2:
                e_used = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
            else:
                e_used = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
            x, pred_x0 = to_prev(x, e_used, index)
            history = [*history[-2:], e_t]
            if callback is not None:
                level = _level(float(acp[ts[index]]))
                callback({"x": x, "i": i, "sigma": level, "sigma_hat": level, "denoised": pred_x0})
    return x


# --- UniPC ------------------------------------------------------------------------------------


class _ContinuousVP:
    """A discrete VP schedule read in continuous time, as UniPC's discrete noise schedule does.

    Training step ``n`` of ``N`` sits at ``t = (n + 1) / N``; log alpha (half the log of
    ``alphas_cumprod``) is linear between those points and extended along the end segments.
    """

    def __init__(self, acp: np.ndarray) -> None:
        self.n = len(acp)
        self.t = (np.arange(self.n, dtype=np.float64) + 1.0) / self.n
        self.log_alpha_grid = 0.5 * np.log(acp)

    def log_alpha(self, t: float) -> float:
        return _interp_linear(t, self.t, self.log_alpha_grid)

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        """Half log-SNR, log(alpha / sigma)."""
        la = self.log_alpha(t)
        return la - 0.5 * math.log(-math.expm1(2.0 * la))

    def t_of_lambda(self, lam: float) -> float:
        la = -0.5 * float(np.logaddexp(0.0, -2.0 * lam))
        return _interp_linear(la, self.log_alpha_grid[::-1], self.t[::-1])

    def model_time(self, t: float) -> float:
        """The timestep the model is fed for continuous time ``t``."""
        return (t - 1.0 / self.n) * _TRAIN_STEPS


def _unipc_times(vp: _ContinuousVP, skip_type: str, t_start: float, t_end: float, n: int):
    if skip_type == "time_uniform":
        return np.linspace(t_start, t_end, n + 1)
    if skip_type == "time_quadratic":
        return np.linspace(math.sqrt(t_start), math.sqrt(t_end), n + 1) ** 2
    lams = np.linspace(vp.lam(t_start), vp.lam(t_end), n + 1)
    return np.array([vp.t_of_lambda(float(v)) for v in lams])


def _bh_coefficients(rks: list[float], hh: float, b_h: float, order: int):
    """The B(h) predictor and corrector weights of UniPC for one step.

    ``rks`` are the earlier points' log-SNR offsets relative to the step (the last entry is 1, the
    step's own end). ``b[i-1] = i! * hh * phi_{i+1}(hh) / B(h)`` with the exponential-integrator
    phi functions, built by their recurrence ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``.
    """
    b = []
    g = math.expm1(hh) / hh - 1.0  # hh * phi_2(hh)
    factorial = 1.0
    for i in range(1, order + 1):
        b.append(g * factorial / b_h)
        factorial *= i + 1
        g = g / hh - 1.0 / factorial
    r = np.array([[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)], dtype=np.float64)
    bv = np.array(b, dtype=np.float64)
    if order == 2:
        rho_p = np.array([0.5])
    elif order > 2:
        rho_p = np.linalg.solve(r[:-1, :-1], bv[:-1])
    else:
        rho_p = np.zeros(0)
    rho_c = np.array([0.5]) if order == 1 else np.linalg.solve(r, bv)
    return rho_p, rho_c


def _unipc_step(
    vp: _ContinuousVP,
    data_model: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    prev_x0: list[torch.Tensor],
    prev_t: list[float],
    t: float,
    order: int,
    variant: str,
    use_corrector: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One multistep UniPC step to ``t`` (data prediction, B(h) variant).

    Returns the new latent and, when the corrector ran, the data prediction it evaluated at the
    predictor's latent (the next step's newest history entry).
    """
    t_s, m0 = prev_t[-1], prev_x0[-1]
    lam_s = vp.lam(t_s)
    h = vp.lam(t) - lam_s
    hh = -h
    alpha_t, sigma_t, sigma_s = vp.alpha(t), vp.sigma(t), vp.sigma(t_s)
    rks, d1s = [], []
    for k in range(1, order):
        rk = (vp.lam(prev_t[-(k + 1)]) - lam_s) / h
        rks.append(rk)
        d1s.append((prev_x0[-(k + 1)] - m0) / rk)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rho_p, rho_c = _bh_coefficients([*rks, 1.0], hh, b_h, order)
    base = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(hh)) * m0
    scale = alpha_t * b_h
    x_t = base
    if d1s:
        x_t = base - scale * sum((float(w) * d for w, d in zip(rho_p, d1s, strict=True)), 0 * x)
    if not use_corrector:
        return x_t, None
    model_t = data_model(x_t, t)
    corr = sum((float(w) * d for w, d in zip(rho_c[:-1], d1s, strict=True)), 0 * x)
    x_t = base - scale * (corr + float(rho_c[-1]) * (model_t - m0))
    return x_t, model_t


def unipc(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Timesteps,
    alphas_cumprod: Alphas,
    *,
    is_img2img: bool,
    variant: str = "bh1",
    order: int = 3,
    lower_order_final: bool = True,
    skip_type: str = "time_uniform",
    callback: Callback | None = None,
) -> torch.Tensor:
    """UniPC multistep (data prediction) over ``len(timesteps)`` steps, as A1111 runs it.

    img2img starts at continuous time ``timesteps[-1] / 1000 + 1 / 1000``, txt2img at 1; both end
    at ``1 / N``. The first ``order - 1`` steps warm up at orders 1, 2, ...; with
    ``lower_order_final`` the last steps drop to the steps left. Every step but the last runs the
    corrector. ``variant`` is ``bh1`` or ``bh2``; A1111's ``vary_coeff`` is not provided. A1111
    refuses fewer steps than ``order``; so does this (``ValueError``). The callback's ``denoised``
    is the corrector's data prediction, and on the last step (no corrector) the result itself,
    where A1111 passes None.
    """
    ts = _steps_list(timesteps)
    acp = _alphas(alphas_cumprod)
    if ts:
        _check_grid(ts, acp)
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"UniPC variant must be one of {UNIPC_VARIANTS}, not {variant!r}")
    if skip_type not in UNIPC_SKIP_TYPES:
        raise ValueError(f"UniPC skip type must be one of {UNIPC_SKIP_TYPES}, not {skip_type!r}")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"UniPC order must be a whole number of 1 or more, not {order!r}")
    steps = len(ts)
    if steps < order:
        raise ValueError(f"UniPC of order {order} needs at least {order} steps, not {steps}")
    vp = _ContinuousVP(acp)
    t_start = ts[-1] / _TRAIN_STEPS + 1.0 / _TRAIN_STEPS if is_img2img else 1.0
    times = [float(v) for v in _unipc_times(vp, skip_type, t_start, 1.0 / vp.n, steps)]

    def data_model(x_t: torch.Tensor, t: float) -> torch.Tensor:
        eps = model(x_t, _time(x_t, vp.model_time(t)))
        return (x_t - vp.sigma(t) * eps) / vp.alpha(t)

    with torch.no_grad():
        prev_x0, prev_t = [data_model(x, times[0])], [times[0]]
        for step in range(1, steps + 1):
            t = times[step]
            if step < order:  # warm-up: the history is still short
                step_order, use_corrector = step, True
            else:
                step_order = min(order, steps + 1 - step) if lower_order_final else order
                use_corrector = step < steps
            x, model_x = _unipc_step(
                vp, data_model, x, prev_x0, prev_t, t, step_order, variant, use_corrector
            )
            if callback is not None:
                level = vp.sigma(t) / vp.alpha(t)
                denoised = x if model_x is None else model_x
                callback(
                    {
                        "x": x,
                        "i": step - 1,
                        "sigma": level,
                        "sigma_hat": level,
                        "denoised": denoised,
                    }
                )
            if model_x is not None:
                prev_x0, prev_t = [*prev_x0, model_x][-order:], [*prev_t, t][-order:]
    return x


# --- helpers ----------------------------------------------------------------------------------


def _steps_list(timesteps: Timesteps) -> list[int]:
    if isinstance(timesteps, torch.Tensor):
        values = timesteps.detach().cpu().reshape(-1).tolist()
    else:
        values = np.asarray(timesteps).reshape(-1).tolist()
    out = []
    for v in values:
        if float(v) != int(v):
            raise ValueError(f"timesteps must be whole numbers, not {v!r}")
        out.append(int(v))
    return out


def _alphas(alphas_cumprod: Alphas) -> np.ndarray:
    if isinstance(alphas_cumprod, torch.Tensor):
        acp = alphas_cumprod.detach().cpu().double().numpy()
    else:
        acp = np.asarray(alphas_cumprod, dtype=np.float64)
    if acp.ndim != 1 or len(acp) < 2:
        raise ValueError("alphas_cumprod must be a 1-D schedule of at least two steps")
    if not np.all((acp > 0) & (acp < 1)):
        raise ValueError("alphas_cumprod values must lie strictly between 0 and 1")
    return acp


def _check_grid(ts: list[int], acp: np.ndarray) -> None:
    if any(t < 0 or t >= len(acp) for t in ts):
        raise ValueError(f"timesteps must lie in 0..{len(acp) - 1}")
    if any(b < a for a, b in itertools.pairwise(ts)):
        raise ValueError("timesteps must be ascending (A1111's order)")


def _time(x: torch.Tensor, t: float) -> torch.Tensor:
    return x.new_full((x.shape[0],), float(t))


def _level(a: float) -> float:
    return math.sqrt((1.0 - a) / a)


def _interp_linear(v: float, xp: np.ndarray, yp: np.ndarray) -> float:
    """Piecewise-linear ``yp(xp)`` at ``v`` (``xp`` ascending), extended along the end segments."""
    if v < xp[0]:
        i = 0
    elif v > xp[-1]:
        i = len(xp) - 2
    else:
        return float(np.interp(v, xp, yp))
    return float(yp[i] + (v - xp[i]) * (yp[i + 1] - yp[i]) / (xp[i + 1] - xp[i]))
