"""Clarifier's local engine: parameters, image I/O, pre-upscalers and the diffusion pass.

Importing this package is cheap and never imports torch; the modules that run models do.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("clarifier")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
