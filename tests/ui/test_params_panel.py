"""The parameter panel: generated from the specs, adapted to the backend, validated in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QPalette, QWheelEvent
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QSlider,
    QWidget,
)

from app.backends import capabilities as caps
from app.store.presets import PresetStore
from app.ui.params.fields import (
    BoolEditor,
    ChoiceEditor,
    NumberEditor,
    SeedEditor,
    TextEditor,
)
from app.ui.params.look import error_color, field_label
from app.ui.params.panel import ParamsPanel
from pipeline.errors import ParamsError
from pipeline.params import UpscaleParams, emulate_creative_upscaler

SPECS = {name: (spec, default) for name, spec, default in UpscaleParams.specs()}


@pytest.fixture
def panel(qtbot) -> ParamsPanel:
    widget = ParamsPanel()
    qtbot.addWidget(widget)
    widget.resize(460, 900)
    return widget


def creative(panel: ParamsPanel) -> None:
    editor = panel.rows["mode"].editor
    editor.set_value("creative")
    editor.edited.emit()


def type_into(qtbot, widget, text: str) -> None:
    widget.selectAll()
    qtbot.keyClicks(widget, text)


def test_every_spec_field_gets_an_editor_of_its_kind(panel: ParamsPanel) -> None:
    assert set(panel.rows) == set(SPECS)
    for name, (spec, _default) in SPECS.items():
        editor = panel.rows[name].editor
        assert spec.help in editor.toolTip(), name
        assert spec.allowed() in editor.toolTip(), name
        assert panel.labels[name].text() == field_label(name)
        if name == "seed":
            assert isinstance(editor, SeedEditor)
        elif spec.choices is not None:
            assert isinstance(editor, ChoiceEditor), name
            values = [editor.combo.itemData(i) for i in range(editor.combo.count())]
            assert values == list(spec.choices), name
        elif spec.kind is bool:
            assert isinstance(editor, BoolEditor), name
        elif spec.kind in (int, float):
            assert isinstance(editor, NumberEditor), name
            symmetric = spec.minimum is not None and spec.minimum == -(spec.maximum or 0)
            assert (editor.slider is not None) == (spec.kind is float or symmetric), name
        else:
            assert isinstance(editor, TextEditor), name
    assert panel.rows["prompt"].editor.multiline is not None
    assert panel.rows["negative_prompt"].editor.multiline is not None
    assert panel.rows["mask"].editor.value() is None  # nullable: empty is none
    # Sections follow Spec.group; the advanced one starts collapsed.
    form = panel.sections["advanced"].form
    assert form.indexOf(panel.rows["num_inference_steps"]) >= 0
    assert panel.sections["style"].form.indexOf(panel.rows["sd_model"]) >= 0
    assert not panel.sections["advanced"].is_expanded()
    assert panel.sections["style"].is_expanded()


def test_defaults_are_shown(panel: ParamsPanel) -> None:
    assert panel.params() == UpscaleParams()
    assert panel.errors() == {} and panel.is_valid()
    assert panel.rows["creativity"].editor.spin.text() == "0.35"
    assert panel.rows["scale_factor"].editor.spin.text() == "2×"
    assert panel.rows["scheduler"].editor.combo.currentText() == "DPM++ 3M SDE Karras"
    assert panel.rows["sd_model"].editor.combo.currentText() == "juggernaut_reborn"
    assert panel.rows["tiling_width"].editor.combo.currentText() == "112 (896 px)"
    assert panel.rows["seed"].editor.line.text() == "1337" and panel.seed_locked()
    assert not panel.rows["creativity"].reset.isEnabled()  # nothing to reset yet
    assert panel.backend() == ("local", "")
    assert panel.engine_combo.itemText(0) == "This computer"
    assert panel.model_combo.isHidden()


def test_slider_and_typing_change_params(qtbot, panel: ParamsPanel) -> None:
    creative(panel)
    editor = panel.rows["creativity"].editor
    with qtbot.waitSignal(panel.changed):
        editor.slider.setValue(10)  # 0 + 10 × 0.05
    assert panel.params().creativity == pytest.approx(0.5)
    assert editor.spin.text() == "0.5"
    type_into(qtbot, panel.rows["dynamic"].editor.spin.lineEdit(), "7.5")
    assert panel.params().dynamic == 7.5
    assert panel.rows["dynamic"].editor.slider.value() == 13  # (7.5 − 1) / 0.5
    assert panel.rows["creativity"].reset.isEnabled()
    panel.rows["creativity"].reset.click()
    assert panel.params().creativity == 0.35


def test_arrows_stop_at_the_range(panel: ParamsPanel) -> None:
    spin = panel.rows["num_inference_steps"].editor.spin
    spin.setValue(99)
    spin.stepBy(5)
    assert spin.value() == 100
    assert panel.params().num_inference_steps == 100


def test_typed_out_of_range_value_is_flagged_in_place(qtbot, panel: ParamsPanel) -> None:
    panel.show()
    creative(panel)
    row = panel.rows["num_inference_steps"]
    with qtbot.waitSignal(panel.validity_changed) as blocker:
        type_into(qtbot, row.editor.spin.lineEdit(), "150")
    assert blocker.args == [False]
    assert "from 1 to 100" in panel.errors()["num_inference_steps"]
    assert not row.message.isHidden() and row.message.text().startswith("⚠")
    assert "from 1 to 100" in row.message.text()
    with pytest.raises(ParamsError) as exc:
        panel.params()
    assert exc.value.fields == ["num_inference_steps"]
    # The outline is painted in the error colour, and the summary links to the field.
    panel.sections["advanced"].set_expanded(True)
    image = row.editor.grab().toImage()
    edge = image.pixelColor(1, image.height() // 2)
    red = error_color(row.editor.palette())
    assert abs(edge.red() - red.red()) < 60 and edge.green() < 150
    assert 'href="num_inference_steps"' in panel.summary.text()
    panel.focus_field("num_inference_steps")
    assert panel.sections["advanced"].is_expanded()
    with qtbot.waitSignal(panel.validity_changed) as blocker:
        type_into(qtbot, row.editor.spin.lineEdit(), "30")
    assert blocker.args == [True]
    assert panel.params().num_inference_steps == 30 and row.message.isHidden()


def test_text_typed_for_a_seed_is_flagged(qtbot, panel: ParamsPanel) -> None:
    creative(panel)
    line = panel.rows["seed"].editor.line
    type_into(qtbot, line, "abc")
    assert "whole number" in panel.errors()["seed"]
    type_into(qtbot, line, str(2**32))
    assert "4294967295" in panel.errors()["seed"]
    type_into(qtbot, line, "42")
    assert panel.params().seed == 42 and panel.errors() == {}


def test_bad_lora_link_and_mask_are_flagged(
    qtbot, panel: ParamsPanel, photo_file: Path, tmp_path: Path
) -> None:
    creative(panel)
    links = panel.rows["lora_links"].editor
    with qtbot.waitSignal(panel.validity_changed) as blocker:
        type_into(qtbot, links.line, "https://example.com/a.safetensors, missing-file")
    assert blocker.args == [False]
    assert "missing-file" in panel.errors()["lora_links"]
    lora = tmp_path / "detail.safetensors"
    lora.write_bytes(b"x")
    type_into(qtbot, links.line, f"https://example.com/a.safetensors, {lora}")
    assert "lora_links" not in panel.errors()

    mask = panel.rows["mask"].editor
    type_into(qtbot, mask.line, str(tmp_path / "nope.png"))
    assert panel.errors()["mask"].startswith("No such file")
    (tmp_path / "notes.txt").write_text("hi")
    type_into(qtbot, mask.line, str(tmp_path / "notes.txt"))
    assert "Not an image" in panel.errors()["mask"]
    mask.ask_path = lambda _title, _filter: str(photo_file)  # the Browse… dialog
    with qtbot.waitSignal(panel.validity_changed) as blocker:
        qtbot.mouseClick(mask.browse, Qt.MouseButton.LeftButton)
    assert blocker.args == [True]
    assert panel.params().mask == str(photo_file)

    # A provider fetches LoRAs from links only: the local file is refused there.
    panel.set_backend("segmind", "clarity-upscaler")
    assert "links only" in panel.errors()["lora_links"]


def test_prompt_syntax_and_backend_scale_limits(qtbot, panel: ParamsPanel) -> None:
    creative(panel)
    prompt = panel.rows["prompt"].editor.multiline
    prompt.setPlainText("a cat <lora:detail:abc>")
    assert "not a number" in panel.errors()["prompt"]
    prompt.setPlainText("a cat [a|b]")  # alternation runs now: no note, no error
    assert "prompt" not in panel.errors()
    prompt.setPlainText("a cat | [a:b:5]")
    assert "prompt" not in panel.errors()
    assert "are off" in panel.rows["prompt"].message.text()  # a note, not an error
    prompt.setPlainText("a cat")
    panel.set_backend("apiframe", "")
    panel.rows["scale_factor"].editor.spin.setValue(3)
    assert panel.errors()["scale_factor"] == "Apiframe takes a scale of 1, 2, 4 or 8"
    panel.rows["scale_factor"].editor.spin.setValue(4)
    assert panel.errors() == {}


def test_backend_switch_hides_fields_and_keeps_values(qtbot, panel: ParamsPanel) -> None:
    creative(panel)
    panel.rows["creativity"].editor.spin.setValue(0.5)
    creative_knobs = [n for n in SPECS if n.startswith("creative.")]
    flux_knobs = [n for n in SPECS if n.startswith("flux.")]
    assert not any(panel.field_visible(n) for n in creative_knobs + flux_knobs)

    with qtbot.waitSignal(panel.backend_changed) as blocker:
        panel.set_backend("segmind", "clarityai-creative-upscaler")
    assert blocker.args == ["segmind", "clarityai-creative-upscaler"]
    assert all(panel.field_visible(n) for n in creative_knobs)
    assert not any(panel.field_visible(n) for n in flux_knobs)
    assert not panel.field_visible("creativity") and not panel.field_visible("mode")
    shown = {n for n in SPECS if panel.field_visible(n)}
    assert shown == caps.accepted_fields("segmind", "clarityai-creative-upscaler")
    assert not panel.model_combo.isHidden()
    assert panel.model_combo.currentText() == "ClarityAI creative upscaler"
    knob = panel.rows["creative.fractality"].editor
    assert knob.spin.text() == "+1" and knob.slider.tickInterval() * 2 == knob.slider.maximum()
    assert not panel.sections["style"].isHidden()  # creative.style lives there

    panel.model_combo.setCurrentIndex(panel.model_combo.findData("clarityai-flux-upscaler"))
    panel.model_combo.activated.emit(panel.model_combo.currentIndex())
    assert panel.backend() == ("segmind", "clarityai-flux-upscaler")
    assert all(panel.field_visible(n) for n in flux_knobs)
    assert not any(panel.field_visible(n) for n in creative_knobs)

    panel.engine_combo.setCurrentIndex(0)
    panel.engine_combo.activated.emit(0)
    assert panel.backend() == ("local", "")
    assert panel.field_visible("creativity") and not panel.field_visible("creative.creativity")
    assert panel.params().creativity == 0.5  # kept across backends
    assert panel.model_combo.isHidden()

    pinned = "philz1337x/clarity-upscaler:abcdef0123456789"
    panel.set_backend("replicate", pinned)  # a history run pinned to a model version
    assert panel.backend() == ("replicate", pinned)
    assert panel.model_combo.currentText() == "Clarity upscaler (version abcdef01)"
    panel.set_backend("nonexistent", "")
    assert panel.backend() == ("replicate", pinned)  # an unknown backend is ignored


def test_a_bad_value_in_a_hidden_field_does_not_block(qtbot, panel: ParamsPanel) -> None:
    creative(panel)
    type_into(qtbot, panel.rows["num_inference_steps"].editor.spin.lineEdit(), "150")
    assert not panel.is_valid()
    with qtbot.waitSignal(panel.validity_changed) as blocker:
        panel.set_backend("segmind", "clarityai-creative-upscaler")
    assert blocker.args == [True]  # that model has no steps: the typed value cannot matter
    assert not panel.field_visible("num_inference_steps")
    assert panel.params().num_inference_steps == 18
    panel.set_backend("local", "")
    assert "num_inference_steps" in panel.errors()  # still there, still flagged
    assert panel.rows["num_inference_steps"].editor.spin.text() == "150"


def test_faithful_mode_greys_diffusion_fields(qtbot, panel: ParamsPanel) -> None:
    panel.show()
    assert panel.params().mode == "faithful"
    assert panel.faithful_note.isVisibleTo(panel)
    assert "Creative mode only" in panel.faithful_text.text()
    for name in ("creativity", "prompt", "seed", "sd_model", "num_inference_steps", "mask"):
        assert not panel.rows[name].editor.isEnabled(), name
        assert panel.rows[name].editor.toolTip().startswith("Creative mode only")
        assert panel.rows[name].editor.focus_widget().toolTip().startswith("Creative mode only")
    for name in ("scale_factor", "upscaler", "output_format", "sharpen", "downscaling"):
        assert panel.rows[name].editor.isEnabled(), name
    # A bad value in a field faithful mode ignores does not block the run.
    panel.rows["mask"].editor.set_value("/no/such/mask.png")
    panel.rows["mask"].editor.edited.emit()
    assert panel.errors() == {}
    qtbot.mouseClick(panel.creative_button, Qt.MouseButton.LeftButton)
    assert panel.rows["mode"].editor.value() == "creative"
    assert panel.rows["creativity"].editor.isEnabled()
    assert panel.rows["creativity"].editor.spin.toolTip().startswith("Creativity, try")
    assert panel.errors()["mask"].startswith("No such file")  # creative mode reads the mask
    assert not panel.faithful_note.isVisibleTo(panel)
    # Downscale to means something only while Downscale first is on.
    assert not panel.rows["downscaling_resolution"].editor.isEnabled()
    panel.rows["downscaling"].editor.check.setChecked(True)
    assert panel.rows["downscaling_resolution"].editor.isEnabled()


def test_seed_lock_randomize_and_params_for_run(qtbot, panel: ParamsPanel) -> None:
    with qtbot.waitActive(panel):  # shortcuts need an active window
        panel.show()
        panel.activateWindow()
    creative(panel)
    seed = panel.rows["seed"].editor
    seed.line.setFocus()
    assert panel.params_for_run().seed == 1337  # locked: the same seed every run
    assert panel.params_for_run().seed == 1337

    qtbot.keyClick(seed.line, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert not panel.seed_locked()
    assert panel.params().seed is None  # Clarity's "random"
    first, second = panel.params_for_run().seed, panel.params_for_run().seed
    assert first != second  # a fresh seed per run (2^-32 chance of a false failure)
    assert seed.line.text() == str(second)  # shown after the run
    assert panel.params().seed is None

    qtbot.keyClick(seed.line, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    assert panel.seed_locked()  # a picked seed is kept
    picked = int(seed.line.text())
    assert picked != second
    assert panel.params_for_run().seed == picked

    panel.set_seed_locked(False)
    type_into(qtbot, seed.line, "777")
    assert panel.seed_locked() and panel.params().seed == 777  # typing a seed locks it
    seed.die.click()
    assert panel.params().seed != 777


def test_set_params_round_trips_presets(panel: ParamsPanel) -> None:
    for preset in PresetStore().list():
        wanted = preset.apply(UpscaleParams())
        panel.set_params(wanted)
        assert panel.params().to_dict() == wanted.to_dict(), preset.name
    odd = emulate_creative_upscaler(
        UpscaleParams().replace(**{"creative.resemblance": 3, "creative.dynamic": -3})
    ).replace(seed=None, mask=None, lora_links="https://x/y.safetensors", sharpen=1.5)
    panel.set_params(odd)
    assert panel.params() == odd  # off-step values (resemblance 0.7986) survive
    assert not panel.seed_locked()
    panel.reset_all()
    assert panel.params() == UpscaleParams() and panel.seed_locked()


def test_wheel_over_an_unfocused_slider_does_not_change_it(panel: ParamsPanel) -> None:
    slider = panel.rows["creativity"].editor.slider
    before = slider.value()
    event = QWheelEvent(
        QPointF(5, 5), QPointF(5, 5), QPoint(0, 0), QPoint(0, 120),
        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
        False,
    )  # fmt: skip
    QApplication.sendEvent(slider, event)
    assert slider.value() == before


def test_error_colour_follows_the_palette() -> None:
    light, dark = QPalette(QColor(240, 240, 240)), QPalette(QColor(30, 30, 30))
    assert error_color(light).lightness() < error_color(dark).lightness()
    assert error_color(dark).red() > 200


def test_every_control_is_named_and_explained(panel: ParamsPanel) -> None:
    controls = (QAbstractButton, QAbstractSpinBox, QComboBox, QSlider, QLineEdit, QPlainTextEdit)
    seen = 0
    for widget in panel.findChildren(QWidget):
        if not isinstance(widget, controls):
            continue
        if isinstance(widget.parent(), QAbstractSpinBox | QComboBox | QLineEdit):
            continue  # Qt's own parts: a spin box's line edit, a line edit's clear button
        seen += 1
        assert widget.accessibleName(), widget
        assert widget.toolTip(), widget.accessibleName()
    assert seen > 60


def test_run_on_ray_says_where_the_batch_will_run(qtbot, panel: ParamsPanel, monkeypatch) -> None:
    """Choosing the Ray cluster shows its state without importing Ray or connecting."""
    import app.backends.ray as ray_backend

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    panel.set_backend("ray", "")
    assert panel.ray_state.isVisibleTo(panel)
    assert panel.ray_state.text() == "Ray cluster: runs on the Ray cluster at ray://head:10001"
    panel.set_backend("local", "")
    assert not panel.ray_state.isVisibleTo(panel)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray_backend, "ray_installed", lambda: False)
    panel.set_backend("ray", "")
    assert panel.ray_state.property("state") == "missing"
    assert "pip install 'clarifier[cluster]'" in panel.ray_state.text()
