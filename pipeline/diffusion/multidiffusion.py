"""Timestep-level MultiDiffusion: one model call on a canvas of any size, tile by tile.

At every sampler step the whole latent is cut into overlapping tiles
(:mod:`pipeline.diffusion.tiling`), the tiles go through ControlNet and the UNet in batches, with
classifier-free guidance, and their noise predictions are blended back with weights and divided by
the summed weights. The sampler then takes **one** step on the whole latent. Fusing the model
output (rather than averaging latents after per-tile scheduler steps, as diffusers' panorama
pipeline does) keeps a single scheduler state and injects the SDE noise once, so multistep and SDE
samplers behave exactly as untiled; with one tile the result is the untiled computation.

ControlNet tile runs in Clarity's "my prompt is more important" mode: *soft injection*, the
residual of block ``i`` (of 12 down-block residuals, then the middle block) scaled by
``resemblance · 0.825^(12 - i)``, applied to both CFG halves. (diffusers' ``guess_mode`` drops
ControlNet from the unconditional half, which is a different control mode.)

Memory depends on ``tile × batch`` only: the hint stays as uint8 on the CPU and is cropped and
converted per batch, and the accumulation buffers are latent-sized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.diffusion.tiling import Box, TilePlan
from pipeline.errors import Cancelled

__all__ = [
    "SOFT_INJECTION_DECAY",
    "TileOutOfMemory",
    "TiledDenoiser",
    "is_out_of_memory",
    "soft_injection_scales",
    "tile_weights",
]

SOFT_INJECTION_DECAY = 0.825
WEIGHTINGS = ("uniform", "gaussian", "cosine")


class TileOutOfMemory(RuntimeError):
    """Out of device memory even with one tile per batch: the tile itself must shrink."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def soft_injection_scales(count: int, resemblance: float) -> list[float]:
    """Scales for ``count`` ControlNet residuals (down blocks first, middle block last)."""
    return [resemblance * SOFT_INJECTION_DECAY ** (count - 1 - i) for i in range(count)]


def tile_weights(h: int, w: int, kind: str) -> torch.Tensor:
    """A ``h × w`` blending weight for one tile: uniform (Clarity), or Gaussian / cosine windows
    (Mixture-of-Diffusers style) that fade towards the tile edges and so need less overlap."""
    if kind == "uniform":
        return torch.ones(h, w)
    if kind == "gaussian":
        # Centred Gaussian with variance 0.01 on a [0, 1] grid, as Mixture of Diffusers uses.
        def g(n: int) -> torch.Tensor:
            x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
            return torch.exp(-((x - 0.5) ** 2) / (2 * 0.01))

        return torch.outer(g(h), g(w)).float()
    if kind == "cosine":

        def c(n: int) -> torch.Tensor:
            x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
            return 0.5 - 0.5 * torch.cos(2 * math.pi * x) + 1e-3

        return torch.outer(c(h), c(w)).float()
    raise ValueError(f"tile weighting must be one of {', '.join(WEIGHTINGS)}, not {kind!r}")


def _index(start: int, size: int, period: int, device: torch.device) -> torch.Tensor:
    return torch.arange(start, start + size, device=device) % period


@dataclass
class CallStats:
    calls: int = 0
    tile_evals: int = 0  # tiles × CFG halves through the UNet
    latent_px: int = 0  # latent pixels through the UNet (per CFG half)


class TiledDenoiser:
    """The UNet (with ControlNet) on a whole latent canvas, tile by tile.

    :meth:`predict` gives one fused noise prediction per prompt embedding, for the engine's
    A1111-order guidance (:mod:`pipeline.diffusion.samplers`); calling the denoiser,
    ``eps = denoiser(model_input, t)``, gives the eps-space guided prediction for ``cond`` and
    ``uncond``.

    ``hint`` is the ControlNet tile image at the canvas's pixel size, ``H × W × 3`` uint8 RGB;
    ``cond``/``uncond`` are prompt encodings ``[1, L, D]`` (None when only :meth:`predict` is
    used).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        controlnet: torch.nn.Module | None,
        hint: np.ndarray | None,
        cond: torch.Tensor | None,
        uncond: torch.Tensor | None,
        *,
        plan: TilePlan,
        guidance: float = 1.0,
        resemblance: float,
        weighting: str = "uniform",
        dtype: torch.dtype = torch.float32,
        cancel: Callable[[], bool] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.unet = unet
        self.controlnet = controlnet if resemblance != 0 else None
        self.hint = hint
        self.device = next(unet.parameters()).device
        self.dtype = dtype
        empty = torch.zeros(1, 1, 1)
        self.cond = (cond if cond is not None else empty).to(self.device, dtype)
        self.uncond = (uncond if uncond is not None else empty).to(self.device, dtype)
        self.plan = plan
        self.guidance = guidance
        self.resemblance = resemblance
        self.weighting = weighting
        self.cancel = cancel or (lambda: False)
        self.on_batch = on_batch or (lambda _done, _total: None)
        self.log = log or (lambda _msg: None)
        self.stats = CallStats()
        if self.controlnet is not None and hint is None:
            raise ValueError("a ControlNet needs a hint image")
        if hint is not None and hint.shape[:2] != (plan.height * 8, plan.width * 8):
            raise ValueError(f"hint is {hint.shape[1]}×{hint.shape[0]}, canvas needs ×8 of latent")
        self._weight = tile_weights(plan.tile_h, plan.tile_w, weighting).to(self.device)
        self._wsum = self._accumulate_weights()

    # -- geometry ---------------------------------------------------------------------------------

    def _accumulate_weights(self) -> torch.Tensor:
        total = torch.zeros(self.plan.height, self.plan.width, device=self.device)
        for box in self.plan.boxes:
            self._add(total, box, self._weight)
        return total

    def _crop(self, canvas: torch.Tensor, box: Box) -> torch.Tensor:
        """``canvas[..., box]``; wrapping around the edges on a torus plan."""
        if not self.plan.wrap:
            return canvas[..., box.y : box.y + box.h, box.x : box.x + box.w]
        ys = _index(box.y, box.h, self.plan.height, canvas.device)
        xs = _index(box.x, box.w, self.plan.width, canvas.device)
        return canvas.index_select(-2, ys).index_select(-1, xs)

    def _add(self, canvas: torch.Tensor, box: Box, value: torch.Tensor) -> None:
        if not self.plan.wrap:
            canvas[..., box.y : box.y + box.h, box.x : box.x + box.w] += value
            return
        # index_add_ on the flattened canvas accumulates repeated indices, which a tile larger
        # than the canvas has (its wrapped pixels land on the same canvas pixel twice).
        ys = _index(box.y, box.h, self.plan.height, canvas.device)
        xs = _index(box.x, box.w, self.plan.width, canvas.device)
        flat = (ys[:, None] * self.plan.width + xs[None, :]).reshape(-1)
        lead = canvas.shape[:-2]
        value = value.expand(*lead, box.h, box.w) if value.dim() < canvas.dim() else value
        canvas.view(*lead, -1).index_add_(-1, flat, value.reshape(*lead, -1))

    def _hint_batch(self, boxes: list[Box]) -> torch.Tensor:
        assert self.hint is not None
        height, width = self.hint.shape[:2]
        crops = []
        for box in boxes:
            if self.plan.wrap:
                ys = np.arange(box.y * 8, (box.y + box.h) * 8) % height
                xs = np.arange(box.x * 8, (box.x + box.w) * 8) % width
                crop = self.hint[ys][:, xs]
            else:
                crop = self.hint[box.y * 8 : (box.y + box.h) * 8, box.x * 8 : (box.x + box.w) * 8]
            crops.append(torch.from_numpy(np.array(crop)))  # a writable copy of just the tile
        batch = torch.stack(crops).to(self.device).permute(0, 3, 1, 2)
        return batch.to(self.dtype) / 255.0

    # -- the model call ----------------------------------------------------------------------------

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The guided noise prediction ``uncond + guidance · (cond − uncond)``, fused over tiles."""
        if self.guidance == 1:
            return self.predict(model_input, t, [self.cond])[0]
        uncond, cond = self.predict(model_input, t, [self.uncond, self.cond])
        return uncond + self.guidance * (cond - uncond)

    def predict(
        self,
        model_input: torch.Tensor,
        t: torch.Tensor | float,
        embeddings: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        """One fused noise prediction per prompt embedding (``[1, L, D]`` each), tile by tile.

        Embeddings of equal length share one UNet batch; a different length (a prompt with more
        75-token chunks than the other) runs as its own batch, as A1111 does when the
        conditional and unconditional lengths differ."""
        embs = [e.to(self.device, self.dtype) for e in embeddings]
        while True:
            try:
                return self._call(model_input, t, embs)
            except torch.OutOfMemoryError as exc:
                self._after_oom(exc)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                self._after_oom(exc)

    def _after_oom(self, exc: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        largest = max(len(b) for b in self.plan.batches)
        if largest <= 1:
            raise TileOutOfMemory(str(exc)) from exc
        self.plan = self.plan.rebatched(largest // 2)
        self.log(f"out of device memory: retrying with {largest // 2} tiles per batch")

    def _call(
        self, model_input: torch.Tensor, t: torch.Tensor | float, embs: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        accs = [
            torch.zeros(model_input.shape, device=self.device, dtype=torch.float32) for _ in embs
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, e in enumerate(embs):
            groups.setdefault(tuple(e.shape), []).append(i)
        boxes = self.plan.boxes
        for done, indices in enumerate(self.plan.batches, start=1):
            if self.cancel():
                raise Cancelled()
            batch = [boxes[i] for i in indices]
            tiles = torch.cat([self._crop(model_input, b) for b in batch]).to(self.dtype)
            hint = self._hint_batch(batch) if self.controlnet is not None else None
            for members in groups.values():
                eps = self._eps(tiles, t, [embs[m] for m in members], hint).float()
                for k, m in enumerate(members):
                    part = eps[k * len(batch) : (k + 1) * len(batch)]
                    for i, box in enumerate(batch):
                        self._add(accs[m], box, part[i : i + 1] * self._weight)
            self.stats.tile_evals += len(batch) * len(embs)
            self.stats.latent_px += len(batch) * batch[0].w * batch[0].h
            self.on_batch(done, len(self.plan.batches))
        self.stats.calls += 1
        return [(acc / self._wsum).to(model_input.dtype) for acc in accs]

    def _eps(
        self,
        tiles: torch.Tensor,
        t: torch.Tensor | float,
        embs: list[torch.Tensor],
        hint: torch.Tensor | None,
    ) -> torch.Tensor:
        """The UNet's noise prediction for every tile under every embedding, embedding-major."""
        n = tiles.shape[0]
        x = torch.cat([tiles] * len(embs))
        emb = torch.cat([e.expand(n, -1, -1) for e in embs])
        timestep = torch.as_tensor(t, device=self.device)
        extra = {}
        if self.controlnet is not None:
            assert hint is not None
            down, mid = self.controlnet(
                x,
                timestep,
                encoder_hidden_states=emb,
                controlnet_cond=torch.cat([hint] * len(embs)),
                conditioning_scale=1.0,
                guess_mode=False,
                return_dict=False,
            )
            scales = soft_injection_scales(len(down) + 1, self.resemblance)
            extra = {
                "down_block_additional_residuals": [
                    d * s for d, s in zip(down, scales, strict=False)
                ],
                "mid_block_additional_residual": mid * scales[-1],
            }
        return self.unet(x, timestep, encoder_hidden_states=emb, return_dict=False, **extra)[0]
