"""Where Clarifier keeps its files.

``CLARIFIER_HOME`` puts everything under one folder (tests and portable installs use it);
``CLARIFIER_CACHE_DIR``, ``CLARIFIER_DATA_DIR`` and ``CLARIFIER_CONFIG_DIR`` override one each.
Otherwise the platform's usual places are used (``~/.cache/clarifier`` and so on on Linux).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import platformdirs

__all__ = ["cache_dir", "config_dir", "data_dir", "resources_dir"]

_APP = "clarifier"


def _pick(specific: str, sub: str, default: str) -> Path:
    if os.environ.get(specific):
        return Path(os.environ[specific]).expanduser()
    if os.environ.get("CLARIFIER_HOME"):
        return Path(os.environ["CLARIFIER_HOME"]).expanduser() / sub
    return Path(default)


def cache_dir() -> Path:
    """Converted model weights and other files that can be rebuilt."""
    return _pick("CLARIFIER_CACHE_DIR", "cache", platformdirs.user_cache_dir(_APP))


def data_dir() -> Path:
    """User presets, the run history and downloaded models."""
    return _pick("CLARIFIER_DATA_DIR", "data", platformdirs.user_data_dir(_APP))


def config_dir() -> Path:
    """Settings."""
    return _pick("CLARIFIER_CONFIG_DIR", "config", platformdirs.user_config_dir(_APP))


def resources_dir() -> Path:
    """The read-only resources (built-in presets, the model manifest, SD 1.5 configs, desktop
    files): the top-level ``resources/`` folder, installed as the package
    ``clarifier_resources`` and found through ``importlib.resources`` in a wheel and in an
    editable install alike."""
    root = importlib.resources.files("clarifier_resources")
    if not isinstance(root, Path):  # a zip import: diffusers and Qt need real files
        raise RuntimeError(f"Clarifier's resources must be installed as files, not in {root}")
    return root
