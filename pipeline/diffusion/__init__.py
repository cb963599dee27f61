"""The creative mode: Clarity's generative upscale on diffusers.

* :mod:`pipeline.diffusion.run` — a creative run, as the engine calls it: find and load the
  models, run the passes, then alpha, mask and sharpening;
* :mod:`pipeline.diffusion.passes` — the Clarity pass itself: pre-upscale, tiled VAE encode,
  sampling, decode, and the out-of-memory retries;
* :mod:`pipeline.diffusion.multidiffusion` — the tiled model call (MultiDiffusion with ControlNet
  soft injection), placed by :mod:`pipeline.diffusion.tiling` (pure arithmetic, no torch);
* :mod:`pipeline.diffusion.tiled_vae` — the VAE in tiles with shared GroupNorm statistics;
* :mod:`pipeline.diffusion.samplers` — A1111's samplers and schedules;
* :mod:`pipeline.diffusion.text_encoder` — A1111's prompt weighting, chunking and embeddings,
  over the syntax of :mod:`pipeline.diffusion.prompt_syntax` (no torch: the window checks
  prompts with it);
* :mod:`pipeline.diffusion.sd_loading` and :mod:`pipeline.diffusion.sd_files` — the SD 1.5 and
  ControlNet pipeline from the files people have, read without running code.

No re-exports here: most modules import torch, and the light ones must stay light.
"""
