"""Edit ▸ Paste parameters: A1111 infotext from the clipboard into the parameter panel, with what
could not be mapped said in the status bar."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from PySide6.QtCore import QMimeData, QUrl
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMenu

from app.jobs.controller import StaticPool
from app.store.history import HistoryStore
from app.store.settings import Settings
from app.ui.app import make_loop
from app.ui.window.actions import clipboard_infotext
from app.ui.window.main_window import MainWindow
from app.ui.window.session import Session
from app.ui.window.state import WindowState
from pipeline.io.save import save_image
from pipeline.metadata import RunInfo
from pipeline.params import SD_MODELS, UpscaleParams
from tests.unit.test_infotext import CLARITY


@pytest.fixture(scope="module")
def loop(qapp) -> Iterator[asyncio.AbstractEventLoop]:
    """The window's asyncio loop on Qt's, as in the app (closing the window spawns on it)."""
    loop = make_loop(qapp)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def window(qtbot, loop, tmp_path: Path) -> Iterator[MainWindow]:
    session = Session(
        Settings(output_dir=str(tmp_path / "out")),
        history=HistoryStore(tmp_path / "history.sqlite3"),
        pool_factory=lambda _settings: StaticPool({}),
        probe_device=False,
    )
    made = MainWindow(session, state=WindowState(), confirm_quit=False)
    qtbot.addWidget(made)
    made.show()
    yield made
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.wait_for(session.shutdown(), 30))


def _copy(text: str) -> None:
    QGuiApplication.clipboard().setText(text)


def _action(window: MainWindow, text: str) -> Callable[[], None]:
    [action] = [a for a in window.window_actions.all if a.text().replace("&", "") == text]
    return action.trigger


def test_paste_parameters_applies_a_clarity_infotext_and_says_what_it_could_not(
    window: MainWindow,
) -> None:
    window.params.set_params(UpscaleParams(sharpen=3.0, tiling_width=32, seed=None))
    assert not window.params.seed_locked()
    _copy(CLARITY + ", Clip skip: 2, Hires upscale: 2")
    _action(window, "Paste parameters")()
    params = window.params.params()
    assert (params.mode, params.seed, params.scheduler) == ("creative", 1337, "DPM++ 3M SDE Karras")
    assert (params.tiling_width, params.tiling_height) == (112, 144)
    assert (params.resemblance, params.creativity, params.dynamic) == (0.6, 0.35, 6.0)
    assert (params.sd_model, params.upscaler) == (SD_MODELS[1], "4x-UltraSharp")
    assert params.sharpen == 3.0  # not in the infotext: kept
    assert window.params.seed_locked()  # so the next run uses 1337
    assert window.params.params_for_run().seed == 1337
    said = window.status.message.text()
    assert "Pasted the parameters (seed 1337, locked)" in said and "2 not mapped" in said
    assert "Clip skip: 2" in said and "Hires upscale: 2" in window.status.message.toolTip()
    assert not said.startswith("⚠")


def test_the_shortcut_is_ctrl_shift_v_in_an_edit_menu(window: MainWindow) -> None:
    [action] = [a for a in window.window_actions.all if a.text() == "Paste &parameters"]
    assert action.shortcut().toString() == "Ctrl+Shift+V"
    menus = {m.title(): m for m in window.menuBar().findChildren(QMenu)}
    assert action in menus["&Edit"].actions()


def test_paste_parameters_from_a_copied_image_file(window: MainWindow, tmp_path: Path) -> None:
    made = RunInfo(UpscaleParams(mode="creative", seed=4242, tiling_width=64), "local/creative")
    path = save_image(tmp_path / "made.png", np.zeros((8, 8, 3), np.uint8), info=made)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    QGuiApplication.clipboard().setMimeData(mime)
    window.window_actions.paste_parameters()
    assert window.params.params() == made.params  # Clarifier's own record: exact
    assert window.status.message.text() == "Pasted the parameters (seed 4242, locked)"
    _copy(str(path))  # the path as text works too
    window.params.set_params(UpscaleParams())
    window.window_actions.paste_parameters()
    assert window.params.params().tiling_width == 64


def test_nothing_usable_on_the_clipboard_changes_nothing(window: MainWindow, tmp_path) -> None:
    window.params.set_params(UpscaleParams(tiling_width=48))
    for content in ("", "   "):
        _copy(content)
        window.window_actions.paste_parameters()
        assert "no generation parameters" in window.status.message.text()
        assert window.params.params().tiling_width == 48
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain, pnginfo=PngImagePlugin.PngInfo())
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(plain))])
    assert clipboard_infotext(mime) is None  # a copied image without parameters is no prompt


def test_a_bare_prompt_is_pasted_as_the_prompt(window: MainWindow) -> None:
    window.params.set_params(UpscaleParams(tiling_width=48))
    _copy("portrait, style: anime, mood: calm")
    window.window_actions.paste_parameters()
    params = window.params.params()
    assert params.prompt == "portrait, style: anime, mood: calm" and params.tiling_width == 48
    assert "only the prompt was taken" in window.status.message.text()
