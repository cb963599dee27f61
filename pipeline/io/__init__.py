"""Image files in and out: loading, saving and what they carry (parameters, ICC, EXIF).

* :mod:`pipeline.io.load` — any supported file to upright sRGB numpy arrays, safely; reading back
  an output's parameters; the output-size cap;
* :mod:`pipeline.io.save` — PNG, JPEG or WebP, atomically, with the run's metadata;
* :mod:`pipeline.io.icc` (colour profiles), :mod:`pipeline.io.pixels` (array helpers) and
  :mod:`pipeline.io.atomic` (atomic replacement), which the app and the engine use too;
* private to this package: the 16-bit PNG codec, EXIF/XMP handling and file sniffing.

numpy and Pillow only, no torch: the window imports this package. The names below are the
package's face, so ``from pipeline.io import load_image, save_image`` is enough for most callers.
"""

from __future__ import annotations

from pipeline.io.load import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    SUPPORTED_SUFFIXES,
    LoadedImage,
    SourceInfo,
    bleed_transparent,
    check_output_size,
    load_image,
    probe_image,
    read_parameters_text,
    read_run_info,
)
from pipeline.io.save import save_image

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "SUPPORTED_SUFFIXES",
    "LoadedImage",
    "SourceInfo",
    "bleed_transparent",
    "check_output_size",
    "load_image",
    "probe_image",
    "read_parameters_text",
    "read_run_info",
    "save_image",
]
