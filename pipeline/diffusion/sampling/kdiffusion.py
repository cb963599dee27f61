"""The k-diffusion family of samplers, in sigma space, as A1111 v1.7 runs them.

Every function walks a noise-level list ``sigmas`` (1-D, decreasing, ending in 0) with a
denoiser ``model(x, sigma) -> denoised``, where ``sigma`` is a tensor of shape ``[batch]``, and
returns the final latent. The exceptions are :func:`dpm_fast` and :func:`dpm_adaptive`, which take
``sigma_min``/``sigma_max`` (and a model-call budget ``n`` for the fast one) and end at
``sigma_min``. Names, keyword arguments and defaults are k-diffusion's (A1111 v1.7 pins its
commit ab527a9), and so is the arithmetic: the golden tests hold each function to the output of
k-diffusion's own ``sample_*`` function (release 0.1.1.post1) within 1e-5.

``callback`` (optional) is called once per step with k-diffusion's dict ``{'x', 'i', 'sigma',
'sigma_hat', 'denoised'}``, where ``x`` is the latent the step starts from. The DPM-Solver pair
adds ``t`` and ``t_up``; :func:`dpm_adaptive` reports after every attempted step instead, with
the latent and level it leaves, and adds ``error``, ``h``, ``steps``, ``nfe``, ``n_accept`` and
``n_reject``, as k-diffusion does.

**Noise.** Every random draw is a call ``noise(sigma, sigma_next)`` that returns a standard
normal tensor like ``x``; there is no hidden global RNG. In A1111 each draw comes from one
stream (the image RNG, or a Brownian tree for the SDE samplers), so each function makes exactly
the draws k-diffusion makes, in the same order, with the sigma pair below, including draws whose
contribution is zero (an ``eta`` of 0, a last step):

=====================  ==========================================================================
sampler                draws
=====================  ==========================================================================
euler, heun, dpm_2     one per step, first thing in step ``i``: ``(sigmas[i], sigmas[i+1])``
                       (k-diffusion's ``randn_like`` for the churn, drawn even when the churn is 0)
euler_ancestral,       after step ``i`` when ``sigmas[i+1] > 0``: ``(sigmas[i], sigmas[i+1])``
dpmpp_2s_ancestral
dpm_2_ancestral        after step ``i`` when its ``sigma_down > 0``: ``(sigmas[i], sigmas[i+1])``
dpmpp_sde              two per step to a non-zero sigma: ``(sigma_i, sigma_s)`` for the half step,
                       then ``(sigma_i, sigma_{i+1})``; these sigmas are recomputed from
                       ``lambda = -log sigma`` as k-diffusion does (``sigma_s = e^-(lambda_i +
                       r h)``)
dpmpp_2m_sde,          one per step to a non-zero sigma when ``eta != 0``:
dpmpp_3m_sde           ``(sigmas[i], sigmas[i+1])``
dpm_fast               one per step: ``(sigma(t_i), sigma(t_{i+1}))`` of its uniform-in-lambda grid
dpm_adaptive           one per accepted step: ``(sigma(s), sigma(t))``, old level to new
=====================  ==========================================================================

Where ``noise`` is None and a draw would contribute (churn > 0 on some step, ``eta != 0``), the
function raises ``ValueError`` before doing any work; where it would not, no draw is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SAMPLER_FUNCTIONS",
    "Callback",
    "Denoiser",
    "NoiseSampler",
    "dpm_2",
    "dpm_2_ancestral",
    "dpm_adaptive",
    "dpm_fast",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2s_ancestral",
    "dpmpp_3m_sde",
    "dpmpp_sde",
    "euler",
    "euler_ancestral",
    "get_ancestral_step",
    "heun",
    "linear_multistep_coeff",
    "lms",
    "to_d",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``model(x, sigma) -> denoised``, ``sigma`` of shape ``[batch]``."""
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""``noise(sigma, sigma_next) -> standard normal tensor like x``."""
Callback = Callable[[dict[str, Any]], None]
"""Called once per step with k-diffusion's step dict."""

_MAX_CHURN = 2**0.5 - 1  # Karras et al.'s cap on gamma: sigma_hat at most sqrt(2)·sigma


# --- shared pieces --------------------------------------------------------------------------------


def _expand(sigma: Tensor, ndim: int) -> Tensor:
    """``sigma`` with trailing singleton dimensions, to broadcast against a latent."""
    return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's slope ``dx/dsigma = (x - D(x; sigma)) / sigma``
    (Karras et al. 2022, eq. 1 with sigma(t) = t)."""
    return (x - denoised) / _expand(sigma, x.ndim)


def get_ancestral_step(
    sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0
) -> tuple[Tensor, Tensor | float]:
    """Split a step ``sigma_from -> sigma_to`` into a deterministic part down to ``sigma_down``
    and fresh noise of size ``sigma_up`` with ``sigma_down² + sigma_up² = sigma_to²``.

    ``sigma_up = min(sigma_to, eta·sigma_to·sqrt(1 - sigma_to²/sigma_from²))``: with ``eta = 1``
    this is the DDPM ancestral step written in sigma space. An ``eta`` of 0 gives
    ``(sigma_to, 0.0)``.
    """
    if not eta:
        return sigma_to, 0.0
    ratio = sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = torch.minimum(sigma_to, eta * ratio**0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _batch(x: Tensor, sigma: Tensor) -> Tensor:
    """``sigma`` as the ``[batch]`` tensor the denoiser takes."""
    return sigma * x.new_ones([x.shape[0]])


def _need_noise(noise: NoiseSampler | None, needed: bool, name: str, why: str) -> None:
    if noise is None and needed:
        raise ValueError(
            f"{name} draws random noise ({why}) but no noise sampler was given: "
            "pass noise=<callable(sigma, sigma_next) -> standard normal like x>"
        )


def _report(
    callback: Callback | None,
    x: Tensor,
    i: int,
    sigma: Tensor,
    sigma_hat: Tensor,
    denoised: Tensor,
) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _lam(sigma: Tensor) -> Tensor:
    """DPM-Solver's time variable in k-diffusion's convention: ``lambda = -log sigma``
    (the half log-SNR for a VE process)."""
    return sigma.log().neg()


def _sig(lam: Tensor) -> Tensor:
    """Inverse of :func:`_lam`."""
    return lam.neg().exp()


# --- Karras et al. (2022): Euler, Heun and the DPM-2 midpoint variant ----------------------------


def _churn_plan(sigmas: Tensor, s_churn: float, s_tmin: float, s_tmax: float) -> list[float]:
    """Karras et al.'s gamma for every step: ``min(S_churn / N, sqrt(2) - 1)`` where sigma_i lies
    in ``[S_tmin, S_tmax]``, else 0. ``N`` is the number of steps, as k-diffusion counts it."""
    n = len(sigmas) - 1
    gamma = min(s_churn / n, _MAX_CHURN) if n else 0.0
    return [gamma if s_tmin <= float(sigmas[i]) <= s_tmax else 0.0 for i in range(n)]


def _churned(
    x: Tensor,
    sigmas: Tensor,
    i: int,
    gamma: float,
    noise: NoiseSampler | None,
    s_noise: float,
) -> tuple[Tensor, Tensor]:
    """Step ``i``'s raised noise level ``sigma_hat = sigma_i·(1 + gamma)`` and the latent moved
    there with fresh noise of size ``sqrt(sigma_hat² - sigma_i²)`` (Karras et al., Alg. 2,
    lines 5-6). With a noise sampler the draw is made on every step, as k-diffusion does."""
    eps = noise(sigmas[i], sigmas[i + 1]) * s_noise if noise is not None else None
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0 and eps is not None:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _check_churn(
    noise: NoiseSampler | None, name: str, sigmas: Tensor, s_churn: float, s_tmin: float,
    s_tmax: float,
) -> list[float]:  # fmt: skip
    gammas = _churn_plan(sigmas, s_churn, s_tmin, s_tmax)
    _need_noise(noise, any(g > 0 for g in gammas), name, f"s_churn={s_churn}")
    return gammas


@torch.no_grad()
def euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps of the probability-flow ODE with optional churn (Karras et al. 2022, Alg. 2
    with the Heun correction left out): ``x += (sigma_{i+1} - sigma_hat)·d(x, sigma_hat)``."""
    gammas = _check_churn(noise, "euler", sigmas, s_churn, s_tmin, s_tmax)
    for i, gamma in enumerate(gammas):
        x, sigma_hat = _churned(x, sigmas, i, gamma, noise, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        slope = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + slope * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Karras et al. 2022, Alg. 2: an Euler predictor to ``sigma_{i+1}`` corrected with the
    trapezoid rule (the mean of the two slopes); the step to sigma 0 stays a plain Euler step."""
    gammas = _check_churn(noise, "heun", sigmas, s_churn, s_tmin, s_tmax)
    for i, gamma in enumerate(gammas):
        x, sigma_hat = _churned(x, sigmas, i, gamma, noise, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        slope = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + slope * dt
            continue
        predicted = x + slope * dt
        slope_next = to_d(predicted, sigmas[i + 1], model(predicted, _batch(x, sigmas[i + 1])))
        x = x + (slope + slope_next) / 2 * dt
    return x


@torch.no_grad()
def dpm_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """A second-order midpoint step in sigma, with the midpoint at the geometric mean
    ``sqrt(sigma_hat·sigma_{i+1})`` (DPM-Solver-2's midpoint in log sigma, Lu et al. 2022, applied
    to Karras et al.'s ODE with churn). The step to sigma 0 is an Euler step."""
    gammas = _check_churn(noise, "dpm_2", sigmas, s_churn, s_tmin, s_tmax)
    for i, gamma in enumerate(gammas):
        x, sigma_hat = _churned(x, sigmas, i, gamma, noise, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        slope = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = _midpoint_step(model, x, slope, sigma_hat, sigmas[i + 1])
    return x


def _midpoint_step(
    model: Denoiser, x: Tensor, slope: Tensor, sigma: Tensor, sigma_to: Tensor
) -> Tensor:
    """One DPM-2 step ``sigma -> sigma_to`` given the slope at ``sigma`` (Euler when
    ``sigma_to`` is 0)."""
    if sigma_to == 0:
        return x + slope * (sigma_to - sigma)
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_mid = x + slope * (sigma_mid - sigma)
    slope_mid = to_d(x_mid, sigma_mid, model(x_mid, _batch(x, sigma_mid)))
    return x + slope_mid * (sigma_to - sigma)


# --- ancestral samplers --------------------------------------------------------------------------


@torch.no_grad()
def euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with Euler steps: an Euler step down to ``sigma_down``, then fresh
    noise of size ``sigma_up`` (:func:`get_ancestral_step`) brings the latent to
    ``sigma_{i+1}``."""
    _need_noise(noise, bool(eta), "euler_ancestral", f"eta={eta}")
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0 and noise is not None:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def dpm_2_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with the DPM-2 midpoint step (see :func:`dpm_2`) down to
    ``sigma_down``, then noise of size ``sigma_up``. Where ``sigma_down`` is 0 the step is a plain
    Euler step and, as in k-diffusion, no noise is drawn."""
    _need_noise(noise, bool(eta), "dpm_2_ancestral", f"eta={eta}")
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        slope = to_d(x, sigmas[i], denoised)
        x = _midpoint_step(model, x, slope, sigmas[i], sigma_down)
        if sigma_down != 0 and noise is not None:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


# --- linear multistep ----------------------------------------------------------------------------


def linear_multistep_coeff(order: int, t: Sequence[float] | np.ndarray, i: int, j: int) -> float:
    """The weight of the slope at ``t[i - j]`` in an Adams-Bashforth step from ``t[i]`` to
    ``t[i + 1]``: the integral over that step of the Lagrange basis polynomial through
    ``t[i], ..., t[i - order + 1]`` that is 1 at ``t[i - j]``.

    The integrand is a polynomial of degree ``order - 1``, so ``order``-point Gauss-Legendre
    quadrature is exact (k-diffusion integrates the same polynomial numerically)."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    ts = np.asarray(t, dtype=np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
    a, b = ts[i], ts[i + 1]
    tau = (b - a) / 2 * nodes + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis = basis * (tau - ts[i - k]) / (ts[i - j] - ts[i - k])
    return float((b - a) / 2 * np.dot(weights, basis))


@torch.no_grad()
def lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` slopes, with the order
    ramping up over the first steps (Karras et al. 2022 / k-diffusion's LMS). Deterministic:
    ``noise`` is accepted for a uniform call and never drawn."""
    del noise
    grid = sigmas.detach().cpu().to(torch.float64).numpy()
    slopes: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        slopes.append(to_d(x, sigmas[i], denoised))
        if len(slopes) > order:
            slopes.pop(0)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        current = min(i + 1, order)
        coeffs = [linear_multistep_coeff(current, grid, i, j) for j in range(current)]
        update = coeffs[0] * slopes[-1]
        for j in range(1, current):
            update = update + coeffs[j] * slopes[-1 - j]
        x = x + update
    return x


# --- DPM-Solver (Lu et al. 2022), fixed and adaptive step size ------------------------------------


class _DpmSolver:
    """DPM-Solver-1/2/3 single steps in the noise-prediction form (Lu et al. 2022, Alg. 1 and
    eqs. 3.6-3.8 written for a VE process with ``lambda = -log sigma``), sharing model calls
    between the steps an adaptive step compares."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, lam: Tensor) -> Tensor:
        if key not in cache:
            sigma = _sig(lam)
            cache[key] = (x - self.model(x, _batch(x, sigma))) / sigma
        return cache[key]

    def step1(self, x: Tensor, lam: Tensor, lam_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = lam_next - lam
        return x - _sig(lam_next) * h.expm1() * self.eps(cache, "eps", x, lam)

    def step2(
        self, x: Tensor, lam: Tensor, lam_next: Tensor, cache: dict[str, Tensor], r1: float = 0.5
    ) -> Tensor:
        h = lam_next - lam
        e0 = self.eps(cache, "eps", x, lam)
        s1 = lam + r1 * h
        u1 = x - _sig(s1) * (r1 * h).expm1() * e0
        e1 = self.eps(cache, "eps_r1", u1, s1)
        phi1 = h.expm1()
        return x - _sig(lam_next) * phi1 * e0 - _sig(lam_next) / (2 * r1) * phi1 * (e1 - e0)

    def step3(self, x: Tensor, lam: Tensor, lam_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = lam_next - lam
        e0 = self.eps(cache, "eps", x, lam)
        s1, s2 = lam + r1 * h, lam + r2 * h
        u1 = x - _sig(s1) * (r1 * h).expm1() * e0
        e1 = self.eps(cache, "eps_r1", u1, s1)
        phi2_s2 = (r2 * h).expm1() / (r2 * h) - 1
        u2 = x - _sig(s2) * (r2 * h).expm1() * e0 - _sig(s2) * (r2 / r1) * phi2_s2 * (e1 - e0)
        e2 = self.eps(cache, "eps_r2", u2, s2)
        phi2 = h.expm1() / h - 1
        return x - _sig(lam_next) * h.expm1() * e0 - _sig(lam_next) / r2 * phi2 * (e2 - e0)


def _level(value: float | Tensor, device: torch.device) -> Tensor:
    """A sigma bound as k-diffusion holds it: a tensor keeps its dtype, a number is float32."""
    if isinstance(value, Tensor):
        return value.detach().clone().to(device)
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def _check_levels(sigma_min: float | Tensor, sigma_max: float | Tensor) -> None:
    if float(sigma_min) <= 0 or float(sigma_max) <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")


def _ancestral_target(
    lam: Tensor, lam_next: Tensor, lam_end: Tensor, eta: float
) -> tuple[Tensor, Tensor | float]:
    """The level a DPM-Solver step with ``eta`` aims at and the noise that then restores
    ``sigma(lam_next)``: the ancestral split, clipped so the target never passes the end."""
    if not eta:
        return lam_next, 0.0
    sigma_down, _ = get_ancestral_step(_sig(lam), _sig(lam_next), eta)
    target = torch.minimum(lam_end, _lam(sigma_down))
    return target, (_sig(lam_next) ** 2 - _sig(target) ** 2) ** 0.5


@torch.no_grad()
def dpm_fast(
    model: Denoiser,
    x: Tensor,
    sigma_min: float | Tensor,
    sigma_max: float | Tensor,
    n: int,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): ``n`` model calls spent on steps uniform in
    ``lambda`` from ``sigma_max`` to ``sigma_min``, all third order but the last one or two (orders
    ``3, ..., 3, 2, 1`` when ``n`` is a multiple of 3, else ``3, ..., 3, n mod 3``). With ``eta``
    each step aims lower and adds noise, as k-diffusion's ancestral variant does. Ends at
    ``sigma_min``."""
    _check_levels(sigma_min, sigma_max)
    _need_noise(noise, bool(eta), "dpm_fast", f"eta={eta}")
    lam_start = _lam(_level(sigma_max, x.device))
    lam_end = _lam(_level(sigma_min, x.device))
    if not lam_end > lam_start and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    m = n // 3 + 1
    grid = torch.linspace(
        float(lam_start), float(lam_end), m + 1, dtype=lam_start.dtype, device=x.device
    )
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    solver = _DpmSolver(model)
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        lam, lam_next = grid[i], grid[i + 1]
        target, sigma_up = _ancestral_target(lam, lam_next, lam_end, eta)
        denoised = x - _sig(lam) * solver.eps(cache, "eps", x, lam)
        if callback is not None:
            callback({
                "x": x, "i": i, "sigma": _sig(grid[i]), "sigma_hat": _sig(lam),
                "denoised": denoised, "t": grid[i], "t_up": lam,
            })  # fmt: skip
        if order == 1:
            x = solver.step1(x, lam, target, cache)
        elif order == 2:
            x = solver.step2(x, lam, target, cache)
        else:
            x = solver.step3(x, lam, target, cache)
        if noise is not None:
            x = x + sigma_up * s_noise * noise(_sig(lam), _sig(lam_next))
    return x


class _PidStepSize:
    """PID control of the step size on the inverse error (Söderlind 2003, as used for ODE
    solvers), with the arctan limiter ``1 + atan(f - 1)`` on the proposed factor."""

    def __init__(
        self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
        accept_safety: float, eps: float = 1e-8,
    ) -> None:  # fmt: skip
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose(self, error: float) -> bool:
        """Scale ``h`` by the controller's factor; True when the step is accepted."""
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


@overload
def dpm_adaptive(
    model: Denoiser, x: Tensor, sigma_min: float | Tensor, sigma_max: float | Tensor, *,
    callback: Callback | None = ..., noise: NoiseSampler | None = ..., order: int = ...,
    rtol: float = ..., atol: float = ..., h_init: float = ..., pcoeff: float = ...,
    icoeff: float = ..., dcoeff: float = ..., accept_safety: float = ..., eta: float = ...,
    s_noise: float = ..., return_info: Literal[False] = ...,
) -> Tensor: ...  # fmt: skip
@overload
def dpm_adaptive(
    model: Denoiser, x: Tensor, sigma_min: float | Tensor, sigma_max: float | Tensor, *,
    callback: Callback | None = ..., noise: NoiseSampler | None = ..., order: int = ...,
    rtol: float = ..., atol: float = ..., h_init: float = ..., pcoeff: float = ...,
    icoeff: float = ..., dcoeff: float = ..., accept_safety: float = ..., eta: float = ...,
    s_noise: float = ..., return_info: Literal[True],
) -> tuple[Tensor, dict[str, int]]: ...  # fmt: skip
@torch.no_grad()
def dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigma_min: float | Tensor,
    sigma_max: float | Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, int]]:
    """DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022, sec. 3.4 and app. C): each
    step compares a lower- and a higher-order solution (orders 1 and 2, or 2 with ``r1 = 1/3``
    and 3), and a PID controller on the scaled error norm picks the next ``h`` in ``lambda``.
    The tolerance is ``max(atol, rtol·max(|x_low|, |x_prev|))`` per element. With ``eta`` the
    controller treats the method as order 1.5 and accepted steps add ancestral noise. Ends at
    ``sigma_min``; ``return_info`` also returns the step counts."""
    _check_levels(sigma_min, sigma_max)
    if order not in {2, 3}:
        raise ValueError("order should be 2 or 3")
    _need_noise(noise, bool(eta), "dpm_adaptive", f"eta={eta}")
    lam_start = _lam(_level(sigma_max, x.device))
    lam_end = _lam(_level(sigma_min, x.device))
    forward = bool(lam_end > lam_start)
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    h0 = abs(h_init) * (1 if forward else -1)
    atol_t = torch.tensor(atol, device=x.device)
    rtol_t = torch.tensor(rtol, device=x.device)
    pid = _PidStepSize(h0, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    solver = _DpmSolver(model)
    s = lam_start
    x_prev = x

    def unfinished(s: Tensor) -> bool:
        return bool(s < lam_end - 1e-5) if forward else bool(s > lam_end + 1e-5)

    while unfinished(s):
        cache: dict[str, Tensor] = {}
        lam_next = (
            torch.minimum(lam_end, s + pid.h) if forward else torch.maximum(lam_end, s + pid.h)
        )
        target, sigma_up = _ancestral_target(s, lam_next, lam_end, eta)
        denoised = x - _sig(s) * solver.eps(cache, "eps", x, s)
        if order == 2:
            x_low = solver.step1(x, s, target, cache)
            x_high = solver.step2(x, s, target, cache)
        else:
            x_low = solver.step2(x, s, target, cache, r1=1 / 3)
            x_high = solver.step3(x, s, target, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(float(error)):
            x_prev = x_low
            x = x_high
            if noise is not None:
                x = x + sigma_up * s_noise * noise(_sig(s), _sig(lam_next))
            s = lam_next
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        if callback is not None:
            callback({
                "x": x, "i": info["steps"] - 1, "sigma": _sig(s), "sigma_hat": _sig(s),
                "denoised": denoised, "t": s, "t_up": s, "error": error, "h": pid.h, **info,
            })  # fmt: skip
    if return_info:
        return x, info
    return x


# --- DPM-Solver++ (Lu et al. 2022b), data-prediction form ----------------------------------------


@torch.no_grad()
def dpmpp_2s_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022b, Alg. 1, ``r = 1/2``) down
    to ``sigma_down``, then noise of size ``sigma_up``; an Euler step where ``sigma_down`` is 0."""
    _need_noise(noise, bool(eta), "dpmpp_2s_ancestral", f"eta={eta}")
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            lam, lam_next = _lam(sigmas[i]), _lam(sigma_down)
            h = lam_next - lam
            lam_mid = lam + h / 2
            x_mid = (_sig(lam_mid) / _sig(lam)) * x - (-h / 2).expm1() * denoised
            denoised_mid = model(x_mid, _batch(x, _sig(lam_mid)))
            x = (_sig(lam_next) / _sig(lam)) * x - (-h).expm1() * denoised_mid
        if sigmas[i + 1] > 0 and noise is not None:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 1 / 2,
) -> Tensor:
    """Stochastic DPM-Solver++ (k-diffusion's "DPM++ SDE"): a two-stage singlestep method in
    ``lambda``. Stage 1 takes an ancestral first-order step to ``lambda_i + r·h``; stage 2 steps
    from ``x_i`` with the blend ``(1 - 1/(2r))·D_i + 1/(2r)·D_s`` of the two predictions, again
    ancestrally. Each stage adds its own noise; the step to sigma 0 is an Euler step."""
    _need_noise(noise, bool(eta), "dpmpp_sde", f"eta={eta}")
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
        h = lam_next - lam
        lam_s = lam + h * r
        sigma_i, sigma_s, sigma_next = _sig(lam), _sig(lam_s), _sig(lam_next)

        down, up = get_ancestral_step(sigma_i, sigma_s, eta)
        lam_down = _lam(down)
        x_s = (_sig(lam_down) / sigma_i) * x - (lam - lam_down).expm1() * denoised
        if noise is not None:
            x_s = x_s + noise(sigma_i, sigma_s) * s_noise * up
        denoised_s = model(x_s, _batch(x, sigma_s))

        down, up = get_ancestral_step(sigma_i, sigma_next, eta)
        lam_down = _lam(down)
        blended = (1 - fac) * denoised + fac * denoised_s
        x = (_sig(lam_down) / sigma_i) * x - (lam - lam_down).expm1() * blended
        if noise is not None:
            x = x + noise(sigma_i, sigma_next) * s_noise * up
    return x


@torch.no_grad()
def dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): a multistep second-order method in
    ``lambda`` whose data prediction is extrapolated from the previous one,
    ``(1 + 1/(2r))·D_i - 1/(2r)·D_{i-1}`` with ``r = h_{i-1}/h_i``; first order on the first step
    and on the step to sigma 0. Deterministic: ``noise`` is never drawn."""
    del noise
    previous: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
        h = lam_next - lam
        if previous is None or sigmas[i + 1] == 0:
            prediction = denoised
        else:
            r = (lam - _lam(sigmas[i - 1])) / h
            prediction = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sig(lam_next) / _sig(lam)) * x - (-h).expm1() * prediction
        previous = denoised
    return x


def _sde_noise_scale(sigma_next: Tensor, eta_h: Tensor) -> Tensor:
    """The fresh noise's size in an SDE-DPM-Solver++ step:
    ``sigma_{i+1}·sqrt(1 - e^(-2·eta·h))``."""
    return sigma_next * (-2 * eta_h).expm1().neg().sqrt()


@torch.no_grad()
def dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, app. B; k-diffusion's variant with ``eta``): the
    exact solution of the linear part over ``h`` with the noise weight ``e^(-eta·h)``, a
    second-order correction from the previous prediction (``midpoint``: ``0.5·(1-e^-H)``,
    ``heun``: ``(1-e^-H)/(-H) + 1``, both times ``(D_i - D_{i-1})/r``, ``H = (1+eta)·h``), and
    fresh noise of size ``sigma_{i+1}·sqrt(1 - e^(-2·eta·h))``. The step to sigma 0 returns the
    prediction."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    _need_noise(noise, bool(eta), "dpmpp_2m_sde", f"eta={eta}")
    previous: Tensor | None = None
    h_last: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            eta_h = eta * h
            big_h = h + eta_h
            one_minus = (-big_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + one_minus * denoised
            if previous is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (one_minus / (-big_h) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * one_minus * (1 / r) * (denoised - previous)
            if eta and noise is not None:
                x = (
                    x
                    + noise(sigmas[i], sigmas[i + 1])
                    * _sde_noise_scale(sigmas[i + 1], eta_h)
                    * s_noise
                )
            h_last = h
        previous = denoised
    return x


@torch.no_grad()
def dpmpp_3m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE as k-diffusion defines it: the first-order SDE step of
    :func:`dpmpp_2m_sde` with ``H = (1+eta)·h``, plus multistep corrections with
    ``phi_2 = (e^-H - 1)/H + 1`` and ``phi_3 = phi_2/H - 1/2``.

    With two earlier predictions (``r0 = h_{i-1}/h``, ``r1 = h_{i-2}/h``) the divided
    differences ``d1_0 = (D_i - D_{i-1})/r0`` and ``d1_1 = (D_{i-1} - D_{i-2})/r1`` give
    ``d1 = d1_0 + (d1_0 - d1_1)·r0/(r0+r1)``, ``d2 = (d1_0 - d1_1)/(r0+r1)`` and the update
    ``+ phi_2·d1 - phi_3·d2``. The warm-up step with one earlier prediction adds
    ``phi_2·(D_i - D_{i-1})/r0`` (diffusers' 3M SDE weights this step differently; this is
    k-diffusion's). The step to sigma 0 returns the prediction."""
    _need_noise(noise, bool(eta), "dpmpp_3m_sde", f"eta={eta}")
    d_1: Tensor | None = None
    d_2: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h: Tensor | None = h_1
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            big_h = h * (eta + 1)
            x = torch.exp(-big_h) * x + (-big_h).expm1().neg() * denoised
            phi_2 = big_h.neg().expm1() / big_h + 1
            if h_2 is not None and h_1 is not None and d_1 is not None and d_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / big_h - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and d_1 is not None:
                x = x + phi_2 * ((denoised - d_1) / (h_1 / h))
            if eta and noise is not None:
                x = (
                    x
                    + noise(sigmas[i], sigmas[i + 1])
                    * _sde_noise_scale(sigmas[i + 1], h * eta)
                    * s_noise
                )
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


SAMPLER_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpm_fast": dpm_fast,
    "dpm_adaptive": dpm_adaptive,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
}
"""k-diffusion's sampler names (without ``sample_``) to the functions above."""
