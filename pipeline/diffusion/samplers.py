"""A1111's samplers, run on diffusers schedulers, with A1111's img2img schedule and noise.

Clarity picks a sampler by its A1111 label (``DPM++ 3M SDE Karras`` by default). Three things
decide what such a run produces, and plain diffusers gets each one slightly wrong for us:

* **The sigma schedule.** For img2img A1111 runs ``t_enc + 1`` steps (``t_enc =
  int(min(strength, .999)·steps)``) of a schedule built for the full step count, and for some
  samplers it builds one sigma more and drops the next-to-last one. diffusers' img2img runs
  ``int(strength·steps)`` steps of a different grid, so "creativity" would denoise less. We compute
  A1111's sigma list ourselves (Karras, exponential or the model's uniform-in-t grid) and install
  it in the scheduler through its Karras hook, so the solver code stays diffusers'.
* **The noise.** A1111 draws SDE noise from a Brownian tree seeded with the image seed and ancestral
  noise from the seeded image RNG. We do both on the CPU, so a seed gives the same result on any
  device (bit-identical on the same device).
* **Solver details.** diffusers' third-order SDE update has the wrong sign on one term (it is
  ``alpha_t·D2`` away from k-diffusion's ``sample_dpmpp_3m_sde``), and its multistep solvers lower
  their order near the end where k-diffusion does not; both are corrected here.

The DDIM, PLMS and UniPC labels are A1111 "timestep" samplers with their own img2img rule: the
latent is noised to timestep ``ts[t_enc]`` of ``range(0, 1000, 1000 // steps) + 1`` and ``t_enc``
steps run from ``ts[t_enc - 1]`` down (a one-step mismatch A1111 has; we keep it).

DPM fast, DPM adaptive and Restart have no diffusers equivalent and are refused with a
suggestion. ``DPM++ 2S a`` runs as diffusers' (non-ancestral) single-step DPM-Solver and UniPC
ends at sigma 0 rather than at the model's smallest sigma: the two close approximations.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pipeline.errors import FieldError, ModelError, ParamsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "REFUSED",
    "SAMPLERS",
    "SD15_TRAINING",
    "BrownianNoise",
    "Sampler",
    "SamplerSpec",
    "a1111_img2img_steps",
    "a1111_sigmas",
    "a1111_timesteps",
    "check_sampler",
    "initial_noise",
    "karras_sigmas",
    "make_sampler",
]

# The model's training noise schedule. A scheduler built with from_config would inherit every
# other setting of the model's scheduler (Karras flags, spacing, solver type...), so only these
# keys are taken from the model config; everything else is the sampler's own choice.
SD15_TRAINING: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


@dataclass(frozen=True)
class SamplerSpec:
    """How one A1111 label maps onto diffusers.

    ``schedule`` is A1111's sigma schedule (``karras``, ``exponential``, ``uniform`` = the model's
    own grid, uniform in t) or ``timesteps`` for A1111's DDIM/PLMS/UniPC family. ``noise`` is
    ``none``, ``brownian`` (SDE samplers) or ``ancestral`` (seeded Gaussian per step).
    """

    cls: str
    flags: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "uniform"
    discard_penultimate: bool = False
    noise: str = "none"
    exact: bool = True


def _dpm(schedule: str, order: int = 2, sde: bool = False, heun: bool = False) -> SamplerSpec:
    flags: dict[str, Any] = {
        "algorithm_type": "sde-dpmsolver++" if sde else "dpmsolver++",
        "solver_order": order,
        "solver_type": "heun" if heun else "midpoint",
        # k-diffusion keeps full order up to the last step (which goes to sigma 0 and is
        # first order anyway); diffusers would drop to second order one step earlier.
        "lower_order_final": False,
    }
    return SamplerSpec(
        "DPMSolverMultistepScheduler",
        flags,
        schedule,
        discard_penultimate=order == 3,
        noise="brownian" if sde else "none",
    )


_SINGLE = {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": True}
_2S, _K2, _K2A = (
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)
# A1111's UniPC is order 3, variant bh1; diffusers' bh1 update turns NaN on a step to sigma 0
# (0·inf), so the bh2 variant runs here.
_UNIPC = {"solver_order": 3, "solver_type": "bh2"}
SAMPLERS: dict[str, SamplerSpec] = {
    "DPM++ 2M": _dpm("uniform"),
    "DPM++ 2M Karras": _dpm("karras"),
    "DPM++ 2M SDE": _dpm("uniform", sde=True),
    "DPM++ 2M SDE Karras": _dpm("karras", sde=True),
    "DPM++ 2M SDE Exponential": _dpm("exponential", sde=True),
    "DPM++ 2M SDE Heun": _dpm("uniform", sde=True, heun=True),
    "DPM++ 2M SDE Heun Karras": _dpm("karras", sde=True, heun=True),
    "DPM++ 2M SDE Heun Exponential": _dpm("exponential", sde=True, heun=True),
    "DPM++ 3M SDE": _dpm("uniform", order=3, sde=True),
    "DPM++ 3M SDE Karras": _dpm("karras", order=3, sde=True),
    "DPM++ 3M SDE Exponential": _dpm("exponential", order=3, sde=True),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", noise="brownian"),
    "DPM++ SDE Karras": SamplerSpec("DPMSolverSDEScheduler", schedule="karras", noise="brownian"),
    "DPM++ 2S a": SamplerSpec(_2S, _SINGLE, exact=False),
    "DPM++ 2S a Karras": SamplerSpec(_2S, _SINGLE, "karras", exact=False),
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", noise="ancestral"),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "LMS Karras": SamplerSpec("LMSDiscreteScheduler", schedule="karras"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "DPM2": SamplerSpec(_K2, {}, "uniform", True),
    "DPM2 Karras": SamplerSpec(_K2, {}, "karras", True),
    "DPM2 a": SamplerSpec(_K2A, {}, "uniform", True, "ancestral"),
    "DPM2 a Karras": SamplerSpec(_K2A, {}, "karras", True, "ancestral"),
    "DDIM": SamplerSpec("DDIMScheduler", schedule="timesteps"),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}, "timesteps"),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", _UNIPC, "timesteps", exact=False),
}

# Labels with no diffusers counterpart: why, and the supported label closest in behaviour.
REFUSED: dict[str, tuple[str, str]] = {
    "DPM fast": ("k-diffusion's fixed-step DPM-Solver of adaptive order", "DPM++ 2M Karras"),
    "DPM adaptive": ("k-diffusion's adaptive step-size DPM-Solver", "DPM++ 2M Karras"),
    "Restart": ("A1111's Restart sampler (Heun steps with noise re-injection)", "DPM++ SDE Karras"),
}

# diffusers schedulers whose Karras hook we cannot use (no Karras option): we assign the schedule.
_NO_KARRAS_HOOK = {"EulerAncestralDiscreteScheduler"}


def check_sampler(name: str) -> SamplerSpec:
    """Return the spec for an A1111 label, or raise ParamsError on ``scheduler``; builds nothing."""
    spec = SAMPLERS.get(name) if isinstance(name, str) else None
    if spec is not None:
        return spec
    if isinstance(name, str) and name in REFUSED:
        what, instead = REFUSED[name]
        allowed = (
            f"the local engine has no equivalent of {what}; choose {instead!r}, the nearest "
            "supported sampler"
        )
    else:
        allowed = f"one of the supported A1111 samplers ({', '.join(SAMPLERS)})"
    raise ParamsError(FieldError("scheduler", name, allowed))


def a1111_img2img_steps(steps: int, strength: float) -> int:
    """Sampler steps A1111 runs for img2img (k-diffusion samplers); not model calls."""
    return int(min(strength, 0.999) * steps) + 1


# --- schedules (numpy, float64) ---------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) schedule: n sigmas, evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _base_sigmas(schedule: str, n: int, model_sigmas: np.ndarray) -> np.ndarray:
    lo, hi = float(model_sigmas[0]), float(model_sigmas[-1])
    if schedule == "karras":
        return karras_sigmas(n, lo, hi)
    if schedule == "exponential":
        return np.exp(np.linspace(math.log(hi), math.log(lo), n))
    # The model's own grid: n points uniform in t from the last training step to t = 0,
    # log-sigma interpolated between integer steps.
    t = np.linspace(len(model_sigmas) - 1, 0, n)
    return np.exp(np.interp(t, np.arange(len(model_sigmas)), np.log(model_sigmas)))


def a1111_sigmas(
    schedule: str, steps: int, strength: float, model_sigmas: np.ndarray, discard: bool
) -> np.ndarray:
    """The sigmas A1111's img2img walks for a k-diffusion sampler, ending in 0."""
    full = np.append(_base_sigmas(schedule, steps + int(discard), model_sigmas), 0.0)
    if discard:
        full = np.concatenate([full[:-2], full[-1:]])
    t_enc = int(min(strength, 0.999) * steps)
    return full[steps - t_enc - 1 :]


def a1111_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """A1111's ascending timestep grid for DDIM/PLMS/UniPC."""
    ts = np.arange(0, num_train_timesteps, num_train_timesteps // steps) + 1
    return np.clip(ts, 0, num_train_timesteps - 1)


# --- noise ------------------------------------------------------------------------------------


def initial_noise(seed: int, shape: Sequence[int], device: Any = "cpu", dtype: Any = None):
    """Seeded standard-normal start noise drawn on the CPU (A1111's CPU RNG stream)."""
    import torch

    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen).to(device=device, dtype=dtype)


class BrownianNoise:
    """Normalised Brownian increments ``(W(s') - W(s)) / sqrt(|s' - s|)`` over sigma.

    One fixed Brownian path per seed (torchsde's tree, generated on the CPU), so the noise a
    step sees depends only on its sigma interval: the same seed gives the same image whatever the
    step count or device. Callable as ``noise(sigma, sigma_next)``, like k-diffusion's sampler.
    """

    _TOL = 1e-6  # torchsde quantises times to this many digits; queries must stay inside

    def __init__(self, shape, sigma_min, sigma_max, seed: int, device="cpu", dtype=None) -> None:
        import torch
        import torchsde

        lo, hi = float(sigma_min), float(sigma_max)
        digits = round(-math.log10(self._TOL))
        self._lo, self._hi = round(lo, digits), round(hi, digits)
        self._device, self._dtype = device, dtype
        w0 = torch.zeros(tuple(shape), dtype=torch.float32)
        self._tree = torchsde.BrownianTree(lo, w0, hi, entropy=int(seed), tol=self._TOL)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        t0, t1 = sorted(min(max(v, self._lo), self._hi) for v in (a, b))
        # torchsde is untyped: pyright infers every return_U/return_A shape; this is the plain W.
        w = cast("torch.Tensor", self._tree(t0, t1))
        if a != b:
            w = w / math.sqrt(abs(b - a))
        if b < a:  # increment taken from sigma towards sigma_next, as k-diffusion does
            w = -w
        return w.to(device=self._device, dtype=self._dtype)


# --- the sampler ------------------------------------------------------------------------------


class Sampler:
    """One img2img run of an A1111 sampler: ``start``, then per ``timesteps`` entry
    ``scale_model_input`` / model / ``step``.

    ``sigmas[i]`` is the noise level the solver assumes at model call ``i`` of a one-call-per-step
    sampler and the list ends with the level the last step lands on (0, or the model's smallest
    sigma for DDIM/PLMS, as in A1111). ``start_sigma`` is the level ``start`` noises to.
    """

    def __init__(
        self,
        name: str,
        spec: SamplerSpec,
        scheduler: Any,
        timesteps: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        start_alpha_sigma: tuple[float, float] | None,
        latent_shape: tuple[int, ...],
        brownian: BrownianNoise | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.name, self.spec, self.scheduler = name, spec, scheduler
        self.timesteps, self.sigmas = timesteps, sigmas
        self.num_model_calls = len(timesteps)
        self.latent_shape = latent_shape
        self._start_vp = start_alpha_sigma  # timestep samplers noise by (alpha, sigma) in VP form
        self._brownian, self._generator = brownian, generator
        self._steps_done = 0
        if start_alpha_sigma is None:
            self.start_sigma = float(sigmas[0])
        else:
            alpha, sigma = start_alpha_sigma
            self.start_sigma = sigma / alpha

    def start(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The noised start latent (in the scheduler's own scaling)."""
        for what, tensor in (("x0", x0), ("noise", noise)):
            if tuple(tensor.shape) != tuple(self.latent_shape):
                raise ValueError(f"{what} has shape {tuple(tensor.shape)}, not {self.latent_shape}")
        if self._start_vp is not None:
            alpha, sigma = self._start_vp
            return alpha * x0 + sigma * noise
        return self.scheduler.add_noise(x0, noise, self.timesteps[:1])

    def scale_model_input(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self.scheduler.scale_model_input(x, t)

    def step(self, eps: torch.Tensor, t: Any, x: torch.Tensor) -> torch.Tensor:
        """Advance one model call; ``eps`` is the (guided) noise prediction for ``x`` at ``t``."""
        if self._steps_done >= self.num_model_calls:
            raise RuntimeError(f"{self.name}: step() called more than {self.num_model_calls} times")
        kwargs: dict[str, Any] = {}
        if self.spec.noise == "ancestral":
            kwargs["generator"] = self._generator
        elif self.spec.noise == "brownian" and self.spec.cls == "DPMSolverMultistepScheduler":
            kwargs["variance_noise"] = self._variance_noise(x)
        out = self.scheduler.step(eps, t, x, return_dict=False, **kwargs)[0]
        self._steps_done += 1
        return out

    def _variance_noise(self, x: torch.Tensor) -> torch.Tensor:
        i = self._steps_done
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        if sigma_next <= 0:  # the last step lands on the denoised estimate; noise is unused
            return x.new_zeros(x.shape)
        if self._brownian is None:
            raise RuntimeError(f"{self.name}: an SDE sampler needs its Brownian noise")
        return self._brownian(sigma, sigma_next)


def _check_args(steps, strength, seed, latent_shape) -> None:
    errors = []
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        errors.append(FieldError("num_inference_steps", steps, "a whole number from 1 to 1000"))
    if not isinstance(strength, int | float) or not 0.0 <= float(strength) <= 1.0:
        errors.append(FieldError("creativity", strength, "a number from 0 to 1"))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        errors.append(FieldError("seed", seed, "a whole number of 0 or more"))
    shape_ok = isinstance(latent_shape, Sequence) and len(latent_shape) == 4
    if not shape_ok or not all(isinstance(d, int) and d > 0 for d in latent_shape):
        errors.append(FieldError("latent_shape", latent_shape, "(batch, channels, height, width)"))
    if errors:
        raise ParamsError(errors)


def _build_scheduler(spec: SamplerSpec, scheduler_config: Mapping[str, Any] | None) -> Any:
    import diffusers

    cls = getattr(diffusers, spec.cls)
    accepted = inspect.signature(cls.__init__).parameters
    given = dict(scheduler_config or {})
    config = {k: given.get(k, v) for k, v in SD15_TRAINING.items() if k in accepted}
    config.update(spec.flags)
    sigma_based = spec.schedule != "timesteps" or spec.cls == "UniPCMultistepScheduler"
    if sigma_based and spec.cls not in _NO_KARRAS_HOOK:
        config["use_karras_sigmas"] = True  # the hook through which our sigmas go in
    try:
        return cls.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ModelError(
            f"the model's scheduler settings cannot drive the {spec.cls} sampler ({exc}); "
            "check the model's scheduler config or choose another sampler"
        ) from exc


def _install_sigmas(sched: Any, sigmas: np.ndarray, device: Any) -> None:
    """Put a sigma list (ending in 0) into a sigma-based scheduler, then read it back.

    Uses private diffusers internals (``_convert_to_karras``; ``sigmas``/``timesteps`` for Euler
    a), so the read-back turns a diffusers change into a clear error instead of a wrong image.
    """
    import torch

    nonzero = np.asarray(sigmas[:-1], dtype=np.float64)
    if type(sched).__name__ in _NO_KARRAS_HOOK:
        sched.set_timesteps(len(nonzero), device=device)
        ac = sched.alphas_cumprod.double().numpy()
        log_sigmas = 0.5 * np.log((1 - ac) / ac)  # increasing with t
        ts = np.interp(np.log(nonzero), log_sigmas, np.arange(len(ac))).astype(np.float32)
        sched.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        sched.timesteps = torch.from_numpy(ts).to(device)
    else:
        sched._convert_to_karras = lambda in_sigmas, num_inference_steps=None: nonzero.copy()
        sched.set_timesteps(len(nonzero), device=device)
    sched.set_begin_index(0)
    got = torch.unique_consecutive(sched.sigmas.float().cpu())
    want = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
    calls = sched.order * len(nonzero) - (sched.order - 1)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-7):
        raise RuntimeError(f"{type(sched).__name__} did not take the A1111 sigma schedule")
    if len(sched.timesteps) != calls:
        raise RuntimeError(f"{type(sched).__name__} has {len(sched.timesteps)} calls, not {calls}")


def _sigma_at(alphas_cumprod: np.ndarray, t: float) -> float:
    """VE sigma at a (possibly fractional) training step, log-alpha interpolated like A1111's
    UniPC noise schedule."""
    log_alpha = np.interp(t, np.arange(len(alphas_cumprod)), 0.5 * np.log(alphas_cumprod))
    return float(math.sqrt(math.expm1(-2.0 * log_alpha)))


def _timestep_plan(spec: SamplerSpec, sched: Any, steps: int, strength: float, device: Any):
    """DDIM/PLMS/UniPC: A1111's ``t_enc`` steps from ``ts[t_enc - 1]``, noised to ``ts[t_enc]``."""
    import torch

    ac = sched.alphas_cumprod.double().numpy()
    ts = a1111_timesteps(steps, len(ac))
    t_enc = int(min(strength, 0.999) * steps)
    a_start = float(ac[ts[t_enc]])
    start = (math.sqrt(a_start), math.sqrt(1.0 - a_start))
    run = ts[:t_enc][::-1].copy()  # descending
    if t_enc == 0:  # nothing to run: A1111 returns the lightly noised start latent
        return torch.zeros(0, device=device), torch.tensor([start[1] / start[0]]), start
    if spec.cls == "UniPCMultistepScheduler":
        # A1111's UniPC: t_enc steps uniform in t from ts[t_enc - 1] to t = 0.
        grid = np.linspace(float(run[0]), 0.0, t_enc + 1)[:-1]
        sigmas = np.append([_sigma_at(ac, g) for g in grid], 0.0)
        _install_sigmas(sched, sigmas, device)
        return sched.timesteps, torch.from_numpy(sigmas.astype(np.float32)), start
    # DDIM/PNDM step from t to t - n_train // steps (so num_inference_steps stays ``steps``),
    # the last step landing on the scheduler's final alpha.
    sched.set_timesteps(steps, device=device)
    final_alpha = float(sched.final_alpha_cumprod)
    levels = [math.sqrt((1 - ac[t]) / ac[t]) for t in run]
    sigmas = np.array([*levels, math.sqrt((1 - final_alpha) / final_alpha)])
    if spec.cls == "PNDMScheduler" and len(run) > 1:
        # PLMS warms up by evaluating the second timestep twice (CompVis' improved Euler start).
        run = np.concatenate([run[:2], run[1:]])
    sched.timesteps = torch.from_numpy(run.astype(np.int64)).to(device)
    return sched.timesteps, torch.from_numpy(sigmas.astype(np.float32)), start


def _fix_third_order_sde(sched: Any) -> None:
    """Correct diffusers' third-order SDE-DPM-Solver++ update to k-diffusion's 3M SDE.

    diffusers weights ``D2`` by ``(1 - e^{-2h} - 2h)/(2h)^2 - 0.5``; the 3M SDE (phi_3 at 2h) needs
    ``+ 0.5`` there, so its result is ``alpha_t·D2`` short. Pinned diffusers; test-guarded.
    """
    import torch

    original = sched.multistep_dpm_solver_third_order_update

    def corrected(model_output_list, *args, sample=None, noise=None, **kwargs):
        x_t = original(model_output_list, *args, sample=sample, noise=noise, **kwargs)
        i, sig = sched.step_index, sched.sigmas
        lam = [-torch.log(sig[j]) for j in (i + 1, i, i - 1, i - 2)]  # lambda = -log sigma
        h, h0, h1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
        r0, r1 = h0 / h, h1 / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
        alpha_t = 1.0 / torch.sqrt(sig[i + 1] ** 2 + 1.0)
        return x_t + (alpha_t * d2).to(x_t.dtype)

    sched.multistep_dpm_solver_third_order_update = corrected


def make_sampler(
    name: str,
    *,
    steps: int,
    strength: float,
    scheduler_config: Mapping[str, Any] | None = None,
    seed: int,
    latent_shape: Sequence[int],
    device: Any = "cpu",
    dtype: Any = None,
) -> Sampler:
    """Build the A1111 sampler ``name`` for an img2img run of ``steps`` at ``strength``.

    ``scheduler_config`` is the model's scheduler config; only its training noise schedule is
    used (SD1.5's when absent). ``seed`` seeds the SDE/ancestral noise, drawn on the CPU.
    """
    import torch

    spec = check_sampler(name)
    _check_args(steps, strength, seed, latent_shape)
    shape = tuple(int(d) for d in latent_shape)
    dtype = dtype or torch.float32
    sched = _build_scheduler(spec, scheduler_config)
    start_vp = None
    if spec.schedule == "timesteps":
        timesteps, sigmas, start_vp = _timestep_plan(spec, sched, steps, strength, device)
    else:
        ac = sched.alphas_cumprod.double().numpy()
        model_sigmas = np.sqrt((1 - ac) / ac)
        plan = a1111_sigmas(spec.schedule, steps, strength, model_sigmas, spec.discard_penultimate)
        _install_sigmas(sched, plan, device)
        timesteps, sigmas = sched.timesteps, torch.from_numpy(plan.astype(np.float32))
    if spec.flags.get("solver_order") == 3 and spec.noise == "brownian":
        _fix_third_order_sde(sched)
    brownian = generator = None
    if spec.noise == "brownian":
        positive = sigmas[sigmas > 0]
        brownian = BrownianNoise(shape, positive.min(), positive.max(), seed, device, dtype)
        if spec.cls == "DPMSolverSDEScheduler":
            sched.noise_sampler = brownian  # replaces its own device-side tree
    elif spec.noise == "ancestral":
        # A1111 draws ancestral noise from the image RNG right after the start noise; skipping
        # one latent-sized draw continues that stream instead of repeating the start noise.
        generator = torch.Generator("cpu").manual_seed(seed)
        torch.randn(shape, generator=generator)
    return Sampler(
        name,
        spec,
        sched,
        timesteps,
        sigmas,
        start_alpha_sigma=start_vp,
        latent_shape=shape,
        brownian=brownian,
        generator=generator,
    )
