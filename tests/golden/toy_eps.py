"""The toy eps model the img2img golden trajectories are computed with.

Pure torch and deterministic, so the reference script (run in its own environment with
k-diffusion) and the tests compute the very same model: nonlinear in the latent, smooth in the
(continuous) timestep, and dependent on the prompt embedding, so guidance and prompt schedules
change the result.
"""

from __future__ import annotations

import torch

SD15_BETAS = (0.00085, 0.012, 1000)  # scaled_linear: beta_start, beta_end, training steps


def sd15_alphas_cumprod() -> torch.Tensor:
    """SD 1.5's alphas_cumprod as the LDM code builds it (float64, stored as float32)."""
    start, end, n = SD15_BETAS
    betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def _pattern(shape: tuple[int, ...]) -> torch.Tensor:
    _, c, h, w = shape
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    chans = torch.arange(c, dtype=torch.float32)[:, None, None]
    return torch.sin(0.7 * xs + 0.3 * ys[None] * (chans + 1) + chans)[None]


def toy_eps(x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """eps for ``x`` [B, C, H, W] at timesteps ``t`` (0-d or [B]) under ``emb`` [1|B, L, D]."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    t = t.expand(x.shape[0]).view(-1, 1, 1, 1)
    e = emb.float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
    s = emb.float().std(dim=(1, 2)).view(-1, 1, 1, 1)
    u = t / 1000.0
    return (
        0.6 * torch.tanh(x * (1.0 + u))
        + 0.25 * x * torch.cos(3.0 * u)
        + (0.2 * e + 0.05 * s) * _pattern(tuple(x.shape)) * (1.0 - 0.5 * u)
    )
