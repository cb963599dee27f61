"""What the window's menu entries do beyond driving a panel: the dialogs, paste (of inputs and
of parameters), re-run, the theme, and the keyboard shortcuts help.

Every main action has a shortcut; Help ▸ Keyboard shortcuts lists them all (including the
panel-scoped keys of the compare view, queue and history), generated from the same table. The
main window lays the menus out (it owns the panels they drive); the actions here get only what
they touch, passed in explicitly, so they never reach into the window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QMimeData
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QDialog, QMessageBox, QWidget

from app.ui.window.theme import apply_theme
from pipeline.errors import ImageError
from pipeline.io.load import read_parameters_text

if TYPE_CHECKING:
    from app.store.history import RunRecord
    from app.ui.window.session import Session
    from app.ui.window.state import WindowState
    from app.ui.window.status import Say

__all__ = ["PANEL_KEYS", "WindowActions", "clipboard_infotext"]

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
    """The actions of the menu bar, reachable by keyboard.

    ``window`` carries the actions (their shortcuts then work whichever panel has focus) and
    parents the dialogs. ``say`` shows a message in the status bar, ``take`` takes mime data as
    inputs, ``selected_runs`` gives the runs selected in the history, ``rerun`` runs one of
    them again (with the same seed or a new one) and ``apply_infotext`` puts the parameters an
    A1111 infotext describes into the parameter panel.
    """

    def __init__(
        self,
        window: QWidget,
        session: Session,
        state: WindowState,
        *,
        say: Say,
        take: Callable[[QMimeData], bool],
        selected_runs: Callable[[], list[RunRecord]],
        rerun: Callable[[RunRecord, bool], None],
        apply_infotext: Callable[[str], None],
    ) -> None:
        self.window = window
        self.session = session
        self.state = state
        self.all: list[QAction] = []
        self._say = say
        self._take = take
        self._selected_runs = selected_runs
        self._rerun = rerun
        self._apply_infotext = apply_infotext

    def make(
        self,
        text: str,
        slot: Callable[[], object],
        shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
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
        """Settings saved here reach the window through ``Session.settings_changed``."""
        from app.ui.dialogs.settings import SettingsDialog

        dialog = SettingsDialog(self.session.settings, self.window)
        keys_changed: list[str] = []
        dialog.key_changed.connect(keys_changed.append)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.session.apply_settings(dialog.result_settings())
            self._say("Settings saved")
        elif keys_changed:  # keys are saved at once, even when the dialog is cancelled
            self.session.reload_backends()

    def open_models(self) -> None:
        from app.ui.dialogs.model_manager import ModelManagerDialog

        dialog = ModelManagerDialog(list(self.session.settings.model_dirs), self.window)
        dialog.model_dirs_changed.connect(self.session.set_model_dirs)
        dialog.exec()
        self.session.spawn(self.session.check_models())

    def about(self) -> None:
        from app.ui.dialogs.about import show_about

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
        records = self._selected_runs()
        if not records:
            self._say("Select a run in the history first", error=True)
            return
        for record in records:
            self._rerun(record, same_seed)

    def set_theme(self, name: str) -> None:
        self.state.theme = name
        apply_theme(name)

    def paste(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None or not self._take(mime):
            self._say("The clipboard holds no image, file or image link", error=True)

    def paste_parameters(self) -> None:
        """Edit ▸ Paste parameters: the A1111 infotext on the clipboard (its text, or what an
        image file on it carries) into the parameter panel."""
        text = clipboard_infotext(QGuiApplication.clipboard().mimeData())
        if text is None:
            self._say("The clipboard holds no generation parameters (A1111 infotext)", error=True)
            return
        self._apply_infotext(text)


def clipboard_infotext(mime: QMimeData | None) -> str | None:
    """Infotext from the clipboard: the parameters of a copied image file (or of a copied path
    to one), else the copied text itself. None when there is nothing to read."""
    if mime is None:
        return None
    files = (
        [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []
    )
    text = mime.text().strip() if mime.hasText() else ""
    if text and "\n" not in text and len(text) < 4096:
        with contextlib.suppress(OSError, ValueError):
            if Path(text).expanduser().is_file():
                files.append(Path(text).expanduser())
    for path in files:
        with contextlib.suppress(ImageError, OSError):
            found = read_parameters_text(path)
            if found and found.strip():
                return found
    if files:  # a copied file (or its path) without parameters: not a prompt to paste
        return None
    return text or None
