"""The pre-upscaler (super-resolution): Clarity's stage A, and all of the faithful mode.

* :mod:`pipeline.sr.arch` — the ESRGAN-family networks (RRDBNet, SRVGGNetCompact) and the
  registry that describes each once (detection, building and the ncnn mapping derive from it);
* :mod:`pipeline.sr.loading` — loading a bundled model or a person's file, recognising its
  architecture, with one process-wide cache of loaded models;
* :mod:`pipeline.sr.ncnn` — converting the bundled Real-ESRGAN ncnn weights to PyTorch;
* :mod:`pipeline.sr.preupscale` — the tiled runner, bounded in memory by the tile;
* :mod:`pipeline.sr.post` — the pixel operations around the passes (resizes, Clarity's
  downscaling and sharpen; no torch);
* :mod:`pipeline.sr.run` — a faithful run, as the engine calls it.

No re-exports here: most modules import torch, and :mod:`pipeline.sr.post` must stay light.
"""
