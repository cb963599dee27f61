"""The window's menus and keyboard shortcuts, and the dialogs they open.

Every main action has a shortcut; Help ▸ Keyboard shortcuts lists them all (including the
panel-scoped keys of the compare view, queue and history), generated from the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtGui import QAction, QActionGroup, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QDialog, QMessageBox

from app.ui.theme import THEMES, apply_theme

if TYPE_CHECKING:
    from app.ui.main_window import MainWindow

__all__ = ["PANEL_KEYS", "WindowActions", "build_actions"]

# Keys that work inside one panel (Qt scopes them there); listed in the shortcuts help.
PANEL_KEYS: tuple[tuple[str, str, str], ...] = (
    ("Compare", "0 / 1", "Fit the window / 100 % (pixel-exact)"),
    ("Compare", "+ / −, wheel", "Zoom (the wheel zooms around the cursor)"),
    ("Compare", "← / →", "Move the divider (Shift: bigger steps)"),
    ("Compare", "S / D / T", "Slider / side by side / toggle"),
    ("Compare", "Space", "Swap before and after (toggle mode)"),
    ("Parameters", "Ctrl+R / Ctrl+L", "New random seed / lock the seed"),
    ("Presets", "Ctrl+S", "Save the parameters as a preset"),
    ("Queue", "Delete / R", "Cancel / retry the selected job"),
    ("History", "Return / Delete", "Open in compare / delete the run"),
    ("History", "Ctrl+Shift+R", "Re-run with the same seed"),
    ("Inputs", "Delete", "Remove the selected images from the strip"),
)


class WindowActions:
    """The actions of the menu bar, reachable by keyboard."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.all: list[QAction] = []
        self._settings_open = False

    def make(
        self,
        text: str,
        slot: Callable[[], object],
        shortcut: QKeySequence | str | None = None,
        tip: str = "",
    ) -> QAction:
        action = QAction(text, self.window)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setToolTip(tip or text.replace("&", "").rstrip("…"))
        action.triggered.connect(lambda _checked=False: slot())
        self.window.addAction(action)  # shortcuts work whichever panel has focus
        self.all.append(action)
        return action

    # --- dialogs --------------------------------------------------------------------------------
    def open_settings(self) -> None:
        from app.ui.settings_dialog import SettingsDialog

        w = self.window
        dialog = SettingsDialog(w.session.settings, w)
        keys_changed: list[str] = []
        dialog.key_changed.connect(keys_changed.append)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            w.session.apply_settings(dialog.result_settings())
            w.status.say("Settings saved")
        elif keys_changed:  # keys are saved at once, even when the dialog is cancelled
            w.session.reload_backends()
        w._update_run_info()

    def open_models(self) -> None:
        from app.ui.model_manager import ModelManagerDialog

        w = self.window
        dialog = ModelManagerDialog(list(w.session.settings.model_dirs), w)
        dialog.model_dirs_changed.connect(w.session.set_model_dirs)
        dialog.exec()
        w.session.spawn(w.session.check_models())

    def about(self) -> None:
        from app.ui.about import show_about

        show_about(self.window)

    def shortcuts_help(self) -> None:
        rows = [
            f"<tr><td>{a.text().replace('&', '').rstrip('…')}</td>"
            f"<td><b>{a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)}</b></td></tr>"
            for a in self.all
            if not a.shortcut().isEmpty()
        ]
        rows += [
            f"<tr><td>{where}: {what}</td><td><b>{keys}</b></td></tr>"
            for where, keys, what in PANEL_KEYS
        ]
        box = QMessageBox(self.window)
        box.setWindowTitle("Keyboard shortcuts")
        box.setText("<table cellspacing=6>" + "".join(rows) + "</table>")
        box.exec()

    def rerun_selected(self, *, same_seed: bool = True) -> None:
        records = self.window.history.selected_records()
        if not records:
            self.window.status.say("Select a run in the history first", error=True)
            return
        for record in records:
            self.window.rerun(record, same_seed)

    def set_theme(self, name: str) -> None:
        self.window.state.theme = name
        apply_theme(name)

    def paste(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None or not self.window.intake.take(mime):
            self.window.status.say("The clipboard holds no image, file or image link", error=True)


def build_actions(w: MainWindow) -> WindowActions:
    acts = WindowActions(w)
    bar = w.menuBar()
    std = QKeySequence.StandardKey

    file = bar.addMenu("&File")
    file.addAction(acts.make("&Open images…", w.intake.open_dialog, std.Open))
    file.addAction(acts.make("Add a &folder…", w.intake.open_folder_dialog, "Ctrl+Shift+O"))
    file.addAction(acts.make("&Paste image or link", acts.paste, std.Paste))
    file.addAction(acts.make("&Clear inputs", w.inputs.clear_all, "Ctrl+Shift+Backspace"))
    file.addSeparator()
    file.addAction(acts.make("&Settings…", acts.open_settings, "Ctrl+,"))
    file.addSeparator()
    file.addAction(acts.make("&Quit", w.close, "Ctrl+Q"))

    run = bar.addMenu("&Run")
    acts.upscale = acts.make(
        "&Upscale", w.upscale, "Ctrl+Return", "Upscale the inputs (Ctrl+Return)"
    )
    run.addAction(acts.upscale)
    run.addAction(acts.make("Re-run &with the same seed", acts.rerun_selected))
    run.addAction(
        acts.make("Re-run with a &new seed", lambda: acts.rerun_selected(same_seed=False))
    )

    view = bar.addMenu("&View")
    for text, mode, key in (
        ("&Slider", "slider", "Ctrl+Alt+1"),
        ("Side &by side", "side", "Ctrl+Alt+2"),
        ("&Toggle", "toggle", "Ctrl+Alt+3"),
    ):
        view.addAction(acts.make(text, lambda m=mode: w.compare.set_mode(m), key))
    view.addSeparator()
    view.addAction(acts.make("&Fit to window", w.compare.fit, "Ctrl+0"))
    view.addAction(acts.make("&Actual pixels (100 %)", w.compare.actual_size, "Ctrl+Alt+0"))
    view.addSeparator()
    view.addAction(acts.make("Focus &parameters", w.params.setFocus, "Ctrl+1"))
    view.addAction(acts.make("Focus &queue", lambda: _show(w.queue_dock, w.queue), "Ctrl+2"))
    view.addAction(acts.make("Focus &history", lambda: _show(w.history_dock, w.history), "Ctrl+3"))
    view.addAction(acts.make("Search &history", w.history.focus_search, std.Find))
    view.addSeparator()
    for dock in (w.params_dock, w.queue_dock, w.history_dock):
        view.addAction(dock.toggleViewAction())
    theme = view.addMenu("&Appearance")
    group = QActionGroup(w)
    for name in THEMES:
        action = QAction(name.capitalize(), w, checkable=True)
        action.setChecked(name == w.state.theme)
        action.triggered.connect(lambda _c=False, n=name: acts.set_theme(n))
        group.addAction(action)
        theme.addAction(action)

    tools = bar.addMenu("&Tools")
    tools.addAction(acts.make("&Model manager…", acts.open_models, "Ctrl+Shift+M"))
    w.status.models_clicked.connect(acts.open_models)

    help_menu = bar.addMenu("&Help")
    help_menu.addAction(acts.make("&Keyboard shortcuts", acts.shortcuts_help, "Ctrl+/"))
    help_menu.addAction(acts.make("&About Clarifier", acts.about, "F1"))
    return acts


def _show(dock, widget) -> None:  # type: ignore[no-untyped-def]
    dock.show()
    dock.raise_()
    widget.setFocus()
