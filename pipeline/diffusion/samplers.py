"""A1111 v1.7's samplers by label, with its img2img schedule, model call and noise.

Clarity picks a sampler by its A1111 label (``DPM++ 3M SDE Karras`` by default). What such a run
computes is decided by four things, each reproduced here as A1111 v1.7 does it:

* **The algorithm.** Each label names a function in k-diffusion's convention (a denoiser
  ``D(x, sigma)``, a sigma list, a noise sampler), written as the project's own code in
  :mod:`pipeline.diffusion.sampling`; DDIM, PLMS and UniPC are A1111's "timestep" samplers
  on an eps model, Restart is A1111's Heun-with-restarts.
* **The schedule.** For img2img A1111 builds the schedule for the full step count (one sigma
  more, then the next-to-last one dropped, for the labels that discard it) and walks its last
  ``t_enc + 1`` steps, ``t_enc = int(min(creativity, 0.999)·steps)``. Sigmas are computed in
  float32 the way k-diffusion computes them, from the model's float32 ``alphas_cumprod``
  (built in float64 and rounded, as the LDM code does), because the Brownian noise is queried
  at those exact sigmas.
* **The model call.** k-diffusion's ``CompVisDenoiser``: the UNet sees ``x / sqrt(sigma² + 1)``
  at the *continuous* timestep interpolated from log sigma (quantisation off, A1111's default),
  its eps becomes ``denoised = x − sigma·eps`` for every prompt, and classifier-free guidance
  combines the denoised predictions in A1111's order,
  ``uncond + Σ (cond_i − uncond)·weight_i·cfg`` (one term per ``AND`` part). Timestep samplers
  combine the eps predictions the same way. The conditioning in force is looked up by model
  call, so prompt editing switches at the call where A1111 switches.
* **The noise.** The start noise and every ancestral draw come from one image RNG seeded with
  the seed (:class:`pipeline.diffusion.noise.ImageRNG`, "gpu" = CUDA's Philox stream on any
  device, or "cpu"); SDE samplers get the Brownian tree A1111 builds, seeded with the seed,
  over the smallest positive and the largest sigma of the *full* schedule. With "gpu" the
  tree draws CUDA's numbers too, as it does in Clarity's runs; with "cpu" it draws from torch's
  CPU generator, as A1111 computes on a machine without a GPU. (A1111's "CPU" setting on a GPU
  machine still draws the tree on the GPU: that mix is ``ImageRNG(..., "cpu")`` with
  ``brownian_noise(..., source="gpu")``.)

Settings are A1111's defaults: eta 1 for every sampler with an eta (``eta_ancestral``), 0 for
DDIM, ``s_noise`` 1, no churn, UniPC variant bh1 of order 3 with lower order at the end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.errors import FieldError, ParamsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SAMPLERS",
    "SD15_TRAINING",
    "Guidance",
    "GuidedDenoiser",
    "ModelSchedule",
    "SamplerSpec",
    "a1111_img2img_steps",
    "check_sampler",
    "check_steps",
    "img2img",
    "model_calls",
    "prompt_steps",
]

# The model's training noise schedule, when the model's scheduler config does not give one.
SD15_TRAINING: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
}

_KDIFFUSION = "kdiffusion"
_TIMESTEPS = "timesteps"


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 label: the function it runs and A1111's options for it.

    ``schedule`` is ``karras``, ``exponential``, ``uniform`` (the model's own grid, uniform in t)
    or ``timesteps`` (DDIM, PLMS, UniPC). ``second_order`` samplers count two model calls per
    step when A1111 schedules prompt edits.
    """

    function: str
    schedule: str = "uniform"
    discard_penultimate: bool = False
    brownian: bool = False
    second_order: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        if self.schedule == "timesteps":
            return _TIMESTEPS
        return "restart" if self.function == "restart" else _KDIFFUSION


def _k(function: str, schedule: str = "uniform", **flags: Any) -> SamplerSpec:
    options = {k: v for k, v in flags.items() if k == "solver_type"}
    return SamplerSpec(
        function,
        schedule,
        discard_penultimate=bool(flags.get("discard")),
        brownian=bool(flags.get("brownian")),
        second_order=bool(flags.get("second_order")),
        options=options,
    )


_HEUN = {"solver_type": "heun"}
# A1111 v1.7's table (modules/sd_samplers_kdiffusion.py, sd_samplers_extra.py and
# sd_samplers_timesteps.py), in the order of the Clarity schema.
SAMPLERS: dict[str, SamplerSpec] = {
    "DPM++ 2M Karras": _k("dpmpp_2m", "karras"),
    "DPM++ SDE Karras": _k("dpmpp_sde", "karras", second_order=True, brownian=True),
    "DPM++ 2M SDE Exponential": _k("dpmpp_2m_sde", "exponential", brownian=True),
    "DPM++ 2M SDE Karras": _k("dpmpp_2m_sde", "karras", brownian=True),
    "Euler a": _k("euler_ancestral"),
    "Euler": _k("euler"),
    "LMS": _k("lms"),
    "Heun": _k("heun", second_order=True),
    "DPM2": _k("dpm_2", discard=True, second_order=True),
    "DPM2 a": _k("dpm_2_ancestral", discard=True, second_order=True),
    "DPM++ 2S a": _k("dpmpp_2s_ancestral", second_order=True),
    "DPM++ 2M": _k("dpmpp_2m"),
    "DPM++ SDE": _k("dpmpp_sde", second_order=True, brownian=True),
    "DPM++ 2M SDE": _k("dpmpp_2m_sde", brownian=True),
    "DPM++ 2M SDE Heun": _k("dpmpp_2m_sde", brownian=True, **_HEUN),
    "DPM++ 2M SDE Heun Karras": _k("dpmpp_2m_sde", "karras", brownian=True, **_HEUN),
    "DPM++ 2M SDE Heun Exponential": _k("dpmpp_2m_sde", "exponential", brownian=True, **_HEUN),
    "DPM++ 3M SDE": _k("dpmpp_3m_sde", discard=True, brownian=True),
    "DPM++ 3M SDE Karras": _k("dpmpp_3m_sde", "karras", discard=True, brownian=True),
    "DPM++ 3M SDE Exponential": _k("dpmpp_3m_sde", "exponential", discard=True, brownian=True),
    "DPM fast": _k("dpm_fast"),
    "DPM adaptive": _k("dpm_adaptive"),
    "LMS Karras": _k("lms", "karras"),
    "DPM2 Karras": _k("dpm_2", "karras", discard=True, second_order=True),
    "DPM2 a Karras": _k("dpm_2_ancestral", "karras", discard=True, second_order=True),
    "DPM++ 2S a Karras": _k("dpmpp_2s_ancestral", "karras", second_order=True),
    "Restart": _k("restart", "karras", second_order=True),
    "DDIM": SamplerSpec("ddim", "timesteps"),
    "PLMS": SamplerSpec("plms", "timesteps"),
    "UniPC": SamplerSpec("unipc", "timesteps"),
}

# A1111's defaults for the sampler settings (Settings ▸ Sampler parameters).
ETA_ANCESTRAL = 1.0
ETA_DDIM = 0.0
S_NOISE = 1.0
_UNIPC_ORDER = 3
# k-diffusion functions that take an eta (A1111 passes eta_ancestral to all of them).
_WITH_ETA = frozenset(
    {
        "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
        "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_fast", "dpm_adaptive",
    }
)  # fmt: skip
_WITH_S_NOISE = _WITH_ETA | {"euler", "heun", "dpm_2"}


def check_sampler(name: str) -> SamplerSpec:
    """Return the spec for an A1111 label, or raise ParamsError on ``scheduler``; builds nothing."""
    spec = SAMPLERS.get(name) if isinstance(name, str) else None
    if spec is None:
        allowed = f"one of the A1111 samplers ({', '.join(SAMPLERS)})"
        raise ParamsError(FieldError("scheduler", name, allowed))
    return spec


def check_steps(name: str, steps: int, strength: float) -> None:
    """Refuse, on ``creativity``, an img2img run the sampler cannot make: A1111's UniPC of
    order 3 needs three steps (``int(creativity·steps) >= 3``). Builds nothing."""
    if check_sampler(name).function == "unipc" and int(min(strength, 0.999) * steps) < _UNIPC_ORDER:
        raise ParamsError(
            FieldError(
                "creativity",
                round(strength, 4),
                f"at least {_UNIPC_ORDER / steps:.3f} for UniPC at {steps} steps in every pass "
                f"(A1111's UniPC of order {_UNIPC_ORDER} needs {_UNIPC_ORDER} img2img steps, "
                "after the multi-step factor); raise creativity or the steps, or choose another "
                "sampler",
            )
        )


def a1111_img2img_steps(steps: int, strength: float) -> int:
    """Sampler steps A1111 runs for img2img (``t_enc + 1``); not model calls."""
    return int(min(strength, 0.999) * steps) + 1


def prompt_steps(name: str, steps: int) -> int:
    """A1111's ``total_steps`` for prompt schedules: ``steps``, doubled for second-order labels."""
    return steps * 2 if check_sampler(name).second_order else steps


# --- the model's noise schedule ------------------------------------------------------------------


class ModelSchedule:
    """The model's discrete noise levels, as k-diffusion's ``DiscreteSchedule`` holds them."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        import torch

        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> ModelSchedule:
        """From a diffusers scheduler config (SD 1.5's when None), as the LDM code builds it:
        betas and their cumulative product in float64, stored in float32."""
        import torch

        cfg = {**SD15_TRAINING, **{k: v for k, v in (config or {}).items() if v is not None}}
        n = int(cfg["num_train_timesteps"])
        if cfg.get("trained_betas") is not None:
            betas = torch.tensor(cfg["trained_betas"], dtype=torch.float64)
        elif cfg["beta_schedule"] == "scaled_linear":
            lo, hi = float(cfg["beta_start"]) ** 0.5, float(cfg["beta_end"]) ** 0.5
            betas = torch.linspace(lo, hi, n, dtype=torch.float64) ** 2
        elif cfg["beta_schedule"] == "linear":
            betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float64)
        else:
            raise ParamsError(
                FieldError(
                    "beta_schedule",
                    cfg["beta_schedule"],
                    "scaled_linear or linear (the model's scheduler config)",
                )
            )
        return cls(torch.cumprod(1.0 - betas, dim=0).to(torch.float32))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The continuous timestep of ``sigma``: linear in log sigma between training steps."""
        log_sigma = sigma.log()
        log_sigmas = self.log_sigmas.to(sigma.device)
        dists = log_sigma - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = log_sigmas[low], log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.log_sigmas.to(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def full_sigmas(self, spec: SamplerSpec, steps: int) -> torch.Tensor:
        """A1111's ``get_sigmas``: the whole schedule for ``steps``, ending in 0."""
        import torch

        n = steps + 1 if spec.discard_penultimate else steps
        if spec.schedule == "karras":
            rho = 7.0
            ramp = torch.linspace(0, 1, n)
            lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            sigmas = (hi + ramp * (lo - hi)) ** rho
        elif spec.schedule == "exponential":
            sigmas = torch.linspace(math.log(self.sigma_max), math.log(self.sigma_min), n).exp()
        else:
            sigmas = self.t_to_sigma(torch.linspace(len(self.sigmas) - 1, 0, n))
        sigmas = torch.cat([sigmas, sigmas.new_zeros([1])])
        if spec.discard_penultimate:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas


# --- the model call --------------------------------------------------------------------------


class EpsModel(Protocol):
    """The UNet (tiled, with ControlNet): one noise prediction per prompt embedding."""

    def predict(
        self, model_input: torch.Tensor, t: torch.Tensor, embeddings: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]: ...


class CondAt(Protocol):
    """A prompt embedding that may change with the model call (prompt editing)."""

    def at(self, step: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class _Fixed:
    tensor: torch.Tensor

    def at(self, step: int) -> torch.Tensor:
        return self.tensor


def _as_schedule(value: Any) -> CondAt:
    return value if hasattr(value, "at") else _Fixed(value)


@dataclass(frozen=True)
class Guidance:
    """The prompts and the CFG scale: ``conds`` holds one ``(embedding, weight)`` per ``AND``
    part; embeddings are tensors ``[1, L, D]`` or schedules with ``at(model_call)``."""

    conds: Sequence[tuple[Any, float]]
    uncond: Any
    scale: float

    @classmethod
    def plain(cls, cond: Any, uncond: Any, scale: float) -> Guidance:
        return cls(((cond, 1.0),), uncond, scale)


class GuidedDenoiser:
    """A1111's ``CFGDenoiser`` around k-diffusion's ``CompVisDenoiser``, over an eps model.

    ``denoise(x, sigma)`` is the k-diffusion denoiser ``D``; ``eps(x, t)`` is the timestep
    samplers' model. ``calls`` counts model calls (A1111's ``step``, which picks the prompt in
    force); ``on_call(calls)`` runs after each.
    """

    def __init__(
        self,
        model: EpsModel,
        guidance: Guidance,
        schedule: ModelSchedule,
        *,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.conds = [(_as_schedule(c), float(w)) for c, w in guidance.conds]
        self.uncond = _as_schedule(guidance.uncond)
        self.scale = float(guidance.scale)
        self.schedule = schedule
        self.on_call = on_call or (lambda _calls: None)
        self.calls = 0
        # CFG 1 with a single, full-weight prompt is the conditional prediction alone.
        self._cond_only = self.scale == 1.0 and len(self.conds) == 1 and self.conds[0][1] == 1.0

    def _predict(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Predictions for the conds, then the uncond (absent when it is not needed)."""
        embs = [c.at(self.calls) for c, _ in self.conds]
        if not self._cond_only:
            embs.append(self.uncond.at(self.calls))
        return self.model.predict(x, t, embs)

    def _combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if self._cond_only:
            return outs[0]
        uncond = outs[-1]
        combined = uncond.clone()
        for out, (_, weight) in zip(outs, self.conds, strict=False):
            combined += (out - uncond) * (weight * self.scale)
        return combined

    def _done(self) -> None:
        self.calls += 1
        self.on_call(self.calls)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        import torch

        sigma = torch.as_tensor(sigma).reshape(-1).to(x.device, torch.float32)
        s = sigma.view(-1, *([1] * (x.dim() - 1)))
        c_in = 1 / (s**2 + 1) ** 0.5
        t = self.schedule.sigma_to_t(sigma)
        outs = self._predict(x * c_in, t[0] if t.numel() == 1 else t)
        denoised = [x + eps * (-s) for eps in outs]
        out = self._combine(denoised)
        self._done()
        return out

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        import torch

        t = torch.as_tensor(t).reshape(-1).to(x.device)
        out = self._combine(self._predict(x, t[0] if t.numel() == 1 else t))
        self._done()
        return out


# --- running one img2img sampling ------------------------------------------------------------


def model_calls(name: str, steps: int, strength: float) -> int | None:
    """Model calls an img2img run of ``name`` makes (None for DPM adaptive: it picks its own
    steps), for progress and time estimates."""
    spec = check_sampler(name)
    t_enc = int(min(strength, 0.999) * steps)
    n = t_enc + 1  # sampler steps of the k-diffusion family
    if spec.function == "dpm_adaptive":
        return None
    if spec.family == _TIMESTEPS:
        from pipeline.diffusion.sampling import timesteps as ts

        sched = ts.a1111_timesteps(steps, spec.discard_penultimate)[:t_enc]
        counts = {"ddim": ts.ddim_model_calls, "plms": ts.plms_model_calls}
        return counts.get(spec.function, ts.unipc_model_calls)(sched)
    if spec.function == "restart":
        from pipeline.diffusion.sampling import restart

        full = ModelSchedule.from_config().full_sigmas(spec, steps)
        return restart.restart_model_calls(full[steps - t_enc - 1 :])
    if spec.second_order:
        return 2 * n - 1  # the last step, to sigma 0, is a first-order step
    return n


def img2img(
    name: str,
    init_latent: torch.Tensor,
    *,
    steps: int,
    strength: float,
    seed: int,
    model: EpsModel,
    guidance: Guidance,
    noise_source: str = "gpu",
    scheduler_config: Mapping[str, Any] | None = None,
    on_call: Callable[[int], None] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """One A1111 img2img sampling of ``init_latent`` (the VAE latent × scaling factor).

    ``model`` predicts eps (tiled UNet + ControlNet), ``guidance`` holds the prompts and CFG.
    ``on_call(n)`` runs after every model call, ``callback`` after every sampler step with
    k-diffusion's dict (``x``, ``i``, ``sigma``, ``denoised``). Returns the final latent.
    """
    import torch

    from pipeline.diffusion.noise import ImageRNG, brownian_noise

    spec = check_sampler(name)
    _check_args(steps, strength, seed, tuple(init_latent.shape))
    x0 = init_latent.to(torch.float32)
    schedule = ModelSchedule.from_config(scheduler_config)
    denoiser = GuidedDenoiser(model, guidance, schedule, on_call=on_call)
    rng = ImageRNG(seed, tuple(x0.shape), source=noise_source, device=x0.device)
    noise = rng.next().to(x0.device, torch.float32)
    t_enc = int(min(strength, 0.999) * steps)

    if spec.family == _TIMESTEPS:
        from pipeline.diffusion.sampling import timesteps as ts

        alphas = schedule.alphas_cumprod.to(x0.device)
        sched, sqrt_a, sqrt_1ma = ts.timestep_img2img_plan(
            steps, strength, alphas, discard=spec.discard_penultimate
        )
        xi = x0 * sqrt_a + noise * sqrt_1ma
        if spec.function == "ddim":
            return ts.ddim(
                denoiser.eps, xi, sched, alphas,
                noise=rng.noise_sampler(), eta=ETA_DDIM, callback=callback,
            )  # fmt: skip
        if spec.function == "plms":
            return ts.plms(denoiser.eps, xi, sched, alphas, callback=callback)
        check_steps(name, steps, strength)
        return ts.unipc(denoiser.eps, xi, sched, alphas, is_img2img=True, callback=callback)

    full = schedule.full_sigmas(spec, steps).to(x0.device)
    sigma_sched = full[steps - t_enc - 1 :]
    xi = x0 + noise * sigma_sched[0]
    if spec.brownian:
        positive = full[full > 0]
        tree = brownian_noise(x0, positive.min(), full.max(), seed, source=noise_source)
        noise_sampler = _quiet(tree)
    else:
        noise_sampler = rng.noise_sampler()

    if spec.family == "restart":
        from pipeline.diffusion.sampling import restart

        return restart.restart(
            denoiser.denoise, xi, sigma_sched,
            noise=noise_sampler, s_noise=S_NOISE, callback=callback,
        )  # fmt: skip

    from pipeline.diffusion.sampling import kdiffusion

    function = kdiffusion.SAMPLER_FUNCTIONS[spec.function]
    kwargs: dict[str, Any] = dict(spec.options)
    if spec.function in _WITH_ETA:
        kwargs["eta"] = ETA_ANCESTRAL
    if spec.function in _WITH_S_NOISE:
        kwargs["s_noise"] = S_NOISE
    if spec.function in ("dpm_fast", "dpm_adaptive"):
        # Their schedule is (sigma_min, sigma_max[, n]); A1111 takes the last positive sigma of
        # the img2img slice, since 0 is not allowed.
        kwargs["sigma_min"] = sigma_sched[-2]
        kwargs["sigma_max"] = sigma_sched[0]
        if spec.function == "dpm_fast":
            kwargs["n"] = len(sigma_sched) - 1
        result = function(denoiser.denoise, xi, noise=noise_sampler, callback=callback, **kwargs)
        return result[0] if isinstance(result, tuple) else result
    return function(
        denoiser.denoise, xi, sigma_sched, noise=noise_sampler, callback=callback, **kwargs
    )


def _quiet(noise: Callable[[Any, Any], torch.Tensor]) -> Callable[[Any, Any], torch.Tensor]:
    """The Brownian tree without torchsde's note on queries that float32 rounding puts a hair
    outside its end points (A1111 prints it on every run; the value is the end point's)."""

    def call(sigma: Any, sigma_next: Any) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            return noise(sigma, sigma_next)

    return call


def _check_args(steps: Any, strength: Any, seed: Any, latent_shape: Any) -> None:
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
