"""The main window's flows, offscreen: inputs in, parameters and presets, jobs through the same
controller as the CLI (a real local worker, a quick stand-in backend, the Segmind double), the
queue, the history and the compare view."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QGuiApplication, QImage

from app.backends.base import Backend, BackendEvent, JobState, Outcome, Request
from app.jobs.controller import StaticPool
from app.jobs.providers import ProviderPool
from app.store.history import HistoryStore
from app.store.settings import Settings
from app.ui.app import make_loop
from app.ui.window.main_window import MainWindow
from app.ui.window.session import Session
from app.ui.window.state import WindowState, load_window_state
from pipeline.params import UpscaleParams
from tests.doubles.segmind import KEY, SegmindDouble


class QuickBackend(Backend):
    """Stands in for the local engine where the engine itself is not under test: reports a tile
    count and a preview like the engine, writes a real (resized) image, or waits to be
    cancelled."""

    name = "local"
    concurrency = 1

    def __init__(self) -> None:
        self.go = asyncio.Event()  # cleared: a job waits (to be cancelled) before finishing
        self.go.set()
        self.requests: list[Request] = []

    async def run(self, request: Request, report: Callable[[BackendEvent], None]) -> Outcome:
        self.requests.append(request)
        report(BackendEvent(state=JobState.running, stage="pre-upscale", done=0, total=2))
        with Image.open(request.input) as im:
            w, h = request.params.output_size(*im.size)
            out = im.convert("RGB").resize((w, h))
        preview = io.BytesIO()
        out.resize((16, 16)).save(preview, "PNG")
        report(BackendEvent(stage="pre-upscale", done=1, total=2, preview_png=preview.getvalue()))
        await self.go.wait()
        out.save(request.output)
        report(BackendEvent(stage="pre-upscale", done=2, total=2))
        info = {"params": request.params.to_dict(), "seed": request.params.seed}
        return Outcome(output=request.output, info=info, timings={"total": 0.1})


@pytest.fixture(scope="module")
def loop(qapp) -> Iterator[asyncio.AbstractEventLoop]:
    """One asyncio loop on Qt's for the module: the window's jobs run on it, as in the app."""
    loop = make_loop(qapp)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def run(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 60) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def emit(loop: asyncio.AbstractEventLoop, signal: Any, *args: Any) -> None:
    """Emit a panel's signal from inside the event loop, as a click in the running app does."""

    async def go() -> None:
        signal.emit(*args)

    run(loop, go())


async def until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}")


@pytest.fixture
def make_window(qtbot, loop, tmp_path: Path) -> Iterator[Callable[..., MainWindow]]:
    made: list[MainWindow] = []

    def make(
        pool_factory: Callable[[Settings], Any] | None = None,
        *,
        start: bool = True,
        **settings: Any,
    ) -> MainWindow:
        settings.setdefault("output_dir", str(tmp_path / "out"))
        session = Session(
            Settings(**settings),
            history=HistoryStore(tmp_path / f"history-{len(made)}.sqlite3"),
            pool_factory=pool_factory,
            probe_device=False,
        )
        window = MainWindow(session, state=WindowState(), confirm_quit=False)
        qtbot.addWidget(window)
        window.show()
        if start:
            window.start()
        made.append(window)
        return window

    yield make
    for window in made:
        with contextlib.suppress(Exception):
            run(loop, window.session.shutdown(), timeout=30)


def quick_pool(backend: QuickBackend) -> Callable[[Settings], Any]:
    return lambda _settings: StaticPool({"local": backend})


def drop(window: MainWindow, mime: QMimeData) -> None:
    event = QDropEvent(
        QPointF(400, 300),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)


def test_dropped_files_and_folders_become_inputs(loop, make_window, tmp_path, photo_file) -> None:
    window = make_window(quick_pool(QuickBackend()))
    folder = tmp_path / "album"
    (folder / "inner").mkdir(parents=True)
    Image.open(photo_file).save(folder / "a.jpg")
    Image.open(photo_file).save(folder / "inner" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "letter.txt").write_text("not an image")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo_file)), QUrl.fromLocalFile(str(folder))])
    assert window.intake.accepts(mime)
    drop(window, mime)
    run(loop, until(lambda: window.inputs.count() == 3, what="three inputs"))
    assert [p.name for p in window.inputs.paths()] == ["astronaut.png", "a.jpg", "b.png"]
    assert window.run_button.isEnabled() and window.run_button.text() == "Upscale 3 images"
    # Dropping the same photo again adds nothing; a text file is refused, saying why.
    mime = QMimeData()
    mime.setUrls(
        [QUrl.fromLocalFile(str(photo_file)), QUrl.fromLocalFile(str(tmp_path / "letter.txt"))]
    )
    drop(window, mime)
    run(loop, until(lambda: "letter.txt is not an image" in window.status.message.text()))
    assert window.inputs.count() == 3
    # The strip shows thumbnails, and the compare view the selected input.
    run(loop, until(lambda: not window.compare.is_loading() and window.compare.has_before()))


def test_paste_takes_image_data_and_paths(loop, make_window, photo_file) -> None:
    window = make_window(quick_pool(QuickBackend()))
    image = QImage(str(photo_file))
    QGuiApplication.clipboard().setImage(image)
    window.window_actions.paste()
    path = run(loop, until(lambda: window.inputs.paths(), what="the pasted image"))[0]
    assert path.name.startswith("pasted-") and Image.open(path).size == (96, 96)
    QGuiApplication.clipboard().setText(str(photo_file))
    window.window_actions.paste()
    run(loop, until(lambda: window.inputs.count() == 2, what="the pasted path"))
    QGuiApplication.clipboard().setText("just some words")
    window.window_actions.paste()
    assert "clipboard holds no image" in window.status.message.text()


def test_presets_set_the_parameters_and_the_run_uses_them(
    loop, make_window, photo_file, monkeypatch
) -> None:
    backend = QuickBackend()
    window = make_window(quick_pool(backend))
    window.params.set_params(UpscaleParams(scale_factor=3, output_format="webp"))
    monkeypatch.setattr(window.presets, "_ask_name", lambda *a, **k: "Big webp")
    window.presets.save_current()
    window.params.set_params(UpscaleParams())
    assert window.params.params().scale_factor == 2
    window.presets.select("Big webp")
    window.presets.apply_selected()
    assert window.params.params().scale_factor == 3
    window.intake.take_texts([str(photo_file)])
    run(loop, until(lambda: window.inputs.count() == 1))
    assert "96×96 → <b>288×288</b>" in window.run_info.text()
    window.upscale()
    window.upscale()  # a double click starts one batch, not two
    job = run(loop, until(lambda: next(iter(window.session.controller.jobs.values()), None)))
    run(loop, until(lambda: job.state == JobState.succeeded, what="the job"))
    assert backend.requests[0].params.scale_factor == 3
    assert len(window.session.controller.jobs) == 1 and window.run_button.isEnabled()
    assert job.outcome.output.suffix == ".webp" and Image.open(job.outcome.output).size == (
        288,
        288,
    )


def test_a_faithful_job_on_the_real_engine_lands_in_history_and_reruns_with_its_seed(
    loop, make_window, tmp_path, photo_file
) -> None:
    small = tmp_path / "small.png"
    Image.open(photo_file).resize((32, 32)).save(small)
    window = make_window()  # the real ProviderPool: the local worker process
    window.params.set_params(UpscaleParams(mode="faithful", scale_factor=2))
    window.params.set_seed_locked(False)
    window.intake.take_texts([str(small)])
    run(loop, until(lambda: window.inputs.count() == 1))
    previews: list[bytes] = []
    window.queue.preview.connect(lambda _id, data: previews.append(data))
    window.upscale()
    controller = window.session.controller
    job = run(loop, until(lambda: next(iter(controller.jobs.values()), None)))
    run(loop, until(lambda: job.state.terminal, timeout=180, what="the engine"), timeout=200)
    assert job.state == JobState.succeeded, job.message
    out = job.outcome.output
    assert out.parent == tmp_path / "out" and Image.open(out).size == (64, 64)
    assert f"Seed: {job.params.seed}" in Image.open(out).info["parameters"]
    run(loop, until(lambda: window.compare.has_after() and not window.compare.is_loading()))
    assert window.compare.labels()[1] == f"Output · seed {job.params.seed}"
    # The history panel has the run with its seed; re-run it with the same seed.
    run(loop, until(lambda: window.history.select_run(job.id), what="the history row"))
    record = window.history.selected_records()[0]
    assert record.seed == job.params.seed and record.state == "succeeded"
    emit(loop, window.history.rerun_requested, record, True)
    second = run(loop, until(lambda: [j for j in controller.jobs.values() if j.id != job.id]))[0]
    run(loop, until(lambda: second.state.terminal, timeout=120), timeout=150)
    assert second.state == JobState.succeeded and second.params.seed == job.params.seed
    assert second.outcome.output != out  # never overwrites the first run
    # Compare the two runs against each other.
    records = [window.session.history.get(job.id), window.session.history.get(second.id)]
    emit(loop, window.history.compare_requested, *records)
    assert window.compare.labels() == (
        f"A · Output · seed {job.params.seed}",
        f"B · Output · seed {job.params.seed}",
    )
    run(loop, until(lambda: window.compare.can_compare() and not window.compare.is_loading()))


def test_queue_shows_progress_and_preview_and_cancel_stops_the_job(
    loop, make_window, photo_file
) -> None:
    backend = QuickBackend()
    backend.go.clear()
    window = make_window(quick_pool(backend))
    window.intake.take_texts([str(photo_file)])
    run(loop, until(lambda: window.inputs.count() == 1))
    shown: list[bytes] = []
    real = window.compare.set_preview
    window.compare.set_preview = lambda data, *a, **k: (shown.append(data), real(data, *a, **k))
    window.upscale()
    job = run(loop, until(lambda: next(iter(window.session.controller.jobs.values()), None)))
    run(loop, until(lambda: job.done == 1 and shown, what="progress and a preview"))
    assert window.queue.job_ids() == [job.id]
    emit(loop, window.queue.cancel_requested, job.id)
    run(loop, until(lambda: job.state == JobState.canceled, what="the cancel"))
    backend.go.set()
    emit(loop, window.queue.retry_requested, job.id)
    run(loop, until(lambda: job.state == JobState.succeeded, what="the retry"))


def test_a_provider_error_is_shown_in_plain_words(loop, make_window, photo_file) -> None:
    with SegmindDouble(balance=0.1) as double:
        env = {"SEGMIND_API_KEY": KEY, "CLARIFIER_SEGMIND_BASE_URL": double.url}
        window = make_window(lambda s: ProviderPool(s, env=env))
        window.params.set_backend("segmind", "clarityai-creative-upscaler")

        async def scenario() -> Any:
            window.intake.take_texts([str(photo_file)])
            await until(lambda: window.inputs.count() == 1)
            window.upscale()
            job = await until(lambda: next(iter(window.session.controller.jobs.values()), None))
            await until(lambda: job.state.terminal, what="the provider's answer")
            return job

        job = run(loop, scenario())
    assert job.state == JobState.failed
    assert "Segmind says your credits are insufficient (needs 0.3, have 0.1)" in job.message
    window.queue.select_job(job.id)
    texts = " ".join(w.text() for w in window.queue.findChildren(type(window.status.message)))
    assert "needs 0.3, have 0.1" in texts


def test_a_provider_without_a_key_is_explained_before_anything_is_sent(
    loop, make_window, photo_file
) -> None:
    window = make_window(lambda s: ProviderPool(s, env={}))
    window.params.set_backend("replicate", "")
    window.intake.take_texts([str(photo_file)])
    run(loop, until(lambda: window.inputs.count() == 1))
    asked: list[tuple[str, str]] = []
    window.ask_problem = lambda problem, backend: asked.append((problem, backend))
    window.upscale()
    run(loop, until(lambda: asked, what="the explanation"))
    assert "No API key for Replicate" in asked[0][0] and asked[0][1] == "replicate"
    assert not window.session.controller.jobs


def test_layout_and_last_parameters_persist(loop, make_window) -> None:
    window = make_window(quick_pool(QuickBackend()))
    window.params.set_backend("segmind", "clarity-upscaler")
    window.params.set_params(UpscaleParams(scale_factor=4, creativity=0.5, mode="creative"))
    window.compare.set_mode("side")
    window.remember()
    state = load_window_state()
    assert state.backend == "segmind" and state.compare_mode == "side"
    again = MainWindow(window.session, state=state, confirm_quit=False)
    assert again.params.params().scale_factor == 4 and again.params.params().creativity == 0.5
    assert again.params.backend() == ("segmind", "clarity-upscaler")
    assert again.compare.mode() == "side"
    assert again.windowTitle().startswith("Clarifier")
    again.deleteLater()


def test_every_menu_action_has_a_shortcut_or_a_reason_and_controls_have_names(make_window) -> None:
    window = make_window(quick_pool(QuickBackend()))
    actions = window.window_actions.all
    keys = [a.shortcut().toString() for a in actions if not a.shortcut().isEmpty()]
    assert len(keys) == len(set(keys)), "two actions share a shortcut"
    for text in ("Ctrl+O", "Ctrl+V", "Ctrl+Return", "Ctrl+,", "Ctrl+Shift+M", "Ctrl+Q"):
        assert text in keys, text
    from PySide6.QtWidgets import QAbstractButton, QComboBox, QLineEdit

    unnamed = [
        w
        for kind in (QAbstractButton, QComboBox, QLineEdit)
        for w in window.findChildren(kind)
        if w.isVisibleTo(window)
        and not w.objectName().startswith("qt_")  # Qt's own, such as a toolbar's overflow arrow
        and not (w.accessibleName() or getattr(w, "text", lambda: "")())
    ]
    assert not unnamed, [type(w).__name__ + ":" + w.objectName() for w in unnamed]


def test_a_dropped_image_link_is_downloaded_and_a_dead_one_explained(
    loop, make_window, photo_file
) -> None:
    from tests.doubles.http_double import LoopbackDouble

    window = make_window(quick_pool(QuickBackend()))
    with LoopbackDouble() as site:
        url = site.cdn_put(photo_file.read_bytes(), name="space walk.png")

        async def scenario() -> None:
            mime = QMimeData()
            mime.setUrls([QUrl(url)])
            drop(window, mime)
            await until(lambda: window.inputs.count() == 1, what="the downloaded image")
            mime = QMimeData()
            mime.setUrls([QUrl(site.url + "/cdn/nothing-here/x.png")])
            drop(window, mime)
            await until(lambda: "answered 404" in window.status.message.text(), what="the error")

        run(loop, scenario())
    path = window.inputs.paths()[0]
    assert path.read_bytes() == photo_file.read_bytes() and path.suffix == ".png"
    # With no output folder set, a downloaded input's output goes to Pictures/Clarifier, not
    # into Clarifier's own inbox.
    window.session.settings = dataclasses.replace(window.session.settings, output_dir="")
    assert window.session.output_folder(path).name == "Clarifier"
    assert window.inputs.count() == 1


def test_a_damaged_window_state_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "window.json"
    path.write_text("{not json")
    state = load_window_state(path)
    assert state == WindowState() and (tmp_path / "window.json.bad").exists()
    path.write_text('{"params": {"scale_factor": 99}, "theme": "dark", "unknown": 1}')
    state = load_window_state(path)
    assert state.theme == "dark" and state.restored_params() == UpscaleParams()


def test_jobs_left_unfinished_by_the_last_session_resume_in_queue_and_history(
    loop, make_window, tmp_path, photo_file
) -> None:
    from app.store.history import RunRecord

    store = HistoryStore(tmp_path / "history-0.sqlite3")  # the one make_window opens first
    params = UpscaleParams(seed=99)
    store.save(
        RunRecord(
            id="left-running",
            created=1.0,
            state="running",
            backend="local",
            input=str(photo_file),
            output=str(tmp_path / "out" / "resumed.png"),
            params=params.to_dict(),
            seed=99,
        )
    )
    store.close()
    (tmp_path / "out").mkdir()
    window = make_window(quick_pool(QuickBackend()), start=False)

    async def scenario() -> Any:
        window.start()
        job = window.session.job("left-running")
        await until(lambda: job.state == JobState.succeeded, what="the resumed job")
        await until(lambda: window.history.select_run("left-running"), what="its history row")
        return job

    job = run(loop, scenario())
    assert window.queue.job_ids() == ["left-running"]
    assert window.history.selected_records()[0].state == "succeeded"
    assert job.outcome.output == tmp_path / "out" / "resumed.png" and job.params.seed == 99
    assert job.outcome.output.exists()


def test_a_damaged_history_is_set_aside_and_the_window_still_opens(qtbot, tmp_path) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    session = Session(Settings(), history_file=path, probe_device=False)
    window = MainWindow(session, state=WindowState(), confirm_quit=False)
    qtbot.addWidget(window)
    aside = list(tmp_path.glob("history.sqlite3.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert "set aside as history.sqlite3.damaged-" in session.problems[0]
    assert session.history.list() == []  # a fresh, working history
    session.history.close()
