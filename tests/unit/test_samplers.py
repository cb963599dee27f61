"""A1111 samplers on diffusers: every label runs or is refused, A1111's schedules, seeded noise.

The model is a toy that, like a UNet, only sees the scaled input and the timestep: it reads the
noise level off ``t`` (log-sigma interpolation of an independently computed SD1.5 schedule) and
returns the epsilon that points at a fixed target (or, for the noise tests, a deliberately
imperfect one). Wrong schedule or input-scaling wiring makes the run miss the target.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.diffusion import samplers as S
from pipeline.errors import ParamsError
from pipeline.params import SCHEDULERS

# diffusers' schedulers trip numpy 2's __array__ deprecations on torch tensors; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*__array__:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*__array_wrap__:DeprecationWarning"),
]

SHAPE = (1, 4, 4, 4)
SUPPORTED = [n for n in SCHEDULERS if n not in S.REFUSED]
TIMESTEP_FAMILY = {"DDIM", "PLMS", "UniPC"}

# SD1.5 training schedule, computed here in float64 without diffusers.
_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
ALPHAS = np.cumprod(1.0 - _BETAS)
MODEL_SIGMAS = np.sqrt((1.0 - ALPHAS) / ALPHAS)
LOG_SIGMAS = np.log(MODEL_SIGMAS)


def sigma_of_t(t: float) -> float:
    return float(np.exp(np.interp(float(t), np.arange(1000), LOG_SIGMAS)))


def t_of_sigma(sigma: float) -> float:
    return float(np.interp(math.log(sigma), LOG_SIGMAS, np.arange(1000)))


def karras(n: int, lo: float, hi: float, rho: float = 7.0) -> np.ndarray:
    i = np.arange(n) / (n - 1)
    return (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


@pytest.fixture(scope="module")
def target() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def start_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(12))


def perfect_model(target):
    def eps(model_in, t):
        s = sigma_of_t(t)
        a = 1.0 / math.sqrt(s * s + 1.0)  # model_in is alpha·x0 + alpha·sigma·eps
        return (model_in - a * target) / (a * s)

    return eps


def imperfect_model(target):
    def eps(model_in, t):
        return 0.8 * perfect_model(target)(model_in, t) + 0.3 * torch.tanh(3 * model_in)

    return eps


def run(sampler, model, x0, noise):
    x = sampler.start(x0, noise)
    calls = 0
    for t in sampler.timesteps:
        x = sampler.step(model(sampler.scale_model_input(x, t), t), t, x)
        calls += 1
    return x, calls


def build(name, steps=18, strength=0.35, seed=1, **kw):
    return S.make_sampler(name, steps=steps, strength=strength, seed=seed, latent_shape=SHAPE, **kw)


# --- the table ----------------------------------------------------------------------------------


def test_table_covers_the_30_clarity_labels():
    assert set(S.SAMPLERS).isdisjoint(S.REFUSED)
    assert set(S.SAMPLERS) | set(S.REFUSED) == set(SCHEDULERS)
    assert len(SCHEDULERS) == 30 and len(S.SAMPLERS) == 27
    for _what, instead in S.REFUSED.values():
        assert instead in S.SAMPLERS


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("strength", [0.35, 0.9])
def test_every_label_converges_or_is_refused(name, strength, target, start_noise):
    if name in S.REFUSED:
        with pytest.raises(ParamsError) as err:
            S.check_sampler(name)
        assert err.value.fields == ["scheduler"]
        assert name in str(err.value) and S.REFUSED[name][1] in str(err.value)
        with pytest.raises(ParamsError):
            build(name)
        return
    sampler = build(name, strength=strength)
    x, calls = run(sampler, perfect_model(target), target, start_noise)
    assert calls == sampler.num_model_calls == len(sampler.timesteps) > 0
    assert torch.isfinite(x).all()
    # k-diffusion samplers end at sigma 0; DDIM/PLMS stop at the model's smallest sigma (0.029).
    end = float(sampler.sigmas[-1])
    assert end == 0.0 or (name in {"DDIM", "PLMS"} and end == pytest.approx(0.0292, abs=1e-4))
    assert (x - target).abs().mean() < 0.005 + 1.5 * end
    assert (x - target).abs().max() < 0.01 + 5 * end


@pytest.mark.parametrize("name", SUPPORTED)
def test_model_input_stays_on_the_schedule(name, target, start_noise):
    """With a perfect denoiser an exact ODE step keeps x = x0 + sigma·noise, so the model must
    see alpha(sigma_i)·(x0 + sigma_i·noise) at call i: this pins schedule and input scaling.

    Where that holds at every call (deterministic, one call per sigma) the toy reads the exact
    sigma, not the integer t diffusers rounds to; elsewhere only the first call is checked.
    """
    sampler = build(name)
    one_per_sigma = sampler.num_model_calls == len(sampler.sigmas) - 1
    # DDIM/PLMS/UniPC start one grid step above their first sigma, as in A1111.
    exact_path = sampler.spec.noise == "none" and one_per_sigma and name not in TIMESTEP_FAMILY
    levels = [float(s) for s in sampler.sigmas[:-1]] if exact_path else [sampler.start_sigma]
    eps, seen = perfect_model(target), []

    def model(model_in, t):
        if exact_path:
            t = t_of_sigma(levels[len(seen)])
        seen.append(model_in)
        return eps(model_in, t)

    run(sampler, model, target, start_noise)
    for model_in, s in zip(seen, levels, strict=False):
        want = (target + s * start_noise) / math.sqrt(s * s + 1)
        torch.testing.assert_close(model_in, want, rtol=1e-5, atol=1e-5)


def test_unknown_label_lists_the_supported_ones():
    with pytest.raises(ParamsError) as err:
        S.check_sampler("Euler b")
    assert err.value.fields == ["scheduler"] and "DPM++ 3M SDE Karras" in str(err.value)
    with pytest.raises(ParamsError):
        S.check_sampler(None)  # type: ignore[arg-type]


def test_check_sampler_imports_neither_torch_nor_diffusers():
    code = (
        "import sys; import pipeline.diffusion.samplers as s;"
        "s.check_sampler('DPM++ 3M SDE Karras');"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- A1111's img2img schedule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "strength", "expected"),
    [
        (18, 0.35, 7),
        (18, 0.28, 6),
        (18, 0.5, 10),
        (18, 0.6, 11),
        (18, 0.9, 17),
        (18, 1.0, 18),
        (18, 0.0, 1),
        (30, 0.35, 11),
    ],
)
def test_a1111_img2img_steps(steps, strength, expected):
    assert S.a1111_img2img_steps(steps, strength) == expected


def test_model_sigma_range_is_sd15():
    assert MODEL_SIGMAS[0] == pytest.approx(0.0292, abs=5e-5)
    assert MODEL_SIGMAS[-1] == pytest.approx(14.6146, abs=5e-4)


@pytest.mark.parametrize(
    ("strength", "first"), [(0.35, 0.645), (0.28, 0.447), (0.5, 1.749), (0.9, 11.58)]
)
def test_default_sampler_walks_clarity_sigmas(strength, first):
    sampler = build("DPM++ 3M SDE Karras", strength=strength)
    sig = sampler.sigmas.double().numpy()
    assert len(sig) - 1 == S.a1111_img2img_steps(18, strength) == sampler.num_model_calls
    assert sig[0] == pytest.approx(first, rel=2e-3)
    # Independent: Karras over 19 sigmas, drop the next-to-last, keep the last t_enc + 2.
    full = np.append(karras(19, MODEL_SIGMAS[0], MODEL_SIGMAS[-1]), 0.0)
    full = np.concatenate([full[:-2], full[-1:]])
    np.testing.assert_allclose(sig, full[-len(sig) :], rtol=2e-5)
    assert sig[-2] == pytest.approx(0.050, abs=1e-3) and sig[-1] == 0.0
    assert sampler.start_sigma == pytest.approx(first, rel=2e-3)


def test_default_sampler_table_at_clarity_defaults():
    sig = build("DPM++ 3M SDE Karras").sigmas.numpy()
    want = [0.645, 0.447, 0.303, 0.201, 0.130, 0.082, 0.050, 0.0]
    np.testing.assert_allclose(sig, want, atol=6e-4)


def test_karras_without_discard_and_the_other_schedules():
    sig = build("DPM++ 2M Karras").sigmas.double().numpy()
    np.testing.assert_allclose(
        sig, np.append(karras(18, MODEL_SIGMAS[0], MODEL_SIGMAS[-1])[11:], 0), rtol=2e-5
    )
    assert sig[0] == pytest.approx(0.5098, abs=1e-4)
    # A1111's default grid: 18 points uniform in t from 999 to 0, log-sigma interpolated.
    uniform = [sigma_of_t(t) for t in np.linspace(999, 0, 18)]
    np.testing.assert_allclose(build("Euler").sigmas.numpy(), [*uniform[11:], 0.0], rtol=2e-5)
    expo = np.exp(np.linspace(math.log(MODEL_SIGMAS[-1]), math.log(MODEL_SIGMAS[0]), 18))
    np.testing.assert_allclose(
        build("DPM++ 2M SDE Exponential").sigmas.numpy(), np.append(expo[11:], 0), rtol=2e-5
    )


@pytest.mark.parametrize("name", SUPPORTED)
def test_scheduler_reads_back_the_installed_schedule(name):
    """The install goes through diffusers internals; read every sampler's state back."""
    sampler = build(name)
    sched, sig, ts = sampler.scheduler, sampler.sigmas, sampler.timesteps.double().cpu()
    if name in {"DDIM", "PLMS"}:
        grid = [1 + 55 * k for k in range(5, -1, -1)]  # A1111: range(0, 1000, 55) + 1, t_enc = 6
        want = grid[:2] + grid[1:] if name == "PLMS" else grid  # PLMS repeats its 2nd step
        assert ts.tolist() == want
        assert sampler.start_sigma == pytest.approx(sigma_of_t(1 + 55 * 6), rel=1e-4)
        np.testing.assert_allclose(sig[:-1].numpy(), [sigma_of_t(t) for t in grid], rtol=1e-4)
        return
    got = torch.unique_consecutive(sched.sigmas.float())
    torch.testing.assert_close(got, sig)
    steps = len(sig) - 1
    assert len(ts) == sched.order * steps - (sched.order - 1)
    assert float(ts[0]) == pytest.approx(t_of_sigma(float(sig[0])), abs=0.51)
    assert float(ts[-1]) == pytest.approx(t_of_sigma(float(sig[-2])), abs=0.51)
    if name == "UniPC":  # uniform in t from A1111's ts[t_enc - 1] = 276 to 0, six steps
        assert ts.tolist() == pytest.approx(np.linspace(276, 0, 7)[:-1], abs=0.51)


@pytest.mark.parametrize(
    ("name", "calls"),
    [
        ("Heun", 13),
        ("DPM2", 13),
        ("DPM2 a Karras", 13),
        ("DPM++ SDE Karras", 13),
        ("Euler", 7),
        ("DPM++ 3M SDE Karras", 7),
        ("DDIM", 6),
        ("PLMS", 7),
        ("UniPC", 6),
    ],
)
def test_model_calls(name, calls):
    assert build(name).num_model_calls == calls


def test_nothing_to_run_at_tiny_strength(target, start_noise):
    ddim = build("DDIM", strength=0.01)
    assert ddim.num_model_calls == 0 and len(ddim.sigmas) == 1
    x, _ = run(ddim, perfect_model(target), target, start_noise)
    a = 1 / math.sqrt(1 + sigma_of_t(1) ** 2)
    torch.testing.assert_close(x, a * (target + sigma_of_t(1) * start_noise), rtol=1e-4, atol=1e-5)
    assert build("Euler", strength=0.01).num_model_calls == 1


# --- noise --------------------------------------------------------------------------------------

NOISY = [
    "DPM++ 3M SDE Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun Exponential",
    "DPM++ SDE Karras",
    "Euler a",
    "DPM2 a",
]


@pytest.mark.parametrize("name", NOISY)
def test_same_seed_same_result_other_seed_other_result(name, target, start_noise):
    model = imperfect_model(target)
    first, _ = run(build(name, seed=7), model, target, start_noise)
    again, _ = run(build(name, seed=7), model, target, start_noise)
    other, _ = run(build(name, seed=8), model, target, start_noise)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M Karras", "DDIM", "UniPC"])
def test_deterministic_samplers_ignore_the_seed(name, target, start_noise):
    model = imperfect_model(target)
    a, _ = run(build(name, seed=7), model, target, start_noise)
    b, _ = run(build(name, seed=8), model, target, start_noise)
    assert torch.equal(a, b)


def test_brownian_increments_are_unit_and_consistent():
    shape = (1, 4, 32, 32)
    noise = S.BrownianNoise(shape, 0.05, 10.0, seed=3)
    a, b, whole = noise(10.0, 5.0), noise(5.0, 1.0), noise(10.0, 1.0)
    for w in (a, b, whole):
        assert w.shape == shape and w.device.type == "cpu"
        assert 0.9 < float(w.std()) < 1.1 and abs(float(w.mean())) < 0.1
    assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.1
    # One path: the increment over 10→1 is the sum of 10→5 and 5→1 (normalisation undone).
    torch.testing.assert_close(whole * 3.0, a * math.sqrt(5.0) + b * 2.0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(noise(1.0, 5.0), -b)
    torch.testing.assert_close(S.BrownianNoise(shape, 0.05, 10.0, seed=3)(10.0, 5.0), a)
    assert not torch.allclose(S.BrownianNoise(shape, 0.05, 10.0, seed=4)(10.0, 5.0), a)


def test_default_sampler_equals_k_diffusion_3m_sde(target, start_noise):
    """DPM++ 3M SDE (eta 1) written out in k-diffusion's sigma form, fed the same Brownian path.

    diffusers' own third-order SDE update is off by alpha_t·D2; this pins our correction.
    """
    sampler = build("DPM++ 3M SDE Karras", strength=0.5, seed=5)
    model = imperfect_model(target)
    got, _ = run(sampler, model, target, start_noise)

    sig = sampler.sigmas.double()
    noise = S.BrownianNoise(SHAPE, sig[sig > 0].min(), sig.max(), seed=5)
    x = target.double() + sig[0] * start_noise.double()
    old, hist = [], []
    for i in range(len(sig) - 1):
        s, s_next = float(sig[i]), float(sig[i + 1])
        t = float(sampler.timesteps[i])  # the integer timestep the UNet sees
        denoised = x - s * model((x / math.sqrt(s * s + 1)).float(), t).double()
        if s_next == 0:
            x = denoised
            break
        h = math.log(s / s_next)
        x = math.exp(-2 * h) * x + (-math.expm1(-2 * h)) * denoised
        phi2 = math.expm1(-2 * h) / (2 * h) + 1
        if len(old) >= 2:
            r0, r1 = hist[-1] / h, hist[-2] / h
            d1_0, d1_1 = (denoised - old[-1]) / r0, (old[-1] - old[-2]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi2 * d1 - (phi2 / (2 * h) - 0.5) * d2
        elif old:
            x = x + phi2 * (denoised - old[-1]) / (hist[-1] / h)
        x = x + noise(s, s_next).double() * s_next * math.sqrt(-math.expm1(-2 * h))
        old.append(denoised)
        hist.append(h)
    torch.testing.assert_close(got.double(), x, atol=2e-4, rtol=1e-4)


# --- configuration and bad input ----------------------------------------------------------------


def test_only_the_training_schedule_is_taken_from_the_model_config():
    inherited = dict(S.SD15_TRAINING)
    inherited.update(
        _class_name="PNDMScheduler",
        algorithm_type="dpmsolver",
        solver_order=1,
        use_exponential_sigmas=True,
        timestep_spacing="trailing",
        lower_order_final=True,
        beta_end=0.02,
    )
    sampler = build("DPM++ 3M SDE Karras", strength=1.0, scheduler_config=inherited)
    cfg = sampler.scheduler.config
    assert (cfg.algorithm_type, cfg.solver_order, cfg.lower_order_final) == (
        "sde-dpmsolver++",
        3,
        False,
    )
    assert not cfg.use_exponential_sigmas
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.steps_offset) == (
        0.00085,
        0.02,
        "scaled_linear",
        1,
    )
    # beta_end 0.02 raises sigma_max; the default (no config) is SD1.5's.
    assert float(sampler.sigmas[0]) > 20
    assert float(build("DPM++ 3M SDE Karras", strength=1.0).sigmas[0]) == pytest.approx(
        14.6146, rel=1e-4
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "num_inference_steps"),
        ({"steps": 2.5}, "num_inference_steps"),
        ({"strength": -0.1}, "creativity"),
        ({"strength": 1.5}, "creativity"),
        ({"strength": float("nan")}, "creativity"),
        ({"seed": -1}, "seed"),
        ({"latent_shape": (4, 8)}, "latent_shape"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"steps": 18, "strength": 0.35, "seed": 1, "latent_shape": SHAPE} | kwargs
    with pytest.raises(ParamsError) as err:
        S.make_sampler("Euler", **args)
    assert err.value.fields == [field]


def test_misuse_is_caught(target, start_noise):
    sampler = build("Euler")
    with pytest.raises(ValueError, match="shape"):
        sampler.start(target[:, :2], start_noise)
    x, _ = run(sampler, perfect_model(target), target, start_noise)
    with pytest.raises(RuntimeError, match="more than 7"):
        sampler.step(x, sampler.timesteps[-1], x)


def test_initial_noise_is_the_cpu_stream():
    want = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    assert torch.equal(S.initial_noise(9, SHAPE), want)
