"""The presets bar: apply, save, rename, delete, import and export, over a real PresetStore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app.store.presets import PresetStore
from app.ui.params.presets_bar import PresetsBar
from pipeline.errors import FieldError, ParamsError
from pipeline.params import SD_MODELS, UpscaleParams
from tests.conftest import ROOT

BUILTINS = ["Clarity default", "Faithful", "Portrait", "Anime", "Subtle", "Max detail"]


class Answers:
    """Stands in for the dialogs: queued answers, and what was asked or shown."""

    def __init__(self, bar: PresetsBar) -> None:
        self.names: list[str | None] = []
        self.confirms: list[bool] = []
        self.open_path: str | None = None
        self.save_path: str | None = None
        self.errors: list[tuple[str, str]] = []
        self.questions: list[str] = []
        bar._ask_name = lambda title, prompt, text="": self.names.pop(0)
        bar._ask_open_path = lambda title: self.open_path
        bar._ask_save_path = lambda title, suggestion: self.save_path
        bar._confirm = self._confirm
        bar._show_error = lambda title, message: self.errors.append((title, message))

    def _confirm(self, title: str, question: str) -> bool:
        self.questions.append(question)
        return self.confirms.pop(0)


@pytest.fixture
def current() -> dict[str, UpscaleParams]:
    return {"params": UpscaleParams(scale_factor=3, seed=99, creativity=0.45)}


@pytest.fixture
def bar(qtbot, tmp_path: Path, current: dict[str, UpscaleParams]) -> PresetsBar:
    store = PresetStore(builtin_dir=ROOT / "resources" / "presets", user_dir=tmp_path / "presets")
    widget = PresetsBar(store, lambda: current["params"])
    qtbot.addWidget(widget)
    return widget


@pytest.fixture
def answers(bar: PresetsBar) -> Answers:
    return Answers(bar)


def names(bar: PresetsBar) -> list[str]:
    return [p.name for p in bar.presets()]


def test_builtins_are_listed_read_only(bar: PresetsBar) -> None:
    assert names(bar) == BUILTINS
    bar.select("Portrait")
    index = bar.combo.currentIndex()
    assert not bar.combo.itemIcon(index).isNull()  # the padlock
    assert "built-in" in bar.combo.itemData(index, Qt.ItemDataRole.AccessibleTextRole)
    assert "read-only" in bar.combo.itemData(index, Qt.ItemDataRole.ToolTipRole)
    assert not bar.rename_action.isEnabled() and not bar.delete_action.isEnabled()
    assert bar.export_action.isEnabled() and bar.apply_button.isEnabled()


def test_apply_builtin_lays_it_over_the_current_params(qtbot, bar: PresetsBar) -> None:
    bar.select("Portrait")
    with qtbot.waitSignal(bar.apply_requested) as blocker:
        qtbot.mouseClick(bar.apply_button, Qt.MouseButton.LeftButton)
    params = blocker.args[0]
    assert isinstance(params, UpscaleParams)
    assert params.sd_model == SD_MODELS[0] and params.creativity == 0.3
    assert params.mode == "creative"
    assert params.scale_factor == 3 and params.seed == 99  # not in the preset: kept


def test_save_rename_delete_a_user_preset(
    qtbot, bar: PresetsBar, answers: Answers, current: dict[str, UpscaleParams], tmp_path: Path
) -> None:
    answers.names.append("My look")
    bar.save_current()
    assert names(bar) == [*BUILTINS, "My look"]
    assert bar.selected_name() == "My look"
    assert bar.rename_action.isEnabled() and bar.delete_action.isEnabled()
    stored = json.loads(next((tmp_path / "presets").glob("*.json")).read_text())
    assert stored["params"]["creativity"] == 0.45
    assert "seed" not in stored["params"]  # a preset is a look, not a run

    current["params"] = UpscaleParams(seed=5)
    with qtbot.waitSignal(bar.apply_requested) as blocker:
        bar.apply_selected()
    assert blocker.args[0].creativity == 0.45 and blocker.args[0].scale_factor == 3
    assert blocker.args[0].seed == 5

    answers.names.append("Renamed")
    bar.rename_selected()
    assert names(bar) == [*BUILTINS, "Renamed"] and bar.selected_name() == "Renamed"

    answers.confirms.append(False)
    bar.delete_selected()
    assert "Renamed" in names(bar)  # declined: nothing lost
    answers.confirms.append(True)
    bar.delete_selected()
    assert names(bar) == BUILTINS
    assert answers.errors == []


def test_saving_over_a_preset_asks_first(
    bar: PresetsBar, answers: Answers, current: dict[str, UpscaleParams]
) -> None:
    answers.names.append("Mine")
    bar.save_current()
    current["params"] = UpscaleParams(creativity=0.9)
    answers.names.append("mine")
    answers.confirms.append(False)
    bar.save_current()
    assert "already exists" in answers.questions[-1]
    assert bar.store.get("Mine").params["creativity"] == 0.45
    answers.names.append("Mine")
    answers.confirms.append(True)
    bar.save_current()
    assert bar.store.get("Mine").params["creativity"] == 0.9
    assert names(bar).count("Mine") == 1

    answers.names.append("Portrait")  # a built-in's name
    bar.save_current()
    assert "built-in" in answers.errors[-1][1]
    assert bar.store.get("Portrait").builtin


def test_export_then_import_round_trips(bar: PresetsBar, answers: Answers, tmp_path: Path) -> None:
    answers.names.append("Travel")
    bar.save_current()
    before = bar.store.get("Travel").params
    answers.save_path = str(tmp_path / "travel.json")
    bar.export_selected()
    assert json.loads((tmp_path / "travel.json").read_text())["name"] == "Travel"
    answers.confirms.append(True)
    bar.delete_selected()
    assert "Travel" not in names(bar)

    answers.open_path = str(tmp_path / "travel.json")
    bar.import_preset()
    assert bar.selected_name() == "Travel"
    assert bar.store.get("Travel").params == before
    # Importing it again asks before replacing.
    answers.confirms.append(False)
    bar.import_preset()
    assert "already exists" in answers.questions[-1]
    assert names(bar).count("Travel") == 1

    bar.select("Anime")  # built-ins can be exported too
    answers.save_path = str(tmp_path / "anime.json")
    bar.export_selected()
    assert json.loads((tmp_path / "anime.json").read_text())["params"]["mode"] == "creative"
    assert answers.errors == []


def test_bad_import_file_shows_an_error(bar: PresetsBar, answers: Answers, tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    answers.open_path = str(bad)
    bar.import_preset()
    assert answers.errors and "not valid JSON" in answers.errors[-1][1]
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"name": "X", "params": {"creativity": 7}}))
    answers.open_path = str(invalid)
    bar.import_preset()
    assert "invalid parameters" in answers.errors[-1][1]
    assert names(bar) == BUILTINS  # nothing added, nothing lost


def test_invalid_current_params_are_not_saved(
    bar: PresetsBar, answers: Answers, current: dict[str, UpscaleParams]
) -> None:
    def broken() -> UpscaleParams:
        raise ParamsError(FieldError("mask", "/x.png", "No such file"))

    bar.current = broken
    bar.save_current()
    bar.apply_selected()
    assert len(answers.errors) == 2 and "highlighted" in answers.errors[0][1]
    assert names(bar) == BUILTINS


def test_ctrl_s_saves(qtbot, bar: PresetsBar, answers: Answers) -> None:
    with qtbot.waitActive(bar):
        bar.show()
        bar.activateWindow()
    answers.names.append("Quick")
    qtbot.keyClick(bar.combo, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert "Quick" in names(bar)
    assert QApplication.activeWindow() is bar


def test_controls_are_named_and_explained(bar: PresetsBar) -> None:
    for widget in (bar.combo, bar.apply_button, bar.save_button, bar.more_button):
        assert widget.accessibleName() and widget.toolTip()
    actions = [bar.rename_action, bar.delete_action, bar.import_action, bar.export_action]
    assert [a.text() for a in bar.more_button.menu().actions() if a.text()] == [
        a.text() for a in actions
    ]


def test_clarity_default_says_which_pre_upscaler_it_uses(
    qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, current: dict[str, UpscaleParams]
) -> None:
    """Without 4x-UltraSharp: the bundled Real-ESRGAN, and how to get Clarity's own; with it (in
    a folder the bar is told of): UltraSharp, where it is and its non-commercial licence. The
    choice is made again when the preset is applied."""
    monkeypatch.setenv("CLARIFIER_DATA_DIR", str(tmp_path / "data"))  # an empty models folder
    folders: list[str] = []
    store = PresetStore(builtin_dir=ROOT / "resources" / "presets", user_dir=tmp_path / "presets")
    widget = PresetsBar(store, lambda: current["params"], model_dirs=lambda: folders)
    qtbot.addWidget(widget)
    widget.select("Clarity default")
    assert not widget.note.isHidden()
    assert "realesrgan-x4plus (bundled with Clarifier)" in widget.note.text()
    assert "4x-UltraSharp is preferred but not installed" in widget.note.text()
    assert "4x-UltraSharp → realesrgan-x4plus" in widget.note.toolTip()
    tip = widget.combo.itemData(widget.combo.currentIndex(), Qt.ItemDataRole.ToolTipRole)
    assert "not installed" in tip
    with qtbot.waitSignal(widget.apply_requested) as blocker:
        widget.apply_selected()
    assert blocker.args[0].upscaler == "realesrgan-x4plus"
    assert blocker.args[0].scale_factor == 3  # the rest as before

    weights = tmp_path / "webui" / "models" / "ESRGAN" / "4x-UltraSharp.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    folders.append(str(tmp_path / "webui"))
    with qtbot.waitSignal(widget.apply_requested) as blocker:
        widget.apply_selected()
    assert blocker.args[0].upscaler == "4x-UltraSharp"
    assert f"4x-UltraSharp, found at {weights}" in widget.note.text()
    assert "CC BY-NC-SA 4.0 (non-commercial use only)" in widget.note.text()
    assert [c.value for c in widget.choices()] == ["4x-UltraSharp"]

    widget.select("Portrait")  # no preferences: no line
    assert widget.note.isHidden() and widget.choices() == []
    weights.unlink()
    widget.select("Clarity default")
    assert "not installed" in widget.note.text()
