"""Settings: providers (keys, URLs, limits), model folders, the local engine and output names.

The dialog edits a copy of :class:`~app.store.settings.Settings` and hands it back through
:meth:`SettingsDialog.result_settings`; the window saves and applies it. ``Settings.validate``
is the one judge of what is valid: each field is checked by validating a Settings that differs
from the defaults in that field alone, so the message appears beside the field, and OK stays
disabled while anything is invalid. API keys are the exception: they go to the keyring at once
(see :mod:`app.ui.dialogs.settings_providers`) and never into the settings.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QStyle,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.store import naming
from app.store.settings import PRECISIONS, Settings
from app.ui.dialogs import model_tasks as tasks
from app.ui.dialogs.model_tasks import friendly_error, run_in_pool
from app.ui.dialogs.settings_providers import ProviderPage, provider_infos, refresh_keys
from pipeline.params import UpscaleParams

__all__ = ["SettingsDialog"]

DEVICES = ("auto", "cpu", "cuda", "mps")
# Settings.validate does not check the device yet; this is the form its comment documents.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_PRECISION_HELP = {
    "auto": "auto (fp16 on CUDA, fp32 elsewhere)",
    "fp16": "fp16 (half: fastest on NVIDIA GPUs)",
    "bf16": "bf16 (recent GPUs; avoids fp16 overflow)",
    "fp32": "fp32 (full: slowest, most memory)",
}
_EXAMPLE = Path("photo.jpg")
_V = TypeVar("_V")


def _named(widget: QWidget, name: str, tip: str) -> Any:
    widget.setAccessibleName(name)
    widget.setToolTip(tip)
    return widget


def _set_or_drop(table: dict[str, _V], key: str, value: _V | None) -> None:
    """``table[key] = value``, or no entry at all while the value is empty (the default)."""
    if value:
        table[key] = value
    else:
        table.pop(key, None)


def _error_label(name: str) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setAccessibleName(name)
    label.hide()
    return label


def _field_error(**changes: Any) -> str:
    """What Settings.validate says of this one field, or ""."""
    try:
        Settings(**changes).validate()
    except ValueError as exc:
        text = str(exc)
        return text[:1].upper() + text[1:]
    return ""


class SettingsDialog(QDialog):
    """Edit a Settings. After ``exec()`` returns Accepted, :meth:`result_settings` holds the
    edited copy (the caller saves it with ``save_settings`` and applies it). ``key_changed(name)``
    fires when a provider's key was saved or removed, whatever the dialog's outcome, since keys
    are stored at once: a backend built with the old key should be rebuilt."""

    key_changed = Signal(str)

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setAccessibleName("Settings")
        self.resize(760, 560)
        self._original = settings
        self._errors: dict[str, str] = {}

        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("Settings sections")
        self.tabs.setToolTip("Ctrl+Tab moves to the next section")
        for page, title, tip in (
            (self._providers_tab(), "Providers", "API keys, addresses and limits of each provider"),
            (self._models_tab(), "Models", "Folders with models you already have"),
            (self._engine_tab(), "Engine", "How the local engine runs on this computer"),
            (self._output_tab(), "Output", "Where results go and how they are named"),
        ):
            self.tabs.setTabToolTip(self.tabs.addTab(page, title), tip)

        self.problem = _error_label("Settings problem")
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        _named(self.ok_button, "OK", "Keep these settings")
        cancel = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        _named(cancel, "Cancel", "Forget the changes (saved API keys stay saved)")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)

        self._load(settings)
        self._validate()
        refresh_keys(list(self.provider_pages.values()))

    # --- pages --------------------------------------------------------------------------------
    def _providers_tab(self) -> QWidget:
        self.provider_list = _named(
            QListWidget(), "Providers", "Choose a provider to set its key, address and limits"
        )
        self.provider_stack = QStackedWidget()
        self.provider_pages: dict[str, ProviderPage] = {}
        for info in provider_infos():
            page = ProviderPage(info)
            page.changed.connect(self._validate)
            page.key_changed.connect(self.key_changed)
            self.provider_pages[info.name] = page
            self.provider_stack.addWidget(page)
            item = QListWidgetItem(info.label)
            item.setData(Qt.ItemDataRole.UserRole, info.name)
            self.provider_list.addItem(item)
        self.provider_list.currentRowChanged.connect(self.provider_stack.setCurrentIndex)
        self.provider_list.setCurrentRow(0)
        self.provider_list.setMaximumWidth(180)
        self.provider_list.setIconSize(QSize(16, 16))
        tab = QWidget()
        row = QHBoxLayout(tab)
        row.addWidget(self.provider_list)
        row.addWidget(self.provider_stack, 1)
        return tab

    def _models_tab(self) -> QWidget:
        self.dirs_list = _named(
            QListWidget(),
            "Model folders",
            "Folders searched for creative-mode models, in this order, before Clarifier's own",
        )
        add = _named(QPushButton("Add folder…"), "Add model folder", "Add any folder of models")
        self.remove_dir_button = _named(
            QPushButton("Remove"), "Remove model folder", "Stop searching the selected folder"
        )
        detect = _named(
            QPushButton("Use my A1111/ComfyUI folder…"),
            "Use my A1111 or ComfyUI folder",
            "Choose an A1111 or ComfyUI install: its models are found and used, not copied",
        )
        self.detect_button = detect
        add.clicked.connect(self._add_dir)
        self.remove_dir_button.clicked.connect(self._remove_dir)
        detect.clicked.connect(self._detect_dir)
        self.dirs_list.itemSelectionChanged.connect(
            lambda: self.remove_dir_button.setEnabled(bool(self.dirs_list.selectedItems()))
        )
        self.remove_dir_button.setEnabled(False)
        self.dirs_summary = QLabel(
            "Clarifier also looks in its own models folder, where downloads go."
        )
        self.dirs_summary.setWordWrap(True)
        self.dirs_summary.setAccessibleName("Model folder summary")
        buttons = QHBoxLayout()
        for button in (detect, add, self.remove_dir_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        tab = QWidget()
        column = QVBoxLayout(tab)
        column.addWidget(QLabel("Folders with Stable Diffusion models you already have:"))
        column.addWidget(self.dirs_list, 1)
        column.addLayout(buttons)
        column.addWidget(self.dirs_summary)
        return tab

    def _engine_tab(self) -> QWidget:
        self.device_combo = _named(
            QComboBox(),
            "Device",
            "Where the local engine runs: auto picks the GPU if there is one; type cuda:1 for "
            "a second NVIDIA GPU",
        )
        self.device_combo.setEditable(True)
        self.device_combo.addItems(DEVICES)
        self.device_combo.currentTextChanged.connect(self._validate)
        self.device_error = _error_label("Device problem")
        self.precision_combo = _named(
            QComboBox(), "Precision", "The number format the models compute in"
        )
        for value in PRECISIONS:
            self.precision_combo.addItem(_PRECISION_HELP.get(value, value), value)
        self.tile_auto = _named(
            QCheckBox("Automatic"),
            "Automatic pre-upscaler tile",
            "Let Clarifier choose the pre-upscaler's tile size for the device",
        )
        self.tile_spin = _named(
            QSpinBox(),
            "Pre-upscaler tile size",
            "Pixels per tile of the ESRGAN pre-upscale; smaller tiles need less memory",
        )
        self.tile_spin.setRange(32, 4096)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setSuffix(" px")
        self.tile_auto.toggled.connect(lambda auto: self.tile_spin.setEnabled(not auto))
        self.tile_auto.toggled.connect(self._validate)
        self.tile_spin.valueChanged.connect(self._validate)
        tile = QHBoxLayout()
        tile.addWidget(self.tile_auto)
        tile.addWidget(self.tile_spin, 1)
        self.cap_spin = _named(
            QDoubleSpinBox(),
            "Output cap",
            "The largest output Clarifier makes, in megapixels; raise it if memory allows",
        )
        self.cap_spin.setRange(0.1, 2000.0)
        self.cap_spin.setDecimals(1)
        self.cap_spin.setSuffix(" MP")
        self.cap_spin.valueChanged.connect(self._validate)
        self.cap_hint = QLabel()
        self.cap_hint.setAccessibleName("Output cap hint")
        tab = QWidget()
        form = QFormLayout(tab)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_error)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Pre-upscaler tile", tile)
        form.addRow("Output cap", self.cap_spin)
        form.addRow("", self.cap_hint)
        return tab

    def _output_tab(self) -> QWidget:
        self.output_edit = _named(
            QLineEdit(), "Output folder", "Where results are saved; empty = next to each input"
        )
        self.output_edit.setPlaceholderText("Next to each input image")
        browse = _named(QPushButton("Browse…"), "Choose output folder", "Choose the folder")
        browse.clicked.connect(self._browse_output)
        folder = QHBoxLayout()
        folder.addWidget(self.output_edit, 1)
        folder.addWidget(browse)
        self.template_edit = _named(
            QLineEdit(),
            "File-name template",
            "How outputs are named; the extension follows the output format",
        )
        self.template_edit.textChanged.connect(self._validate)
        self.template_error = _error_label("File-name template problem")
        self.template_example = QLabel()
        _named(self.template_example, "File-name example", "How photo.jpg's result would be named")
        self.template_example.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fields_list = _named(
            QListWidget(),
            "Template fields",
            "Double-click or press Enter to insert a field at the cursor",
        )
        for name, help_text in naming.FIELDS.items():
            item = QListWidgetItem(f"{{{name}}} — {help_text}")
            item.setData(Qt.ItemDataRole.UserRole, name)
            self.fields_list.addItem(item)
        self.fields_list.itemActivated.connect(self._insert_field)
        tab = QWidget()
        form = QFormLayout(tab)
        form.addRow("Output folder", folder)
        form.addRow("File names", self.template_edit)
        form.addRow("", self.template_error)
        form.addRow("Example", self.template_example)
        form.addRow("Fields", self.fields_list)
        return tab

    # --- loading and collecting ---------------------------------------------------------------
    def _load(self, s: Settings) -> None:
        for name, page in self.provider_pages.items():
            page.load(
                s.provider_urls.get(name, ""),
                s.provider_rpm.get(name),
                s.provider_concurrency.get(name),
            )
        self.dirs_list.clear()
        self.dirs_list.addItems(list(s.model_dirs))
        self.device_combo.setCurrentText(s.device)
        index = self.precision_combo.findData(s.precision)
        self.precision_combo.setCurrentIndex(max(index, 0))
        self.tile_auto.setChecked(s.tile is None)
        self.tile_spin.setValue(s.tile or 512)
        self.tile_spin.setEnabled(s.tile is not None)
        self.cap_spin.setValue(s.max_output_megapixels)
        self.output_edit.setText(s.output_dir)
        self.template_edit.setText(s.filename_template)

    def _collect(self) -> Settings:
        """The form's values over the original settings (unknown providers' entries kept)."""
        urls = dict(self._original.provider_urls)
        rpm = dict(self._original.provider_rpm)
        concurrency = dict(self._original.provider_concurrency)
        for name, page in self.provider_pages.items():
            _set_or_drop(urls, name, page.url())
            _set_or_drop(rpm, name, page.rpm())
            _set_or_drop(concurrency, name, page.concurrency())
        dirs = tuple(self.dirs_list.item(i).text() for i in range(self.dirs_list.count()))
        return dataclasses.replace(
            self._original,
            max_output_megapixels=round(self.cap_spin.value(), 1),
            device=self.device_combo.currentText().strip(),
            precision=self.precision_combo.currentData(),
            tile=None if self.tile_auto.isChecked() else self.tile_spin.value(),
            model_dirs=dirs,
            output_dir=self.output_edit.text().strip(),
            filename_template=self.template_edit.text(),
            provider_urls=urls,
            provider_rpm=rpm,
            provider_concurrency=concurrency,
        )

    def result_settings(self) -> Settings:
        """The edited settings (valid once the dialog was accepted)."""
        return self._collect()

    def errors(self) -> dict[str, str]:
        """The invalid fields and what is wrong with each (empty when OK is enabled)."""
        return dict(self._errors)

    # --- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        errors: dict[str, str] = {}
        for name, page in self.provider_pages.items():
            message = _field_error(provider_urls={name: page.url()}) if page.url() else ""
            page.show_url_error(message)
            if message:
                errors[f"provider_urls.{name}"] = message
        device = self.device_combo.currentText().strip()
        if not _DEVICE.fullmatch(device):
            errors["device"] = (
                f"Device {device!r} is not one of auto, cpu, cuda, cuda:N (a GPU number) or mps"
            )
        template = self.template_edit.text()
        if message := _field_error(filename_template=template):
            errors["filename_template"] = message
        self._show(self.device_error, self.device_combo, errors.get("device", ""))
        self._show(self.template_error, self.template_edit, errors.get("filename_template", ""))
        self._render_example(template, "filename_template" in errors)
        megapixels = self.cap_spin.value()
        side = int((megapixels * 1_000_000) ** 0.5)
        self.cap_hint.setText(f"About {side:,} × {side:,} pixels at most")
        problem = ""
        if not errors:
            try:
                self._collect().validate()
            except ValueError as exc:  # a rule no field shows (should not happen)
                problem = str(exc)
                errors["settings"] = problem
        self._errors = errors
        self.problem.setText(f"⚠ {problem}" if problem else "")
        self.problem.setVisible(bool(problem))
        self.ok_button.setEnabled(not errors)
        self._mark_tabs()

    def _show(self, label: QLabel, field: QWidget, message: str) -> None:
        label.setText(f"⚠ {message}" if message else "")
        label.setVisible(bool(message))
        field.setAccessibleDescription(message)
        field.setProperty("invalid", bool(message))

    def _render_example(self, template: str, invalid: bool) -> None:
        if invalid:
            self.template_example.setText("—")
            return
        try:
            names = [
                naming.render_name(template, _EXAMPLE, UpscaleParams(mode=mode))
                for mode in ("faithful", "creative")
            ]
        except (ValueError, KeyError) as exc:
            self.template_example.setText(f"⚠ {exc}")
            return
        self.template_example.setText(f"{_EXAMPLE.name} → {names[0]}  or  {names[1]}")

    def _mark_tabs(self) -> None:
        warn = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        blank = QPixmap(16, 16)
        blank.fill(Qt.GlobalColor.transparent)  # keeps the provider names aligned
        fields = {
            0: [k for k in self._errors if k.startswith("provider_urls.")],
            2: [k for k in self._errors if k == "device"],
            3: [k for k in self._errors if k == "filename_template"],
        }
        for tab in range(self.tabs.count()):
            self.tabs.setTabIcon(tab, warn if fields.get(tab) else QIcon())
        for row in range(self.provider_list.count()):
            item = self.provider_list.item(row)
            name = item.data(Qt.ItemDataRole.UserRole)
            item.setIcon(warn if f"provider_urls.{name}" in self._errors else QIcon(blank))

    def accept(self) -> None:
        self._validate()
        if not self._errors:
            super().accept()
            return
        first = next(iter(self._errors))  # bring the first problem into view
        if first.startswith("provider_urls."):
            self.tabs.setCurrentIndex(0)
            names = list(self.provider_pages)
            self.provider_list.setCurrentRow(names.index(first.split(".", 1)[1]))
            self.provider_pages[first.split(".", 1)[1]].url_edit.setFocus()
        elif first == "device":
            self.tabs.setCurrentIndex(2)
            self.device_combo.setFocus()
        elif first == "filename_template":
            self.tabs.setCurrentIndex(3)
            self.template_edit.setFocus()

    # --- folders ------------------------------------------------------------------------------
    def _ask_folder(self, title: str, start: str = "") -> str | None:
        folder = QFileDialog.getExistingDirectory(self, title, start or str(Path.home()))
        return folder or None

    def _dirs(self) -> list[str]:
        return [self.dirs_list.item(i).text() for i in range(self.dirs_list.count())]

    def _add_dir(self) -> None:
        folder = self._ask_folder("Add a folder of models")
        if folder and folder not in self._dirs():
            self.dirs_list.addItem(folder)

    def _remove_dir(self) -> None:
        for item in self.dirs_list.selectedItems():
            self.dirs_list.takeItem(self.dirs_list.row(item))

    def _detect_dir(self) -> None:
        folder = self._ask_folder("Choose your A1111 or ComfyUI folder")
        if not folder:
            return
        self.detect_button.setEnabled(False)
        self.dirs_summary.setText(f"Looking in {folder}…")
        run_in_pool(
            lambda: tasks.locate(folder),
            owner=self,
            done=self._detected,
            failed=self._detect_failed,
        )

    def _detected(self, found: tasks.Located) -> None:
        self.detect_button.setEnabled(True)
        summary = tasks.located_summary(found)
        where = str(found.folder.resolve())
        if not tasks.located_anything(found):
            self.dirs_summary.setText(f"{summary} Not added; use Add folder… to add it anyway.")
        elif where in self._dirs():
            self.dirs_summary.setText(f"{summary} It is already in the list.")
        else:
            self.dirs_list.addItem(where)
            self.dirs_summary.setText(f"{summary} Added.")

    def _detect_failed(self, exc: BaseException) -> None:
        self.detect_button.setEnabled(True)
        self.dirs_summary.setText(friendly_error(exc))

    def _browse_output(self) -> None:
        folder = self._ask_folder("Choose the output folder", self.output_edit.text())
        if folder:
            self.output_edit.setText(folder)

    def _insert_field(self, item: QListWidgetItem) -> None:
        self.template_edit.insert(f"{{{item.data(Qt.ItemDataRole.UserRole)}}}")
        self.template_edit.setFocus()
