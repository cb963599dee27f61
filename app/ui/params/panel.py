"""The parameter panel: every knob of :class:`~pipeline.params.UpscaleParams`, generated from its
specs, grouped, adapted to the chosen backend and model, and validated on every edit.

Nothing here lists the fields by hand: :meth:`UpscaleParams.specs` gives the editors (see
:mod:`app.ui.params.fields`) and their section (``Spec.group``); the backend's
:func:`~app.backends.capabilities.accepted_fields` decides which are shown. A field a backend does
not take is hidden, not disabled, and keeps its value, so switching back restores it.

Validation builds ``UpscaleParams`` from the editors (microseconds) and adds the checks only the
window can make before a run (:mod:`app.ui.params.checks`: a mask or LoRA file that does not
exist, a link a provider cannot fetch, a prompt tag that does not parse, a scale the backend
refuses). Each problem is shown under its field and listed, with a link to it, at the top;
``validity_changed`` lets the window disable Upscale while any remains.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.backends import capabilities as caps
from app.ui.params.checks import FAITHFUL_FIELDS, window_checks
from app.ui.params.cog_servers import CogServerList
from app.ui.params.fields import SeedEditor, make_editor
from app.ui.params.look import FieldRow, Section, error_color, field_label
from pipeline.errors import FieldError, ParamsError
from pipeline.params import UpscaleParams, random_seed

__all__ = ["ParamsPanel"]

# A field that means something only while a switch is on.
_DEPENDS = {"downscaling_resolution": "downscaling"}
_SECTIONS = (("essentials", ""), ("style", "Style and model"), ("advanced", "Advanced"))


class ParamsPanel(QWidget):
    """The parameter editor. ``params()`` is what a run would use; the seed is ``None`` while
    unlocked (a fresh one per run, drawn by :meth:`params_for_run`)."""

    changed = Signal()
    validity_changed = Signal(bool)
    backend_changed = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Parameters")
        self._backend: tuple[str, str] = ("local", "")
        self._errors: dict[str, str] = {}
        self._params: UpscaleParams | None = None
        self._valid = True
        self.rows: dict[str, FieldRow] = {}
        self.labels: dict[str, QLabel] = {}
        self.sections: dict[str, Section] = {}
        self._section_of: dict[str, str] = {}

        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(4)
        outer.addLayout(self._build_backend_row())
        self.cog_servers = CogServerList()  # shown, and asked, while Cog is chosen
        self.cog_servers.hide()
        outer.addWidget(self.cog_servers)
        self.ray_state = QLabel()  # shown while the Ray cluster is chosen
        self.ray_state.setWordWrap(True)
        self.ray_state.hide()
        outer.addWidget(self.ray_state)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.linkActivated.connect(self.focus_field)
        self.summary.hide()
        outer.addWidget(self.summary)

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 4, 0)
        column.setSpacing(6)
        column.addWidget(self._build_faithful_note())
        for group, title in _SECTIONS:
            section = Section(title, expanded=group != "advanced")
            self.sections[group] = section
            column.addWidget(section)
        column.addStretch(1)
        self._build_rows()
        self.scroll_area = QScrollArea()  # not ``self.scroll``: that would hide QWidget.scroll()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QScrollArea.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(content)
        outer.addWidget(self.scroll_area, 1)
        bar = self.scroll_area.verticalScrollBar().sizeHint().width()
        self.scroll_area.setMinimumWidth(content.minimumSizeHint().width() + bar)

        footer = QHBoxLayout()
        footer.addStretch(1)
        self.reset_all_button = QPushButton("Reset all")
        self.reset_all_button.setAccessibleName("Reset all parameters")
        self.reset_all_button.setToolTip("Put every parameter back to its default")
        self.reset_all_button.clicked.connect(self.reset_all)
        footer.addWidget(self.reset_all_button)
        outer.addLayout(footer)

        for keys, slot in (("Ctrl+R", self.randomize_seed), ("Ctrl+L", self.toggle_seed_lock)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(slot)

        self._fill_backends()
        self._adapt()
        self._validate()

    # --- construction -------------------------------------------------------------------
    def _build_backend_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        label = QLabel("Run on")
        self.engine_combo = QComboBox()
        self.engine_combo.setAccessibleName("Backend")
        self.engine_combo.setToolTip("Where the upscale runs: this computer or a hosted service")
        label.setBuddy(self.engine_combo)
        self.model_combo = QComboBox()
        self.model_combo.setAccessibleName("Model")
        self.model_combo.setToolTip("Which of the service's upscaling models to use")
        row.addWidget(label)
        row.addWidget(self.engine_combo, 1)
        row.addWidget(self.model_combo, 1)
        self.engine_combo.activated.connect(self._engine_picked)
        self.model_combo.activated.connect(self._model_picked)
        return row

    def _build_faithful_note(self) -> QWidget:
        self.faithful_note = QWidget()
        layout = QHBoxLayout(self.faithful_note)
        layout.setContentsMargins(4, 2, 4, 2)
        text = QLabel(
            "Creative mode only: the greyed settings. Faithful mode runs the pre-upscaler alone."
        )
        text.setWordWrap(True)
        self.faithful_text = text
        self.creative_button = QPushButton("Use creative mode")
        self.creative_button.setAccessibleName("Switch to creative mode")
        self.creative_button.setToolTip("Set Mode to creative: the Clarity diffusion pass on top")
        self.creative_button.clicked.connect(self._use_creative)
        layout.addWidget(text, 1)
        layout.addWidget(self.creative_button)
        return self.faithful_note

    def _build_rows(self) -> None:
        specs = list(UpscaleParams.specs())

        def order(item: tuple[str, Any, Any]) -> int:
            # Essentials read best as the numbers first, then the prompt, then the seed.
            name, spec, _ = item
            if spec.group != "essentials" or spec.kind in (int, float):
                return 2 if name == "seed" else 0
            return 1

        for name, spec, default in sorted(specs, key=order):
            editor = make_editor(name, spec, default)
            row = FieldRow(editor)
            label = QLabel(field_label(name))
            label.setBuddy(editor.focus_widget())
            label.setToolTip(editor.toolTip())
            group = spec.group if spec.group in self.sections else "advanced"
            self.sections[group].form.addRow(label, row)
            self.rows[name], self.labels[name], self._section_of[name] = row, label, group
            editor.edited.connect(self._on_edited)
        # One label column for all sections, so the editors line up across them.
        width = max(label.sizeHint().width() for label in self.labels.values())
        for label in self.labels.values():
            label.setMinimumWidth(width)
        seed_editor = self.rows["seed"].editor
        assert isinstance(seed_editor, SeedEditor)  # make_editor's choice for "seed"
        self.seed_editor = seed_editor

    def _fill_backends(self) -> None:
        self.engine_combo.clear()
        for info in caps.backends():
            self.engine_combo.addItem(info.label, info.name)
            tip = "Runs on this computer" if not info.remote else f"Runs at {info.label}"
            if info.needs_key:
                tip += " (needs an API key in Settings)"
            self.engine_combo.setItemData(
                self.engine_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        self.engine_combo.setCurrentIndex(max(0, self.engine_combo.findData(self._backend[0])))
        self._fill_models()

    def _fill_models(self) -> None:
        name, model = self._backend
        info = caps.backend_info(name)
        self.model_combo.clear()
        for model_id in (*info.models, *([model] if model and model not in info.models else [])):
            self.model_combo.addItem(caps.model_label(name, model_id), model_id)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, model_id, Qt.ItemDataRole.ToolTipRole
            )
        index = self.model_combo.findData(model)
        self.model_combo.setCurrentIndex(max(0, index))
        self.model_combo.setVisible(self.model_combo.count() > 1)

    # --- backend ------------------------------------------------------------------------
    def backend(self) -> tuple[str, str]:
        """``(backend name, model id)``; the model is ``""`` for the local engine."""
        return self._backend

    def set_backend(self, name: str, model: str = "") -> None:
        """Choose a backend and model; an unknown backend is ignored and an unknown model
        falls back to the backend's default (settings may name one a newer version dropped)."""
        try:
            info = caps.backend_info(name)
        except KeyError:
            return
        if model and model not in info.models:
            try:  # e.g. a Replicate model pinned to a version: the same inputs
                caps.accepted_fields(name, model)
            except (KeyError, ValueError):
                model = ""
        if not model and info.models:
            model = info.models[0]
        if (name, model) == self._backend:
            return
        self._backend = (name, model)
        self.engine_combo.setCurrentIndex(max(0, self.engine_combo.findData(name)))
        self.cog_servers.setVisible(name == "cog")
        if name == "ray":
            from app.backends.ray import cluster_state  # only when the cluster is chosen

            state, words = cluster_state()
            self.ray_state.setProperty("state", state)
            self.ray_state.setText(f"Ray cluster: {words}")
        self.ray_state.setVisible(name == "ray")
        self._fill_models()
        self._adapt()
        self._validate()
        self.backend_changed.emit(name, model)

    def _engine_picked(self, index: int) -> None:
        name = self.engine_combo.itemData(index)
        models = caps.backend_info(name).models
        keep = self._backend[1] if name == self._backend[0] else ""
        self.set_backend(name, keep or (models[0] if models else ""))

    def _model_picked(self, index: int) -> None:
        self.set_backend(self._backend[0], self.model_combo.itemData(index) or "")

    def _accepted(self) -> frozenset[str]:
        return caps.accepted_fields(*self._backend)

    # --- what is shown ------------------------------------------------------------------
    def _faithful(self) -> bool:
        return "mode" in self._accepted() and self.rows["mode"].editor.value() == "faithful"

    def field_visible(self, name: str) -> bool:
        """Whether the backend shows ``name`` (its section may still be collapsed)."""
        return self.sections[self._section_of[name]].form.isRowVisible(self.rows[name])

    def relevant(self, name: str) -> bool:
        """Whether ``name`` is shown and enabled, i.e. changes what the run does."""
        return name in self._accepted() and self.rows[name].editor.isEnabled()

    def _adapt(self) -> None:
        accepted = self._accepted()
        faithful = self._faithful()
        for name, row in self.rows.items():
            section = self.sections[self._section_of[name]]
            section.form.setRowVisible(row, name in accepted)
            creative_only = faithful and name not in FAITHFUL_FIELDS
            switch = _DEPENDS.get(name)
            enabled = not creative_only and (
                switch is None or bool(self.rows[switch].editor.value())
            )
            row.editor.setEnabled(enabled)
            self.labels[name].setEnabled(enabled)
            row.editor.set_hint("Creative mode only." if creative_only else "")
        for group, section in self.sections.items():
            section.setVisible(any(self._section_of.get(n) == group for n in accepted))
        self.faithful_note.setVisible(faithful)

    def _use_creative(self) -> None:
        editor = self.rows["mode"].editor
        editor.set_value("creative")
        editor.edited.emit()

    # --- values -------------------------------------------------------------------------
    def params(self) -> UpscaleParams:
        """The parameters as edited; raises :class:`ParamsError` naming every flagged field."""
        if self._params is None or self._errors:
            raise ParamsError(
                [FieldError(n, self._raw(n), m) for n, m in self._errors.items()]
                or FieldError("params", None, "valid parameters")
            )
        return self._params

    def set_params(self, params: UpscaleParams) -> None:
        """Show ``params`` (a preset, a history run to branch from, the last session); the
        backend stays as it is. A ``None`` seed unlocks it."""
        data = params.to_dict()
        for name, row in self.rows.items():
            group, _, leaf = name.rpartition(".")
            row.editor.set_value((data[group] if group else data)[leaf])
        self._adapt()
        self._validate()
        self.changed.emit()

    def reset_all(self) -> None:
        self.set_params(UpscaleParams())

    def errors(self) -> dict[str, str]:
        """Field name → what is wrong with it, for every flagged field."""
        return dict(self._errors)

    def is_valid(self) -> bool:
        return self._valid

    def params_for_run(self) -> UpscaleParams:
        """The parameters a run should use: with a fresh random seed when the seed is unlocked
        (shown in the seed field, so the person sees which one the run got)."""
        params = self.params()
        if self.seed_locked():
            return params
        seed = random_seed()
        self.seed_editor.show_seed(seed)
        return params.replace(seed=seed)

    # --- seed ---------------------------------------------------------------------------
    def seed_locked(self) -> bool:
        return self.seed_editor.locked()

    def set_seed_locked(self, locked: bool) -> None:
        self.seed_editor.set_locked(locked)

    def toggle_seed_lock(self) -> None:
        self.set_seed_locked(not self.seed_locked())

    def randomize_seed(self) -> None:
        """A new random seed, kept (locked) so the next run uses the seed shown."""
        self.seed_editor.randomize()
        self.seed_editor.set_locked(True)

    # --- validation ---------------------------------------------------------------------
    def _raw(self, name: str) -> Any:
        return self.rows[name].editor.value()

    def _on_edited(self) -> None:
        self._adapt()
        self._validate()
        self.changed.emit()

    def _validate(self) -> None:
        # A value that cannot be used is flagged where it matters now; in a field this backend
        # or mode ignores it only falls back to the default, so it never blocks a run.
        data: dict[str, Any] = {}
        errors: dict[str, str] = {}

        def put(name: str, value: Any) -> None:
            group, _, leaf = name.rpartition(".")
            (data.setdefault(group, {}) if group else data)[leaf] = value

        for name, row in self.rows.items():
            problem = row.editor.input_error()
            if problem and self.relevant(name):
                errors[name] = problem
            put(name, row.editor.default if problem else row.editor.value())
        checkable: UpscaleParams | None = None
        for _attempt in range(2):
            try:
                checkable = UpscaleParams.from_dict(data)
                break
            except ParamsError as exc:
                for fe in exc.errors:
                    if fe.field not in self.rows or self.relevant(fe.field):
                        errors.setdefault(fe.field, f"Must be {fe.allowed}")
                    if fe.field in self.rows:  # so the other fields can still be checked
                        put(fe.field, self.rows[fe.field].editor.default)
        self._params = checkable
        notes: dict[str, str] = {}
        if checkable is not None:
            found, notes = window_checks(checkable, *self._backend, relevant=self.relevant)
            for name, message in found.items():
                errors.setdefault(name, message)
        self._errors = errors
        for name, row in self.rows.items():
            row.set_error(errors.get(name))
            row.set_note(notes.get(name))
            row.refresh_reset()
        self._show_summary()
        valid = not errors
        if valid != self._valid:
            self._valid = valid
            self.validity_changed.emit(valid)

    def _show_summary(self) -> None:
        if not self._errors:
            self.summary.hide()
            return
        links = ", ".join(f'<a href="{n}">{field_label(n)}</a>' for n in self._errors)
        count = len(self._errors)
        noun = "setting needs" if count == 1 else "settings need"
        self.summary.setText(f"⚠ {count} {noun} fixing: {links}")
        palette = self.summary.palette()
        palette.setColor(QPalette.ColorRole.WindowText, error_color(self.palette()))
        self.summary.setPalette(palette)
        self.summary.setToolTip(
            "\n".join(f"{field_label(n)}: {m}" for n, m in self._errors.items())
        )
        self.summary.show()

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "summary"):
            self._show_summary()  # its colour comes from the palette
        super().changeEvent(event)

    def focus_field(self, name: str) -> None:
        """Open the field's section, scroll to it and put the cursor in it."""
        if name not in self.rows:
            return
        self.sections[self._section_of[name]].set_expanded(True)
        row = self.rows[name]
        self.scroll_area.ensureWidgetVisible(row)
        row.editor.focus_widget().setFocus(Qt.FocusReason.OtherFocusReason)
