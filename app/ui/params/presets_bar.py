"""The presets bar: pick a preset and apply it, save the current settings as one, and manage the
user's own (rename, delete, import, export).

Everything goes through :class:`~app.store.presets.PresetStore`; the bar only asks questions and
shows answers. Built-in presets are read-only: they show a padlock, and Rename and Delete are
disabled for them. Applying a preset lays its values over the current parameters
(:meth:`Preset.apply`) and emits ``apply_requested``; the window puts the result in the parameter
panel. A user preset stores every parameter except the seed, which belongs to a run, not a look.

A preset that prefers installed model files ("Clarity default" prefers Clarity's 4x-UltraSharp to
the bundled Real-ESRGAN) is resolved against the model folders whenever it is selected or applied,
and the line under the bar says which file it will use, where it was found and its licence
(non-commercial ones said so); the same words are in the preset's tooltip.

Every question (a name, a file, a confirmation) goes through one small method, so tests answer
them directly instead of driving modal dialogs. Preset files are a few hundred bytes, so reading
them on the GUI thread stays far below a frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.store.presets import Choice, Preset, PresetError, PresetStore, read_preset_file
from app.ui.params.look import lock_icon
from pipeline.errors import ParamsError
from pipeline.params import UpscaleParams

__all__ = ["PresetsBar"]

_JSON_FILTER = "Clarifier presets (*.json);;All files (*)"


class PresetsBar(QWidget):
    """``current`` returns the parameters the panel shows (it may raise ``ParamsError``);
    ``model_dirs`` the folders to find preferred model files in (None: the settings' folders)."""

    apply_requested = Signal(object)  # UpscaleParams

    def __init__(
        self,
        store: PresetStore,
        current: Callable[[], UpscaleParams],
        parent: QWidget | None = None,
        *,
        model_dirs: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        super().__init__(parent)
        self.store, self.current = store, current
        self._model_dirs = model_dirs
        self._presets: list[Preset] = []
        self.setAccessibleName("Presets")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 2, 4, 2)
        outer.setSpacing(2)
        layout = QHBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        outer.addLayout(layout)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setAccessibleName("Which model files the preset uses")
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.note.hide()
        outer.addWidget(self.note)
        label = QLabel("Preset")
        self.combo = QComboBox()
        self.combo.setAccessibleName("Preset")
        self.combo.setToolTip("Choose a preset, then Apply to use its settings")
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(10)
        label.setBuddy(self.combo)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setAccessibleName("Apply preset")
        self.save_button = QPushButton("Save…")
        self.save_button.setAccessibleName("Save preset")
        self.save_button.setToolTip("Save the current settings as a preset (Ctrl+S)")
        self.more_button = QToolButton()
        self.more_button.setText("⋯")
        self.more_button.setAccessibleName("More preset actions")
        self.more_button.setToolTip("Rename, delete, import or export presets")
        self.more_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.more_button)
        self.rename_action = self._action(menu, "Rename…", self.rename_selected)
        self.delete_action = self._action(menu, "Delete…", self.delete_selected)
        menu.addSeparator()
        self.import_action = self._action(menu, "Import…", self.import_preset)
        self.export_action = self._action(menu, "Export…", self.export_selected)
        self.more_button.setMenu(menu)
        for widget in (label, self.combo, self.apply_button, self.save_button, self.more_button):
            layout.addWidget(widget)
        self.apply_button.clicked.connect(self.apply_selected)
        self.save_button.clicked.connect(self.save_current)
        self.combo.currentIndexChanged.connect(self._selection_changed)
        shortcut = QShortcut(QKeySequence("Ctrl+S"), self)
        shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        shortcut.activated.connect(self.save_current)
        self.refresh()

    def _action(self, menu: QMenu, text: str, slot: Callable[[], object]) -> QAction:
        action = menu.addAction(text)
        action.triggered.connect(lambda _checked=False: slot())
        return action

    # --- list ---------------------------------------------------------------------------
    def refresh(self, select: str | None = None) -> None:
        """Re-read the presets (after a change here or on disk) and keep or set the selection."""
        keep = select or self.selected_name()
        self._presets = self.store.list()
        self.combo.blockSignals(True)
        self.combo.clear()
        locked = lock_icon(self.palette(), True)
        after_builtin = False
        for preset in self._presets:
            if after_builtin and not preset.builtin:  # built-ins above, the person's own below
                self.combo.insertSeparator(self.combo.count())
            after_builtin = preset.builtin
            if preset.builtin:
                self.combo.addItem(locked, preset.name, preset.name)
            else:
                self.combo.addItem(preset.name, preset.name)
            index = self.combo.count() - 1
            kind = "Built-in preset (read-only)" if preset.builtin else "Your preset"
            tip = f"{kind}. {preset.description}" if preset.description else kind
            tip = " ".join([tip, *(c.describe() for c in self._choices(preset))])
            self.combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
            spoken = f"{preset.name}, built-in" if preset.builtin else preset.name
            self.combo.setItemData(index, spoken, Qt.ItemDataRole.AccessibleTextRole)
        found = self.combo.findData(keep) if keep else -1
        self.combo.setCurrentIndex(found if found >= 0 else (0 if self._presets else -1))
        self.combo.blockSignals(False)
        self._selection_changed()

    def presets(self) -> list[Preset]:
        return list(self._presets)

    def selected(self) -> Preset | None:
        name = self.combo.currentData()
        return next((p for p in self._presets if p.name == name), None)

    def selected_name(self) -> str | None:
        preset = self.selected()
        return preset.name if preset else None

    def select(self, name: str) -> None:
        index = self.combo.findData(name)
        if index >= 0:
            self.combo.setCurrentIndex(index)

    def choices(self) -> list[Choice]:
        """What the selected preset's preferences resolve to now (empty when it has none)."""
        preset = self.selected()
        return self._choices(preset) if preset is not None else []

    def _dirs(self) -> Sequence[str] | None:
        return None if self._model_dirs is None else self._model_dirs()

    def _choices(self, preset: Preset) -> list[Choice]:
        return preset.resolve(self._dirs()) if preset.prefer else []

    def _selection_changed(self, _index: int = -1) -> None:
        preset = self.selected()
        user = preset is not None and not preset.builtin
        self.apply_button.setEnabled(preset is not None)
        self.export_action.setEnabled(preset is not None)
        self.rename_action.setEnabled(user)
        self.delete_action.setEnabled(user)
        why = "Built-in presets cannot be changed; save a copy under a new name"
        self.rename_action.setToolTip("Rename this preset" if user else why)
        self.delete_action.setToolTip("Delete this preset" if user else why)
        if preset is not None:
            self.apply_button.setToolTip(
                f"Apply {preset.name!r}: " + (preset.description or "its settings")
            )
        self._show_choices(self.choices())

    def _show_choices(self, choices: list[Choice]) -> None:
        self.note.setText("\n".join(choice.describe() for choice in choices))
        self.note.setToolTip(
            "The preset uses the first of these that is installed: "
            + "; ".join(" → ".join(c.candidates) for c in choices)
            if choices
            else ""
        )
        self.note.setVisible(bool(choices))

    # --- actions ------------------------------------------------------------------------
    def apply_selected(self) -> None:
        preset = self.selected()
        if preset is None:
            return
        base = self._current("apply a preset")
        if base is None:
            return
        choices = self._choices(preset)  # looked for again: files may have come or gone
        try:
            params = preset.apply_choices(base, choices)
        except PresetError as exc:
            self._show_error("Cannot apply the preset", str(exc))
            return
        self._show_choices(choices)
        self.apply_requested.emit(params)

    def save_current(self) -> None:
        params = self._current("save them as a preset")
        if params is None:
            return
        selected = self.selected()
        suggestion = selected.name if selected and not selected.builtin else ""
        name = self._ask_name("Save preset", "Name of the new preset:", suggestion)
        if not name:
            return
        existing = next((p for p in self._presets if p.name.lower() == name.lower()), None)
        overwrite = False
        if existing is not None and not existing.builtin:
            question = f"A preset called {existing.name!r} already exists. Replace it?"
            if not self._confirm("Replace preset", question):
                return
            overwrite = True
        data = params.to_dict()
        data.pop("seed", None)  # a seed belongs to a run; applying a look must not change it
        try:
            saved = self.store.save(name, data, overwrite=overwrite)
        except (PresetError, OSError) as exc:
            self._show_error("Cannot save the preset", _plain(exc))
            return
        self.refresh(select=saved.name)

    def rename_selected(self) -> None:
        preset = self.selected()
        if preset is None or preset.builtin:
            return
        name = self._ask_name("Rename preset", f"New name for {preset.name!r}:", preset.name)
        if not name or name == preset.name:
            return
        try:
            renamed = self.store.rename(preset.name, name)
        except (PresetError, OSError) as exc:
            self._show_error("Cannot rename the preset", _plain(exc))
            return
        self.refresh(select=renamed.name)

    def delete_selected(self) -> None:
        preset = self.selected()
        if preset is None or preset.builtin:
            return
        if not self._confirm("Delete preset", f"Delete the preset {preset.name!r}?"):
            return
        try:
            self.store.delete(preset.name)
        except (PresetError, OSError) as exc:
            self._show_error("Cannot delete the preset", _plain(exc))
            return
        self.refresh()

    def import_preset(self) -> None:
        path = self._ask_open_path("Import a preset")
        if not path:
            return
        try:
            incoming = read_preset_file(Path(path))
        except PresetError as exc:
            self._show_error("Cannot import the preset", _plain(exc))
            return
        clash = next((p for p in self._presets if p.name.lower() == incoming.name.lower()), None)
        overwrite = False
        if clash is not None and not clash.builtin:
            question = f"A preset called {clash.name!r} already exists. Replace it?"
            if not self._confirm("Replace preset", question):
                return
            overwrite = True
        try:
            imported = self.store.import_file(Path(path), overwrite=overwrite)
        except (PresetError, OSError) as exc:
            self._show_error("Cannot import the preset", _plain(exc))
            return
        self.refresh(select=imported.name)

    def export_selected(self) -> None:
        preset = self.selected()
        if preset is None:
            return
        path = self._ask_save_path("Export the preset", f"{_file_stem(preset.name)}.json")
        if not path:
            return
        try:
            self.store.export(preset.name, Path(path))
        except (PresetError, OSError) as exc:
            self._show_error("Cannot export the preset", _plain(exc))

    def _current(self, purpose: str) -> UpscaleParams | None:
        try:
            return self.current()
        except ParamsError as exc:
            self._show_error(
                "Some settings are not valid",
                f"Fix the highlighted settings to {purpose}: {exc}",
            )
            return None

    # --- questions (overridden in tests) ------------------------------------------------
    def _ask_name(self, title: str, prompt: str, text: str = "") -> str | None:
        name, ok = QInputDialog.getText(self, title, prompt, QLineEdit.EchoMode.Normal, text)
        return name.strip() if ok and name.strip() else None

    def _ask_open_path(self, title: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self, title, "", _JSON_FILTER)
        return path or None

    def _ask_save_path(self, title: str, suggestion: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, title, suggestion, _JSON_FILTER)
        return path or None

    def _confirm(self, title: str, question: str) -> bool:
        answer = QMessageBox.question(self, title, question)
        return answer == QMessageBox.StandardButton.Yes

    def _show_error(self, title: str, message: str) -> None:
        QMessageBox.warning(self, title, message)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange and getattr(self, "_presets", None):
            self.refresh()  # the padlocks are drawn in the palette's colours
        super().changeEvent(event)


def _plain(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    text = str(exc)
    return text[:1].upper() + text[1:]


def _file_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_ " else "-" for c in name).strip()
    return stem or "preset"
