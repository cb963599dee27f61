"""A1111's DDIM, PLMS, UniPC and Restart samplers against independent references.

The golden runs in ``tests/golden/timesteps/`` come from ``tests/golden/make_timesteps_golden.py``:
diffusers' DDIM, PNDM (PLMS) and UniPC schedulers stepped over A1111's grids, and k-diffusion's
Heun sampler with the Restart schedule, all on a nonlinear toy model. Each run recorded every
model call's inputs and the final latent; here the project's samplers are run from the same start
latent with the same noise stream and must make the same calls to within 1e-5 (relative).

The property tests use a Gaussian data distribution, whose exact noise prediction and denoiser
are known in closed form: the deterministic samplers converge to the exact probability-flow
transport as steps grow, and the stochastic ones produce the right distribution.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.diffusion.sampling import restart as R
from pipeline.diffusion.sampling import timesteps as T

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
TOL = 1e-9  # the target is 1e-5; float64 runs agree with the references to ~1e-14


def _load_toys() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_timesteps_golden", GOLDEN / "make_timesteps_golden.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toys = _load_toys()
ACP = toys.sd15_alphas_cumprod()


@cache
def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / "timesteps" / f"{name}.json").read_text())


def cases(name: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in golden(name)["cases"]]


def tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(toys.SHAPE).to(dtype)


class Recorder:
    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        assert t.dtype == x.dtype
        assert torch.all(t == t[0])
        self.calls.append((float(t[0]), x.clone()))
        return self.fn(x, t)


class NoiseList:
    """A noise stream: hands out the stored draws in order and counts them."""

    def __init__(self, draws, dtype=torch.float64) -> None:
        self.draws = [tensor(d, dtype) for d in draws]
        self.used, self.args = 0, []

    def __call__(self, a: float, b: float) -> torch.Tensor:
        self.args.append((a, b))
        self.used += 1
        return self.draws[self.used - 1]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def check_calls(rec: Recorder, case: dict, tol: float = TOL, t_rel: float = 1e-9) -> float:
    """Same model calls as the reference: count, timesteps/sigmas and inputs; returns max error."""
    assert len(rec.calls) == len(case["calls"])
    worst = 0.0
    for k, ((t, x), want) in enumerate(zip(rec.calls, case["calls"], strict=True)):
        assert t == pytest.approx(want["t"], rel=t_rel, abs=1e-9), f"call {k}"
        err = rel_err(x, tensor(want["x"]))
        assert err <= tol, f"call {k}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


def run_case(case: dict, dtype=torch.float64):
    """Run the project's sampler for a golden case; returns (result, recorder, noise, callbacks)."""
    steps: list[dict] = []
    x = tensor(case["start"], dtype)
    noise = NoiseList(case["noise"], dtype)
    kind = case["sampler"]
    if kind == "restart":
        rec = Recorder(toys.toy_denoiser)
        rl = case["restart_list"]
        restart_list = None if rl is None else {e[0]: e[1:] for e in rl}
        out = R.restart(
            rec,
            x,
            case["sigmas"],
            noise=noise,
            s_noise=case["s_noise"],
            restart_list=restart_list,
            callback=steps.append,
        )
        return out, rec, noise, steps
    rec = Recorder(toys.toy_eps)
    ts = torch.tensor(case["timesteps"], dtype=torch.int64)
    if kind == "ddim":
        stream = noise if case["noise"] else None  # eta 0: the reference drew nothing
        out = T.ddim(rec, x, ts, ACP, noise=stream, eta=case["eta"], callback=steps.append)
    elif kind == "plms":
        out = T.plms(rec, x, ts, ACP, callback=steps.append)
    else:
        out = T.unipc(
            rec,
            x,
            ts,
            torch.from_numpy(ACP),
            is_img2img=case["is_img2img"],
            variant=case["variant"],
            order=case["order"],
            lower_order_final=case["lower_order_final"],
            skip_type=case["skip_type"],
            callback=steps.append,
        )
    return out, rec, noise, steps


# --- the toy models and the plan --------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "plms", "unipc", "restart"])
def test_toy_models_are_the_ones_the_golden_data_was_made_with(name):
    check = golden(name)["toy_check"]
    assert golden(name)["shape"] == list(toys.SHAPE)
    x = torch.linspace(-2.0, 2.0, math.prod(toys.SHAPE), dtype=torch.float64).reshape(toys.SHAPE)
    eps = toys.toy_eps(x, torch.tensor(check["eps_t"], dtype=torch.float64))
    den = toys.toy_denoiser(x, torch.tensor(check["denoiser_sigma"], dtype=torch.float64))
    assert rel_err(eps, tensor(check["eps"])) < 1e-12
    assert rel_err(den, tensor(check["denoiser"])) < 1e-12


def test_a1111_timestep_grid_known_answers():
    assert T.a1111_timesteps(20).tolist() == list(range(1, 1000, 50))
    grid18 = T.a1111_timesteps(18).tolist()  # 1000 // 18 = 55: 19 entries, 1 .. 991
    assert grid18 == [1 + 55 * k for k in range(19)]
    assert T.a1111_timesteps(20, discard=True).tolist() == [1 + 47 * k for k in range(22)]
    grid600 = T.a1111_timesteps(600).tolist()  # stride 1: 1 .. 999, then 1000 clipped to 999
    assert grid600[:3] == [1, 2, 3]
    assert grid600[-2:] == [999, 999]
    assert len(grid600) == 1000
    bad_steps: list[Any] = [0, -3, True, 2.0, 1001]
    for bad in bad_steps:
        with pytest.raises(ValueError, match="steps"):
            T.a1111_timesteps(bad)


def test_img2img_plan_known_answer():
    sched, sa, s1 = T.timestep_img2img_plan(18, 0.35, ACP)  # t_enc = int(6.3) = 6
    assert sched.tolist() == [1, 56, 111, 166, 221, 276]
    assert sa == pytest.approx(math.sqrt(ACP[331]), rel=1e-15)
    assert s1 == pytest.approx(math.sqrt(1 - ACP[331]), rel=1e-15)
    # strength 1 counts as 0.999; t_enc uses the steps before the discarded one is added
    sched, sa, _ = T.timestep_img2img_plan(10, 1.0, ACP, discard=True)
    assert sched.tolist() == [1 + 90 * k for k in range(9)]
    assert sa == pytest.approx(math.sqrt(ACP[811]), rel=1e-15)
    empty, sa, _ = T.timestep_img2img_plan(18, 0.05, ACP)
    assert empty.tolist() == []
    assert sa == pytest.approx(math.sqrt(ACP[1]), rel=1e-15)
    with pytest.raises(ValueError, match="strength"):
        T.timestep_img2img_plan(18, 1.5, ACP)


@pytest.mark.parametrize("name", ["ddim", "plms", "unipc"])
def test_img2img_plan_matches_the_references_plan(name):
    for case in golden(name)["cases"]:
        if case["plan"] is None:
            continue
        sched, sa, s1 = T.timestep_img2img_plan(
            case["steps"], case["strength"], ACP, discard=case["discard"]
        )
        assert sched.tolist() == case["plan"]["timesteps"] == case["timesteps"]
        assert sa == pytest.approx(case["plan"]["sqrt_alpha"], rel=1e-14)
        assert s1 == pytest.approx(case["plan"]["sqrt_one_minus_alpha"], rel=1e-14)


# --- golden runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("ddim"))
def test_ddim_matches_diffusers_ddim_on_a1111_grid(case):
    out, rec, noise, steps = run_case(case)
    check_calls(rec, case)
    assert rel_err(out, tensor(case["final"])) <= TOL
    n = len(case["timesteps"]) - 1
    assert len(rec.calls) == T.ddim_model_calls(case["timesteps"]) == n
    assert noise.used == (n if case["eta"] > 0 else 0)
    assert [s["i"] for s in steps] == list(range(n))
    # each callback carries the latent the next call sees, and the last one the result
    seen = [tensor(c["x"]) for c in case["calls"][1:]] + [tensor(case["final"])]
    assert all(rel_err(s["x"], w) <= TOL for s, w in zip(steps, seen, strict=True))
    levels = [math.sqrt((1 - ACP[t]) / ACP[t]) for t in case["timesteps"][1:][::-1]]
    assert [s["sigma"] for s in steps] == pytest.approx(levels)


def test_ddim_draws_from_the_stream_on_every_step_like_a1111():
    case = golden("ddim")["cases"][0]  # eta 0
    n = len(case["timesteps"]) - 1
    stream = NoiseList([case["start"]] * n)
    out = T.ddim(toys.toy_eps, tensor(case["start"]), case["timesteps"], ACP, noise=stream)
    assert stream.used == n  # drawn and multiplied by zero, as A1111's randn_like is
    assert rel_err(out, tensor(case["final"])) <= TOL
    prev = [math.sqrt((1 - ACP[t]) / ACP[t]) for t in case["timesteps"][:-1][::-1]]
    assert [b for _, b in stream.args] == pytest.approx(prev)


@pytest.mark.parametrize("case", cases("plms"))
def test_plms_matches_diffusers_pndm_on_a1111_grid(case):
    out, rec, _, steps = run_case(case)
    check_calls(rec, case)
    assert rel_err(out, tensor(case["final"])) <= TOL
    n = len(case["timesteps"]) - 1
    assert len(rec.calls) == T.plms_model_calls(case["timesteps"]) == n + 1
    assert [s["i"] for s in steps] == list(range(n))
    seen = [tensor(c["x"]) for c in case["calls"][2:]] + [tensor(case["final"])]
    assert all(rel_err(s["x"], w) <= TOL for s, w in zip(steps, seen, strict=True))


@pytest.mark.parametrize("case", cases("unipc"))
def test_unipc_matches_diffusers_unipc_on_a1111_grid(case):
    out, rec, _, steps = run_case(case)
    check_calls(rec, case)
    assert rel_err(out, tensor(case["final"])) <= TOL
    n = len(case["timesteps"])
    assert len(rec.calls) == T.unipc_model_calls(case["timesteps"]) == n
    assert [s["i"] for s in steps] == list(range(n))
    assert torch.equal(steps[-1]["x"], out)
    start = case["timesteps"][-1] if case["is_img2img"] else 999
    assert rec.calls[0][0] == pytest.approx(start, abs=1e-9)
    assert rec.calls[-1][0] > 0.0


@pytest.mark.parametrize("case", cases("restart"))
def test_restart_matches_kdiffusion_heun_with_restarts(case):
    out, rec, noise, steps = run_case(case)
    check_calls(rec, case)
    assert rel_err(out, tensor(case["final"])) <= TOL
    assert noise.used == case["noise_used"]
    assert all(a < b for a, b in noise.args)  # each draw goes up the noise levels
    rl = case["restart_list"]
    restart_list = None if rl is None else {e[0]: e[1:] for e in rl}
    plan = R.restart_plan(case["sigmas"], restart_list)
    assert len(rec.calls) == R.restart_model_calls(case["sigmas"], restart_list)
    assert len(steps) == len(plan)
    assert sum(1 for a, b in itertools.pairwise(plan) if b[0] > a[1]) == noise.used
    # each callback carries its step's input latent, which is also the step's first model call
    first_call, k = [], 0
    for _, to in plan:
        first_call.append(k)
        k += 1 if to == 0 else 2
    for s, k in zip(steps, first_call, strict=True):
        assert rel_err(s["x"], tensor(case["calls"][k]["x"])) <= TOL


@pytest.mark.parametrize(
    "case",
    [golden("ddim")["cases"][1], golden("unipc")["cases"][0], golden("restart")["cases"][1]],
    ids=["ddim", "unipc", "restart"],
)
def test_float32_runs_stay_close_to_the_reference(case):
    out, rec, _, _ = run_case(case, torch.float32)
    assert out.dtype == torch.float32
    check_calls(rec, case, tol=2e-5, t_rel=1e-6)
    assert rel_err(out, tensor(case["final"])) <= 2e-5


# --- the schedules ------------------------------------------------------------------------------


def test_restart_schedule_follows_a1111_step_counts():
    sig = R.karras_sigmas(19, 0.03, 14.6)  # 19 steps: no restart, the list is walked as given
    assert R.restart_plan(sig) == list(itertools.pairwise(sig))
    assert R.restart_model_calls(sig) == 2 * 19 - 1
    for steps, restarts, length in ((20, 1, 9), (35, 1, 9), (36, 2, 9), (60, 2, 15)):
        sig = R.karras_sigmas(steps, 0.03, 14.6)
        plan = R.restart_plan(sig)
        assert len(plan) == steps
        jumps = [k for k in range(1, steps) if plan[k][0] > plan[k - 1][1]]
        assert len(jumps) == restarts
        lo, hi = plan[jumps[0] - 1][1], plan[jumps[0]][0]
        main = R.karras_sigmas(steps - length * restarts, sig[-2], sig[0])
        assert lo == min(main, key=lambda s: abs(s - 0.1))
        assert hi == min(main, key=lambda s: abs(s - 2.0))
        assert [p for p in plan if p[0] != p[1]][-1][1] == 0.0
    custom = R.restart_plan(R.karras_sigmas(12, 0.03, 14.6), {1.0: [3, 3, 5.0]})
    assert len(custom) == 12 + 3 * 2


def test_timestep_samplers_refuse_what_a1111_cannot_run():
    x = torch.zeros(toys.SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="noise"):
        T.ddim(toys.toy_eps, x, [1, 51, 101], ACP, eta=0.5)
    with pytest.raises(ValueError, match="eta"):
        T.ddim(toys.toy_eps, x, [1, 51, 101], ACP, eta=1.5)
    with pytest.raises(ValueError, match="ascending"):
        T.plms(toys.toy_eps, x, [101, 51, 1], ACP)
    with pytest.raises(ValueError, match="at least 3 steps"):
        T.unipc(toys.toy_eps, x, [1, 51], ACP, is_img2img=True)
    with pytest.raises(ValueError, match="variant"):
        T.unipc(toys.toy_eps, x, [1, 51, 101], ACP, is_img2img=True, variant="vary_coeff")
    with pytest.raises(ValueError, match="skip type"):
        T.unipc(toys.toy_eps, x, [1, 51, 101], ACP, is_img2img=True, skip_type="karras")


@pytest.mark.parametrize("handed", [[], [1]])
def test_ddim_and_plms_with_nothing_to_walk_return_the_start(handed):
    x = torch.randn(toys.SHAPE, dtype=torch.float64)
    rec = Recorder(toys.toy_eps)
    assert torch.equal(T.ddim(rec, x, handed, ACP), x)
    assert torch.equal(T.plms(rec, x, handed, ACP), x)
    assert rec.calls == []
    assert T.ddim_model_calls(handed) == T.plms_model_calls(handed) == 0


# --- properties on Gaussian data ----------------------------------------------------------------

MU, S = 0.3, 0.5  # data N(MU, S^2) per element


def _alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod at (fractional) training steps, half-log-alpha linear between steps."""
    la = np.interp(t.double().numpy(), np.arange(len(ACP)), 0.5 * np.log(ACP))
    return torch.from_numpy(np.exp(2 * la))


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = _alpha_bar(t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return MU + S**2 / (S**2 + s**2) * (x - MU)


def vp_transport(x: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Exact probability-flow map between VP levels: the per-element z-score is kept."""
    sd = lambda a: math.sqrt(a * S**2 + 1 - a)  # noqa: E731
    return math.sqrt(a_to) * MU + sd(a_to) / sd(a_from) * (x - math.sqrt(a_from) * MU)


def _errors(run, counts):
    return [run(n) for n in counts]


def _vp_start(a: float) -> torch.Tensor:
    z = torch.randn((1, 2, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return math.sqrt(a) * MU + math.sqrt(a * S**2 + 1 - a) * z


@pytest.mark.parametrize(
    ("sampler", "min_rate", "worst"), [("ddim", 1.8, 0.015), ("plms", 2.5, 1e-3)]
)
def test_ddim_and_plms_converge_to_the_exact_flow(sampler, min_rate, worst):
    fn = T.ddim if sampler == "ddim" else T.plms

    def error(steps: int) -> float:
        ts = T.a1111_timesteps(steps)[: steps // 2]  # an img2img half of the grid
        a_start, a_end = float(ACP[int(ts[-1])]), float(ACP[int(ts[0])])
        x = _vp_start(a_start)
        return rel_err(fn(gaussian_eps, x, ts, ACP), vp_transport(x, a_start, a_end))

    errs = _errors(error, (50, 100, 200))
    assert errs[-1] < worst
    assert all(a / b > min_rate for a, b in itertools.pairwise(errs)), errs


def test_unipc_converges_to_the_exact_flow():
    def error(steps: int, skip_type: str = "time_uniform", img2img: bool = True) -> float:
        ts = T.a1111_timesteps(steps)[: steps // 2]
        t_start = (int(ts[-1]) + 1) / 1000 if img2img else 1.0
        a_start = float(_alpha_bar(torch.tensor([t_start * 1000 - 1]))[0])
        x = _vp_start(a_start)
        got = T.unipc(gaussian_eps, x, ts, ACP, is_img2img=img2img, skip_type=skip_type)
        return rel_err(got, vp_transport(x, a_start, float(ACP[0])))

    # A1111's time-uniform grid ends in ever larger log-SNR steps to t = 1/1000 whose last one
    # runs no corrector: errors shrink, but only about twice per doubling.
    errs = _errors(error, (24, 48, 96))
    assert errs[-1] < 0.01
    assert all(a / b > 2.0 for a, b in itertools.pairwise(errs)), errs
    # on a grid uniform in log-SNR the solver's high order shows
    assert error(24, "logSNR") < 1e-3
    assert error(48, "logSNR") < 2e-5
    assert error(48, "time_quadratic") < errs[1]
    assert error(48, img2img=False) < error(24, img2img=False)  # txt2img: from t = 1


def test_restart_without_restarts_converges_to_the_exact_flow():
    def error(steps: int) -> float:
        sig = R.karras_sigmas(steps, 0.03, 10.0)
        z = torch.randn((1, 2, 4, 4), generator=torch.Generator().manual_seed(5))
        x = MU + math.sqrt(S**2 + sig[0] ** 2) * z.double()
        at_min = MU + math.sqrt(S**2 + sig[-2] ** 2) / math.sqrt(S**2 + sig[0] ** 2) * (x - MU)
        want = gaussian_denoiser(at_min, torch.tensor([sig[-2]]))  # the last step is Euler to 0
        return rel_err(R.restart(gaussian_denoiser, x, sig, noise=_no_noise), want)

    errs = _errors(error, (4, 8, 16))  # Heun: second order
    assert errs[-1] < 0.02
    assert all(a / b > 3.5 for a, b in itertools.pairwise(errs)), errs


def _no_noise(a: float, b: float) -> torch.Tensor:
    raise AssertionError("no restart, no noise")


def _stream(shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda a, b: torch.randn(shape, generator=g, dtype=torch.float64)


def test_restart_with_restarts_samples_the_data_distribution():
    shape, steps = (1, 1, 64, 64), 40  # two restarts of ten steps from 0.1 to 2
    sig = R.karras_sigmas(steps, 0.0292, 14.6)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = MU + math.sqrt(S**2 + sig[0] ** 2) * z
    out = R.restart(gaussian_denoiser, x, sig, noise=_stream(shape, 8))
    sd_end = S**2 / math.sqrt(S**2 + sig[-2] ** 2)  # the final Euler step lands on D(x, sigma_min)
    assert float(out.mean()) == pytest.approx(MU, abs=3 * S / 64)
    assert float(out.std()) == pytest.approx(sd_end, rel=0.05)
    # without the re-injected noise the restarts would shrink the spread far below that
    quiet = R.restart(gaussian_denoiser, x, sig, noise=lambda a, b: torch.zeros(shape))
    assert float(quiet.std()) < 0.8 * sd_end


def test_ddim_with_eta_one_converges_to_the_data_distribution():
    shape = (1, 1, 64, 64)

    def spread_error(steps: int) -> float:
        ts = T.a1111_timesteps(steps)
        a_start, a_end = float(ACP[int(ts[-1])]), float(ACP[int(ts[0])])
        z = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        x = math.sqrt(a_start) * MU + math.sqrt(a_start * S**2 + 1 - a_start) * z
        out = T.ddim(gaussian_eps, x, ts, ACP, eta=1.0, noise=_stream(shape, 10))
        assert float(out.mean()) == pytest.approx(math.sqrt(a_end) * MU, abs=3 * S / 64)
        return abs(float(out.std()) / math.sqrt(a_end * S**2 + 1 - a_end) - 1)

    # ancestral steps from the point estimate of x0 lose spread; less as the steps get smaller
    errs = _errors(spread_error, (25, 100, 400))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.03
    quiet = T.ddim(gaussian_eps, torch.ones(shape), T.a1111_timesteps(25), ACP, eta=0.0)
    assert float(quiet.std()) < 1e-6  # eta 0 draws nothing: identical inputs stay identical
