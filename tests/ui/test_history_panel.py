"""The history panel over a real run history: rows, search, filters, actions, live updates."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QElapsedTimer, Qt, QTimer
from PySide6.QtGui import QImage

from app.store.history import HistoryStore, RunRecord
from app.ui.history.model import Column
from app.ui.history.panel import PAGE, HistoryPanel
from app.ui.shared.thumbs import ThumbnailLoader
from pipeline.params import UpscaleParams

T0 = 1_800_000_000.0


def record(
    run_id: str, created: float, state: str, backend: str = "local", **extra: Any
) -> RunRecord:
    params = UpscaleParams().replace(mode="creative", **extra.pop("params", {})).to_dict()
    return RunRecord(
        id=run_id,
        created=created,
        state=state,
        backend=backend,
        input=extra.pop("input", f"/photos/{run_id}.jpg"),
        output=extra.pop("output", f"/out/{run_id}.png"),
        params=params,
        seed=params["seed"],
        **extra,
    )


@pytest.fixture
def runs(tmp_path: Path, photo_file: Path) -> dict[str, Any]:
    store = HistoryStore(tmp_path / "history.sqlite3")
    out_ok = tmp_path / "out" / "ok.png"
    out_ok2 = tmp_path / "out" / "castle.png"
    out_ok.parent.mkdir()
    shutil.copy(photo_file, out_ok)
    shutil.copy(photo_file, out_ok2)
    made = {
        "ok": record(
            "ok",
            T0,
            "succeeded",
            input=str(photo_file),
            output=str(out_ok),
            finished=T0 + 80,
            params={"seed": 4_297_315},
        ),
        "fail": record(
            "fail",
            T0 + 10,
            "failed",
            "segmind",
            model="clarity-upscaler",
            message="Segmind says your credits are insufficient (needs 0.3, have 0.1)",
            error_kind="insufficient_funds",
            finished=T0 + 12,
        ),
        "run": record(
            "run",
            T0 + 20,
            "running",
            "replicate",
            model="philz1337x/clarity-upscaler",
            stage="running at Replicate",
        ),
        "ok2": record(
            "ok2",
            T0 + 30,
            "succeeded",
            "replicate",
            model="philz1337x/clarity-upscaler",
            input=str(photo_file),
            output=str(out_ok2),
            finished=T0 + 95,
            cost=0.05,
            cost_unit="usd",
            params={"seed": 7, "prompt": "a castle on a hill", "creativity": 0.5},
        ),
    }
    for r in made.values():
        store.save(r)
    yield {"store": store, "records": made, "ok_file": out_ok, "ok2_file": out_ok2}
    store.close()


@pytest.fixture
def panel(qtbot: Any, runs: dict[str, Any]) -> HistoryPanel:
    widget = HistoryPanel(runs["store"], ThumbnailLoader())
    qtbot.addWidget(widget)
    widget.resize(1100, 600)
    qtbot.waitUntil(lambda: not widget.loading)
    return widget


def ids(panel: HistoryPanel) -> list[str]:
    return [r.id for r in panel.model.records()]


def cell(panel: HistoryPanel, run_id: str, column: Column) -> str:
    row = panel.model.row_of(run_id)
    assert row is not None
    return panel.model.data(panel.model.index(row, column))


def select(panel: HistoryPanel, *run_ids: str) -> None:
    """Select rows as a person would with Ctrl+click: the first one current."""
    selection = panel.view.selectionModel()
    first = panel.model.row_of(run_ids[0])
    assert first is not None
    selection.setCurrentIndex(panel.model.index(first, 0), selection.SelectionFlag.NoUpdate)
    selection.clearSelection()
    for run_id in run_ids:
        row = panel.model.row_of(run_id)
        assert row is not None
        selection.select(
            panel.model.index(row, 0), selection.SelectionFlag.Select | selection.SelectionFlag.Rows
        )


def set_search(qtbot: Any, panel: HistoryPanel, text: str) -> None:
    with qtbot.waitSignal(panel.refreshed):
        panel.search.setText(text)


def test_rows_show_what_each_run_was(panel: HistoryPanel) -> None:
    assert ids(panel) == ["ok2", "run", "fail", "ok"]  # newest first
    assert cell(panel, "ok", Column.Seed) == "4297315"
    assert cell(panel, "ok", Column.Duration) == "1 min 20 s"
    assert cell(panel, "ok", Column.Backend) == "This computer"
    assert cell(panel, "ok", Column.Settings) == "Creative ×2 · creativity 0.35 · resemblance 0.6"
    assert cell(panel, "ok2", Column.Cost) == "$0.05"
    assert cell(panel, "ok2", Column.Backend) == "Replicate · Clarity upscaler"
    assert cell(panel, "fail", Column.State) == (
        "Failed: Segmind says your credits are insufficient (needs 0.3, have 0.1)"
    )
    assert cell(panel, "run", Column.State) == "Running at Replicate"
    assert cell(panel, "ok", Column.Output).endswith("ok.png")
    assert panel.status.text() == "4 runs"

    select(panel, "fail")
    assert "Top up your Segmind account" in panel.details.text()
    assert "needs 0.3, have 0.1" in panel.details.text()


def test_a_refresh_keeps_the_selection(qtbot: Any, panel: HistoryPanel) -> None:
    select(panel, "fail", "ok")
    with qtbot.waitSignal(panel.refreshed):
        panel.refresh()
    assert [r.id for r in panel.selected_records()] == ["fail", "ok"]
    assert panel.details.text().startswith("fail.jpg — Segmind")


def test_output_thumbnails_arrive(qtbot: Any, panel: HistoryPanel, runs: dict[str, Any]) -> None:
    index = panel.model.index(panel.model.row_of("ok"), Column.Image)
    with qtbot.waitSignal(panel.thumbs.ready) as ready:
        panel.model.data(index, Qt.ItemDataRole.DecorationRole)
    assert ready.args[0] == str(runs["ok_file"])
    image = panel.model.data(index, Qt.ItemDataRole.DecorationRole)
    assert (
        isinstance(image, QImage) and max(image.width(), image.height()) == panel.model.thumb_size
    )


def test_search_and_filters_narrow_the_rows(qtbot: Any, panel: HistoryPanel) -> None:
    set_search(qtbot, panel, "castle")  # the prompt
    assert ids(panel) == ["ok2"]
    set_search(qtbot, panel, "4297315")  # the seed (unlike a temporary path, unique)
    assert ids(panel) == ["ok"]
    set_search(qtbot, panel, "segmind")  # the backend, which the store does not search
    assert ids(panel) == ["fail"]
    set_search(qtbot, panel, "nothing like this")
    assert ids(panel) == []
    assert panel.status.text() == "No runs match “nothing like this”."
    set_search(qtbot, panel, "")
    assert len(ids(panel)) == 4

    with qtbot.waitSignal(panel.refreshed):
        panel.state_filter.setCurrentText("Failed")
    assert ids(panel) == ["fail"]
    with qtbot.waitSignal(panel.refreshed):
        panel.state_filter.setCurrentText("Succeeded")
    assert ids(panel) == ["ok2", "ok"]
    with qtbot.waitSignal(panel.refreshed):
        panel.backend_filter.setCurrentText("Replicate")
    assert ids(panel) == ["ok2"]


def test_actions_emit_the_selected_records(
    qtbot: Any, panel: HistoryPanel, runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    select(panel, "ok")
    assert panel.open_action.isEnabled() and not panel.compare_action.isEnabled()
    with qtbot.waitSignal(panel.open_requested) as opened:
        panel.open_action.trigger()
    assert opened.args[0].id == "ok"

    with qtbot.waitSignal(panel.rerun_requested) as same:
        panel.rerun_same_action.trigger()
    assert (same.args[0].id, same.args[1]) == ("ok", True)
    with qtbot.waitSignal(panel.rerun_requested) as new:
        panel.rerun_new_action.trigger()
    assert (new.args[0].id, new.args[1]) == ("ok", False)
    with qtbot.waitSignal(panel.branch_requested) as branch:
        panel.branch_action.trigger()
    assert branch.args[0].id == "ok" and branch.args[0].params["seed"] == 4_297_315

    copied: list[str] = []
    revealed: list[str] = []
    monkeypatch.setattr(panel, "copy_text", copied.append)
    monkeypatch.setattr(panel, "show_in_file_manager", revealed.append)
    panel.copy_seed_action.trigger()
    panel.reveal_action.trigger()
    assert copied == ["4297315"]
    assert revealed == [str(runs["ok_file"])]

    select(panel, "ok2", "ok")
    assert panel.compare_action.isEnabled() and not panel.open_action.isEnabled()
    with qtbot.waitSignal(panel.compare_requested) as compared:
        panel.compare_action.trigger()
    assert [r.id for r in compared.args] == ["ok", "ok2"]  # older first

    select(panel, "fail")  # no output to open or compare
    assert not panel.open_action.isEnabled()
    with qtbot.assertNotEmitted(panel.open_requested):
        panel.open_action.trigger()


def test_history_keys(qtbot: Any, panel: HistoryPanel) -> None:
    panel.show()
    qtbot.waitExposed(panel)
    select(panel, "ok")
    panel.activateWindow()
    panel.view.setFocus()
    qtbot.waitUntil(panel.view.hasFocus)
    with qtbot.waitSignal(panel.open_requested) as opened:
        qtbot.keyClick(panel.view, Qt.Key.Key_Return)
    assert opened.args[0].id == "ok"
    mods = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    with qtbot.waitSignal(panel.rerun_requested) as rerun:
        qtbot.keyClick(panel.view, Qt.Key.Key_R, mods)
    assert (rerun.args[0].id, rerun.args[1]) == ("ok", True)


def test_delete_keeps_or_removes_the_file_as_asked(
    qtbot: Any, panel: HistoryPanel, runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store: HistoryStore = runs["store"]
    answers = [(False, True), (True, False), (True, True)]
    asked: list[list[str]] = []

    def confirm(records: list[RunRecord]) -> tuple[bool, bool]:
        asked.append([r.id for r in records])
        return answers.pop(0)

    monkeypatch.setattr(panel, "confirm_delete", confirm)
    select(panel, "run")
    assert not panel.delete_action.isEnabled()  # still running: cancel it first

    select(panel, "ok")
    panel.delete_action.trigger()  # the person said no
    assert "ok" in ids(panel) and store.get("ok") is not None

    with qtbot.waitSignal(panel.deleted) as deleted:
        panel.delete_action.trigger()  # the row only
    assert deleted.args == [["ok"]]
    assert "ok" not in ids(panel) and store.get("ok") is None
    assert runs["ok_file"].exists()

    select(panel, "ok2")
    panel.delete_action.trigger()  # the row and its output file
    assert store.get("ok2") is None and not runs["ok2_file"].exists()
    assert asked == [["ok"], ["ok"], ["ok2"]]

    monkeypatch.setattr(panel, "confirm_delete", lambda records: (True, True))
    select(panel, "fail")  # its output was never written: a missing file is fine
    panel.delete_action.trigger()
    assert ids(panel) == ["run"]


def test_upsert_updates_inserts_and_follows_the_filter(
    qtbot: Any, panel: HistoryPanel, runs: dict[str, Any]
) -> None:
    live = runs["records"]["run"]
    live.stage = "queued at Replicate (position 2)"
    live.state = "queued"
    panel.upsert(live)
    assert cell(panel, "run", Column.State) == "Queued at Replicate (position 2)"

    live.state, live.finished, live.stage = "succeeded", T0 + 140, ""
    panel.upsert(live)
    assert cell(panel, "run", Column.State) == "Done"
    assert cell(panel, "run", Column.Duration) == "2 min"

    fresh = record("new", T0 + 50, "uploading", "segmind", model="clarity-upscaler")
    panel.upsert(fresh)
    assert ids(panel)[0] == "new"
    assert cell(panel, "new", Column.State) == "Uploading to Segmind"

    with qtbot.waitSignal(panel.refreshed):
        panel.state_filter.setCurrentText("In progress")
    assert ids(panel) == ["new"]  # live, though the store never saw it
    fresh.state = "failed"
    panel.upsert(fresh)
    assert ids(panel) == []


def test_two_thousand_runs_load_without_blocking(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(tmp_path / "big.sqlite3")
    base = record("x", T0, "succeeded")
    for i in range(2000):
        base.id, base.created, base.output = f"run{i:04d}", T0 + i, f"/out/{i}.png"
        store.save(base)

    gaps: list[int] = []
    clock = QElapsedTimer()
    clock.start()
    probe = QTimer()
    probe.setInterval(5)

    def tick() -> None:
        gaps.append(clock.restart())

    probe.timeout.connect(tick)
    probe.start()
    started = time.perf_counter()
    widget = HistoryPanel(store, ThumbnailLoader())
    created = time.perf_counter() - started
    qtbot.addWidget(widget)
    widget.resize(900, 500)
    widget.show()
    qtbot.waitUntil(lambda: widget.model.rowCount() == PAGE, timeout=10000)
    while widget.model.canFetchMore():
        with qtbot.waitSignal(widget.refreshed, timeout=10000):
            widget.view.scrollToBottom()
            widget.model.fetchMore()
    probe.stop()
    assert widget.model.rowCount() == 2000
    assert widget.model.record(0).id == "run1999"
    assert widget.status.text() == "2,000 runs"
    assert created < 0.25  # building the panel does not wait for the query
    assert max(gaps[1:]) < 100, gaps  # the event loop kept turning while the pages loaded
    store.close()


def test_reveal_commands_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ui.shared import desktop

    path = Path("/pics/a,b/c d.png")
    assert desktop.reveal_command(path, "darwin") == ["open", "-R", str(path)]
    assert desktop.reveal_command(path, "win32")[1].startswith("/select,")
    monkeypatch.setattr(desktop.shutil, "which", lambda name: "/usr/bin/dbus-send")
    command = desktop.reveal_command(path, "linux")
    assert command is not None and "org.freedesktop.FileManager1.ShowItems" in command
    assert "array:string:file:///pics/a%2Cb/c%20d.png" in command  # a comma would split it
    monkeypatch.setattr(desktop.shutil, "which", lambda name: None)
    assert desktop.reveal_command(path, "linux") is None  # then the folder is opened
