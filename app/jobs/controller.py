"""The job controller: a queue of upscaling jobs over any backend, in plain asyncio.

The window and the CLI both submit jobs here and listen to :class:`JobEvent`. The controller
owns what is common to every backend: normalized states, per-backend concurrency, automatic
retries for the errors whose rule allows it (with backoff, honouring ``retry_after``), cancel,
timings, and persistence. Backends only run one request and report.

**Never pay twice, never lose a result.** Every state change and every remote checkpoint is
written to the history store before the backend goes on, so:

* an automatic retry, a person's *Retry*, and a restart (:meth:`JobController.resume`) all hand
  the backend its last checkpoint: it polls or downloads instead of submitting again;
* a submit that got no answer on a provider without idempotency parks the job in
  ``submit-unknown``; only the person can send it again (:meth:`JobController.resolve`);
* a job whose provider record expired before its result was saved ends ``lost``, with a message.

**A history that cannot be written stops nothing.** When the store refuses a write (a full disk,
a locked or damaged database), the jobs go on and their outputs are saved; the person gets one
plain warning (no traceback) for the whole outage, and the store keeps the unwritten rows and
writes them with the next write that succeeds (and the controller tries again once the queue
has emptied).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.backends.base import (
    Backend,
    BackendEvent,
    ErrorKind,
    JobError,
    JobState,
    Outcome,
    Request,
)
from app.store.history import HistoryError, HistoryStore, RunRecord
from pipeline.params import UpscaleParams

__all__ = ["BackendPool", "Job", "JobController", "JobEvent", "StaticPool"]

log = logging.getLogger(__name__)

# Checkpoints worth keeping on a retry: the provider has the job, or its result is known.
_KEEP_PHASES = ("submitted", "done")


@dataclass
class Job:
    """One input → one output, on one backend. Mutated only by the controller."""

    id: str
    input: Path
    output: Path
    params: UpscaleParams
    backend: str
    model: str = ""
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
    remote: dict[str, Any] | None = None  # the remote backend's last checkpoint
    created: float = field(default_factory=time.time)  # wall clock
    started: float | None = None  # monotonic, when the backend first took it (this session)
    finished: float | None = None  # monotonic
    finished_at: float | None = None  # wall clock

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.monotonic()) - self.started

    @property
    def remote_id(self) -> str | None:
        if self.outcome is not None and self.outcome.remote_id:
            return self.outcome.remote_id
        return (self.remote or {}).get("remote_id")

    # --- the history row ----------------------------------------------------------------------
    def to_record(self) -> RunRecord:
        outcome = self.outcome
        remote = self.remote or {}
        return RunRecord(
            id=self.id,
            created=self.created,
            finished=self.finished_at,
            state=str(self.state),
            backend=self.backend,
            model=self.model,
            input=str(self.input),
            output=str(outcome.output if outcome else self.output),
            params=self.params.to_dict(),
            seed=self.params.seed,
            options=dict(self.options),
            remote=self.remote,
            remote_id=self.remote_id,
            attempts=self.attempts,
            stage=self.stage,
            message=self.message,
            error_kind=str(self.error.kind) if self.error else None,
            error_details=_json_safe(self.error.details) if self.error else None,
            cost=outcome.cost if outcome else remote.get("cost"),
            cost_unit=outcome.cost_unit if outcome else remote.get("cost_unit", ""),
            timings=dict(outcome.timings) if outcome else {},
            info=dict(outcome.info) if outcome else None,
            warnings=list(outcome.warnings) if outcome else [],
        )

    @classmethod
    def from_record(cls, record: RunRecord) -> Job:
        job = cls(
            id=record.id,
            input=Path(record.input),
            output=Path(record.output),
            params=UpscaleParams.from_dict(record.params),
            backend=record.backend,
            model=record.model,
            options=dict(record.options),
            state=JobState(record.state),
            stage=record.stage,
            message=record.message,
            attempts=record.attempts,
            remote=record.remote,
            created=record.created,
            finished_at=record.finished,
        )
        if record.error_kind:
            job.error = JobError(
                ErrorKind(record.error_kind), record.message, details=record.error_details or {}
            )
        if record.state == JobState.succeeded and record.info is not None:
            job.outcome = Outcome(
                output=Path(record.output),
                info=record.info,
                timings=record.timings,
                warnings=tuple(record.warnings),
                remote_id=record.remote_id,
                cost=record.cost,
                cost_unit=record.cost_unit,
            )
        return job


def _checkpoint_alive(job: Job) -> bool:
    """Whether a failed or canceled job's provider job may still deliver: then a retry resumes
    it (polls or downloads) instead of submitting, and paying, again."""
    err = job.error
    if err is None or (job.remote or {}).get("phase") not in _KEEP_PHASES:
        return False
    if err.details.get("remote_final"):
        return False
    return err.kind not in (ErrorKind.expired, ErrorKind.model_failed, ErrorKind.content_rejected)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


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

    @classmethod
    def of(cls, job: Job, **extra: Any) -> JobEvent:
        """An event showing the job as it is now."""
        return cls(
            job=job,
            state=job.state,
            stage=job.stage,
            done=job.done,
            total=job.total,
            message=job.message,
            **extra,
        )


Listener = Callable[[JobEvent], None]


class BackendPool(Protocol):
    """Where the controller gets backends: one per (backend name, model)."""

    def get(self, name: str, model: str = "") -> Backend: ...

    def names(self) -> list[str]: ...

    def concurrency(self, name: str) -> int: ...

    async def aclose(self) -> None: ...


class StaticPool:
    """A fixed set of backends, one per name (the model is the backend's own)."""

    def __init__(self, backends: Mapping[str, Backend]) -> None:
        self._backends = dict(backends)

    def get(self, name: str, model: str = "") -> Backend:
        try:
            return self._backends[name]
        except KeyError:
            known = ", ".join(sorted(self._backends))
            raise ValueError(f"unknown backend {name!r}; available: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._backends)

    def concurrency(self, name: str) -> int:
        return self.get(name).concurrency

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()


class JobController:
    def __init__(
        self,
        backends: Mapping[str, Backend] | BackendPool,
        *,
        store: HistoryStore | None = None,
        max_attempts: int = 3,
        backoff: float = 2.0,
    ) -> None:
        self._pool: BackendPool = (
            StaticPool(backends) if isinstance(backends, Mapping) else backends
        )
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._store = store
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._listeners: list[Listener] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._detaching = False
        self._history_problem: str | None = None  # set while the history cannot be written
        self.jobs: dict[str, Job] = {}

    # --- listening ----------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, job: Job, **extra: Any) -> None:
        event = JobEvent.of(job, **extra)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the queue
                log.exception("job listener failed")

    @property
    def history_problem(self) -> str | None:
        """Why the history cannot be written now (None when it can): the warning's text."""
        return self._history_problem

    def _persist(self, job: Job) -> None:
        if self._store is None:
            return
        try:
            self._store.save(job.to_record())
        except HistoryError as exc:
            self._history_failed(exc)
            return
        self._history_written()

    def _history_failed(self, exc: HistoryError) -> None:
        """One plain warning per outage; the job goes on, the store keeps the row for later."""
        if self._history_problem is None:
            self._history_problem = (
                f"{exc}. The jobs go on and their outputs are saved; the history will catch up "
                "once it can be written."
            )
            log.warning("%s", self._history_problem)

    def _history_written(self) -> None:
        store = self._store
        if self._history_problem is not None and store is not None and not store.pending:
            self._history_problem = None
            log.info("the run history can be written again and has caught up")

    def _catch_up(self) -> None:
        """Try once more to write what the history could not take (when the queue empties)."""
        store = self._store
        if store is not None and self._history_problem is not None and store.flush(force=True):
            self._history_written()

    def replace_pool(self, pool: BackendPool) -> BackendPool:
        """Run new jobs on ``pool`` (after a settings change) and return the old pool, which the
        caller closes once nothing runs on it."""
        old, self._pool = self._pool, pool
        self._limits.clear()
        return old

    # --- submitting and cancelling ------------------------------------------------------------
    def submit(
        self,
        input: Path | str,
        output: Path | str,
        params: UpscaleParams,
        *,
        backend: str = "local",
        model: str = "",
        options: Mapping[str, Any] | None = None,
    ) -> Job:
        self._pool.get(backend, model)  # refuses an unknown backend or model now
        job = Job(
            id=uuid.uuid4().hex,
            input=Path(input),
            output=Path(output),
            params=params,
            backend=backend,
            model=model,
            options=dict(options or {}),
        )
        self.jobs[job.id] = job
        self._persist(job)
        self._start(job)
        self._emit(job)
        return job

    def _start(self, job: Job) -> None:
        self._tasks[job.id] = asyncio.create_task(self._drive(job), name=job.id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; returns False if it had already ended.

        A job parked in ``submit-unknown`` is closed as canceled (nothing more is sent)."""
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            task.cancel()
            return True
        job = self.jobs.get(job_id)
        if job is not None and job.state == JobState.submit_unknown:
            self._set(job, JobState.canceled, message="closed without sending it again")
            return True
        return False

    def cancel_all(self) -> None:
        for job_id in list(self._tasks):
            self.cancel(job_id)

    def retry(self, job_id: str) -> Job:
        """Run an ended job again under the same id. A checkpoint whose provider job exists
        (or whose result is known) is kept, so a retry never submits and pays a second time."""
        job = self.jobs[job_id]
        if not job.state.terminal:
            raise ValueError(f"job {job_id} has not ended")
        if job.state == JobState.succeeded:
            raise ValueError(f"job {job_id} already succeeded; submit a new one to run it again")
        return self._restart(job, keep_remote=_checkpoint_alive(job))

    def resolve(self, job_id: str, *, resubmit: bool) -> Job:
        """Decide a ``submit-unknown`` job: send it again (the person accepts that the provider
        may bill twice) or close it as failed."""
        job = self.jobs[job_id]
        if job.state != JobState.submit_unknown:
            raise ValueError(f"job {job_id} is not waiting for a decision")
        if resubmit:
            return self._restart(job, keep_remote=False)
        self._set(job, JobState.failed, message="closed without sending it again")
        return job

    def _restart(self, job: Job, *, keep_remote: bool) -> Job:
        if not keep_remote:
            job.remote = None
        job.attempts = 0
        job.error = job.outcome = None
        job.finished = job.finished_at = None
        job.done = job.total = 0
        self._set(job, JobState.queued, message="queued", stage="")
        self._start(job)
        return job

    async def wait(self, job_id: str) -> Job:
        task = self._tasks.get(job_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return self.jobs[job_id]

    async def join(self) -> None:
        """Wait until every submitted job has ended (or is parked for a decision)."""
        while pending := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(pending)
        self._catch_up()

    async def aclose(self) -> None:
        self.cancel_all()
        await self.join()
        await self._pool.aclose()

    async def detach(self) -> None:
        """Stop watching without cancelling anything remote: the jobs stay in the history as
        they are and :meth:`resume` picks them up next time. (Used when the app quits.)"""
        self._detaching = True
        for job in self.jobs.values():
            if not job.state.terminal:
                with contextlib.suppress(ValueError):
                    self._pool.get(job.backend, job.model).detached = True
        for task in self._tasks.values():
            task.cancel()
        await self.join()
        await self._pool.aclose()

    # --- resuming after a restart -------------------------------------------------------------
    def resume(self) -> list[Job]:
        """Pick up the jobs the last session left unfinished: remote ones continue from their
        checkpoint (polling or downloading, never submitting again), local ones start over,
        ``submit-unknown`` ones wait for the person. Returns the jobs taken back."""
        if self._store is None:
            return []
        resumed = []
        for record in self._store.unfinished():
            if record.id in self.jobs:
                continue
            try:
                job = Job.from_record(record)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("history row %s cannot be resumed: %s", record.id, exc)
                continue
            self.jobs[job.id] = job
            resumed.append(job)
            try:
                self._pool.get(job.backend, job.model)
            except ValueError as exc:
                job.message = f"cannot resume: {exc}"
                self._emit(job)
                continue
            if job.state == JobState.submit_unknown:
                self._emit(job)
                continue
            job.state = JobState.queued
            job.message = "resumed"
            self._start(job)
            self._emit(job)
        return resumed

    # --- running ------------------------------------------------------------------------------
    def _set(self, job: Job, state: JobState, **changes: Any) -> None:
        job.state = state
        for name, value in changes.items():
            setattr(job, name, value)
        if state.terminal:
            job.finished = time.monotonic()
            job.finished_at = time.time()
        if not self._detaching:
            self._persist(job)
        self._emit(job)

    def _limit(self, name: str) -> asyncio.Semaphore:
        if name not in self._limits:
            self._limits[name] = asyncio.Semaphore(max(1, self._pool.concurrency(name)))
        return self._limits[name]

    async def _drive(self, job: Job) -> None:
        try:
            async with self._limit(job.backend):
                await self._attempts(job)
        except asyncio.CancelledError:
            if self._detaching:
                return  # the app is quitting: leave the job as it is, to resume next time
            err = job.error
            message = err.message if err and err.kind == ErrorKind.canceled else "canceled"
            self._set(
                job,
                JobState.canceled,
                message=message,
                error=JobError(ErrorKind.canceled, message),
            )
        except JobError as err:
            if err.kind == ErrorKind.submit_unknown:
                self._set(job, JobState.submit_unknown, error=err, message=err.message)
            elif err.kind == ErrorKind.expired:
                self._set(job, JobState.lost, error=err, message=err.message)
            else:
                self._set(job, JobState.failed, error=err, message=err.message)
        except Exception as exc:  # a backend bug must fail one job, not the queue
            log.exception("backend %s failed on %s", job.backend, job.id)
            err = JobError(ErrorKind.internal, f"internal error: {type(exc).__name__}: {exc}")
            self._set(job, JobState.failed, error=err, message=err.message)

    async def _attempts(self, job: Job) -> None:
        backend = self._pool.get(job.backend, job.model)
        while True:
            job.attempts += 1
            if job.started is None:
                job.started = time.monotonic()
            request = Request(
                job.id, job.input, job.output, job.params, job.options, resume=job.remote
            )
            try:
                outcome = await backend.run(request, lambda event: self._on_event(job, event))
            except JobError as err:
                if err.kind == ErrorKind.canceled:
                    job.error = err  # keeps the backend's words ("may still bill") for _drive
                    raise asyncio.CancelledError from err
                if not err.retryable or job.attempts >= self._max_attempts:
                    raise
                if err.details.get("remote_final"):
                    job.remote = None  # the provider's job is over: the next attempt submits
                delay = err.retry_after or min(300.0, self._backoff * 2 ** (job.attempts - 1))
                self._set(job, JobState.queued, message=f"{err.message}; retrying in {delay:.0f} s")
                await asyncio.sleep(delay)
                continue
            self._set(
                job,
                JobState.succeeded,
                outcome=outcome,
                error=None,
                message="done",
                done=job.total,
                stage="",
            )
            return

    def _on_event(self, job: Job, event: BackendEvent) -> None:
        changed = event.state is not None and event.state != job.state
        if event.state is not None:
            job.state = event.state
        if event.stage:
            job.stage = event.stage
            job.done, job.total = event.done, event.total
            job.eta_s = event.eta_s
        if event.message:
            job.message = event.message
        if event.remote is not None:
            job.remote = dict(event.remote)
        if changed or event.remote is not None:
            self._persist(job)  # before the backend goes on: a checkpoint must survive a crash
        self._emit(job, preview_png=event.preview_png)
