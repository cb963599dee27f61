"""One editor per parameter kind, built from a :class:`~pipeline.params.Spec`.

:func:`make_editor` picks the editor from the spec alone (kind, range, choices, nullable), so a
field added to :class:`~pipeline.params.UpscaleParams` gets a control without touching the window.
The few name-based touches (labels, units, which text fields are prompts or file paths) only
change presentation, never what a field accepts.

Number editors accept any number typed and leave the range check to ``UpscaleParams``: a value out
of range is then flagged next to the field with the allowed range, instead of the keystroke being
silently swallowed, as a plain ``QSpinBox`` would. Arrows, the wheel and the slider stay inside
the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, QRectF, Qt, Signal
from PySide6.QtGui import QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QToolButton,
    QWidget,
)

from app.ui.params.look import (
    choice_label,
    die_icon,
    error_color,
    field_label,
    format_value,
    lock_icon,
)
from pipeline.io.load import SUPPORTED_SUFFIXES
from pipeline.models.files import MODEL_SUFFIXES
from pipeline.params import BUNDLED_UPSCALERS, MAX_SEED, Spec, random_seed

__all__ = ["FieldEditor", "SeedEditor", "make_editor"]

_SUFFIXES = {"scale_factor": "×", "downscaling_resolution": " px", "multistep_factor": "×"}
_IMAGE_FILTER = "Images (" + " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES)) + ")"
_MODEL_FILTER = "Model files (" + " ".join(f"*{s}" for s in MODEL_SUFFIXES) + ")"
# Text fields that name a file: (dialog title, file filter, placeholder when empty).
_BROWSE = {
    "mask": ("Choose a mask image", _IMAGE_FILTER, "None: the whole image is upscaled"),
    "custom_sd_model": ("Choose a checkpoint", _MODEL_FILTER, "None: use the checkpoint above"),
    "upscaler": ("Choose an upscaler model", _MODEL_FILTER, ""),
}
_SUGGESTIONS: dict[str, Sequence[str]] = {"upscaler": BUNDLED_UPSCALERS}
_PLACEHOLDERS = {"lora_links": "https://…, https://…", "flux.lora_link": "https://…"}


class _WheelGuard(QObject):
    """Wheel over an unfocused slider, spin box or combo scrolls the panel instead of changing
    a value by accident (the classic scroll-area trap)."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Wheel and isinstance(obj, QWidget) and not obj.hasFocus():
            event.ignore()
            return True  # ignored: Qt passes it on to the scroll area
        return False


def _guard(widget: QWidget) -> QWidget:
    widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    if isinstance(widget, QComboBox):  # long checkpoint and sampler names must not widen the panel
        widget.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        widget.setMinimumContentsLength(8)
    widget.installEventFilter(_WheelGuard(widget))
    return widget


class FieldEditor(QWidget):
    """The control(s) for one field. ``edited`` fires on every change a person makes (never on
    :meth:`set_value`). A red outline is painted around the editor while it is marked invalid."""

    edited = Signal()

    def __init__(self, name: str, spec: Spec, default: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name, self.spec, self.default = name, spec, default
        self.label = field_label(name)
        self._invalid = False
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(2, 2, 2, 2)
        self._layout.setSpacing(4)
        self._parts: list[QWidget] = []
        self._help = f"{spec.help}\nAllowed: {spec.allowed()}. Default: {format_value(default)}."
        self.setAccessibleName(self.label)
        self.setToolTip(self._help)

    def set_hint(self, hint: str) -> None:
        """Put ``hint`` (e.g. "Creative mode only.") before the help in every part's tooltip;
        parts with a tooltip of their own (lock, die, Browse…) keep it."""
        old, text = self.toolTip(), f"{hint} {self._help}" if hint else self._help
        if text != old:
            for widget in (self, *self._parts):
                if widget.toolTip() == old:
                    widget.setToolTip(text)

    # --- to override ---------------------------------------------------------------------
    def value(self) -> Any:
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        raise NotImplementedError

    def input_error(self) -> str | None:
        """Why the text typed so far is not a value at all (None when it is one)."""
        return None

    def focus_widget(self) -> QWidget:
        return self

    # --- shared --------------------------------------------------------------------------
    def _add(self, widget: QWidget, stretch: int = 0, name: str = "") -> QWidget:
        widget.setAccessibleName(name or self.label)
        widget.setToolTip(self.toolTip())
        self._parts.append(widget)
        self._layout.addWidget(widget, stretch)
        return widget

    def set_invalid(self, invalid: bool) -> None:
        if invalid != self._invalid:
            self._invalid = invalid
            self.setProperty("invalid", invalid)
            self.update()

    def is_invalid(self) -> bool:
        return self._invalid

    def paintEvent(self, event: Any) -> None:
        if self._invalid:
            p = QPainter(self)
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            p.setPen(QPen(error_color(self.palette()), 2))
            p.drawRoundedRect(QRectF(self.rect()).adjusted(1, 1, -1, -1), 4, 4)


class _SpecSpin:
    """Spin box mix-in: arrows and wheel stop at the spec's range; typing may go past it so the
    panel can say what is allowed."""

    spec: Spec

    if TYPE_CHECKING:  # what the spin box it is mixed into provides (int or float)

        def value(self) -> Any: ...
        def singleStep(self) -> Any: ...
        def setValue(self, value: Any) -> None: ...
        def selectAll(self) -> None: ...

    def stepBy(self, steps: int) -> None:
        lo, hi = self.spec.minimum, self.spec.maximum
        target = self.value() + steps * self.singleStep()
        if lo is not None and target < lo:
            target = lo
        if hi is not None and target > hi:
            target = hi
        self.setValue(target)
        self.selectAll()

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:
        flags = QAbstractSpinBox.StepEnabledFlag.StepNone
        v = self.value()
        if self.spec.minimum is None or v > self.spec.minimum:
            flags |= QAbstractSpinBox.StepEnabledFlag.StepDownEnabled
        if self.spec.maximum is None or v < self.spec.maximum:
            flags |= QAbstractSpinBox.StepEnabledFlag.StepUpEnabled
        return flags


class _FloatSpin(_SpecSpin, QDoubleSpinBox):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self.setDecimals(4)
        self.setRange(-1e9, 1e9)

    def textFromValue(self, value: float) -> str:
        return self.locale().toString(round(value, 4), "g", 10)


class _IntSpin(_SpecSpin, QSpinBox):
    def __init__(self, spec: Spec, signed: bool = False) -> None:
        super().__init__()
        self.spec, self._signed = spec, signed
        self.setRange(-(2**31) + 1, 2**31 - 1)

    def textFromValue(self, value: int) -> str:
        return f"+{value}" if self._signed and value > 0 else str(value)


class NumberEditor(FieldEditor):
    """float with a range → slider + spin box; int knob around zero (−10…10) → slider with a
    centred zero + spin box; any other int → spin box."""

    def __init__(self, name: str, spec: Spec, default: Any, parent: QWidget | None = None) -> None:
        super().__init__(name, spec, default, parent)
        is_float = spec.kind is float
        bounded = spec.minimum is not None and spec.maximum is not None
        centred = not is_float and bounded and spec.minimum == -(spec.maximum or 0) < 0
        self._step = spec.step or (0.01 if is_float else 1)
        self.slider: QSlider | None = None
        if bounded and (is_float or centred):
            assert spec.minimum is not None
            assert spec.maximum is not None
            self.slider = QSlider(Qt.Orientation.Horizontal)
            self.slider.setRange(0, round((spec.maximum - spec.minimum) / self._step))
            if centred:  # ticks at both ends and at the zero in the middle
                self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
                self.slider.setTickInterval(self.slider.maximum() // 2)
            self._add(_guard(self.slider), 1, f"{self.label} slider")
            self.slider.valueChanged.connect(self._slider_moved)
        self.spin: QDoubleSpinBox | QSpinBox = (
            _FloatSpin(spec) if is_float else _IntSpin(spec, signed=centred)
        )
        if isinstance(self.spin, QDoubleSpinBox):
            self.spin.setSingleStep(self._step)
        else:  # an int field's step is a whole number
            self.spin.setSingleStep(round(self._step))
        self.spin.setSuffix(_SUFFIXES.get(name, ""))
        self.spin.setKeyboardTracking(True)
        self.spin.setMinimumWidth(72 if self.slider else 96)
        self._add(_guard(self.spin))
        if self.slider is None:
            self._layout.addStretch(1)
        self.spin.valueChanged.connect(self._spin_changed)
        self.spin.lineEdit().textEdited.connect(lambda _t: self.edited.emit())
        self.spin.editingFinished.connect(self.edited.emit)

    def value(self) -> Any:
        v = self.spin.value()
        return round(float(v), 6) if self.spec.kind is float else int(v)

    def set_value(self, value: Any) -> None:
        self.spin.blockSignals(True)
        self.spin.setValue(value)
        self.spin.blockSignals(False)
        self._sync_slider()

    def input_error(self) -> str | None:
        if self.spin.hasAcceptableInput():
            return None
        return f"Type {self.spec.allowed()}"

    def focus_widget(self) -> QWidget:
        return self.spin

    def _sync_slider(self) -> None:
        if self.slider is not None and self.spec.minimum is not None:
            self.slider.blockSignals(True)
            self.slider.setValue(round((self.spin.value() - self.spec.minimum) / self._step))
            self.slider.blockSignals(False)

    def _slider_moved(self, position: int) -> None:
        assert self.spec.minimum is not None
        value = self.spec.minimum + position * self._step
        self.spin.blockSignals(True)
        if isinstance(self.spin, QDoubleSpinBox):
            self.spin.setValue(value)
        else:  # whole numbers for an int field (its minimum and step are)
            self.spin.setValue(round(value))
        self.spin.blockSignals(False)
        self.edited.emit()

    def _spin_changed(self, _value: float) -> None:
        self._sync_slider()
        self.edited.emit()


class ChoiceEditor(FieldEditor):
    def __init__(self, name: str, spec: Spec, default: Any, parent: QWidget | None = None) -> None:
        super().__init__(name, spec, default, parent)
        self.combo = QComboBox()
        for choice in spec.choices or ():
            self.combo.addItem(choice_label(choice), choice)
            self.combo.setItemData(self.combo.count() - 1, str(choice), Qt.ItemDataRole.ToolTipRole)
        self._add(_guard(self.combo), 1)
        self.combo.currentIndexChanged.connect(lambda _i: self.edited.emit())

    def value(self) -> Any:
        return self.combo.currentData()

    def set_value(self, value: Any) -> None:
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(max(0, self.combo.findData(value)))
        self.combo.blockSignals(False)

    def focus_widget(self) -> QWidget:
        return self.combo


class BoolEditor(FieldEditor):
    def __init__(self, name: str, spec: Spec, default: Any, parent: QWidget | None = None) -> None:
        super().__init__(name, spec, default, parent)
        self.check = QCheckBox()
        self._add(self.check, 1)
        self.check.toggled.connect(lambda _b: self.edited.emit())

    def value(self) -> Any:
        return self.check.isChecked()

    def set_value(self, value: Any) -> None:
        self.check.blockSignals(True)
        self.check.setChecked(bool(value))
        self.check.blockSignals(False)

    def focus_widget(self) -> QWidget:
        return self.check


class TextEditor(FieldEditor):
    """Plain text: a 3-line edit for prompts, an editable combo where there are usual values,
    a Browse… button for file fields; a nullable field is None while empty."""

    def __init__(self, name: str, spec: Spec, default: Any, parent: QWidget | None = None) -> None:
        super().__init__(name, spec, default, parent)
        self.multiline: QPlainTextEdit | None = None
        self.combo: QComboBox | None = None
        self.browse: QPushButton | None = None
        self.line: QLineEdit
        if name.rsplit(".", 1)[-1].endswith("prompt"):
            self.multiline = QPlainTextEdit()
            self.multiline.setTabChangesFocus(True)
            lines = self.multiline.fontMetrics().lineSpacing() * 3
            self.multiline.setFixedHeight(lines + 2 * self.multiline.frameWidth() + 8)
            self._add(self.multiline, 1)
            self.multiline.textChanged.connect(self.edited.emit)
            return
        if name in _SUGGESTIONS:
            self.combo = QComboBox()
            self.combo.setEditable(True)
            self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
            self.combo.addItems(list(_SUGGESTIONS[name]))
            self._add(_guard(self.combo), 1)
            line = self.combo.lineEdit()
            assert line is not None
            self.line = line
        else:
            self.line = QLineEdit()
            self._add(self.line, 1)
        self.line.setClearButtonEnabled(spec.nullable or (name in _BROWSE and not self.combo))
        self.line.setPlaceholderText(_PLACEHOLDERS.get(name, _BROWSE.get(name, ("", "", ""))[2]))
        self.line.textChanged.connect(lambda _t: self.edited.emit())
        if name in _BROWSE:
            self.browse = QPushButton("Browse…")
            self._add(self.browse, 0, f"Browse for {self.label.lower()}")
            self.browse.setToolTip(_BROWSE[name][0])
            self.browse.clicked.connect(self._browse)

    def value(self) -> Any:
        text = self.multiline.toPlainText() if self.multiline else self.line.text()
        return None if self.spec.nullable and not text.strip() else text

    def set_value(self, value: Any) -> None:
        text = "" if value is None else str(value)
        target: QObject = self.multiline or self.line
        target.blockSignals(True)
        if self.multiline is not None:
            self.multiline.setPlainText(text)
        else:
            self.line.setText(text)
            self.line.setCursorPosition(0)
        target.blockSignals(False)

    def focus_widget(self) -> QWidget:
        return self.multiline or self.combo or self.line

    def ask_path(self, title: str, file_filter: str) -> str:
        """The file dialog, apart so tests can answer it."""
        path, _ = QFileDialog.getOpenFileName(self, title, self.line.text(), file_filter)
        return path

    def _browse(self) -> None:
        title, file_filter, _ = _BROWSE[self.name]
        path = self.ask_path(title, file_filter + ";;All files (*)")
        if path:
            self.line.setText(path)  # textChanged → edited


class SeedEditor(FieldEditor):
    """The seed, a lock and a die. Locked: every run uses the shown seed (``value()`` is it).
    Unlocked: each run draws a fresh one (``value()`` is None, Clarity's "random")."""

    lock_changed = Signal(bool)

    def __init__(self, name: str, spec: Spec, default: Any, parent: QWidget | None = None) -> None:
        super().__init__(name, spec, default, parent)
        self.line = QLineEdit(str(default if default is not None else random_seed()))
        self.line.setPlaceholderText("random")
        self.line.setMaxLength(12)
        self._add(self.line, 1)
        self.lock = QToolButton()
        self.lock.setCheckable(True)
        self.lock.setAutoRaise(True)
        self._add(self.lock, 0, "Lock seed")
        self.die = QToolButton()
        self.die.setAutoRaise(True)
        self.die.setIcon(die_icon(self.palette()))
        self._add(self.die, 0, "New random seed")
        self.die.setToolTip("Pick a new random seed and keep it (Ctrl+R)")
        self.line.textEdited.connect(self._typed)
        self.lock.toggled.connect(self._lock_toggled)
        self.die.clicked.connect(self.randomize)
        self._show_lock()

    def locked(self) -> bool:
        return self.lock.isChecked()

    def set_locked(self, locked: bool) -> None:
        if locked != self.locked():
            self.lock.setChecked(locked)  # → _lock_toggled

    def shown_seed(self) -> int | None:
        try:
            return int(self.line.text().strip())
        except ValueError:
            return None

    def show_seed(self, seed: int) -> None:
        """Display ``seed`` (the one a run drew) without touching the lock."""
        self.line.setText(str(seed))

    def randomize(self) -> None:
        self.line.setText(str(random_seed()))
        self.edited.emit()

    def value(self) -> Any:
        if not self.locked():
            return None
        seed = self.shown_seed()
        return self.line.text() if seed is None else seed

    def set_value(self, value: Any) -> None:
        self.blockSignals(True)
        if value is not None:
            self.line.setText(str(value))
        self.set_locked(value is not None)
        self.blockSignals(False)

    def input_error(self) -> str | None:
        if self.locked() and self.shown_seed() is None:
            return f"Type a seed: a whole number from 0 to {MAX_SEED}, or unlock it"
        return None

    def focus_widget(self) -> QWidget:
        return self.line

    def _typed(self, _text: str) -> None:
        self.set_locked(True)  # typing a seed means wanting that seed
        self.edited.emit()

    def _lock_toggled(self, locked: bool) -> None:
        self._show_lock()
        self.lock_changed.emit(locked)
        self.edited.emit()

    def _show_lock(self) -> None:
        locked = self.locked()
        self.lock.setIcon(lock_icon(self.palette(), locked))
        self.lock.setToolTip(
            "Locked: every run uses this seed. Click or Ctrl+L for a new seed each run."
            if locked
            else "Unlocked: each run draws a new seed, shown here afterwards. Click or Ctrl+L "
            "to keep one seed."
        )
        self.lock.setAccessibleDescription("locked" if locked else "unlocked")
        # Unlocked, the number shown is the last run's, not the next one's: show it muted.
        palette = QPalette(self.palette())
        if not locked:
            muted = palette.color(QPalette.ColorRole.PlaceholderText)
            palette.setColor(QPalette.ColorRole.Text, muted)
        self.line.setPalette(palette)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "die"):
            self._show_lock()
            self.die.setIcon(die_icon(self.palette()))
        super().changeEvent(event)


def make_editor(name: str, spec: Spec, default: Any) -> FieldEditor:
    """The editor for one spec: chosen by kind, range and choices, not by a list of fields."""
    kind: type[FieldEditor]
    if name == "seed":
        kind = SeedEditor
    elif spec.choices is not None:
        kind = ChoiceEditor
    elif spec.kind is bool:
        kind = BoolEditor
    elif spec.kind in (int, float):
        kind = NumberEditor
    else:
        kind = TextEditor
    editor = kind(name, spec, default)
    editor.set_value(default)
    return editor
