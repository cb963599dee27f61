"""Test-wide set-up: every test runs against a private Clarifier home, offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before any test module imports Clarifier, so nothing ever touches the real user folders.
_HOME = Path(tempfile.mkdtemp(prefix="clarifier-test-home-"))
os.environ["CLARIFIER_HOME"] = str(_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
for _name in ("CLARIFIER_CACHE_DIR", "CLARIFIER_DATA_DIR", "CLARIFIER_CONFIG_DIR"):
    os.environ.pop(_name, None)

ROOT = Path(__file__).resolve().parent.parent
