"""The compare view: modes, divider, painted pixels, zoom/pan, alignment, loading, pyramid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt, QThreadPool
from PySide6.QtGui import QFocusEvent, QImage, QMouseEvent, QPalette, QWheelEvent
from PySide6.QtWidgets import QApplication

from app.ui.compare import CompareToolbar, CompareView, Pyramid, build_pyramid
from app.ui.compare.pyramid import half_level
from app.ui.compare.viewport import Viewport

W, H = 400, 300  # the view's size in every test


# --- helpers ------------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def solid(w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def coords(w: int, h: int, blue: int = 0) -> np.ndarray:
    """Each pixel says where it is: R = x, G = y (both < 256), B a constant tag."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x, y, np.full_like(x, blue)], axis=2).astype(np.uint8)


def rgb_at(image: QImage, x: float, y: float) -> tuple[int, int, int]:
    c = image.pixelColor(int(x), int(y))
    return c.red(), c.green(), c.blue()


@pytest.fixture
def view(qtbot) -> CompareView:
    widget = CompareView()
    qtbot.addWidget(widget)
    widget.resize(W, H)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def load(qtbot, view: CompareView, before=None, after=None, **labels: str) -> None:
    """Load one or two files and wait until both pyramids are on screen."""
    if before is not None:
        view.set_before(before, labels.get("before_label", "Input"))
    if after is not None:
        view.set_after(after, labels.get("after_label", "Output"))
    want_before, want_after = before is not None, after is not None

    def ready() -> None:
        b, a = view.pyramids()
        assert (b is not None) == want_before or not want_before
        assert (a is not None) == want_after or not want_after
        assert not view.is_loading()

    qtbot.waitUntil(ready, timeout=10_000)


def mouse(view: CompareView, kind: QEvent.Type, pos: QPointF, button=Qt.MouseButton.LeftButton):
    held = button if kind != QEvent.Type.MouseButtonRelease else Qt.MouseButton.NoButton
    event = QMouseEvent(
        kind, pos, view.mapToGlobal(pos), button, held, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(view, event)


def drag(view: CompareView, start: QPointF, end: QPointF, button=Qt.MouseButton.LeftButton):
    mouse(view, QEvent.Type.MouseButtonPress, start, button)
    mid = (start + end) / 2
    mouse(view, QEvent.Type.MouseMove, mid, button)
    mouse(view, QEvent.Type.MouseMove, end, button)
    mouse(view, QEvent.Type.MouseButtonRelease, end, button)


def wheel(view: CompareView, pos: QPointF, notches: float) -> None:
    event = QWheelEvent(
        pos,
        view.mapToGlobal(pos),
        QPoint(0, 0),
        QPoint(0, int(120 * notches)),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view, event)


# --- modes, divider, keys -----------------------------------------------------------------------


def test_modes_switch_by_api_keys_and_fall_back_to_single(qtbot, view, tmp_path) -> None:
    load(qtbot, view, after=save(tmp_path / "a.png", solid(40, 30, (0, 0, 255))))
    assert view.mode() == "slider"
    assert view.effective_mode() == "single"  # one picture: nothing to compare yet
    load(qtbot, view, before=save(tmp_path / "b.png", solid(40, 30, (255, 0, 0))))
    assert view.effective_mode() == "slider"
    seen: list[str] = []
    view.mode_changed.connect(seen.append)
    view.set_mode("side")
    qtbot.keyClick(view, Qt.Key.Key_T)
    qtbot.keyClick(view, Qt.Key.Key_S)
    qtbot.keyClick(view, Qt.Key.Key_D)
    view.set_mode("single")
    assert seen == ["side", "toggle", "slider", "side", "single"]
    with pytest.raises(ValueError, match="unknown compare mode"):
        view.set_mode("split")


def test_slider_divider_follows_keys_and_drag_and_drag_elsewhere_pans(qtbot, view, tmp_path):
    load(
        qtbot,
        view,
        before=save(tmp_path / "b.png", solid(800, 600, (255, 0, 0))),
        after=save(tmp_path / "a.png", solid(800, 600, (0, 0, 255))),
    )
    assert view.divider() == 0.5
    qtbot.keyClick(view, Qt.Key.Key_Right)
    assert view.divider() == pytest.approx(0.51)
    qtbot.keyClick(view, Qt.Key.Key_Left, Qt.KeyboardModifier.ShiftModifier)
    assert view.divider() == pytest.approx(0.41)
    view.set_divider(0.5)
    drag(view, QPointF(W / 2, H / 2), QPointF(100, H / 2))  # grab the handle
    assert view.divider() == pytest.approx(100 / W)
    view.set_zoom(2.0)
    centre = view.map_to_scene(QPointF(300, 150))
    drag(view, QPointF(300, 150), QPointF(260, 130))  # outside the handle: pans
    assert view.divider() == pytest.approx(100 / W)
    moved = view.map_to_scene(QPointF(300, 150))
    assert (moved.x() - centre.x(), moved.y() - centre.y()) == pytest.approx((20, 10), abs=1)


def test_slider_paints_before_left_of_the_divider_and_after_right(qtbot, view, tmp_path):
    load(
        qtbot,
        view,
        before=save(tmp_path / "b.png", solid(80, 60, (255, 0, 0))),
        after=save(tmp_path / "a.png", solid(80, 60, (0, 0, 255))),
    )
    view.set_divider(0.25)
    image = view.grab().toImage()
    x = W * 0.25
    assert rgb_at(image, x - 6, H * 0.8) == (255, 0, 0)
    assert rgb_at(image, x + 6, H * 0.8) == (0, 0, 255)
    assert rgb_at(image, W - 20, H * 0.8) == (0, 0, 255)
    view.set_divider(0.75)
    image = view.grab().toImage()
    assert rgb_at(image, W * 0.5, H * 0.8) == (255, 0, 0)
    assert rgb_at(image, W * 0.75 + 6, H * 0.8) == (0, 0, 255)


def test_toggle_swaps_with_space(qtbot, view, tmp_path) -> None:
    load(
        qtbot,
        view,
        before=save(tmp_path / "b.png", solid(40, 30, (255, 0, 0))),
        after=save(tmp_path / "a.png", solid(40, 30, (0, 0, 255))),
    )
    qtbot.keyClick(view, Qt.Key.Key_T)
    assert rgb_at(view.grab().toImage(), W / 2, H * 0.8) == (0, 0, 255)
    qtbot.keyClick(view, Qt.Key.Key_Space)
    assert not view.showing_after()
    assert rgb_at(view.grab().toImage(), W / 2, H * 0.8) == (255, 0, 0)
    view.set_flicker(40)
    qtbot.waitUntil(lambda: view.showing_after(), timeout=2000)
    view.set_flicker(0)
    assert not view.flickering()


# --- zoom and pan -------------------------------------------------------------------------------


def test_actual_size_shows_exact_pixels_and_nearest_above_100(qtbot, view, tmp_path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    load(qtbot, view, after=save(tmp_path / "noise.png", pixels), after_label="")
    qtbot.keyClick(view, Qt.Key.Key_1)
    assert view.zoom() == 1.0
    image = view.grab().toImage()
    top_left = view.map_from_scene(QPointF(0, 0))
    x0, y0 = int(top_left.x()), int(top_left.y())
    assert (x0, y0) == (top_left.x(), top_left.y())  # pixel-aligned
    np.testing.assert_array_equal(as_array(image)[y0 : y0 + 50, x0 : x0 + 70], pixels)
    view.set_zoom(4.0)
    image = view.grab().toImage()
    origin = view.map_from_scene(QPointF(0, 0))
    for sx, sy in ((30, 20), (31, 20), (40, 29)):  # every device pixel of a 4×4 block
        block = {
            rgb_at(image, origin.x() + sx * 4 + dx, origin.y() + sy * 4 + dy)
            for dx in range(4)
            for dy in range(4)
        }
        assert block == {tuple(pixels[sy, sx])}


def test_fit_100_and_step_keys_and_double_click(qtbot, view, tmp_path) -> None:
    load(qtbot, view, after=save(tmp_path / "a.png", coords(800, 600)))
    assert view.is_fit() and view.zoom() == pytest.approx(0.5)
    zooms: list[float] = []
    view.zoom_changed.connect(zooms.append)
    qtbot.keyClick(view, Qt.Key.Key_1)
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    qtbot.keyClick(view, Qt.Key.Key_0)
    assert zooms == pytest.approx([1.0, 2**0.5, 1.0, 0.5**0.5, 0.5])
    mouse(view, QEvent.Type.MouseButtonDblClick, QPointF(50, 50))
    assert view.zoom() == 1.0
    mouse(view, QEvent.Type.MouseButtonDblClick, QPointF(50, 50))
    assert view.is_fit()


def test_wheel_zoom_keeps_the_point_under_the_cursor(qtbot, view, tmp_path) -> None:
    load(qtbot, view, after=save(tmp_path / "a.png", coords(250, 200)), after_label="")
    view.set_zoom(2.0)
    cursor = QPointF(123, 87)
    before = view.map_to_scene(cursor)
    shown = rgb_at(view.grab().toImage(), cursor.x(), cursor.y())
    for notches in (1, 2, -1):
        wheel(view, cursor, notches)
        after = view.map_to_scene(cursor)
        assert (after.x(), after.y()) == pytest.approx((before.x(), before.y()), abs=0.5)
        assert rgb_at(view.grab().toImage(), cursor.x(), cursor.y())[:2] == pytest.approx(
            shown[:2], abs=1
        )
    assert view.zoom() > 2.0


def test_pan_is_clamped_so_the_picture_stays_on_screen(qtbot, view, tmp_path) -> None:
    load(qtbot, view, after=save(tmp_path / "a.png", coords(200, 150)))
    view.set_zoom(4.0)  # 800×600 on a 400×300 view
    drag(view, QPointF(200, 150), QPointF(2000, 1500), Qt.MouseButton.MiddleButton)
    assert view.map_from_scene(QPointF(0, 0)) == QPointF(0, 0)  # stops at the top-left corner
    drag(view, QPointF(200, 150), QPointF(-3000, -3000), Qt.MouseButton.MiddleButton)
    assert view.map_from_scene(QPointF(200, 150)) == QPointF(W, H)


def test_side_by_side_panes_stay_in_sync(qtbot, view, tmp_path) -> None:
    load(
        qtbot,
        view,
        before=save(tmp_path / "b.png", coords(240, 180, blue=0)),
        after=save(tmp_path / "a.png", coords(240, 180, blue=200)),
        before_label="",
        after_label="",
    )
    view.set_mode("side")
    pane = (W - 2) / 2
    wheel(view, QPointF(60, 100), 3)  # zoom in the left pane
    drag(view, QPointF(pane + 100, 150), QPointF(pane + 60, 120))  # pan in the right one
    assert view.zoom() >= 1.0
    image = view.grab().toImage()
    for x, y in ((20, 80), (100, 150), (180, 220)):
        left = rgb_at(image, x, y)
        right = rgb_at(image, x + pane + 2, y)
        assert left[:2] == right[:2]
        assert (left[2], right[2]) == (0, 200)
        assert view.map_to_scene(QPointF(x, y)) == view.map_to_scene(QPointF(x + pane + 2, y))


# --- alignment, two runs, preview ---------------------------------------------------------------


def as_array(image: QImage) -> np.ndarray:
    """A grab as an H×W×3 array."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(rgb.constBits(), np.uint8, rgb.sizeInBytes())
    rows = rows.reshape(rgb.height(), rgb.bytesPerLine())
    return rows[:, : rgb.width() * 3].reshape(rgb.height(), rgb.width(), 3).copy()


def feature_box(image: QImage) -> tuple[int, int, int, int]:
    """Bounding box of the pure-red pixels in a grab."""
    array = as_array(image).astype(int)
    red = (array[..., 0] > 200) & (array[..., 1] < 60) & (array[..., 2] < 60)
    ys, xs = np.nonzero(red)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_smaller_before_lines_up_with_the_after(qtbot, view, tmp_path) -> None:
    small = solid(100, 75, (255, 255, 255))
    small[25:35, 50:60] = (255, 0, 0)  # the same feature at a quarter of the size
    big = solid(400, 300, (255, 255, 255))
    big[100:140, 200:240] = (255, 0, 0)
    load(
        qtbot,
        view,
        before=save(tmp_path / "in.png", small),
        after=save(tmp_path / "out.png", big),
        before_label="",
        after_label="",
    )
    view.set_mode("toggle")
    for zoom, anchor in ((None, None), (2.0, QPointF(220, 130))):
        if zoom is not None:
            view.set_zoom(zoom, anchor)
        after_box = feature_box(view.grab().toImage())
        view.swap()
        before_box = feature_box(view.grab().toImage())
        view.swap()
        # The before is resampled smoothly (as a plain resize shows it), which softens the
        # feature's edges a little: its centre must match, its size nearly.
        centre = lambda b: ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)  # noqa: E731
        assert centre(before_box) == pytest.approx(centre(after_box), abs=1)
        assert before_box == pytest.approx(after_box, abs=4)


def test_two_runs_of_different_sizes_with_labels(qtbot, view, tmp_path) -> None:
    run_a = save(tmp_path / "run12.png", solid(300, 200, (255, 0, 0)))
    run_b = save(tmp_path / "run13.png", solid(600, 400, (0, 0, 255)))
    load(
        qtbot,
        view,
        before=run_a,
        after=run_b,
        before_label="Run 12 · seed 7",
        after_label="Run 13 · seed 8",
    )
    assert view.labels() == ("Run 12 · seed 7", "Run 13 · seed 8")
    view.actual_size()  # 100% is the after's pixels; the smaller run is stretched to match
    assert view.map_from_scene(QPointF(600, 400)) - view.map_from_scene(QPointF(0, 0)) == (
        QPointF(600, 400)
    )
    view.fit()
    image = view.grab().toImage()
    assert rgb_at(image, 40, 120) == (255, 0, 0)
    assert rgb_at(image, W - 40, 120) == (0, 0, 255)
    # The label pills darken the top corners (translucent black behind white text).
    before_pill = np.mean([rgb_at(image, x, y)[0] for x in range(14, 60) for y in range(19, 27)])
    after_pill = np.mean(
        [rgb_at(image, x, y)[2] for x in range(W - 60, W - 14) for y in range(19, 27)]
    )
    assert before_pill < 180 and after_pill < 180
    view.set_before(run_a, "")  # same file: only the label changes, nothing reloads
    assert not view.is_loading() and view.labels()[0] == ""
    image = view.grab().toImage()
    assert rgb_at(image, 30, 23) == (255, 0, 0)


def test_live_preview_is_the_after_until_the_result_arrives(qtbot, view, tmp_path) -> None:
    load(qtbot, view, before=save(tmp_path / "in.png", solid(100, 75, (255, 0, 0))))
    preview = QImage(20, 15, QImage.Format.Format_RGB32)
    preview.fill(0xFF00FF00)
    view.set_preview(preview, output_size=(400, 300))
    assert view.can_compare() and view.labels()[1] == "Preview"
    assert rgb_at(view.grab().toImage(), W - 30, H - 30) == (0, 255, 0)
    png = tmp_path / "p.png"
    save(png, solid(20, 15, (0, 255, 255)))
    view.set_preview(png.read_bytes(), output_size=(400, 300))
    assert rgb_at(view.grab().toImage(), W - 30, H - 30) == (0, 255, 255)
    load(qtbot, view, after=save(tmp_path / "out.png", solid(400, 300, (0, 0, 255))))
    assert view.labels()[1] == "Output"
    assert rgb_at(view.grab().toImage(), W - 30, H - 30) == (0, 0, 255)


def test_transparency_shows_over_a_checkerboard(qtbot, view, tmp_path) -> None:
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[:, :40] = (255, 0, 0, 255)  # the right half is fully transparent
    load(qtbot, view, after=save(tmp_path / "alpha.png", rgba), after_label="")
    image = view.grab().toImage()
    assert rgb_at(image, 100, 150) == (255, 0, 0)
    shades = {rgb_at(image, x, 150) for x in range(220, 380)}
    assert len(shades) == 2 and all(r == g == b for r, g, b in shades)


def test_16_bit_png_is_shown_at_8_bits(qtbot, view, tmp_path) -> None:
    from pipeline.io.save import save_image

    deep = np.full((30, 40, 3), (65535, 32896, 0), np.uint16)
    path = tmp_path / "deep.png"
    save_image(path, deep)
    load(qtbot, view, after=path, after_label="")
    assert rgb_at(view.grab().toImage(), W / 2, H / 2) == (255, 128, 0)


# --- loading ------------------------------------------------------------------------------------


def test_corrupt_file_reports_a_plain_message_and_keeps_the_other(qtbot, view, tmp_path) -> None:
    good = save(tmp_path / "in.png", solid(40, 30, (255, 0, 0)))
    load(qtbot, view, before=good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with qtbot.waitSignal(view.load_failed, timeout=5000) as failed:
        view.set_after(bad)
    message = failed.args[0]
    assert message.startswith("Could not show broken.png: ")
    assert "Traceback" not in message and "\n" not in message
    assert not view.is_loading() and not view.has_after() and view.has_before()
    assert rgb_at(view.grab().toImage(), W / 2, H * 0.8) == (255, 0, 0)


def test_a_newer_request_wins_over_an_older_one(qtbot, view, tmp_path) -> None:
    first = save(tmp_path / "first.png", solid(900, 700, (255, 0, 0)))
    second = save(tmp_path / "second.png", solid(40, 30, (0, 0, 255)))
    signals: list[bool] = []
    view.loading_changed.connect(signals.append)
    view.set_after(first)
    with qtbot.waitSignal(view.images_ready, timeout=5000):
        view.set_after(second)
    qtbot.wait(100)  # the first task may still finish: its result must be dropped
    assert view.pyramids()[1].width == 40
    assert signals == [True, False]
    view.set_zoom(3.0)
    view.clear()
    assert not view.has_after() and view.pyramids() == (None, None)
    load(qtbot, view, after=second)  # after a clear, a picture starts fitted again
    assert view.is_fit()


def test_deleting_the_view_mid_load_stops_the_worker(qtbot, tmp_path) -> None:
    path = save(tmp_path / "big.png", solid(3000, 2000, (0, 0, 255)))
    view = CompareView()
    view.set_after(path)
    cancel = view._src.after.task.cancel
    view.deleteLater()
    qtbot.waitUntil(cancel.is_set, timeout=2000)  # told at once, stops at its next strip
    assert QThreadPool.globalInstance().waitForDone(10_000)


def test_empty_view_describes_itself(qtbot, view) -> None:
    assert view.accessibleName() == "Before and after comparison"
    assert "Drop images here" in view.accessibleDescription()
    blank = view.grab().toImage()
    view.set_empty_hint("Nothing selected", "Pick a run in the history")
    assert "Nothing selected" in view.accessibleDescription()
    assert view.grab().toImage() != blank
    # Focus from the keyboard shows a ring in the palette's highlight colour; a click does not.
    highlight = view.palette().color(QPalette.ColorRole.Highlight)
    QApplication.sendEvent(view, QFocusEvent(QEvent.Type.FocusIn, Qt.FocusReason.TabFocusReason))
    ring = view.grab().toImage().pixelColor(1, H // 2)
    assert abs(ring.blue() - highlight.blue()) < 40 and abs(ring.red() - highlight.red()) < 40
    QApplication.sendEvent(view, QFocusEvent(QEvent.Type.FocusOut))
    QApplication.sendEvent(view, QFocusEvent(QEvent.Type.FocusIn, Qt.FocusReason.MouseFocusReason))
    assert view.grab().toImage().pixelColor(1, H // 2) != ring


# --- toolbar ------------------------------------------------------------------------------------


def test_toolbar_drives_the_view_and_names_its_shortcuts(qtbot, view, tmp_path) -> None:
    bar = CompareToolbar(view)
    qtbot.addWidget(bar)
    assert not bar.mode_buttons["side"].isEnabled()  # nothing to compare yet
    load(
        qtbot,
        view,
        before=save(tmp_path / "b.png", solid(80, 60, (255, 0, 0))),
        after=save(tmp_path / "a.png", solid(800, 600, (0, 0, 255))),
    )
    assert bar.mode_buttons["side"].isEnabled()
    bar.mode_buttons["side"].click()
    assert view.mode() == "side" and bar.mode_buttons["side"].isChecked()
    bar.actual.click()
    assert view.zoom() == 1.0 and bar.readout.text() == "100%"
    bar.fit.click()
    assert view.is_fit() and bar.fit.isChecked()
    for button, key in (
        (bar.mode_buttons["slider"], "(S)"),
        (bar.mode_buttons["side"], "(D)"),
        (bar.mode_buttons["toggle"], "(T)"),
        (bar.fit, "(0)"),
        (bar.actual, "(1)"),
        (bar.zoom_in, "(+)"),
    ):
        assert button.accessibleName() and key in button.toolTip()


# --- pyramid ------------------------------------------------------------------------------------


def test_pyramid_levels_and_tiles_are_exact() -> None:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (301, 517, 3), dtype=np.uint8)
    pyr = build_pyramid(rgb, tile=128, min_side=65)
    sizes = [pyr.level_size(i) for i in range(pyr.level_count)]
    assert sizes == [(517, 301), (259, 151), (130, 76), (65, 38)]
    assert pyr.grid(0) == (5, 3) and pyr.grid(3) == (1, 1)
    bgra = pyr.levels[0]
    np.testing.assert_array_equal(bgra[..., 2::-1], rgb)  # B, G, R in memory
    assert (bgra[..., 3] == 255).all()
    # Level 1 is the 2×2 box average (rounded) of level 0, odd edges averaged on their own.
    l0 = bgra.astype(np.int32)
    np.testing.assert_allclose(
        pyr.levels[1][:150, :258],
        (l0[0:300:2, 0:516:2] + l0[1:301:2, 0:516:2] + l0[0:300:2, 1:517:2] + l0[1:301:2, 1:517:2])
        / 4,
        atol=1,
    )
    np.testing.assert_allclose(
        pyr.levels[1][150, :258], (l0[300, 0:516:2] + l0[300, 1:517:2]) / 2, atol=1
    )
    # A tile is a view of exactly its pixels, edge tiles cut short.
    tile = pyr.tile(0, 4, 2)
    assert (tile.width(), tile.height()) == (517 - 512, 301 - 256)
    assert rgb_at(tile, 3, 7) == tuple(rgb[256 + 7, 512 + 3])
    assert rgb_at(pyr.tile(1, 1, 0), 5, 9) == tuple(pyr.levels[1][9, 128 + 5, 2::-1])
    assert pyr.fetches == 2
    assert list(pyr.tiles_in(0, 100, 0, 300, 10)) == [(0, 0), (1, 0), (2, 0)]
    assert list(pyr.tiles_in(0, 600, 0, 700, 10)) == []
    # The level for a zoom: the coarsest whose pixels still cover a device pixel.
    assert [pyr.level_for(z) for z in (2.0, 1.0, 0.6, 0.5, 0.26, 0.25, 0.01)] == [
        0, 0, 0, 1, 1, 2, 3,
    ]  # fmt: skip
    with pytest.raises(IndexError):
        pyr.tile(0, 5, 0)


def test_pyramid_premultiplies_alpha_and_reads_16_bit() -> None:
    rgb = np.full((4, 6, 3), (60000, 30000, 0), np.uint16)
    alpha = np.full((4, 6), 65535, np.uint16)
    alpha[:, 3:] = 32768  # half transparent
    pyr = build_pyramid(rgb, alpha, min_side=2)
    assert pyr.has_alpha and pyr.format == QImage.Format.Format_ARGB32_Premultiplied
    assert tuple(pyr.levels[0][0, 0]) == (0, 117, 234, 255)  # B, G, R, A
    b, g, r, a = (int(v) for v in pyr.levels[0][0, 5])
    assert a == 128 and abs(r - 117) <= 1 and abs(g - 58) <= 1 and b == 0
    assert tuple(half_level(pyr.levels[0])[0, 0]) == (0, 117, 234, 255)


def test_paint_fetches_only_the_visible_tiles(qtbot, view, tmp_path) -> None:
    big = np.zeros((2048, 3072, 3), np.uint8)
    big[..., 0] = 200
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=0)
    load(qtbot, view, after=tmp_path / "big.png")
    pyr = view.pyramids()[1]
    assert isinstance(pyr, Pyramid) and pyr.grid(0) == (6, 4)
    fetched: list[tuple[int, int, int]] = []
    original = pyr.tile

    def spy(level: int, col: int, row: int) -> QImage:
        fetched.append((level, col, row))
        return original(level, col, row)

    pyr.tile = spy  # type: ignore[method-assign]
    view.grab()  # fit: 0.13×, drawn from level 2 (768×512), its two tiles
    assert fetched == [(2, 0, 0), (2, 1, 0)]
    fetched.clear()
    view.set_zoom(8.0, QPointF(W / 2, H / 2))  # 50×38 picture pixels around the centre
    view.grab()
    assert fetched == [(0, 2, 1), (0, 3, 1), (0, 2, 2), (0, 3, 2)]  # the 2×2 at the centre
    fetched.clear()
    view.set_zoom(8.0, QPointF(0, 0))
    drag(view, QPointF(200, 150), QPointF(-30000, -30000))  # pan to the bottom-right corner
    view.grab()
    assert fetched == [(0, 5, 3)]


def test_viewport_keeps_the_view_when_the_scene_grows() -> None:
    vp = Viewport()
    vp.set_pane(400, 300, 1.0)
    vp.set_scene(100, 75)  # the input, while the 4× result is still loading
    vp.set_zoom(8.0, (100, 100))
    seen = vp.to_scene(100, 100)
    vp.set_scene(400, 300)  # the result arrives: same part of the picture, same on-screen size
    assert vp.zoom == pytest.approx(2.0)
    assert vp.to_scene(100, 100) == pytest.approx((seen[0] * 4, seen[1] * 4))
    vp.fit()
    vp.set_scene(800, 600)
    assert vp.fitted and vp.zoom == pytest.approx(0.5)


def test_loader_reports_size_then_a_quick_preview_then_the_upright_pyramid(qapp, tmp_path):
    from app.ui.compare.loader import LoadRelay, LoadTask

    photo = Image.fromarray(coords(240, 160)).resize((3000, 2000))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90° clockwise, 2000×3000
    path = tmp_path / "sideways.jpg"
    photo.save(path, quality=80, exif=exif)
    relay = LoadRelay()
    events: list[tuple[str, object]] = []
    relay.sized.connect(lambda _k, _g, w, h: events.append(("sized", (w, h))))
    relay.preview.connect(lambda _k, _g, image: events.append(("preview", image.size())))
    relay.progress.connect(lambda _k, _g, f: events.append(("progress", f)))
    relay.done.connect(lambda _k, _g, pyr: events.append(("done", (pyr.width, pyr.height))))
    LoadTask(relay, "after", 1, str(path)).run()  # in this thread: signals arrive directly
    kinds = [kind for kind, _ in events]
    assert events[0] == ("sized", (2000, 3000))
    assert events[1][0] == "preview" and events[1][1].width() == 250  # the 1/8 DCT decode
    assert kinds[-1] == "done" and events[-1][1] == (2000, 3000)
    fractions = [f for kind, f in events if kind == "progress"]
    assert fractions[0] == -1.0 and fractions[-1] == 1.0 and fractions[1:] == sorted(fractions[1:])
