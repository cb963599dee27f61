"""The k-diffusion family, held to k-diffusion itself and to the exact answer of a Gaussian toy.

Golden tests: ``tests/golden/kdiffusion/`` holds what k-diffusion's own ``sample_*`` functions
(0.1.1.post1, run by ``tests/golden/make_kdiffusion_golden.py``) return for a fixed nonlinear
toy denoiser on A1111's img2img and txt2img Karras lists, with a fixed stream of noise draws:
the final latent and the latent at every callback, the sigmas each model call and noise draw
got, and the step counts of DPM adaptive. Runs are float64; the bound is 1e-5 relative (largest
absolute difference over the largest absolute value) on every stored latent.

Property tests: data ``N(mu, s²)`` per element has the exact denoiser
``D(x, sigma) = (s²x + sigma²mu) / (s² + sigma²)``, and the probability-flow ODE carries
``mu + sqrt(s² + sigma_max²)·z`` to ``mu + s·z``; the deterministic samplers must converge to that
as steps grow, and the stochastic ones must produce mean ``mu`` and std ``s``.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.diffusion.sampling import kdiffusion as kd

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kdiffusion"
REL = 1e-5
SHAPE = (2, 4, 4, 4)
LEVELS = ("dpm_fast", "dpm_adaptive")


# --- the golden problem, defined as in make_kdiffusion_golden.py (the probe test checks that) --


def pattern(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    b, c, h, w = torch.meshgrid(*(torch.arange(n, dtype=dtype) for n in SHAPE), indexing="ij")
    return torch.sin(0.9 * (h + 1) * (c + 1) + 0.4 * b) * torch.cos(0.55 * (w + 1) - 0.3 * c)


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    assert sigma.shape == (x.shape[0],), sigma.shape
    s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
    s2 = s * s
    mean = x.mean(dim=(2, 3), keepdim=True)
    target = 0.8 * pattern(x.dtype) + 0.25 * torch.tanh(mean)
    return x / (1 + s2) + 0.35 * s / (1 + s) * torch.tanh(x) + s2 / (1 + s2) * target


def normal(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(SHAPE))


def noise_draw(k: int) -> torch.Tensor:
    return normal(1000 + k)


def start_latents() -> tuple[torch.Tensor, torch.Tensor]:
    return 0.6 * normal(1) + 0.3 * pattern(), normal(2)


def start_for(schedule: str, sigma_max: float) -> torch.Tensor:
    latent, start_noise = start_latents()
    return (
        start_noise * sigma_max if schedule.startswith("t2i") else latent + start_noise * sigma_max
    )


class Stream:
    """The golden noise: draws consumed in order; each call's sigma pair is recorded."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.pairs: list[tuple[float, float]] = []
        self.dtype = dtype

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        assert isinstance(sigma, torch.Tensor) and isinstance(sigma_next, torch.Tensor)
        self.pairs.append((float(sigma), float(sigma_next)))
        return noise_draw(len(self.pairs) - 1).to(self.dtype)


@cache
def golden() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = json.loads((GOLDEN / "cases.json").read_text())
    with np.load(GOLDEN / "arrays.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


def case_names() -> list[str]:
    return [c["name"] for c in golden()[0]["cases"]]


def golden_case(name: str) -> dict[str, Any]:
    return next(c for c in golden()[0]["cases"] if c["name"] == name)


def rel_err(ours: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    ours_np = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else ours
    return float(np.abs(ours_np.astype(np.float64) - ref).max() / np.abs(ref).max())


def run_ours(
    case: dict[str, Any], *, dtype: torch.dtype = torch.float64, with_noise: bool = True
) -> dict[str, Any]:
    meta, _ = golden()
    sigma_list = meta["schedules"][case["schedule"]]
    stream = Stream(dtype)
    model_sigmas: list[float] = []
    callbacks: list[dict[str, Any]] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert torch.all(sigma == sigma[0])
        model_sigmas.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    def callback(d: dict[str, Any]) -> None:
        assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= d.keys()
        callbacks.append({**d, "x": d["x"].clone()})

    func = kd.SAMPLER_FUNCTIONS[case["func"]]
    kwargs = dict(case["kwargs"])
    noise = stream if with_noise else None
    info = None
    if case["func"] in LEVELS:
        levels = case["levels"]
        x0 = start_for(case["schedule"], levels["sigma_max"]).to(dtype)
        if case["func"] == "dpm_fast":
            kwargs["n"] = levels["n"]
        else:
            kwargs["return_info"] = True
        out = func(
            model, x0, levels["sigma_min"], levels["sigma_max"],
            noise=noise, callback=callback, **kwargs,
        )  # fmt: skip
        if isinstance(out, tuple):
            out, info = out
    else:
        sigmas = torch.tensor(sigma_list, dtype=dtype)
        x0 = start_for(case["schedule"], sigma_list[0]).to(dtype)
        out = func(model, x0, sigmas, noise=noise, callback=callback, **kwargs)
    return {
        "x": out, "callbacks": callbacks, "model_sigmas": model_sigmas,
        "noise_pairs": stream.pairs, "info": info,
    }  # fmt: skip


# --- golden tests -------------------------------------------------------------------------------


def test_golden_data_is_small_and_covers_every_function() -> None:
    meta, _ = golden()
    size = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert size < 1_000_000
    assert meta["reference"]["k_diffusion"] == "0.1.1.post1"
    assert {c["func"] for c in meta["cases"]} == set(kd.SAMPLER_FUNCTIONS)
    assert len(kd.SAMPLER_FUNCTIONS) == 13


def test_this_file_defines_the_golden_problem_as_the_script_did() -> None:
    _, arrays = golden()
    latent, start_noise = start_latents()
    assert np.array_equal(latent.numpy(), arrays["probe/latent"])
    assert np.array_equal(start_noise.numpy(), arrays["probe/start_noise"])
    assert np.array_equal(noise_draw(7).numpy(), arrays["probe/noise_draw_7"])
    x = torch.from_numpy(arrays["probe/x"])
    sigma = torch.from_numpy(arrays["probe/sigma"])
    np.testing.assert_allclose(toy_denoiser(x, sigma).numpy(), arrays["probe/denoised"], rtol=1e-13)


@pytest.mark.parametrize("name", case_names())
def test_matches_k_diffusion(name: str) -> None:
    case = golden_case(name)
    _, arrays = golden()
    ours = run_ours(case)

    assert rel_err(ours["x"], arrays[name + "/final"]) <= REL
    xs = arrays[name + "/xs"]
    assert len(ours["callbacks"]) == len(case["callbacks"]) == len(xs)
    for got, want, x_ref in zip(ours["callbacks"], case["callbacks"], xs, strict=True):
        assert got["i"] == want["i"]
        assert float(got["sigma"]) == pytest.approx(want["sigma"], rel=1e-6)
        assert float(got["sigma_hat"]) == pytest.approx(want["sigma_hat"], rel=1e-6)
        if "h" in want:
            assert got["h"] == pytest.approx(want["h"], rel=1e-6)
        assert rel_err(got["x"], x_ref) <= REL, f"callback {want['i']}"

    # Same model calls at the same noise levels, and the same draws in the same order.
    assert ours["model_sigmas"] == pytest.approx(case["model_sigmas"], rel=1e-6)
    assert len(ours["noise_pairs"]) == len(case["noise_pairs"])
    for got_pair, want_pair in zip(ours["noise_pairs"], case["noise_pairs"], strict=True):
        if want_pair is not None:  # None: k-diffusion's randn_like, which takes no sigmas
            assert got_pair == pytest.approx(tuple(want_pair), rel=1e-6)
    if case["info"] is not None:
        assert ours["info"] == case["info"]


def _noise_free(case: dict[str, Any]) -> bool:
    kwargs = case["kwargs"]
    if case["func"] in ("euler", "heun", "dpm_2"):
        return not kwargs.get("s_churn")
    if case["func"] in ("lms", "dpmpp_2m"):
        return True
    return kwargs.get("eta", 1.0 if case["func"] not in LEVELS else 0.0) == 0.0


NOISE_FREE = [c for c in case_names() if _noise_free(golden_case(c))]


@pytest.mark.parametrize("name", NOISE_FREE)
def test_runs_without_a_noise_sampler_where_no_draw_contributes(name: str) -> None:
    ours = run_ours(golden_case(name), with_noise=False)
    assert rel_err(ours["x"], golden()[1][name + "/final"]) <= REL
    assert ours["noise_pairs"] == []


@pytest.mark.parametrize("name", case_names())
def test_float32_runs_meet_the_same_bound(name: str) -> None:
    """A1111 samples in float32: the same functions on float32 latents and sigmas stay within
    the bound of the float64 reference (DPM adaptive takes the same accept/reject decisions)."""
    case = golden_case(name)
    ours = run_ours(case, dtype=torch.float32)
    assert ours["x"].dtype == torch.float32
    assert rel_err(ours["x"], golden()[1][name + "/final"]) <= REL
    for got, x_ref in zip(ours["callbacks"], golden()[1][name + "/xs"], strict=True):
        assert rel_err(got["x"], x_ref) <= REL
    if case["info"] is not None:
        assert ours["info"] == case["info"]


# --- the contract around the maths --------------------------------------------------------------


def _sigmas() -> torch.Tensor:
    return torch.tensor(golden()[0]["schedules"]["c035"], dtype=torch.float64)


@pytest.mark.parametrize(
    ("func", "kwargs"),
    [
        ("euler", {"s_churn": 1.0}),
        ("heun", {"s_churn": 1.0}),
        ("dpm_2", {"s_churn": 1.0}),
        ("euler_ancestral", {}),
        ("dpm_2_ancestral", {}),
        ("dpmpp_2s_ancestral", {}),
        ("dpmpp_sde", {}),
        ("dpmpp_2m_sde", {}),
        ("dpmpp_3m_sde", {"eta": 0.5}),
    ],
)
def test_a_needed_noise_sampler_is_never_replaced_by_a_hidden_rng(
    func: str, kwargs: dict[str, Any]
) -> None:
    calls: list[int] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return toy_denoiser(x, sigma)

    with pytest.raises(ValueError, match="no noise sampler"):
        kd.SAMPLER_FUNCTIONS[func](model, start_for("c035", 0.5), _sigmas(), **kwargs)
    assert calls == []  # refused before any work


@pytest.mark.parametrize("func", LEVELS)
def test_dpm_solvers_need_noise_for_eta_and_positive_levels(func: str) -> None:
    x = start_for("c035", 0.5)
    f = kd.SAMPLER_FUNCTIONS[func]
    extra = {"n": 6} if func == "dpm_fast" else {}
    with pytest.raises(ValueError, match="no noise sampler"):
        f(toy_denoiser, x, 0.03, 0.5, eta=1.0, **extra)
    with pytest.raises(ValueError, match="must not be 0"):
        f(toy_denoiser, x, 0.0, 0.5, **extra)


def test_churn_outside_its_window_needs_no_noise() -> None:
    sigmas = _sigmas()
    plain = kd.euler(toy_denoiser, start_for("c035", 0.5), sigmas)
    windowed = kd.euler(toy_denoiser, start_for("c035", 0.5), sigmas, s_churn=5.0, s_tmin=9.0)
    assert torch.equal(plain, windowed)


def test_bad_options_are_refused_clearly() -> None:
    x, sigmas = start_for("c035", 0.5), _sigmas()
    with pytest.raises(ValueError, match="solver_type"):
        kd.dpmpp_2m_sde(toy_denoiser, x, sigmas, eta=0.0, solver_type="rk4")
    with pytest.raises(ValueError, match="order should be 2 or 3"):
        kd.dpm_adaptive(toy_denoiser, x, 0.03, 0.5, order=4)
    with pytest.raises(ValueError, match="too high"):
        kd.linear_multistep_coeff(3, [3.0, 2.0, 1.0, 0.0], 1, 0)


def test_dpm_adaptive_returns_its_step_counts_on_request() -> None:
    x = start_for("c035", 0.5)
    alone = kd.dpm_adaptive(toy_denoiser, x, 0.03, 0.5)
    out, info = kd.dpm_adaptive(toy_denoiser, x, 0.03, 0.5, return_info=True)
    assert torch.equal(alone, out)
    assert set(info) == {"steps", "nfe", "n_accept", "n_reject"}
    assert info["steps"] == info["n_accept"] + info["n_reject"] > 0


def test_ancestral_step_splits_the_variance() -> None:
    down, up = kd.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.2), eta=0.7)
    assert isinstance(up, torch.Tensor)
    assert float(down) ** 2 + float(up) ** 2 == pytest.approx(1.44)
    assert float(up) == pytest.approx(0.7 * 1.2 * math.sqrt(1 - 1.2**2 / 2.0**2))
    assert kd.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.2), eta=0.0)[1] == 0.0
    # eta large enough to ask for more noise than sigma_to: capped, nothing left to step down
    down, up = kd.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.2), eta=5.0)
    assert (float(down), float(up)) == (0.0, pytest.approx(1.2))


def test_lms_coefficients_equal_numerical_integration() -> None:
    integrate = pytest.importorskip("scipy.integrate")
    grid = np.array(golden()[0]["schedules"]["c100"])
    for order in (1, 2, 3, 4):
        for i in range(order - 1, len(grid) - 1):
            for j in range(order):

                def basis(tau: float, order: int = order, i: int = i, j: int = j) -> float:
                    others = [k for k in range(order) if k != j]
                    return math.prod(
                        (tau - grid[i - k]) / (grid[i - j] - grid[i - k]) for k in others
                    )

                ref = integrate.quad(basis, grid[i], grid[i + 1], epsabs=0, epsrel=1e-13)[0]
                got = kd.linear_multistep_coeff(order, grid, i, j)
                assert got == pytest.approx(ref, rel=1e-11, abs=1e-14)


# --- Gaussian toy: the exact flow map and the exact distribution -------------------------------

MU = torch.tensor([0.3, -0.7], dtype=torch.float64)
STD = torch.tensor([0.5, 1.3], dtype=torch.float64)
SIGMA_MIN, SIGMA_MAX = 0.002, 20.0


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s2, v = STD**2, sigma.reshape(-1, 1) ** 2
    return (s2 * x + v * MU) / (s2 + v)


def karras(n: int) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = SIGMA_MIN ** (1 / 7), SIGMA_MAX ** (1 / 7)
    return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)])


def gaussian_noise(seed: int, shape: tuple[int, ...]) -> kd.NoiseSampler:
    """Independent standard normal draws, as A1111's image RNG gives the non-SDE samplers."""
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=gen, dtype=torch.float64)


class BrownianNoise:
    """Normalised increments ``(W(b) - W(a)) / sqrt|b - a|`` of one Brownian path in sigma,
    filled in lazily by Brownian-bridge sampling: the kind of noise A1111 gives the SDE
    samplers, where draws over overlapping sigma intervals are correlated."""

    def __init__(self, seed: int, shape: tuple[int, ...]) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.shape = shape
        self.times = [0.0]
        self.values = [torch.zeros(shape, dtype=torch.float64)]

    def _at(self, t: float) -> torch.Tensor:
        k = bisect.bisect_left(self.times, t)
        if k < len(self.times) and self.times[k] == t:
            return self.values[k]
        fresh = torch.randn(self.shape, generator=self.gen, dtype=torch.float64)
        t0, w0 = self.times[k - 1], self.values[k - 1]
        if k == len(self.times):
            w = w0 + math.sqrt(t - t0) * fresh
        else:
            t1, w1 = self.times[k], self.values[k]
            a = (t - t0) / (t1 - t0)
            w = w0 + a * (w1 - w0) + math.sqrt(a * (1 - a) * (t1 - t0)) * fresh
        self.times.insert(k, t)
        self.values.insert(k, w)
        return w

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        return (self._at(b) - self._at(a)) / math.sqrt(abs(b - a))


BROWNIAN = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"}  # A1111's brownian_noise samplers


def run_gaussian(
    func: str, steps: int, z: torch.Tensor, seed: int = 0, **kwargs: Any
) -> tuple[torch.Tensor, float]:
    """(result, the sigma it ends at) for a start ``mu + sqrt(s² + sigma_max²)·z``."""
    f: Callable[..., Any] = kd.SAMPLER_FUNCTIONS[func]
    x0 = MU + torch.sqrt(STD**2 + SIGMA_MAX**2) * z
    shape = tuple(z.shape)
    noise = BrownianNoise(seed, shape) if func in BROWNIAN else gaussian_noise(seed, shape)
    if func in LEVELS:
        # DPM adaptive picks its own steps: tighten its tolerances as "steps" grow instead.
        tighter = (8 / steps) ** 3
        extra = (
            {"n": steps}
            if func == "dpm_fast"
            else {"rtol": 0.05 * tighter, "atol": 0.0078 * tighter}
        )
        out = f(gaussian_denoiser, x0, SIGMA_MIN, SIGMA_MAX, noise=noise, **extra, **kwargs)
        return out, SIGMA_MIN
    return f(gaussian_denoiser, x0, karras(steps), noise=noise, **kwargs), 0.0


ODE_SAMPLERS: list[tuple[str, dict[str, Any]]] = [
    ("euler", {}), ("heun", {}), ("dpm_2", {}), ("lms", {}), ("dpmpp_2m", {}),
    ("euler_ancestral", {"eta": 0.0}), ("dpm_2_ancestral", {"eta": 0.0}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}), ("dpmpp_sde", {"eta": 0.0}),
    ("dpmpp_2m_sde", {"eta": 0.0}), ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
    ("dpmpp_3m_sde", {"eta": 0.0}), ("dpm_fast", {}), ("dpm_adaptive", {}),
]  # fmt: skip


FIRST_ORDER = {"euler", "euler_ancestral"}


@pytest.mark.parametrize(("func", "kwargs"), ODE_SAMPLERS, ids=lambda v: str(v))
def test_deterministic_samplers_converge_to_the_exact_flow_map(
    func: str, kwargs: dict[str, Any]
) -> None:
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errors = []
    for steps in (32, 128):
        x, sigma_end = run_gaussian(func, steps, z, **kwargs)
        exact = MU + torch.sqrt(STD**2 + sigma_end**2) * z
        errors.append(float(((x - exact) / STD).abs().max()))
    # Four times the steps: at least first-order convergence (error / 4), and close at 128.
    assert errors[1] < 0.3 * errors[0], errors
    assert errors[1] < (0.06 if func in FIRST_ORDER else 3e-3), errors


SDE_SAMPLERS: list[tuple[str, dict[str, Any]]] = [
    ("euler", {"s_churn": 40.0}), ("heun", {"s_churn": 40.0}), ("dpm_2", {"s_churn": 40.0}),
    ("euler_ancestral", {}), ("dpm_2_ancestral", {}), ("dpmpp_2s_ancestral", {}),
    ("dpmpp_sde", {}), ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde", {}), ("euler_ancestral", {"eta": 0.5}), ("dpmpp_3m_sde", {"eta": 0.5}),
    ("dpm_fast", {"eta": 1.0}), ("dpm_adaptive", {"eta": 1.0}),
]  # fmt: skip


@pytest.mark.parametrize(("func", "kwargs"), SDE_SAMPLERS, ids=lambda v: str(v))
def test_stochastic_samplers_sample_the_data_distribution(
    func: str, kwargs: dict[str, Any]
) -> None:
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x, sigma_end = run_gaussian(func, 128, z, seed=5, **kwargs)
    std = torch.sqrt(STD**2 + sigma_end**2)
    mean_err = (x.mean(0) - MU) / std
    std_ratio = x.std(0) / std
    assert mean_err.abs().max() < 0.03, mean_err  # about 4 standard errors
    # The discretisation bias left after 128 steps, largest for Euler with churn.
    assert (std_ratio - 1).abs().max() < (0.1 if "s_churn" in kwargs else 0.05), std_ratio
    # The noise was used: the result is no longer a function of the start alone.
    corr = ((x - x.mean(0)) * z).mean(0) / (x.std(0) * z.std(0))
    assert corr.max() < 0.98, corr
