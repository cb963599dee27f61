"""Fixtures shared by the backend tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small input photo (12×10), the same for every provider's tests."""
    path = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (200, 30, 30)).save(path)
    return path
