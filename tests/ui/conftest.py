"""Window tests: pytest-qt on Qt's offscreen platform (set in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def photo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo (scikit-image's astronaut, 96×96) as a PNG file."""
    from skimage import data

    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((96, 96), Image.LANCZOS))
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="session")
def big_photo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger real photo (scikit-image's coffee, 600×400) as a PNG file."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    return path
