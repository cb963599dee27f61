"""Regenerate ``tests/golden/img2img/a1111_img2img.pt``: A1111 v1.7 img2img trajectories.

For every label of the k-diffusion family this runs what A1111 v1.7's ``sample_img2img`` runs,
built from k-diffusion's own code (the PyPI release 0.1.1.post1, whose ``sampling.py`` and
``external.py`` are the functions at the commit A1111 v1.7 pins for these samplers):
``CompVisDenoiser`` (continuous timestep), ``get_sigmas_karras`` / ``get_sigmas_exponential`` /
the model grid, the next-to-last sigma dropped where the label says so, the ``t_enc + 1``-step
slice, ``xi = x + noise · sigma_sched[0]``, the CFG combination on denoised predictions, the
Brownian tree over the full schedule seeded with the seed, and every other random draw taken
from the seeded CPU generator that made the start noise (A1111's "CPU" noise source, with
``randn_like`` routed to it as A1111 does). The eps model is :func:`toy_eps.toy_eps`.

Nothing here is Clarifier's code: the test compares Clarifier's engine with these trajectories.

Set up the reference environment outside the checkout and run it from the checkout::

    python3 -m venv /tmp/kdref/venv
    /tmp/kdref/venv/bin/pip install torch==2.13.0
    /tmp/kdref/venv/bin/pip install torchsde==0.2.6 torchdiffeq scipy tqdm
    /tmp/kdref/venv/bin/pip download --no-deps k-diffusion==0.1.1.post1 -d /tmp/kdref
    (cd /tmp/kdref && python3 -m zipfile -e k_diffusion-0.1.1.post1-py3-none-any.whl src)
    KDIFFUSION_SRC=/tmp/kdref/src /tmp/kdref/venv/bin/python tests/golden/make_img2img_golden.py

(``k_diffusion/__init__.py`` imports training code that needs torchvision and CLIP; only
``sampling.py``, ``external.py`` and ``utils.py`` are loaded, with those imports stubbed.)
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from toy_eps import sd15_alphas_cumprod, toy_eps  # noqa: E402

OUT = HERE / "img2img" / "a1111_img2img.pt"

# label: (k-diffusion function, scheduler, discard next-to-last sigma, brownian, solver_type)
# as A1111 v1.7's modules/sd_samplers_kdiffusion.py lists them.
LABELS = {
    "DPM++ 2M Karras": ("sample_dpmpp_2m", "karras", False, False, None),
    "DPM++ SDE Karras": ("sample_dpmpp_sde", "karras", False, True, None),
    "DPM++ 2M SDE Exponential": ("sample_dpmpp_2m_sde", "exponential", False, True, None),
    "DPM++ 2M SDE Karras": ("sample_dpmpp_2m_sde", "karras", False, True, None),
    "Euler a": ("sample_euler_ancestral", None, False, False, None),
    "Euler": ("sample_euler", None, False, False, None),
    "LMS": ("sample_lms", None, False, False, None),
    "Heun": ("sample_heun", None, False, False, None),
    "DPM2": ("sample_dpm_2", None, True, False, None),
    "DPM2 a": ("sample_dpm_2_ancestral", None, True, False, None),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", None, False, False, None),
    "DPM++ 2M": ("sample_dpmpp_2m", None, False, False, None),
    "DPM++ SDE": ("sample_dpmpp_sde", None, False, True, None),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", None, False, True, None),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", None, False, True, "heun"),
    "DPM++ 2M SDE Heun Karras": ("sample_dpmpp_2m_sde", "karras", False, True, "heun"),
    "DPM++ 2M SDE Heun Exponential": ("sample_dpmpp_2m_sde", "exponential", False, True, "heun"),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", None, True, True, None),
    "DPM++ 3M SDE Karras": ("sample_dpmpp_3m_sde", "karras", True, True, None),
    "DPM++ 3M SDE Exponential": ("sample_dpmpp_3m_sde", "exponential", True, True, None),
    "DPM fast": ("sample_dpm_fast", None, False, False, None),
    "DPM adaptive": ("sample_dpm_adaptive", None, False, False, None),
    "LMS Karras": ("sample_lms", "karras", False, False, None),
    "DPM2 Karras": ("sample_dpm_2", "karras", True, False, None),
    "DPM2 a Karras": ("sample_dpm_2_ancestral", "karras", True, False, None),
    "DPM++ 2S a Karras": ("sample_dpmpp_2s_ancestral", "karras", False, False, None),
}
SHAPE = (1, 4, 6, 6)
CFG = 6.0


def load_k_diffusion():
    src = Path(os.environ.get("KDIFFUSION_SRC", "/tmp/kdref/src")) / "k_diffusion"
    for name in ("torchvision", "torchvision.transforms", "safetensors"):
        sys.modules.setdefault(name, types.ModuleType(name))
    tf = types.ModuleType("torchvision.transforms.functional")
    sys.modules["torchvision.transforms.functional"] = tf
    sys.modules["torchvision.transforms"].functional = tf  # type: ignore[attr-defined]
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        pil = types.ModuleType("PIL")
        pil.Image = types.ModuleType("PIL.Image")  # type: ignore[attr-defined]
        sys.modules["PIL"], sys.modules["PIL.Image"] = pil, pil.Image  # type: ignore[attr-defined]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(src)]  # type: ignore[attr-defined]
    sys.modules["k_diffusion"] = package
    modules = {}
    for name in ("utils", "sampling", "external"):
        spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", src / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"k_diffusion.{name}"] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
        modules[name] = module
    return modules["sampling"], modules["external"]


class ToyLDM(torch.nn.Module):
    """The part of an LDM model that CompVisDenoiser uses."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", sd15_alphas_cumprod())

    def apply_model(self, x, t, cond):
        return toy_eps(x, t, cond)


def run_case(K, external, label, *, steps, strength, seed, conds, uncond, names):
    fn_name, scheduler, discard, brownian, solver_type = LABELS[label]
    func = getattr(K, fn_name)
    denoiser = external.CompVisDenoiser(ToyLDM(), quantize=False)
    n = steps + 1 if discard else steps
    if scheduler == "karras":
        sigmas = K.get_sigmas_karras(n, denoiser.sigmas[0].item(), denoiser.sigmas[-1].item())
    elif scheduler == "exponential":
        smin, smax = denoiser.sigmas[0].item(), denoiser.sigmas[-1].item()
        sigmas = K.get_sigmas_exponential(n, smin, smax)
    else:
        sigmas = denoiser.get_sigmas(n)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    t_enc = int(min(strength, 0.999) * steps)
    sigma_sched = sigmas[steps - t_enc - 1 :]

    init = torch.sin(torch.arange(math.prod(SHAPE), dtype=torch.float32) * 0.37).view(SHAPE)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(SHAPE[1:], generator=generator)[None]
    xi = init + noise * sigma_sched[0]

    class Hijack:  # A1111 routes k-diffusion's randn_like to the image RNG's stream
        def __getattr__(self, item):
            return getattr(torch, item)

        def randn_like(self, x):
            return torch.randn(x.shape[1:], generator=generator, dtype=x.dtype)[None]

    K.torch = Hijack()
    calls = {"n": 0}

    def cfg_model(x, sigma, **_):
        # A1111's CFGDenoiser: conds first, uncond last; separate calls when lengths differ.
        embs = [c for c, _ in conds] + [uncond]
        outs = [denoiser(x, sigma, cond=e) for e in embs]
        den_uncond = outs[-1]
        out = den_uncond.clone()
        for o, (_, w) in zip(outs[:-1], conds, strict=True):
            out += (o - den_uncond) * (w * CFG)
        calls["n"] += 1
        return out

    params = inspect.signature(func).parameters
    kwargs = {}
    for name, value in (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", math.inf), ("s_noise", 1.0)):
        if name in params:
            kwargs[name] = value
    if "eta" in params:
        kwargs["eta"] = 1.0
    if "sigma_min" in params:
        kwargs["sigma_min"] = sigma_sched[-2]
    if "sigma_max" in params:
        kwargs["sigma_max"] = sigma_sched[0]
    if "n" in params:
        kwargs["n"] = len(sigma_sched) - 1
    if "sigmas" in params:
        kwargs["sigmas"] = sigma_sched
    if brownian:
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = K.BrownianTreeNoiseSampler(
            init, positive.min(), sigmas.max(), seed=[seed]
        )
    if solver_type == "heun":
        kwargs["solver_type"] = "heun"
    xs = []
    result = func(
        cfg_model, xi, extra_args={}, disable=True, callback=lambda d: xs.append(d["x"].clone()),
        **kwargs,
    )  # fmt: skip
    K.torch = torch
    return {
        "label": label,
        "steps": steps,
        "strength": strength,
        "seed": seed,
        "conds": [names[id(c)] for c, _ in conds],
        "weights": [w for _, w in conds],
        "uncond": names[id(uncond)],
        "sigma_sched": sigma_sched,
        "xs": torch.cat(xs),
        "final": result,
        "calls": calls["n"],
    }


def main() -> None:
    K, external = load_k_diffusion()
    g = torch.Generator("cpu").manual_seed(2024)
    cond = torch.randn(1, 5, 8, generator=g)
    uncond = torch.randn(1, 5, 8, generator=g) * 0.5
    cond_b = torch.randn(1, 5, 8, generator=g) + 0.3
    long_uncond = torch.randn(1, 10, 8, generator=g)  # two 75-token chunks' worth
    embeddings = {"cond": cond, "uncond": uncond, "cond_b": cond_b, "long_uncond": long_uncond}
    names = {id(v): k for k, v in embeddings.items()}
    cases = []
    for label in LABELS:
        for strength, seed in ((0.35, 1337), (0.6, 7)):
            cases.append(
                run_case(
                    K, external, label, steps=18, strength=strength, seed=seed,
                    conds=[(cond, 1.0)], uncond=uncond, names=names,
                )
            )  # fmt: skip
    for label in ("DPM++ 3M SDE Karras", "Euler a"):
        cases.append(
            run_case(
                K, external, label, steps=18, strength=0.35, seed=1337,
                conds=[(cond, 0.7), (cond_b, 0.3)], uncond=long_uncond, names=names,
            )
        )  # fmt: skip
    OUT.parent.mkdir(exist_ok=True)
    init = torch.sin(torch.arange(math.prod(SHAPE), dtype=torch.float32) * 0.37).view(SHAPE)
    golden = {"cfg": CFG, "init": init, "embeddings": embeddings, "cases": cases}
    torch.save(golden, OUT)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
