"""The queue panel: job events in, plain words, counts, times and request signals out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette

from app.backends.base import ErrorKind, JobError, JobState
from app.jobs import Job, JobEvent
from app.ui.queue.model import QueueRole
from app.ui.queue.panel import QueuePanel
from app.ui.shared import messages
from app.ui.shared.thumbs import ThumbnailLoader
from pipeline.params import UpscaleParams


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def panel(qtbot: Any, clock: FakeClock) -> QueuePanel:
    widget = QueuePanel(ThumbnailLoader(), clock=clock)
    qtbot.addWidget(widget)
    widget.resize(560, 480)
    return widget


def make_job(photo: Path, tmp_path: Path, job_id: str = "job1", backend: str = "local") -> Job:
    return Job(
        id=job_id,
        input=photo,
        output=tmp_path / f"{job_id}.png",
        params=UpscaleParams(),
        backend=backend,
        model="" if backend == "local" else "clarity-upscaler",
    )


def send(panel: QueuePanel, job: Job, preview: bytes | None = None, **changes: Any) -> None:
    """Change the job as the controller would, then deliver the event it would emit."""
    for name, value in changes.items():
        setattr(job, name, value)
    panel.on_event(
        JobEvent(
            job=job,
            state=job.state,
            stage=job.stage,
            done=job.done,
            total=job.total,
            message=job.message,
            preview_png=preview,
        )
    )


def role(panel: QueuePanel, job: Job, which: QueueRole) -> Any:
    row = panel.model.row_of(job.id)
    assert row is not None
    return panel.model.data(panel.model.index(row), which)


# --- messages: the pure rules -----------------------------------------------------------------
def test_eta_and_duration_words() -> None:
    assert messages.eta_text(80) == "about 1 min 20 s left"
    assert messages.eta_text(23) == "about 25 s left"
    assert messages.eta_text(2) == "almost done"
    assert messages.eta_text(3 * 3600 + 600) == "about 3 h 10 min left"
    assert messages.eta_text(None) == ""
    assert messages.duration_text(65) == "1 min 05 s"
    assert messages.duration_text(7260) == "2 h 01 min"
    assert messages.estimate_remaining(10.0, 0.25, 0.75) == pytest.approx(5.0)
    assert messages.estimate_remaining(1.0, 0.0, 0.5) is None  # too early to trust a rate
    assert messages.estimate_remaining(10.0, 0.5, 0.5) is None  # no progress since the start


def test_error_hints_by_kind() -> None:
    assert messages.error_hint(ErrorKind.auth) == "Add your key in Settings."
    assert "Segmind" in messages.error_hint("insufficient_funds", backend="segmind")
    at = time.mktime((2030, 1, 1, 14, 5, 0, 0, 0, -1))
    assert messages.error_hint(ErrorKind.rate_limited, retry_at=at) == "Will retry at 14:05."
    assert messages.error_hint(None) == ""
    assert messages.retry_delay("Segmind is rate-limiting requests (slow); retrying in 30 s") == 30


def test_cost_and_params_words() -> None:
    assert messages.cost_text(0.3, "credits") == "0.3 credits"
    assert messages.cost_text(1.5, "usd") == "$1.50"
    assert messages.cost_text(None) == ""
    creative = UpscaleParams().replace(mode="creative", creativity=0.4).to_dict()
    assert messages.params_text(creative) == "Creative ×2 · creativity 0.4 · resemblance 0.6"
    assert messages.params_text(UpscaleParams().to_dict()) == "Faithful ×2"
    assert messages.params_text(creative, "replicate") == "×2 · creativity 0.4 · resemblance 0.6"


# --- the panel --------------------------------------------------------------------------------
def test_local_job_stages_tiles_steps_and_eta(
    panel: QueuePanel, photo_file: Path, tmp_path: Path, clock: FakeClock
) -> None:
    job = make_job(photo_file, tmp_path)
    send(panel, job)
    assert panel.job_ids() == ["job1"]
    assert role(panel, job, QueueRole.StateText) == "Waiting"
    assert role(panel, job, QueueRole.BackendText) == "This computer"
    panel.select_job("job1")

    send(panel, job, state=JobState.running, message="cuda:0", started=time.monotonic() - 5)
    assert role(panel, job, QueueRole.StateText) == "Running on this computer"

    send(panel, job, stage="models", done=0, total=1, message="loading Stable Diffusion")
    assert role(panel, job, QueueRole.ProgressText) == "Loading Stable Diffusion"

    # Tiles of the pre-upscale: no estimate from the engine, so one from the rate.
    send(panel, job, stage="pre-upscale", done=2, total=8, message="pass 1/2")
    assert role(panel, job, QueueRole.ProgressText) == "Pre-upscale · pass 1/2 · tile 2/8"
    assert role(panel, job, QueueRole.Remaining) is None
    clock.now += 10
    send(panel, job, done=6)
    assert role(panel, job, QueueRole.Fraction) == pytest.approx(0.75)
    assert role(panel, job, QueueRole.Remaining) == pytest.approx(5.0)
    assert "about 5 s left" in role(panel, job, QueueRole.TimeText)
    assert panel.progress_bar.value() == 750 and not panel.progress_bar.isHidden()
    assert panel.progress_label.text() == "Pre-upscale · pass 1/2 · tile 6/8"

    # The diffusion: the engine's own estimate wins and counts down between events.
    send(
        panel,
        job,
        stage="diffusion",
        done=12,
        total=18,
        message="pass 1/2 · step 13/18 · tiles 3/8",
        eta_s=80.0,
    )
    progress = "Diffusion · pass 1/2 · tile 3/8 · step 13/18"
    assert role(panel, job, QueueRole.ProgressText) == progress
    assert panel.progress_label.text() == progress
    assert panel.progress_bar.value() == round(1000 * 12 / 18)
    assert panel.state_label.text() == "Running on this computer"
    time_text = panel.time_label.text()
    assert time_text.startswith("5 s") and time_text.endswith("about 1 min 20 s left")
    clock.now += 30
    assert role(panel, job, QueueRole.Remaining) == pytest.approx(50.0)

    send(panel, job, state=JobState.succeeded, message="done", finished=time.monotonic())
    assert role(panel, job, QueueRole.StateText) == "Done"
    assert role(panel, job, QueueRole.TimeText).startswith("took ")
    assert panel.progress_bar.isHidden()  # nothing left to measure


def test_remote_job_states_name_the_provider(
    panel: QueuePanel, photo_file: Path, tmp_path: Path
) -> None:
    job = make_job(photo_file, tmp_path, "seg", backend="segmind")
    send(panel, job)
    assert role(panel, job, QueueRole.StateText) == "Waiting to send to Segmind"
    assert role(panel, job, QueueRole.BackendText) == "Segmind · Clarity upscaler"
    send(panel, job, state=JobState.uploading, stage="sending to Segmind")
    assert role(panel, job, QueueRole.StateText) == "Uploading to Segmind"
    send(panel, job, state=JobState.submitting, stage="submitting to Segmind")
    assert role(panel, job, QueueRole.StateText) == "Submitting to Segmind"
    send(panel, job, state=JobState.queued, stage="queued at Segmind", message="queued at Segmind")
    assert role(panel, job, QueueRole.StateText) == "Queued at Segmind"
    assert role(panel, job, QueueRole.ProgressText) == ""
    send(panel, job, stage="queued at Segmind (position 3)")
    assert role(panel, job, QueueRole.StateText) == "Queued at Segmind (position 3)"
    send(panel, job, state=JobState.downloading, stage="downloading")
    assert role(panel, job, QueueRole.StateText) == "Downloading result"

    rep = make_job(photo_file, tmp_path, "rep", backend="replicate")
    rep.model = "philz1337x/clarity-upscaler"
    send(panel, rep, state=JobState.running, stage="running at Replicate", done=45, total=100)
    assert role(panel, rep, QueueRole.StateText) == "Running at Replicate"
    assert role(panel, rep, QueueRole.ProgressText) == "45%"
    send(panel, rep, state=JobState.lost, message="Replicate no longer has this job")
    assert role(panel, rep, QueueRole.StateText) == "Lost: Replicate no longer has the result"


def test_rate_limited_retry_says_when(panel: QueuePanel, photo_file: Path, tmp_path: Path) -> None:
    job = make_job(photo_file, tmp_path, "rl", backend="segmind")
    before = time.time()
    send(
        panel,
        job,
        state=JobState.queued,
        message="Segmind is rate-limiting requests (slow down); retrying in 120 s",
    )
    assert role(panel, job, QueueRole.StateText) == "Waiting to retry"
    expected = {
        time.strftime("%H:%M", time.localtime(before + 120)),
        time.strftime("%H:%M", time.localtime(time.time() + 120)),
    }
    assert role(panel, job, QueueRole.HintText) in {f"Will retry at {t}." for t in expected}


def test_failed_provider_error_is_shown_in_full(
    panel: QueuePanel, photo_file: Path, tmp_path: Path
) -> None:
    text = "Segmind says your credits are insufficient (needs 0.3, have 0.1)"
    job = make_job(photo_file, tmp_path, "poor", backend="segmind")
    send(panel, job)
    panel.select_job("poor")
    error = JobError(ErrorKind.insufficient_funds, text)
    send(panel, job, state=JobState.failed, error=error, message=error.message)
    assert role(panel, job, QueueRole.StateText) == "Failed"
    assert role(panel, job, QueueRole.ErrorText) == text
    assert panel.error_label.text() == text
    assert panel.error_label.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert panel.hint_label.text() == "Top up your Segmind account, then press Retry."
    assert panel.retry_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_buttons_emit_and_follow_states(
    qtbot: Any, panel: QueuePanel, photo_file: Path, tmp_path: Path
) -> None:
    running = make_job(photo_file, tmp_path, "run")
    send(panel, running, state=JobState.running)
    unknown = make_job(photo_file, tmp_path, "unk", backend="segmind")
    error = JobError(ErrorKind.submit_unknown, "Segmind did not answer the submit")
    send(panel, unknown, state=JobState.submit_unknown, error=error, message=error.message)
    panel.show()

    panel.select_job("run")
    assert panel.cancel_button.isEnabled()
    assert not panel.retry_button.isEnabled()
    assert not panel.send_again_button.isVisible()
    with qtbot.waitSignal(panel.cancel_requested) as cancel:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert cancel.args == ["run"]

    panel.select_job("unk")
    assert panel.send_again_button.isVisible() and panel.went_through_button.isEnabled()
    assert panel.state_label.text() == "Submission unconfirmed — check before sending again"
    assert "It went through" in panel.hint_label.text()
    with qtbot.waitSignal(panel.resolve_requested) as again:
        qtbot.mouseClick(panel.send_again_button, Qt.MouseButton.LeftButton)
    assert again.args == ["unk", True]
    with qtbot.waitSignal(panel.resolve_requested) as through:
        qtbot.mouseClick(panel.went_through_button, Qt.MouseButton.LeftButton)
    assert through.args == ["unk", False]

    send(panel, running, state=JobState.canceled, message="canceled")
    panel.select_job("run")
    assert panel.retry_button.isEnabled() and not panel.cancel_button.isEnabled()
    with qtbot.waitSignal(panel.retry_requested) as retry:
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    assert retry.args == ["run"]

    # Panel-scoped keys: R retries, Delete cancels (nothing to cancel now: no signal).
    panel.activateWindow()
    panel.view.setFocus()
    qtbot.waitUntil(panel.view.hasFocus)
    with qtbot.waitSignal(panel.retry_requested) as keyed:
        qtbot.keyClick(panel.view, Qt.Key.Key_R)
    assert keyed.args == ["run"]
    with qtbot.assertNotEmitted(panel.cancel_requested):
        qtbot.keyClick(panel.view, Qt.Key.Key_Delete)


def test_remote_cancel_warns_when_the_provider_cannot_cancel(
    panel: QueuePanel, photo_file: Path, tmp_path: Path
) -> None:
    job = make_job(photo_file, tmp_path, "seg", backend="segmind")
    send(panel, job, state=JobState.running, stage="running at Segmind")
    panel.select_job("seg")
    assert "Segmind cannot cancel" in panel.cancel_action.toolTip()
    stopped = "Stopped watching. Segmind has no way to cancel a job, so it may still bill."
    send(panel, job, state=JobState.canceled, message=stopped)
    assert panel.error_label.text() == stopped


def test_preview_selection_open_and_clear(
    qtbot: Any, panel: QueuePanel, photo_file: Path, tmp_path: Path
) -> None:
    first = make_job(photo_file, tmp_path, "a")
    second = make_job(photo_file, tmp_path, "b")
    send(panel, first, state=JobState.running)
    with qtbot.waitSignal(panel.preview) as shown:
        send(panel, first, stage="diffusion", done=1, total=18, preview=b"\x89PNG-one")
    assert shown.args == ["a", b"\x89PNG-one"]
    send(panel, second)

    with qtbot.waitSignal(panel.selected) as picked:
        panel.select_job("b")
    assert picked.args == ["b"]
    with qtbot.waitSignal(panel.preview) as again:  # back to a: its latest canvas again
        panel.select_job("a")
    assert again.args == ["a", b"\x89PNG-one"]

    send(panel, first, state=JobState.succeeded, finished=time.monotonic())
    assert panel.model.preview_of("a") is None
    panel.show()
    rect = panel.view.visualRect(panel.model.index(0))
    with qtbot.waitSignal(panel.open_requested) as opened:  # press, release, double-click
        qtbot.mouseClick(panel.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        qtbot.mouseDClick(panel.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert opened.args == ["a"]

    assert panel.clear_button.isEnabled()
    with qtbot.waitSignal(panel.cleared) as cleared:
        qtbot.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert cleared.args == [["a"]]
    assert panel.job_ids() == ["b"]
    assert not panel.clear_button.isEnabled()


def test_rows_paint_the_thumbnail_and_a_progress_bar(
    qtbot: Any, panel: QueuePanel, photo_file: Path, tmp_path: Path
) -> None:
    job = make_job(photo_file, tmp_path)
    send(panel, job, state=JobState.running, stage="pre-upscale", done=5, total=10)
    with qtbot.waitSignal(panel.thumbs.ready, timeout=5000):  # asked for when first painted
        panel.show()
        qtbot.waitExposed(panel)
    qtbot.waitUntil(lambda: panel.thumbs.cached_count == 1)
    image = panel.view.viewport().grab().toImage()
    rect = panel.view.visualRect(panel.model.index(0))
    base = panel.view.palette().color(QPalette.ColorRole.Base)
    centre = image.pixelColor(rect.left() + 6 + 24, rect.center().y())
    assert _distance(centre, base) > 30  # the photo, not the empty row
    # Across the bar's row the painted colours change where the filled part ends.
    y = rect.bottom() - 6 - panel.fontMetrics().height() // 2
    row = {image.pixelColor(x, y).rgb() for x in range(rect.left() + 70, rect.right() - 80)}
    assert len(row) > 2
    assert not panel.empty_label.isVisible()


def _distance(a: QColor, b: QColor) -> int:
    return abs(a.red() - b.red()) + abs(a.green() - b.green()) + abs(a.blue() - b.blue())
