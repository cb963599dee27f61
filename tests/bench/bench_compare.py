"""Benchmark of the compare view on a 64 MP output: pyramid build, and paint time per frame.

Builds an 8000×8000 picture (synthetic gradients and a zone plate on the left half, scikit-image's
astronaut photo tiled over the right half), writes it as a PNG and loads it through the public
API as the "after" of a 4× upscale (the "before" is the same picture at 2000×2000). Prints, in
one run:

(a) the load: decode + pyramid build through ``CompareView.set_after`` (wall time, and the
    longest gap between 5 ms GUI timer ticks while it ran, i.e. how long the GUI ever froze),
    the pyramid build alone from the decoded array, the pyramid's size and the peak RSS;
(b) paint time per frame of the slider view at fit, at 100%, at 400%, during a 50-frame drag
    pan at 100% and a 50-frame wheel zoom from fit to 800% and back, timed around
    ``repaint()`` (the whole paint, both pictures, labels and divider);
(c) with one picture, the same frames (fit, zooming from fit to 100%, panning at 100%) painted
    the naive way, one full-size QImage scaled whole to the zoom on every paint, and the ratio
    per group; plus Qt's own clipped transform of the full QImage ("direct"), which is fast but
    samples 64 MP bilinearly with no prefiltering: its aliasing is printed as the mean error
    against a box-filtered reference, next to the pyramid's.

    .venv/bin/python -m tests.bench.bench_compare           # about a minute on 2 cores
    .venv/bin/python -m tests.bench.bench_compare --size 4000 --frames 20
    .venv/bin/python -m pytest -m bench tests/bench/bench_compare.py   # a small smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from PySide6.QtCore import (  # noqa: E402
    QElapsedTimer,
    QEvent,
    QEventLoop,
    QPoint,
    QPointF,
    QRectF,
    Qt,
    QTimer,
)
from PySide6.QtGui import QImage, QMouseEvent, QPainter, QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from app.ui.compare import CompareView, build_pyramid  # noqa: E402
from pipeline.io.load import load_image  # noqa: E402

FRAME_BUDGET_MS = 50.0


def make_picture(size: int) -> np.ndarray:
    """Half synthetic (gradients, a zone plate that aliases badly if sampled without
    filtering), half a real photo tiled."""
    from skimage import data

    rgb = np.empty((size, size, 3), np.uint8)
    half = size // 2
    xs = np.arange(half, dtype=np.float32)
    for y0 in range(0, size, 512):
        ys = np.arange(y0, min(size, y0 + 512), dtype=np.float32)[:, None]
        r2 = (xs[None, :] - half / 2) ** 2 + (ys - size / 2) ** 2
        zone = 127.5 + 127.5 * np.cos(np.pi * r2 / (2.0 * size))
        strip = rgb[y0 : y0 + len(ys), :half]
        strip[..., 0] = (xs[None, :] * 255 / half).astype(np.uint8)
        strip[..., 1] = (ys * 255 / size).astype(np.uint8)
        strip[..., 2] = zone.astype(np.uint8)
    photo = data.astronaut()
    reps = (-(-size // photo.shape[0]), -(-(size - half) // photo.shape[1]), 1)
    rgb[:, half:] = np.tile(photo, reps)[:size, : size - half]
    return rgb


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory now (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def wait_until(
    app: QApplication, done: Callable[[], bool], tick_ms: int = 5
) -> tuple[float, float]:
    """Run the event loop until ``done()``; return the longest gap between timer ticks (ms),
    what a person would feel as a frozen window, and the highest RSS seen (MiB)."""
    clock = QElapsedTimer()
    clock.start()
    longest = 0.0
    highest = rss_mb()
    last = clock.nsecsElapsed()

    def tick() -> None:
        nonlocal last, longest, highest
        now = clock.nsecsElapsed()
        longest = max(longest, (now - last) / 1e6)
        highest = max(highest, rss_mb())
        last = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(tick_ms)
    loop = QEventLoop()
    poll = QTimer()
    poll.timeout.connect(lambda: done() and loop.quit())
    poll.start(20)
    loop.exec()
    timer.stop()
    poll.stop()
    return longest, highest


class NaiveView(QWidget):
    """The baseline: a full-size QImage, scaled whole to the zoom on every paint."""

    def __init__(self, image: QImage, direct: bool = False) -> None:
        super().__init__()
        self.image = image
        self.direct = direct  # True: let QPainter transform the full image, clipped, no filter
        self.zoom, self.cx, self.cy = 1.0, image.width() / 2, image.height() / 2

    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.GlobalColor.darkGray)
        w, h = self.image.width() * self.zoom, self.image.height() * self.zoom
        ox, oy = self.width() / 2 - self.cx * self.zoom, self.height() / 2 - self.cy * self.zoom
        smooth = self.zoom < 1
        if self.direct:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            p.drawImage(QRectF(ox, oy, w, h), self.image, QRectF(self.image.rect()))
        else:
            mode = (
                Qt.TransformationMode.SmoothTransformation
                if smooth
                else Qt.TransformationMode.FastTransformation
            )
            scaled = self.image.scaled(
                round(w), round(h), Qt.AspectRatioMode.IgnoreAspectRatio, mode
            )
            p.drawImage(QPointF(round(ox), round(oy)), scaled)
        p.end()


def time_frames(widget: QWidget, app: QApplication, steps: list[Callable[[], None]]) -> list[float]:
    """Milliseconds per frame: each step changes the view, then one synchronous repaint."""
    times = []
    for step in steps:
        step()
        app.processEvents()
        start = time.perf_counter()
        widget.repaint()
        times.append((time.perf_counter() - start) * 1000)
    return times


def stats(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(times):6.1f} ms   p95 {p95:6.1f}   max {max(times):6.1f}"


def send_mouse(view: QWidget, kind: QEvent.Type, pos: QPointF) -> None:
    button = Qt.MouseButton.LeftButton
    held = button if kind != QEvent.Type.MouseButtonRelease else Qt.MouseButton.NoButton
    QApplication.sendEvent(
        view,
        QMouseEvent(kind, pos, view.mapToGlobal(pos), button, held, Qt.KeyboardModifier.NoModifier),
    )


def send_wheel(view: QWidget, pos: QPointF, notches: float) -> None:
    QApplication.sendEvent(
        view,
        QWheelEvent(
            pos,
            view.mapToGlobal(pos),
            QPoint(),
            QPoint(0, int(120 * notches)),
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
            Qt.ScrollPhase.NoScrollPhase,
            False,
        ),
    )


def grab_rgb(widget: QWidget, rect: QRectF) -> np.ndarray:
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    image = image.copy(rect.toAlignedRect())
    array = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes())
    return array.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 3].reshape(
        image.height(), image.width(), 3
    )


def run(size: int, view_size: tuple[int, int], frames: int) -> dict[str, float]:
    app = QApplication.instance() or QApplication([])
    print(f"picture {size}×{size} ({size * size / 1e6:.0f} MP), view {view_size[0]}×{view_size[1]}")
    rgb = make_picture(size)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as folder:
        after_path, before_path = Path(folder) / "after.png", Path(folder) / "before.png"
        Image.fromarray(rgb).save(after_path, compress_level=1)
        Image.fromarray(rgb).resize((size // 4, size // 4), Image.BOX).save(before_path)
        view = CompareView()
        view.resize(*view_size)
        view.show()
        app.processEvents()
        results = _loading(app, view, before_path, after_path, size)
        states = _painting(app, view, view_size, frames, results)
        _baselines(app, view, rgb, after_path, view_size, frames, states, results)
        view.close()
    print(f"\npeak RSS {peak_rss_mb():.0f} MiB")
    return results


def _loading(
    app: QApplication, view: CompareView, before: Path, after: Path, size: int
) -> dict[str, float]:
    """(a) Load through the public API; then the pyramid build alone from decoded pixels."""
    results: dict[str, float] = {}
    gc.collect()
    rss0 = rss_mb()
    start = time.perf_counter()
    view.set_before(before, "Input")
    view.set_after(after, "Output 4×")
    results["load_stall_ms"], highest = wait_until(app, lambda: not view.is_loading())
    results["load_s"] = time.perf_counter() - start
    gc.collect()
    results["load_peak_mb"], results["held_mb"] = highest - rss0, rss_mb() - rss0
    pyramid = view.pyramids()[1]
    assert pyramid is not None and pyramid.width == size
    decoded = load_image(after, max_pixels=None).rgb
    start = time.perf_counter()
    build_pyramid(decoded)
    results["build_s"] = time.perf_counter() - start
    del decoded
    gc.collect()
    mib = pyramid.nbytes / 2**20
    print("\n(a) loading")
    print(
        f"decode + pyramids via set_*  {results['load_s']:6.2f} s (both pictures, worker threads)"
    )
    print(f"longest GUI freeze meanwhile {results['load_stall_ms']:6.1f} ms (a 5 ms timer's gaps)")
    levels = f"{pyramid.level_count} levels, {mib:.0f} MiB"
    print(f"pyramid build alone          {results['build_s']:6.2f} s ({levels})")
    print(f"RSS while loading            +{results['load_peak_mb']:5.0f} MiB at the peak, "
          f"+{results['held_mb']:.0f} MiB held after")  # fmt: skip
    return results


State = tuple[float, float, float]  # zoom, centre x, centre y


def _painting(
    app: QApplication,
    view: CompareView,
    view_size: tuple[int, int],
    frames: int,
    results: dict[str, float],
) -> dict[str, list[State]]:
    """(b) Paint time per frame in the slider mode; returns the pan and zoom frames' states."""
    vp = view._vp  # the benchmark records the view state to replay it on the baselines
    centre = QPointF(view_size[0] * 0.62, view_size[1] * 0.45)
    idle = [lambda: None] * (frames - 1)
    fit = time_frames(view, app, [view.fit] * frames)
    hundred = time_frames(view, app, [lambda: view.set_zoom(1.0, centre), *idle])
    four = time_frames(view, app, [lambda: view.set_zoom(4.0, centre), *idle])
    view.set_zoom(1.0, centre)
    pan_states: list[State] = []
    grip = QPointF(view_size[0] * 0.8, view_size[1] * 0.3)  # away from the divider: a pan
    send_mouse(view, QEvent.Type.MouseButtonPress, grip)

    def pan_step(i: int) -> Callable[[], None]:
        def step() -> None:
            send_mouse(view, QEvent.Type.MouseMove, grip - QPointF(37 * (i + 1), 23 * (i + 1)))
            pan_states.append((vp.zoom, vp.cx, vp.cy))

        return step

    pan = time_frames(view, app, [pan_step(i) for i in range(frames)])
    send_mouse(view, QEvent.Type.MouseButtonRelease, grip)
    view.fit()
    zoom_states: list[State] = []

    def zoom_step(notches: float) -> Callable[[], None]:
        def step() -> None:
            send_wheel(view, centre, notches)
            zoom_states.append((vp.zoom, vp.cx, vp.cy))

        return step

    notches = [1.0] * (frames // 2) + [-1.0] * (frames - frames // 2)
    zoom = time_frames(view, app, [zoom_step(n) for n in notches])
    print("\n(b) CompareView paint per frame (slider: both pictures, labels, divider)")
    sequences = (
        ("fit", fit),
        ("100%", hundred),
        ("400%", four),
        ("drag pan at 100%", pan),
        ("wheel zoom fit↔800%", zoom),
    )
    for name, times in sequences:
        print(f"{name:22s} {stats(times)}")
    everything = [t for _, times in sequences for t in times]
    results["frame_max_ms"] = max(everything)
    results["frame_median_ms"] = statistics.median(everything)
    return {"pan": pan_states, "zoom": zoom_states}


def _baselines(
    app: QApplication,
    view: CompareView,
    rgb: np.ndarray,
    after: Path,
    view_size: tuple[int, int],
    frames: int,
    states: dict[str, list[State]],
    results: dict[str, float],
) -> None:
    """(c) One picture, the same frames, painted the naive ways (frames ≤ 100% only: above it,
    scaling the whole picture would allocate gigabytes per frame)."""
    size = rgb.shape[0]
    view.set_mode("single")
    full = QImage(after.as_posix()).convertToFormat(QImage.Format.Format_RGB32)
    fit_scale = min(view_size) / size  # the picture is square
    groups = {
        "fit": [(fit_scale, size / 2, size / 2)] * min(frames, 10),
        "zooming fit→100%": [s for s in states["zoom"] if s[0] < 0.999],
        "pan at 100%": states["pan"],
    }
    print("\n(c) one picture, the same frames: baselines against CompareView")
    for label, direct in (("naive: scale the whole image", False), ("direct: QPainter", True)):
        naive = NaiveView(full, direct)
        naive.resize(*view_size)
        naive.show()
        print(label)
        for group, replay in groups.items():
            if not replay:
                continue
            base = time_frames(naive, app, [_naive_state(naive, *s) for s in replay])
            ours = time_frames(view, app, [lambda s=s: _apply(view, *s) for s in replay])
            ratio = statistics.median(base) / statistics.median(ours)
            print(f"  {group:17s} baseline    {stats(base)}")
            print(f"  {'':17s} CompareView {stats(ours)}   → {ratio:5.1f}× the speed")
            results[f"ratio_{'direct' if direct else 'naive'}_{group.split()[0]}"] = ratio
        if direct:
            results["direct_error"] = _aliasing(naive, rgb, fit_scale, view_size)
        naive.close()
        naive.deleteLater()
    results["pyramid_error"] = _aliasing(view, rgb, fit_scale, view_size, ours=True)
    print("fit view's mean |error| per channel against a box-filtered reference (0-255):")
    print(f"  CompareView {results['pyramid_error']:.2f}, direct {results['direct_error']:.2f}")


def _naive_state(view: NaiveView, zoom: float, cx: float, cy: float) -> Callable[[], None]:
    def step() -> None:
        view.zoom, view.cx, view.cy = zoom, cx, cy

    return step


def _apply(view: CompareView, zoom: float, cx: float, cy: float) -> None:
    vp = view._vp
    vp.zoom, vp.cx, vp.cy, vp.fitted = zoom, cx, cy, False
    view.update()


def _aliasing(
    widget: QWidget, rgb: np.ndarray, scale: float, view_size: tuple[int, int], ours: bool = False
) -> float:
    """Mean absolute difference between the fit view and the picture box-filtered to the same
    size: how much detail turned into aliasing."""
    size = rgb.shape[0]
    shown = round(size * scale)
    if ours:
        widget.fit()  # type: ignore[attr-defined]
    else:
        widget.zoom, widget.cx, widget.cy = scale, size / 2, size / 2  # type: ignore[attr-defined]
    left = round((view_size[0] - shown) / 2)
    top = round((view_size[1] - shown) / 2)
    got = grab_rgb(widget, QRectF(left, top, shown, shown)).astype(np.int16)
    reference = np.asarray(Image.fromarray(rgb).resize((shown, shown), Image.BOX)).astype(np.int16)
    inner = (slice(4, -4), slice(4, -4))  # the edges are where rounding of the position shows
    return float(np.abs(got[inner] - reference[: got.shape[0], : got.shape[1]][inner]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8000, help="the after's side, pixels")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--view", default="1600x950", help="the view's size, WxH")
    args = parser.parse_args()
    w, h = (int(v) for v in args.view.lower().split("x"))
    results = run(args.size, (w, h), args.frames)
    assert results["frame_max_ms"] < FRAME_BUDGET_MS, (
        f"a frame took {results['frame_max_ms']:.1f} ms"
    )
    assert results["load_stall_ms"] < FRAME_BUDGET_MS * 2, "the GUI froze while loading"
    return 0


try:
    import pytest
except ImportError:  # pragma: no cover - the script runs without pytest too
    pytest = None

if pytest is not None:

    @pytest.mark.bench
    def test_bench_smoke(qapp) -> None:
        """The benchmark runs end to end on a small picture; frames stay within budget."""
        results = run(1600, (640, 400), 8)
        assert results["frame_max_ms"] < FRAME_BUDGET_MS
        assert results["pyramid_error"] < results["direct_error"]


if __name__ == "__main__":
    sys.exit(main())
