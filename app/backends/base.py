"""The one interface every backend implements, and the one event and error type they report.

A backend turns a :class:`Request` (an input, where the output goes, the parameters) into a
written output file. It reports what happens through :class:`BackendEvent` and fails with
:class:`JobError`, whose ``kind`` carries the retry rule. The job controller owns scheduling,
retries and state; backends translate their provider's states and errors at this boundary.
Cancelling is asyncio cancellation of :meth:`Backend.run`.

What a backend *is* (its label, models, vendor URL, key variables, whether it needs a key and
whether cancelling stops the work) is not stated here or in its module but in its entry in
:mod:`app.backends.registry`: a class names the entry (``class SegmindBackend(RemoteBackend,
backend="segmind")``) and :meth:`Backend.__init_subclass__` sets those class attributes from it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from app.backends import registry
from pipeline.params import UpscaleParams

__all__ = [
    "Backend",
    "BackendEvent",
    "ErrorKind",
    "JobError",
    "JobState",
    "Outcome",
    "Report",
    "Request",
]


class JobState(enum.StrEnum):
    """The normalized states of a job, whatever runs it."""

    queued = "queued"
    uploading = "uploading"
    submitting = "submitting"
    submit_unknown = "submit-unknown"  # a submit got no answer; reconcile, never re-send blindly
    running = "running"
    downloading = "downloading"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    lost = "lost"  # the provider's record expired before the result was fetched

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.succeeded, JobState.failed, JobState.canceled, JobState.lost})


class ErrorKind(enum.StrEnum):
    auth = "auth"
    insufficient_funds = "insufficient_funds"
    invalid_request = "invalid_request"  # bad parameters or input: fix them, then retry by hand
    model_failed = "model_failed"  # a model is missing or failed to run
    content_rejected = "content_rejected"
    rate_limited = "rate_limited"
    transient = "transient"
    timeout = "timeout"
    expired = "expired"
    protocol = "protocol"
    out_of_memory = "out_of_memory"
    worker_died = "worker_died"
    canceled = "canceled"
    internal = "internal"
    # A submit got no answer on a provider without idempotency: it may or may not have been
    # accepted (and billed). Never re-sent automatically; reconciled, or left to the person.
    submit_unknown = "submit_unknown"

    @property
    def retryable(self) -> bool:
        """Whether the controller may retry automatically (after backoff)."""
        return self in (ErrorKind.rate_limited, ErrorKind.transient, ErrorKind.timeout)


@dataclass
class JobError(Exception):
    """A job failed; ``message`` is plain language and safe to show (no keys, no tracebacks)."""

    kind: ErrorKind
    message: str
    retry_after: float | None = None  # seconds, when the provider said
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


@dataclass(frozen=True)
class Request:
    job_id: str
    input: Path
    output: Path
    params: UpscaleParams
    options: Mapping[str, Any] = field(default_factory=dict)  # engine options (device, tile, cap)
    # A remote backend's last checkpoint (see BackendEvent.remote) when the job resumes after a
    # restart or a retry: the provider's job id and URLs, so it polls instead of submitting again.
    resume: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class BackendEvent:
    """Something a backend wants the controller (and the person) to know while a job runs."""

    state: JobState | None = None  # a state change, e.g. running or downloading
    stage: str = ""  # what is being done: "pre-upscale", "alpha", "queued at provider", ...
    done: int = 0
    total: int = 0
    message: str = ""
    preview_png: bytes | None = None  # a small PNG of the canvas, when the engine has one
    eta_s: float | None = None  # the backend's own estimate of the time left, when it has one
    # A checkpoint of the remote job (JSON-safe): persisted by the controller *before* the
    # backend goes on, and handed back as Request.resume after a restart.
    remote: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """A finished job: where the output is and how it was made."""

    output: Path
    info: Mapping[str, Any]  # RunInfo.to_dict()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    remote_id: str | None = None
    cost: float | None = None
    cost_unit: str = ""  # "credits", "usd", ... as the provider reports it


Report = Callable[[BackendEvent], None]

# The class attributes a backend takes from its registry entry, and may not state itself.
_FROM_REGISTRY = frozenset(
    {"info", "name", "label", "models", "default_base_url", "key_envs", "needs_key", "can_cancel"}
)


class Backend(ABC):
    """Runs requests somewhere: the local worker process, or a provider over HTTP.

    A concrete backend names its registry entry as a class keyword (``backend="local"``) and
    takes its facts from there; the attributes below are those facts (empty on a class that
    names no entry, such as a test double, which sets its own)."""

    # --- from the registry entry (set by __init_subclass__) ---------------------------------
    info: ClassVar[registry.BackendInfo | None] = None  # the entry itself
    name: ClassVar[str] = ""  # "local", "segmind", ...
    label: ClassVar[str] = ""  # how people call it: "Segmind"
    models: ClassVar[tuple[str, ...]] = ()  # the models it can run; the first is the default
    default_base_url: ClassVar[str] = ""  # the vendor's scheme and host; "" for local
    key_envs: ClassVar[tuple[str, ...]] = ()  # where the key may be set, in the order read
    needs_key: ClassVar[bool] = False
    can_cancel: ClassVar[bool] = False  # whether cancelling stops the work (and the billing)

    concurrency: int = 1  # how many jobs the controller may run on it at once
    # Set when the app quits with jobs in flight: a cancellation then only stops watching (the
    # jobs resume next start) and must not cancel anything at the provider.
    detached: bool = False

    @abstractmethod
    async def run(self, request: Request, report: Report) -> Outcome:
        """Run one request to completion; raise :class:`JobError` on failure.

        Cancellation arrives as :class:`asyncio.CancelledError`; the backend stops the work
        (or says it cannot) and re-raises."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release processes, connections and files."""

    def __init_subclass__(cls, *, backend: str | None = None, **kwargs: Any) -> None:
        """``backend``: the registry entry this class runs; its facts become the class's."""
        super().__init_subclass__(**kwargs)
        if backend is None:
            return
        restated = sorted(_FROM_REGISTRY & set(vars(cls)))
        if restated:
            raise TypeError(
                f"{cls.__name__} restates {', '.join(restated)}; the registry entry "
                f"{backend!r} says that (app/backends/registry.py)"
            )
        info = registry.get(backend)
        cls.info = info
        cls.name = info.name
        cls.label = info.label
        cls.models = info.models
        cls.default_base_url = info.default_url
        cls.key_envs = info.key_envs
        cls.needs_key = info.needs_key
        cls.can_cancel = info.can_cancel
