"""Regenerate tests/golden/noise/ with k-diffusion's own ``BrownianTreeNoiseSampler``.

The golden data pins what k-diffusion 0.1.1.post1's ``BrownianTreeNoiseSampler(x, sigma_min,
sigma_max, seed=[seed])`` (the call A1111 v1.7's ``create_noise_sampler`` makes) returns on the
CPU for a few seeds, latent shapes and sigma pairs, over A1111's Karras schedules.
``tests/unit/test_noise.py`` holds ``pipeline.diffusion.noise.brownian_noise(..., source="cpu")``
to it bit for bit. Nothing here imports the project.

Reference environment (a scratch venv outside the repository; k-diffusion is MIT-licensed and
is only ever run here, never shipped), reusing the project venv's torch 2.13.0, numpy, scipy,
torchsde 0.2.6, trampoline and tqdm through a ``.pth`` file:

    python3 -m venv /tmp/noiseref/venv
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/noiseref/venv/lib/python3.11/site-packages/project.pth
    /tmp/noiseref/venv/bin/pip install --no-deps torchdiffeq k-diffusion==0.1.1.post1

Then, from the repository root:

    /tmp/noiseref/venv/bin/python tests/golden/make_noise_golden.py

It rewrites ``tests/golden/noise/brownian.json`` and ``brownian.npz``. ``k_diffusion/__init__``
imports modules that need torchvision, CLIP and more, so ``k_diffusion/sampling.py`` is loaded
by path under a stub package (``sampling.py`` needs nothing from ``utils`` for these classes).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "noise"

# (seeds, latent shape, steps, the sigma pairs to query as index pairs into the schedule)
CASES = [
    ([1337], (1, 4, 8, 8), 18, "img2img"),  # Clarity's default seed and step count
    ([1338], (1, 4, 8, 8), 18, "img2img"),  # its second pass
    ([0], (1, 4, 5, 7), 10, "txt2img"),
    ([4294967295], (1, 4, 6, 6), 18, "odd"),  # A1111's largest seed
    ([123456789, 987654321], (2, 4, 4, 4), 12, "img2img"),  # one tree per batch item
]


def load_sampling() -> types.ModuleType:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("k-diffusion is not installed in this interpreter; see the docstring")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
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


def query_pairs(n_sigmas: int, kind: str) -> list[tuple[int, int]]:
    """Index pairs (i, j): ``noise(sigmas[i], sigmas[j])`` is queried, in this order."""
    last = n_sigmas - 2  # the final sigma is 0, never queried
    if kind == "img2img":  # A1111's slice for creativity 0.35: consecutive pairs to the end
        start = max(last - 7, 0)
        return [(i, i + 1) for i in range(start, last)]
    if kind == "txt2img":
        return [(i, i + 1) for i in range(last)]
    # out of order, reversed, repeated and wide: the tree is one fixed path whatever the order
    return [(3, 4), (last - 1, last), (4, 3), (0, last), (3, 4), (2, 9), (last, 0)]


def main() -> None:
    sampling = load_sampling()
    import torchsde

    cases = []
    arrays: dict[str, Any] = {}
    for n, (seeds, shape, steps, kind) in enumerate(CASES):
        # A1111 v1.7 with discard_next_to_last_sigma: Karras over steps + 1, drop the penultimate.
        sigmas = sampling.get_sigmas_karras(steps + 1, 0.0291675, 14.614642, rho=7.0)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]]).to(torch.float32)
        positive = sigmas[sigmas > 0]
        sigma_min, sigma_max = positive.min(), sigmas.max()
        x = torch.zeros(shape, dtype=torch.float32)
        sampler = sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=list(seeds))
        pairs = query_pairs(len(sigmas), kind)
        outs = [sampler(sigmas[i], sigmas[j]) for i, j in pairs]
        arrays[f"case{n}"] = torch.stack(outs).numpy()
        cases.append(
            {
                "seeds": seeds,
                "shape": list(shape),
                "sigmas": [float(s) for s in sigmas],  # float32 values, exact in a float
                "sigma_min": float(sigma_min),
                "sigma_max": float(sigma_max),
                "pairs": pairs,
                "array": f"case{n}",
            }
        )
    OUT.mkdir(exist_ok=True)
    meta = {
        "made_with": {
            "k-diffusion": "0.1.1.post1",
            "torch": torch.__version__,
            "torchsde": torchsde.__version__,
        },
        "cases": cases,
    }
    (OUT / "brownian.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(OUT / "brownian.npz", **arrays)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
