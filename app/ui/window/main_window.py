"""The main window: inputs, the compare view, parameters, queue and history, wired together.

Widgets hold no business logic: jobs go through :class:`~app.ui.window.session.Session` (the
same job controller as the CLI), and each panel only shows state and emits what the person asked
for. This module lays the panels and the menus out and connects them; what the menu entries do
beyond driving a panel (the dialogs, paste, the shortcuts help) is in
:mod:`app.ui.window.actions`, and everything to do with adding inputs (drops, paste, links) in
:mod:`app.ui.window.inputs`. Both get only the few things they use, never the window itself.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.backends.base import JobState
from app.backends.capabilities import restrict
from app.jobs import JobEvent
from app.store.history import RunRecord
from app.ui.compare import CompareToolbar, CompareView
from app.ui.history.panel import HistoryPanel
from app.ui.params.panel import ParamsPanel
from app.ui.params.presets_bar import PresetsBar
from app.ui.queue.panel import QueuePanel
from app.ui.shared.thumbs import ThumbnailLoader
from app.ui.window.actions import WindowActions
from app.ui.window.input_strip import InputStrip
from app.ui.window.inputs import InputIntake, describe_run
from app.ui.window.session import Session
from app.ui.window.state import WindowState, load_window_state, save_window_state
from app.ui.window.status import StatusBar
from app.ui.window.theme import THEMES
from pipeline.errors import ParamsError
from pipeline.metadata import params_from_infotext, parse_infotext_fields
from pipeline.params import UpscaleParams

if TYPE_CHECKING:
    from app.jobs import Job

__all__ = ["MainWindow"]


class MainWindow(QMainWindow):
    first_paint = Signal()

    def __init__(
        self,
        session: Session | None = None,
        *,
        state: WindowState | None = None,
        confirm_quit: bool = True,
    ) -> None:
        super().__init__()
        self.session = session or Session()
        self.state = state if state is not None else load_window_state()
        self.exit_code = 0
        self._confirm_quit = confirm_quit
        self._painted = False
        self._closing = False
        self._focus_job: str | None = None  # the job the compare view follows
        self._outputs: dict[Path, Path] = {}  # input → its latest output this session
        self._last_states: dict[str, tuple[str, str]] = {}
        self._announced: set[str] = set()
        self._starting = False  # an Upscale is being checked and submitted
        self.setWindowTitle("Clarifier — generative image upscaler")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.resize(1480, 920)
        self.setMinimumSize(960, 620)

        self.thumbs = ThumbnailLoader(self)
        self._build_centre()
        self._build_params_dock()
        self._build_queue_history_docks()
        self.status = StatusBar(self)
        self.setStatusBar(self.status)
        self.intake = InputIntake(
            self, self.session, self.state, add=self.add_inputs, say=self.status.say
        )
        # Not ``self.actions``: that would hide QWidget.actions().
        self.window_actions = WindowActions(
            self,
            self.session,
            self.state,
            say=self.status.say,
            take=self.intake.take,
            selected_runs=self.history.selected_records,
            rerun=self.rerun,
            apply_infotext=self.apply_infotext,
        )
        self._build_menus()
        self._connect()
        self._restore()

    # --- layout ---------------------------------------------------------------------------------
    def _build_centre(self) -> None:
        self.compare = CompareView()
        self.compare.set_empty_hint(
            "Drop images here", "or press Ctrl+O to open · Ctrl+V to paste an image or a link"
        )
        self.compare_bar = CompareToolbar(self.compare)
        self.inputs = InputStrip(self.thumbs)
        self.centre = centre = QWidget()  # the central widget; drops are shown over it
        layout = QVBoxLayout(centre)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(4)
        layout.addWidget(self.compare_bar)
        layout.addWidget(self.compare, 1)
        layout.addWidget(self.inputs)
        self.setCentralWidget(centre)

    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)  # saveState() needs names
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(area, dock)
        return dock

    def _build_params_dock(self) -> None:
        self.params = ParamsPanel()
        self.presets = PresetsBar(self.session.presets, self.params.params)
        self.run_button = QPushButton("Upscale")
        self.run_button.setProperty("primary", True)
        self.run_button.setAccessibleName("Upscale")
        self.run_button.setToolTip("Upscale the images in the strip (Ctrl+Return)")
        self.run_button.setMinimumHeight(40)
        self.run_info = QLabel()
        self.run_info.setWordWrap(True)
        self.run_info.setAccessibleName("What the upscale will make")
        self.run_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.params)
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.presets)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.run_info)
        layout.addWidget(self.run_button)
        panel.setMinimumWidth(400)
        self.params_dock = self._dock(
            "Parameters", "params", panel, Qt.DockWidgetArea.LeftDockWidgetArea
        )

    def _build_queue_history_docks(self) -> None:
        self.queue = QueuePanel()
        self.history = HistoryPanel(self.session.history, self.thumbs)
        self.queue_dock = self._dock(
            "Queue", "queue", self.queue, Qt.DockWidgetArea.RightDockWidgetArea
        )
        self.history_dock = self._dock(
            "History", "history", self.history, Qt.DockWidgetArea.RightDockWidgetArea
        )
        self.splitDockWidget(self.queue_dock, self.history_dock, Qt.Orientation.Vertical)
        self.resizeDocks([self.queue_dock, self.history_dock], [300, 520], Qt.Orientation.Vertical)
        self.resizeDocks([self.params_dock, self.queue_dock], [420, 440], Qt.Orientation.Horizontal)

    def _build_menus(self) -> None:
        acts = self.window_actions
        bar = self.menuBar()
        std = QKeySequence.StandardKey

        file = bar.addMenu("&File")
        file.addAction(acts.make("&Open images…", self.intake.open_dialog, std.Open))
        file.addAction(acts.make("Add a &folder…", self.intake.open_folder_dialog, "Ctrl+Shift+O"))
        file.addAction(acts.make("&Paste image or link", acts.paste, std.Paste))
        file.addAction(acts.make("&Clear inputs", self.inputs.clear_all, "Ctrl+Shift+Backspace"))
        file.addSeparator()
        file.addAction(acts.make("&Settings…", acts.open_settings, "Ctrl+,"))
        file.addSeparator()
        file.addAction(acts.make("&Quit", self.close, "Ctrl+Q"))

        edit = bar.addMenu("&Edit")
        edit.addAction(
            acts.make(
                "Paste &parameters",
                acts.paste_parameters,
                "Ctrl+Shift+V",
                "Apply the A1111 parameters text (infotext) on the clipboard (Ctrl+Shift+V)",
            )
        )

        run = bar.addMenu("&Run")
        run.addAction(
            acts.make("&Upscale", self.upscale, "Ctrl+Return", "Upscale the inputs (Ctrl+Return)")
        )
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
            view.addAction(acts.make(text, lambda m=mode: self.compare.set_mode(m), key))
        view.addSeparator()
        view.addAction(acts.make("&Fit to window", self.compare.fit, "Ctrl+0"))
        view.addAction(acts.make("&Actual pixels (100 %)", self.compare.actual_size, "Ctrl+Alt+0"))
        view.addSeparator()
        view.addAction(acts.make("Focus &parameters", self.params.setFocus, "Ctrl+1"))
        view.addAction(
            acts.make("Focus &queue", lambda: _show(self.queue_dock, self.queue), "Ctrl+2")
        )
        view.addAction(
            acts.make("Focus &history", lambda: _show(self.history_dock, self.history), "Ctrl+3")
        )
        view.addAction(acts.make("Search &history", self.history.focus_search, std.Find))
        view.addSeparator()
        for dock in (self.params_dock, self.queue_dock, self.history_dock):
            view.addAction(dock.toggleViewAction())
        theme = view.addMenu("&Appearance")
        group = QActionGroup(self)
        for name in THEMES:
            action = QAction(name.capitalize(), self, checkable=True)
            action.setChecked(name == self.state.theme)
            action.triggered.connect(lambda _c=False, n=name: acts.set_theme(n))
            group.addAction(action)
            theme.addAction(action)

        tools = bar.addMenu("&Tools")
        tools.addAction(acts.make("&Model manager…", acts.open_models, "Ctrl+Shift+M"))
        self.status.models_clicked.connect(acts.open_models)

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(acts.make("&Keyboard shortcuts", acts.shortcuts_help, "Ctrl+/"))
        help_menu.addAction(acts.make("&About Clarifier", acts.about, "F1"))

    # --- signals --------------------------------------------------------------------------------
    def _connect(self) -> None:
        s = self.session
        s.job_event.connect(self._on_job_event)
        # New settings can change what a run makes (the output cap, say).
        s.settings_changed.connect(lambda _settings: self._update_run_info())
        s.started.connect(self._on_started)
        s.device_found.connect(self.status.set_device)
        s.models_checked.connect(self.status.set_models)
        s.notice.connect(lambda message: self.status.say(message, error=True))
        self.run_button.clicked.connect(self.upscale)
        self.params.changed.connect(self._update_run_info)
        self.params.validity_changed.connect(lambda _ok: self._update_run_info())
        self.params.backend_changed.connect(lambda *_: self._update_run_info())
        self.presets.apply_requested.connect(self._apply_preset)
        self.inputs.current_changed.connect(self._show_input)
        self.inputs.count_changed.connect(lambda _n: self._update_run_info())
        self.queue.cancel_requested.connect(s.cancel)
        self.queue.retry_requested.connect(self._retry)
        self.queue.resolve_requested.connect(s.resolve)
        self.queue.preview.connect(self._on_preview)
        self.queue.selected.connect(self._follow_job)
        self.queue.open_requested.connect(self._follow_job)
        self.history.open_requested.connect(self.open_run)
        self.history.compare_requested.connect(self.compare_runs)
        self.history.rerun_requested.connect(self.rerun)
        self.history.branch_requested.connect(self.branch)
        self.compare.load_failed.connect(lambda msg: self.status.say(msg, error=True))

    # --- start and state ------------------------------------------------------------------------
    def start(self, inputs: list[str] | None = None) -> None:
        """Called by the app once the window is on screen and the event loop runs."""
        self.session.start()
        self.history.refresh()
        from app.ui.dialogs.settings_providers import warm_up

        QTimer.singleShot(1500, warm_up)  # the settings dialog then opens without a stall
        if inputs:
            self.intake.take_texts(inputs)

    def saved_theme(self) -> str:
        return self.state.theme

    def _restore(self) -> None:
        st = self.state
        if st.geometry:
            self.restoreGeometry(st.unpack(st.geometry))
        if st.layout:
            self.restoreState(st.unpack(st.layout))
        self.params.set_backend(st.backend, st.model)
        self.params.set_params(st.restored_params())
        self.params.set_seed_locked(st.seed_locked)
        with contextlib.suppress(ValueError, KeyError):
            self.compare.set_mode(st.compare_mode)
        self._update_run_info()

    def remember(self) -> None:
        st = self.state
        st.geometry = st.pack(self.saveGeometry().data())
        st.layout = st.pack(self.saveState().data())
        with contextlib.suppress(ParamsError):
            st.params = self.params.params().to_dict()
        st.backend, st.model = self.params.backend()
        st.seed_locked = self.params.seed_locked()
        st.compare_mode = self.compare.mode()
        save_window_state(st)

    def paintEvent(self, event: Any) -> None:
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            QTimer.singleShot(0, self.first_paint.emit)

    # --- inputs ---------------------------------------------------------------------------------
    def add_inputs(self, paths: list[Path]) -> None:
        added = self.inputs.add_paths(paths)
        if added:
            self.status.say(
                f"Added {len(added)} image{'s' if len(added) != 1 else ''}"
                + (
                    f" ({len(paths) - len(added)} already in the strip)"
                    if len(added) < len(paths)
                    else ""
                )
            )
        elif paths:
            self.status.say("Those images are already in the strip")

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self.intake.accepts(event.mimeData()):
            event.acceptProposedAction()
            self.intake.show_overlay(self.centre, event.mimeData())

    def dragLeaveEvent(self, event: Any) -> None:
        self.intake.hide_overlay()

    def dropEvent(self, event: QDropEvent) -> None:
        self.intake.hide_overlay()
        if self.intake.take(event.mimeData()):
            event.acceptProposedAction()

    def _show_input(self, path: Path | None) -> None:
        if path is None:
            self.compare.clear()
            return
        output = self._outputs.get(path)
        self.compare.set_before(path, label="Input")
        if output is not None and output.exists():
            self.compare.set_after(output, label="Output")
        else:
            self.compare.set_after(None)
        self._update_run_info()

    # --- running --------------------------------------------------------------------------------
    def _update_run_info(self) -> None:
        n = self.inputs.count()
        backend, model = self.params.backend()
        errors = self.params.errors()
        self.run_button.setEnabled(n > 0 and not errors and self.session.controller is not None)
        self.run_button.setText("Upscale" if n <= 1 else f"Upscale {n} images")
        if errors:
            self.run_info.setText("Fix the highlighted values to upscale.")
            return
        if n == 0:
            self.run_info.setText("Add images to upscale: drop them on the window.")
            return
        try:
            params = self.params.params()
        except ParamsError:
            return
        self.run_info.setText(
            describe_run(
                self.inputs.current_path(),
                params,
                backend,
                model,
                seed_locked=self.params.seed_locked(),
                cap_mp=self.session.settings.max_output_megapixels,
            )
        )

    def upscale(self) -> None:
        if not self.run_button.isEnabled() or self._starting:
            return
        self._starting = True  # a double click must not send (and, remotely, pay for) two batches
        self.run_button.setEnabled(False)
        task = self.session.spawn(self._upscale())
        task.add_done_callback(lambda _t: self._started_batch())

    def _started_batch(self) -> None:
        self._starting = False
        self._update_run_info()

    async def _upscale(self) -> None:
        paths = self.inputs.paths()
        backend, model = self.params.backend()
        try:
            # Hidden settings keep their values in the panel but are not sent to a backend that
            # cannot take them (it would refuse the job).
            params = restrict(self.params.params_for_run(), backend, model)
        except ParamsError as exc:
            self.status.say(str(exc), error=True)
            return
        problem = await self.session.problem(params, backend, model)
        if problem is not None:
            self.ask_problem(problem, backend)
            return
        try:
            jobs = self.session.submit(paths, params, backend=backend, model=model)
        except (OSError, ValueError) as exc:
            self.status.say(f"Could not start: {exc}", error=True)
            return
        current = self.inputs.current_path()
        focus = next((j for j in jobs if j.input == current), jobs[0] if jobs else None)
        if focus is not None:
            self._follow_job(focus.id)
        self.queue_dock.raise_()
        self.status.say(
            f"Started {len(jobs)} job{'s' if len(jobs) != 1 else ''} · seed {params.seed}"
        )

    def ask_problem(self, problem: str, backend: str) -> None:
        """Say what stops the batch, and offer the place that fixes it."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Cannot start yet")
        box.setText(problem)
        fix = box.addButton(
            "Open settings…" if backend != "local" else "Open model manager…",
            QMessageBox.ButtonRole.AcceptRole,
        )
        box.addButton(QMessageBox.StandardButton.Close)
        box.setModal(True)
        box.finished.connect(
            lambda _r: (
                box.clickedButton() is fix
                and (
                    self.window_actions.open_settings()
                    if backend != "local"
                    else self.window_actions.open_models()
                )
            )
        )
        box.open()

    def _retry(self, job_id: str) -> None:
        self.session.retry(job_id)
        self._follow_job(job_id)

    # --- following jobs -------------------------------------------------------------------------
    def _follow_job(self, job_id: str) -> None:
        job = self.session.job(job_id)
        if job is None:
            return
        self._focus_job = job_id
        self.compare.set_before(job.input, label="Input")
        if job.state == JobState.succeeded and job.outcome is not None:
            self.compare.set_after(job.outcome.output, label=_run_label(job.params.seed))
        else:
            self.compare.set_after(None)

    def _on_preview(self, job_id: str, data: bytes) -> None:
        if job_id == self._focus_job:
            self.compare.set_preview(data)

    def _on_started(self, resumed: list[Job]) -> None:
        self._update_run_info()
        for job in resumed:
            self.queue.on_event(JobEvent.of(job))
        if resumed:
            n = len(resumed)
            self.status.say(f"Resumed {n} job{'s' if n != 1 else ''} from the last session")

    def _on_job_event(self, event: JobEvent) -> None:
        job = event.job
        self.queue.on_event(event)
        key = (str(job.state), job.message)
        if self._last_states.get(job.id) != key:  # the history row changes with the state only
            self._last_states[job.id] = key
            self.history.upsert(job.to_record())
        if job.state == JobState.succeeded and job.outcome is not None:
            self._outputs[job.input] = job.outcome.output
            if job.id == self._focus_job:
                self.compare.set_after(job.outcome.output, label=_run_label(job.params.seed))
                QTimer.singleShot(0, lambda: self.history.select_run(job.id))
            if job.id not in self._announced:
                self._announced.add(job.id)
                took = f" in {job.elapsed:.1f} s" if job.elapsed else ""
                self.status.say(f"Saved {job.outcome.output.name}{took}")
        elif job.state in (JobState.failed, JobState.lost) and job.id == self._focus_job:
            self.status.say(job.message, error=True)
        self._update_run_info()

    # --- history actions ------------------------------------------------------------------------
    def open_run(self, record: RunRecord) -> None:
        self._focus_job = None
        self.compare.set_before(Path(record.input), label="Input")
        self.compare.set_after(Path(record.output), label=_run_label(record.seed))

    def compare_runs(self, a: RunRecord, b: RunRecord) -> None:
        self._focus_job = None
        self.compare.set_before(Path(a.output), label=f"A · {_run_label(a.seed)}")
        self.compare.set_after(Path(b.output), label=f"B · {_run_label(b.seed)}")
        if self.compare.mode() == "single":
            self.compare.set_mode("slider")

    def rerun(self, record: RunRecord, same_seed: bool) -> None:
        if not Path(record.input).exists():
            self.status.say(f"The input {record.input} is no longer there", error=True)
            return
        try:
            job = self.session.rerun(record, same_seed=same_seed)
        except (OSError, ValueError, ParamsError) as exc:
            self.status.say(f"Could not re-run: {exc}", error=True)
            return
        self._follow_job(job.id)
        self.status.say(f"Re-running {Path(record.input).name} with seed {job.params.seed}")

    def branch(self, record: RunRecord) -> None:
        """Load a run's parameters (and its input) into the panel to start from there."""
        try:
            params = UpscaleParams.from_dict(record.params)
        except ParamsError as exc:
            self.status.say(f"That run's parameters are no longer valid: {exc}", error=True)
            return
        self.params.set_backend(record.backend, record.model)
        self.params.set_params(params)
        self.params.set_seed_locked(True)
        if Path(record.input).exists():
            self.inputs.add_paths([Path(record.input)])
            self.inputs.select_path(Path(record.input))
        self.status.say(f"Loaded the parameters of that run (seed {record.seed}, locked)")

    def apply_infotext(self, text: str) -> None:
        """Put the parameters an A1111 infotext describes (a Clarity run's, Clarifier's own, any
        A1111's) into the panel, on top of what it shows; a seed it names is locked, so the next
        run reproduces it. What could not be mapped is listed in the status bar."""
        try:
            base = self.params.params()
        except ParamsError:  # a field being edited is invalid: start from the defaults
            base = UpscaleParams()
        try:
            params, notes = params_from_infotext(text, base)
        except ParamsError:
            self.status.say("That text holds no generation parameters (A1111 infotext)", error=True)
            return
        self.params.set_params(params)
        seeded = params.seed is not None and "Seed" in parse_infotext_fields(text)
        if seeded:
            self.params.set_seed_locked(True)
        said = "Pasted the parameters" + (f" (seed {params.seed}, locked)" if seeded else "")
        if notes:
            said += f" · {len(notes)} not mapped: " + "; ".join(notes)
            said += "\n" + "\n".join(notes)
        self.status.say(said)

    def _apply_preset(self, params: UpscaleParams) -> None:
        self.params.set_params(params)
        self.status.say("Preset applied")

    # --- closing --------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:
            event.accept()
            return
        local = [j for j in self.session.active_jobs if j.backend == "local"]
        remote = [j for j in self.session.active_jobs if j.backend != "local"]
        if self._confirm_quit and local:
            answer = QMessageBox.question(
                self,
                "Quit Clarifier?",
                f"{len(local)} local job{'s are' if len(local) != 1 else ' is'} still running and "
                "will be cancelled."
                + (
                    f" {len(remote)} job(s) at providers keep running and are picked up next time."
                    if remote
                    else ""
                ),
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.remember()
        self._closing = True
        event.ignore()  # close once the session has let go of its jobs
        self.session.spawn(self._shutdown())

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self.session.shutdown()
        self.close()
        QApplication.quit()


def _run_label(seed: int | None) -> str:
    return "Output" if seed is None else f"Output · seed {seed}"


def _show(dock: QDockWidget, widget: QWidget) -> None:
    dock.show()
    dock.raise_()
    widget.setFocus()
