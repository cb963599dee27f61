"""Test-wide set-up: every test runs against a private Clarifier home, offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Set before any test module imports Clarifier, so nothing ever touches the real user folders.
_HOME = Path(tempfile.mkdtemp(prefix="clarifier-test-home-"))
os.environ["CLARIFIER_HOME"] = str(_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"  # never the real keyring
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
for _name in ("CLARIFIER_CACHE_DIR", "CLARIFIER_DATA_DIR", "CLARIFIER_CONFIG_DIR"):
    os.environ.pop(_name, None)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny SD1.5-structured models folder (see tests/tiny_models.py), built once per
    session; the dict says where each file is. Imports torch/diffusers only when used."""
    from tests.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_models: dict[str, Any]) -> Path:
    """The root of the tiny models folder (A1111 layout plus ``sd15-config``)."""
    return tiny_models["root"]
