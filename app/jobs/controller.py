"""The job controller: a queue of upscaling jobs over any backend, in plain asyncio.

The window and the CLI both submit jobs here and listen to :class:`JobEvent`. The controller
owns what is common to every backend: normalized states, per-backend concurrency, automatic
retries for the errors whose rule allows it (with backoff, honouring ``retry_after``), cancel,
and timings. Backends only run one request and report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.backends.base import (
    Backend,
    BackendEvent,
    ErrorKind,
    JobError,
    JobState,
    Outcome,
    Request,
)
from pipeline.params import UpscaleParams

__all__ = ["Job", "JobController", "JobEvent"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One input → one output, on one backend. Mutated only by the controller."""

    id: str
    input: Path
    output: Path
    params: UpscaleParams
    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)
    state: JobState = JobState.queued
    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    eta_s: float | None = None  # the backend's estimate of the time left in this stage
    attempts: int = 0
    error: JobError | None = None
    outcome: Outcome | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None  # monotonic, when the backend first took it
    finished: float | None = None

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.monotonic()) - self.started


@dataclass(frozen=True)
class JobEvent:
    """A change to a job, sent to every listener. ``job`` is the live job object."""

    job: Job
    state: JobState
    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    preview_png: bytes | None = None


Listener = Callable[[JobEvent], None]


class JobController:
    def __init__(
        self, backends: Mapping[str, Backend], *, max_attempts: int = 3, backoff: float = 2.0
    ) -> None:
        self._backends = dict(backends)
        self._limits = {name: asyncio.Semaphore(b.concurrency) for name, b in backends.items()}
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._listeners: list[Listener] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)

    # --- listening ----------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, job: Job, **extra: Any) -> None:
        event = JobEvent(
            job=job,
            state=job.state,
            stage=job.stage,
            done=job.done,
            total=job.total,
            message=job.message,
            **extra,
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the queue
                log.exception("job listener failed")

    # --- submitting and cancelling ------------------------------------------------------------
    def submit(
        self,
        input: Path | str,
        output: Path | str,
        params: UpscaleParams,
        *,
        backend: str = "local",
        options: Mapping[str, Any] | None = None,
    ) -> Job:
        if backend not in self._backends:
            known = ", ".join(sorted(self._backends))
            raise ValueError(f"unknown backend {backend!r}; available: {known}")
        job = Job(
            id=f"job-{next(self._ids)}",
            input=Path(input),
            output=Path(output),
            params=params,
            backend=backend,
            options=dict(options or {}),
        )
        self.jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._drive(job), name=job.id)
        self._emit(job)
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; returns False if it had already ended."""
        task = self._tasks.get(job_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def cancel_all(self) -> None:
        for job_id in list(self._tasks):
            self.cancel(job_id)

    async def wait(self, job_id: str) -> Job:
        task = self._tasks.get(job_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return self.jobs[job_id]

    async def join(self) -> None:
        """Wait until every submitted job has ended."""
        while pending := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        self.cancel_all()
        await self.join()
        for backend in self._backends.values():
            await backend.aclose()

    # --- running ------------------------------------------------------------------------------
    def _set(self, job: Job, state: JobState, **changes: Any) -> None:
        job.state = state
        for name, value in changes.items():
            setattr(job, name, value)
        if state.terminal:
            job.finished = time.monotonic()
        self._emit(job)

    async def _drive(self, job: Job) -> None:
        try:
            async with self._limits[job.backend]:
                await self._attempts(job)
        except asyncio.CancelledError:
            self._set(
                job,
                JobState.canceled,
                message="canceled",
                error=JobError(ErrorKind.canceled, "canceled"),
            )
        except JobError as err:
            self._set(job, JobState.failed, error=err, message=err.message)
        except Exception as exc:  # a backend bug must fail one job, not the queue
            log.exception("backend %s failed on %s", job.backend, job.id)
            err = JobError(ErrorKind.internal, f"internal error: {type(exc).__name__}: {exc}")
            self._set(job, JobState.failed, error=err, message=err.message)

    async def _attempts(self, job: Job) -> None:
        backend = self._backends[job.backend]
        request = Request(job.id, job.input, job.output, job.params, job.options)
        while True:
            job.attempts += 1
            if job.started is None:
                job.started = time.monotonic()
            try:
                outcome = await backend.run(request, lambda event: self._on_event(job, event))
            except JobError as err:
                if err.kind == ErrorKind.canceled:
                    raise asyncio.CancelledError from err
                if not err.retryable or job.attempts >= self._max_attempts:
                    raise
                delay = err.retry_after or self._backoff * 2 ** (job.attempts - 1)
                self._set(job, JobState.queued, message=f"{err.message}; retrying in {delay:.0f} s")
                await asyncio.sleep(delay)
                continue
            self._set(
                job, JobState.succeeded, outcome=outcome, message="done", done=job.total, stage=""
            )
            return

    def _on_event(self, job: Job, event: BackendEvent) -> None:
        if event.state is not None:
            job.state = event.state
        if event.stage:
            job.stage = event.stage
            job.done, job.total = event.done, event.total
            job.eta_s = event.eta_s
        if event.message:
            job.message = event.message
        self._emit(job, preview_png=event.preview_png)
