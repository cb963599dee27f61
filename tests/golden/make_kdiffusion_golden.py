"""Regenerate tests/golden/kdiffusion/ with k-diffusion's own samplers.

The golden data pins what k-diffusion's ``sample_*`` functions return for a fixed toy denoiser,
a fixed start latent and a fixed stream of noise draws, on A1111's img2img and txt2img sigma
lists. ``tests/unit/test_sampling_kdiffusion.py`` holds
``pipeline.diffusion.sampling.kdiffusion`` to it. Nothing here imports the project.

Reference environment (a scratch venv outside the repository; k-diffusion is MIT-licensed and
is only ever run here, never shipped):

    python3 -m venv /tmp/kdref
    /tmp/kdref/bin/pip install torch==2.13.0 numpy scipy torchsde trampoline tqdm
    /tmp/kdref/bin/pip install --no-deps torchdiffeq k-diffusion==0.1.1.post1

To reuse the project venv's packages (torch 2.13.0 CPU, numpy, scipy, torchsde, trampoline,
tqdm) instead of installing another torch, skip the first pip line and write the path of
``.venv/lib/python3.11/site-packages`` into a ``.pth`` file in the scratch venv's
site-packages. That is how the checked-in data was made (torch 2.13.0+cpu, numpy 2.4, scipy
1.17, torchsde 0.2.6, torchdiffeq 0.2.5, k-diffusion 0.1.1.post1).

Then, from the repository root:

    /tmp/kdref/bin/python tests/golden/make_kdiffusion_golden.py

It rewrites ``tests/golden/kdiffusion/cases.json`` and ``arrays.npz``.

``k_diffusion/__init__.py`` imports modules that need torchvision, CLIP and more, so this script
loads ``k_diffusion/sampling.py`` by path under a stub package whose ``utils`` holds the one
helper ``sampling.py`` uses (``append_dims``, the same three lines as k-diffusion's). Like
A1111, it routes ``torch.randn_like`` inside ``sampling.py`` (the churn draws of Euler, Heun and
DPM2) to the same noise stream the ``noise_sampler`` argument reads.

All runs are float64 (latent, sigmas, denoiser); the sigma lists are k-diffusion's float32
``get_sigmas_karras`` values, stored exactly. Results are stored as float32, which is precise
enough for the tests' 1e-5 relative bound.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "kdiffusion"
SHAPE = (2, 4, 4, 4)
DTYPE = torch.float64
STEPS = 18  # Clarity's default step count
CREATIVITIES = {"c035": 0.35, "c060": 0.6, "c100": 1.0}
TXT2IMG_STEPS = 10


# --- the fixed problem (the test defines the same formulas and checks them on the probe) ----------


def pattern(dtype: torch.dtype = DTYPE) -> torch.Tensor:
    b, c, h, w = torch.meshgrid(*(torch.arange(n, dtype=dtype) for n in SHAPE), indexing="ij")
    return torch.sin(0.9 * (h + 1) * (c + 1) + 0.4 * b) * torch.cos(0.55 * (w + 1) - 0.3 * c)


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Nonlinear, position- and channel-aware, with a per-image coupling through the mean."""
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape [batch], got {tuple(sigma.shape)}")
    s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
    s2 = s * s
    mean = x.mean(dim=(2, 3), keepdim=True)
    target = 0.8 * pattern(x.dtype) + 0.25 * torch.tanh(mean)
    return x / (1 + s2) + 0.35 * s / (1 + s) * torch.tanh(x) + s2 / (1 + s2) * target


def normal(seed: int) -> torch.Tensor:
    """A standard normal draw from numpy's legacy generator (a frozen, portable stream)."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(SHAPE))


def noise_draw(k: int) -> torch.Tensor:
    """Draw ``k`` (0-based) of a run's noise stream."""
    return normal(1000 + k)


def start_latents() -> tuple[torch.Tensor, torch.Tensor]:
    """(init latent, start noise) of every run."""
    latent = 0.6 * normal(1) + 0.3 * pattern()
    return latent, normal(2)


# --- loading k-diffusion's sampling.py without its package ---------------------------------------


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def load_sampling() -> types.ModuleType:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("k-diffusion is not installed in this interpreter; see the docstring")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    setattr(utils, "append_dims", _append_dims)  # noqa: B010
    setattr(package, "utils", utils)  # noqa: B010
    sys.modules["k_diffusion"] = package
    sys.modules["k_diffusion.utils"] = utils
    sampling_spec = importlib.util.spec_from_file_location(
        "k_diffusion.sampling", root / "sampling.py"
    )
    assert sampling_spec is not None and sampling_spec.loader is not None
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules["k_diffusion.sampling"] = module
    sampling_spec.loader.exec_module(module)
    return module


class Stream:
    """A run's noise: draws taken in order, each call's sigma pair recorded (None for
    ``randn_like``, which k-diffusion calls without one)."""

    def __init__(self) -> None:
        self.pairs: list[list[float] | None] = []

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        self.pairs.append([float(sigma), float(sigma_next)])
        return noise_draw(len(self.pairs) - 1).to(DTYPE)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        self.pairs.append(None)
        return noise_draw(len(self.pairs) - 1).to(x.dtype)


class TorchWithStream:
    """``torch`` as sampling.py sees it, with ``randn_like`` reading the stream (A1111 does the
    same with its image RNG)."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        if name == "randn_like":
            return self._stream.randn_like
        return getattr(torch, name)


# --- schedules and cases -------------------------------------------------------------------------


def sd15_sigma_range() -> tuple[float, float]:
    """SD1.5's smallest and largest sigma as A1111 reads them off k-diffusion's model wrapper
    (alphas_cumprod held in float32)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, dim=0).to(torch.float32)
    sigmas = ((1 - alphas) / alphas) ** 0.5
    return sigmas[0].item(), sigmas[-1].item()


def schedules(K: types.ModuleType) -> dict[str, list[float]]:
    """A1111's Karras lists: img2img at Clarity's 18 steps for three creativities
    (``sigmas[steps - t_enc - 1:]``, ``t_enc = int(min(c, .999)·steps)``; c = 1 is the whole
    18-step list) and a whole 10-step txt2img list, each also in the form DPM2 and DPM++ 3M SDE
    get (one sigma more, the next-to-last dropped)."""
    sigma_min, sigma_max = sd15_sigma_range()
    out: dict[str, list[float]] = {}
    for discard in (False, True):
        suffix = "_discard" if discard else ""

        def full(steps: int, discard: bool = discard) -> torch.Tensor:
            n = steps + 1 if discard else steps
            sigmas = K.get_sigmas_karras(n=n, sigma_min=sigma_min, sigma_max=sigma_max)
            return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

        sigmas = full(STEPS)
        for name, c in CREATIVITIES.items():
            t_enc = int(min(c, 0.999) * STEPS)
            out[name + suffix] = [float(v) for v in sigmas[STEPS - t_enc - 1 :]]
        out[f"t2i{TXT2IMG_STEPS}{suffix}"] = [float(v) for v in full(TXT2IMG_STEPS)]
    return out


ALL = [*CREATIVITIES, f"t2i{TXT2IMG_STEPS}"]
CHURN = {"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}
ETA_PARTIAL = {"eta": 0.5, "s_noise": 0.9}
DISCARDING = {"dpm_2", "dpm_2_ancestral", "dpmpp_3m_sde"}  # A1111's discard_next_to_last_sigma


def case_list() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []

    def add(func: str, schedule: str, **kwargs: Any) -> None:
        if func in DISCARDING and not schedule.endswith("_discard"):
            schedule += "_discard"
        tag = "-".join(f"{k}={v}" for k, v in kwargs.items()) or "default"
        cases.append(
            {"name": f"{func}/{schedule}/{tag}", "func": func, "schedule": schedule,
             "kwargs": kwargs}
        )  # fmt: skip

    for func in ("euler", "heun", "dpm_2", "lms", "dpmpp_2m"):
        for schedule in ALL:
            add(func, schedule)
    for func in ("euler", "heun", "dpm_2"):
        add(func, "c060", **CHURN)
    add("lms", "c060", order=2)
    stochastic: list[tuple[str, dict[str, Any]]] = [
        ("euler_ancestral", {}), ("dpm_2_ancestral", {}), ("dpmpp_2s_ancestral", {}),
        ("dpmpp_sde", {}), ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
        ("dpmpp_3m_sde", {}),
    ]  # fmt: skip
    for func, base in stochastic:
        for schedule in ALL:
            add(func, schedule, **base)
        add(func, "c060", **base, eta=0.0)
        add(func, "c035", **base, **ETA_PARTIAL)
    add("dpmpp_sde", "c060", r=0.3)
    cases.append(
        {"name": "dpmpp_3m_sde/c060/no-discard", "func": "dpmpp_3m_sde", "schedule": "c060",
         "kwargs": {}}
    )  # fmt: skip
    for schedule in ALL:
        add("dpm_fast", schedule, eta=1.0)  # A1111 passes its eta_ancestral (1.0)
        add("dpm_adaptive", schedule, eta=1.0)
    add("dpm_fast", "c060", eta=0.0)
    add("dpm_adaptive", "c060", eta=0.0)
    add("dpm_adaptive", "c060", eta=0.0, order=2)
    add("dpm_adaptive", "c035", eta=0.0, rtol=0.02, pcoeff=0.2, icoeff=0.6, dcoeff=0.1)
    return cases


# --- running ----------------------------------------------------------------------------------


def start_for(schedule_name: str, sigma_max: float) -> torch.Tensor:
    latent, start_noise = start_latents()
    if schedule_name.startswith("t2i"):
        return start_noise * sigma_max
    return latent + start_noise * sigma_max


def run_case(K: types.ModuleType, case: dict[str, Any], sigma_list: list[float]) -> dict[str, Any]:
    stream = Stream()
    setattr(K, "torch", TorchWithStream(stream))  # noqa: B010
    model_sigmas: list[float] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if not torch.all(sigma == sigma[0]):
            raise AssertionError("one sigma per batch expected")
        model_sigmas.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    callbacks: list[dict[str, Any]] = []
    xs: list[np.ndarray] = []

    def callback(d: dict[str, Any]) -> None:
        entry = {"i": int(d["i"]), "sigma": float(d["sigma"]), "sigma_hat": float(d["sigma_hat"])}
        if "h" in d:
            entry["h"] = float(d["h"])
        callbacks.append(entry)
        xs.append(d["x"].detach().numpy().astype(np.float32))

    func = getattr(K, "sample_" + case["func"])
    kwargs = dict(case["kwargs"])
    if "noise_sampler" in inspect.signature(func).parameters:
        kwargs["noise_sampler"] = stream
    sigmas = torch.tensor(sigma_list, dtype=DTYPE)
    info = None
    try:
        if case["func"] in ("dpm_fast", "dpm_adaptive"):
            lo, hi = sigma_list[-2], sigma_list[0]
            if case["func"] == "dpm_fast":
                kwargs["n"] = len(sigma_list) - 1
            else:
                kwargs["return_info"] = True
            x0 = start_for(case["schedule"], hi)
            result = func(model, x0, lo, hi, callback=callback, disable=True, **kwargs)
            if isinstance(result, tuple):
                result, info = result
            case = {**case, "levels": {"sigma_min": lo, "sigma_max": hi}}
            if case["func"] == "dpm_fast":
                case["levels"]["n"] = kwargs["n"]
        else:
            x0 = start_for(case["schedule"], sigma_list[0])
            result = func(model, x0, sigmas, callback=callback, disable=True, **kwargs)
    finally:
        setattr(K, "torch", torch)  # noqa: B010
    out = {
        **case,
        "model_sigmas": model_sigmas,
        "noise_pairs": stream.pairs,
        "callbacks": callbacks,
        "info": info,
        "_final": result.detach().numpy().astype(np.float32),
        "_xs": np.stack(xs) if xs else np.zeros((0, *SHAPE), np.float32),
    }
    return out


def main() -> None:
    K = load_sampling()
    OUT.mkdir(parents=True, exist_ok=True)
    sched = schedules(K)
    arrays: dict[str, np.ndarray] = {}
    records = []
    for case in case_list():
        rec = run_case(K, case, sched[case["schedule"]])
        arrays[rec["name"] + "/final"] = rec.pop("_final")
        arrays[rec["name"] + "/xs"] = rec.pop("_xs")
        records.append(rec)
    probe_x = start_for("c060", 3.0)
    probe_sigma = torch.tensor([2.5, 0.07], dtype=DTYPE)
    latent, start_noise = start_latents()
    arrays["probe/x"] = probe_x.numpy()
    arrays["probe/sigma"] = probe_sigma.numpy()
    arrays["probe/denoised"] = toy_denoiser(probe_x, probe_sigma).numpy()
    arrays["probe/latent"] = latent.numpy()
    arrays["probe/start_noise"] = start_noise.numpy()
    arrays["probe/noise_draw_7"] = noise_draw(7).numpy()
    meta = {
        "about": "k-diffusion golden data; regenerate with tests/golden/make_kdiffusion_golden.py",
        "reference": {
            "k_diffusion": _version("k-diffusion"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "run_dtype": "float64",
            "stored_dtype": "float32",
        },
        "shape": list(SHAPE),
        "schedules": sched,
        "cases": records,
    }
    (OUT / "cases.json").write_text(_dump(meta))
    with (OUT / "arrays.npz").open("wb") as f:
        np.savez_compressed(f, allow_pickle=False, **arrays)
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(records)} cases, {size / 1024:.0f} KiB in {OUT}")


def _dump(meta: dict[str, Any]) -> str:
    """JSON with one schedule and one case a line: small, and a regenerated file diffs well."""
    head = {k: v for k, v in meta.items() if k not in ("schedules", "cases")}
    lines = [json.dumps(head)[:-1] + ', "schedules": {']
    names = list(meta["schedules"])
    for n, name in enumerate(names):
        comma = "," if n < len(names) - 1 else ""
        lines.append(f" {json.dumps(name)}: {json.dumps(meta['schedules'][name])}{comma}")
    lines.append('}, "cases": [')
    for n, case in enumerate(meta["cases"]):
        lines.append(
            " "
            + json.dumps(case, separators=(",", ":"))
            + ("," if n < len(meta["cases"]) - 1 else "")
        )
    lines.append("]}")
    return "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
