"""What every hosted provider has in common: submit, watch, download, never pay twice.

:class:`RemoteBackend` runs one job through a provider's asynchronous HTTP protocol:

1. **upload** the input (or inline it, or pass the person's URL);
2. **submit** once. The checkpoint ``{"phase": "submitting", "key": ...}`` is reported (and
   persisted by the controller) *before* the request leaves, so a crash mid-submit is known.
   A submit that got no answer is re-sent only where the protocol makes that safe (an
   idempotency key, a client-chosen id); elsewhere it is *reconciled* (``reconcile``) or the
   job stops in ``submit-unknown`` for the person to decide;
3. **watch** the job at the provider's cadence, every request paid for from the provider's
   shared :class:`~app.backends.remote.pacing.RequestBudget`. Network faults and 5xx on reads are
   retried with backoff for as long as the result could still be fetched;
4. **download** the moment the provider says done (links expire), keep the bytes as received,
   then save the output atomically with its metadata (the provider's own bytes when they are in
   the asked format, see :mod:`app.backends.remote.io`).

Before anything is sent, a job whose output would pass the provider's documented cap (the
registry's ``max_output_pixels``, Wireflow's 64 MP) or the person's own output cap
(``Request.options["max_output_pixels"]``) is refused, naming the largest scale that fits
(:meth:`RemoteBackend.check_output_size`).

What a provider is (its label, models, vendor URL, key variables, cancel support) comes from its
entry in :mod:`app.backends.registry`, which the class names; a provider module fills in the
protocol: the parameter mapping (:meth:`map_params`, which
refuses what the provider cannot express), ``submit``, ``poll``, and optionally ``fetch_result``,
``cancel``, ``reconcile`` and ``send_input``. Resuming after a restart is the same ``run`` given
the last checkpoint (``Request.resume``).

A provider whose protocol does not fit the submit-and-poll flow (Segmind's v1 sync call) may
override ``run`` and build its own flow from the public hooks the template's ``run`` is built
from, which keep the same guarantees:

- :meth:`~RemoteBackend.check_output_size`: refuse an output past the cap before sending;
- :meth:`~RemoteBackend.input_refs`: the input and mask as the provider takes them (uploaded,
  inlined, or the person's URL);
- :meth:`~RemoteBackend.submit_unknown`: the error for a submit that got no answer (the job
  stops in ``submit-unknown``; it is never re-sent on its own);
- :meth:`~RemoteBackend.finish`: download (or read the stash), save the output with its
  metadata, and say what it cost;
- :meth:`~RemoteBackend.canceled`: the person canceled: stop the job at the provider where it
  can, and the error the job ends with, saying what that means for their account.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import httpx

from app.backends.base import (
    Backend,
    BackendEvent,
    ErrorKind,
    JobError,
    JobState,
    Outcome,
    Report,
    Request,
)
from app.backends.remote import io as remote_io
from app.backends.remote.http import ProviderHttp, SubmitNoAnswer
from app.backends.remote.pacing import PollCadence, RequestBudget
from pipeline.errors import ImageError, ParamsError
from pipeline.io.load import SourceInfo, probe_image
from pipeline.params import UpscaleParams

__all__ = ["BROWSER_USER_AGENT", "RemoteBackend", "RemoteStatus", "Ticket"]

log = logging.getLogger(__name__)

BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)


@dataclass
class Ticket:
    """A remote job's checkpoint: everything needed to find it again after a restart.

    ``phase``: ``submitting`` (a submit may be in flight), ``submitted`` (the provider has it),
    ``done`` (its outputs are known; only the download is left)."""

    phase: str
    key: str  # unique per submission: the idempotency key or client-chosen id where supported
    remote_id: str | None = None
    urls: dict[str, str] = field(default_factory=dict)  # status, result, cancel, ...
    outputs: list[str] = field(default_factory=list)
    submitted_at: float | None = None  # wall clock, for retention arithmetic across restarts
    running_at: float | None = None
    done_at: float | None = None
    cost: float | None = None
    cost_unit: str = ""
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "key": self.key,
            "remote_id": self.remote_id,
            "urls": dict(self.urls),
            "outputs": list(self.outputs),
            "submitted_at": self.submitted_at,
            "running_at": self.running_at,
            "done_at": self.done_at,
            "cost": self.cost,
            "cost_unit": self.cost_unit,
            "seed": self.seed,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ticket:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def new(cls) -> Ticket:
        # created_at lets a provider tell when its idempotency window (Apiframe: 24 h) is over.
        return cls(phase="submitting", key=str(uuid.uuid4()), extra={"created_at": time.time()})


@dataclass(frozen=True)
class RemoteStatus:
    """A provider's answer about one job, in normalized form."""

    state: JobState  # queued, running, succeeded, failed or canceled
    raw: str = ""  # the provider's own status word
    message: str = ""
    progress: float | None = None  # 0…1 where the provider says
    queue_position: int | None = None
    outputs: tuple[str, ...] = ()
    error: JobError | None = None
    cost: float | None = None
    cost_unit: str = ""
    seed: int | None = None
    next_poll: float | None = None  # seconds; a provider may ask to be polled less (long queue)
    extra: Mapping[str, Any] = field(default_factory=dict)  # kept in the checkpoint (metrics)


# --- the template -----------------------------------------------------------------------------
class RemoteBackend(ProviderHttp, Backend):
    """One hosted provider. A subclass names its registry entry (``backend="fal"``), which sets
    its name, label, models, default URL, key variables, ``needs_key`` and ``can_cancel`` (see
    :meth:`Backend.__init_subclass__`); it sets the protocol's own attributes below and the
    protocol methods."""

    needs_key: ClassVar[bool] = True  # for a class that names no entry (a test double)
    # A re-sent submit cannot create a second job. A class fact for most providers; Wireflow
    # sets it per instance (its guide promises it; a test can turn the trust off).
    idempotent_submit: bool = False
    cadence: ClassVar[PollCadence] = PollCadence(1.0)
    budget_limit: ClassVar[tuple[int, float]] = (60, 60.0)  # requests per window (seconds)
    retention: ClassVar[float] = 3600.0  # how long the provider keeps a job's record
    default_concurrency: ClassVar[int] = 4

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        budget: RequestBudget | None = None,
        cadence: PollCadence | None = None,
        concurrency: int | None = None,
        max_wait: float = 3 * 3600.0,
        retry_base: float = 0.5,
        retry_for: float = 15 * 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.api_key = api_key or None
        if model is not None and self.models and model not in self.models:
            raise ValueError(
                f"{self.label} has no model {model!r}; choose one of: {', '.join(self.models)}"
            )
        self.model = model or (self.models[0] if self.models else "")
        limit, window = self.budget_limit
        self.budget = budget or RequestBudget(limit, window)
        self.poll_cadence = cadence or self.cadence
        self.concurrency = concurrency or self.default_concurrency
        self.max_wait = max_wait
        self.retry_base = retry_base
        self.retry_for = retry_for  # how long reads are retried through network faults
        self._sleep = sleep
        self.polls = 0  # status requests made, for the benchmark

    # --- what a provider module provides ----------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        """The provider's fields for ``params`` (without the image); raise
        ``JobError(ErrorKind.invalid_request, ...)`` for anything it cannot express."""
        raise NotImplementedError

    async def send_input(self, image: remote_io.InputFile) -> str:
        """How the input reaches the provider: a data URL by default; override to upload."""
        return image.data_url()

    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        """Send the job; return ``ticket`` filled with the remote id and URLs. Raise
        :class:`SubmitNoAnswer` (via :meth:`http`) when it is unknown whether it was accepted."""
        raise NotImplementedError

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        raise NotImplementedError

    async def fetch_result(self, ticket: Ticket, status: RemoteStatus) -> RemoteStatus:
        """Called once the provider says done and ``status.outputs`` is empty."""
        return status

    async def cancel(self, ticket: Ticket) -> bool | str:
        """Ask the provider to stop the job: True if it will; False if it did not confirm; or a
        message saying what happened instead (e.g. it had already finished, and billed)."""
        return False

    async def reconcile(self, ticket: Ticket, fields: dict[str, Any], image: str) -> Ticket | None:
        """After a submit with no answer: find the job at the provider if it exists. Returns the
        filled ticket, or None when that cannot be known."""
        return None

    # --- running a job ----------------------------------------------------------------------
    def check_ready(self) -> None:
        if self.needs_key and not self.api_key:
            env = " or ".join(self.key_envs) if self.key_envs else "the key"
            raise JobError(
                ErrorKind.auth,
                f"No API key for {self.label}. Add it in the settings, run "
                f"`clarifier keys set {self.name}`, or set {env}.",
            )

    async def run(self, request: Request, report: Report) -> Outcome:
        self.check_ready()
        fields = self.map_params(request.params)
        if request.params.mode != "creative":
            # Every provider runs the diffusion pass, whatever mode the local engine was set to:
            # the saved output's metadata must say so.
            request = replace(request, params=request.params.replace(mode="creative"))
        ticket = Ticket.from_dict(request.resume) if request.resume else None
        started = time.monotonic()
        timings: dict[str, float] = {}
        pending: list[Ticket] = []  # the ticket of a submit in flight, for a cancel's message
        try:
            if ticket is None:
                await self.check_output_size(request)
                ticket = await self._submit(request, report, fields, timings, pending)
            elif ticket.phase == "submitting":
                ticket = await self._recover_submit(request, report, fields, ticket)
            if ticket.phase == "submitted":
                ticket = await self._wait(ticket, report)
            t = time.monotonic()
            outcome = await self.finish(request, ticket)
            timings["download"] = time.monotonic() - t
        except asyncio.CancelledError:
            if self.detached:
                raise  # the app is quitting; the job resumes from its checkpoint next time
            raise await self.canceled(ticket or (pending[-1] if pending else None)) from None
        if ticket.submitted_at and ticket.done_at:
            timings["remote"] = max(0.0, ticket.done_at - ticket.submitted_at)
        if ticket.submitted_at and ticket.running_at:
            timings["queued"] = max(0.0, ticket.running_at - ticket.submitted_at)
        timings["total"] = time.monotonic() - started
        return replace(outcome, timings={**timings, **outcome.timings})

    # --- the output cap ---------------------------------------------------------------------
    def output_size(self, width: int, height: int, params: UpscaleParams) -> tuple[int, int]:
        """The size the provider makes from a ``width × height`` input: Clarity's rule (each ×2
        pass floors to a multiple of 8); a provider with another rule overrides this."""
        return params.replace(mode="creative").output_size(width, height)

    def _caps(self, request: Request) -> list[tuple[int, str]]:
        caps: list[tuple[int, str]] = []
        model = self.info.model(self.model) if self.info is not None else None
        if model is not None and model.max_output_pixels:
            caps.append((model.max_output_pixels, f"{self.label} caps its output at"))
        own = request.options.get("max_output_pixels")
        if isinstance(own, int) and not isinstance(own, bool) and own > 0:
            caps.append((own, "Your output cap (in the settings) is"))
        return caps

    def _scales(self) -> list[float]:
        """The scale factors this backend's model takes, largest first."""
        model = self.info.model(self.model) if self.info is not None else None
        limits = model.scales if model is not None else None
        if limits is not None and limits.choices is not None:
            return sorted(limits.choices, reverse=True)
        step = 1.0 if limits is not None and limits.whole else 0.5
        high = limits.maximum if limits is not None else 16.0
        low = limits.minimum if limits is not None else 1.0
        count = round((high - low) / step)
        scales = [high - k * step for k in range(count + 1)]
        return [s for s in scales if limits is None or limits.allows(s)]

    async def check_output_size(self, request: Request) -> None:
        """Refuse, before anything is sent, a job whose output would pass the provider's cap or
        the person's, naming the largest scale that fits. A job given as a URL (its size unknown
        here) or an unreadable file is left to the provider (and to :meth:`input_refs`)."""
        caps = self._caps(request)
        if not caps or request.options.get("input_url"):
            return
        try:
            source = await asyncio.to_thread(probe_image, Path(request.input))
        except (ImageError, OSError):
            return
        params = request.params
        try:
            width, height = self.output_size(source.width, source.height, params)
        except ParamsError:
            return
        cap, who = min(caps)
        if width * height <= cap:
            return
        best: tuple[float, int, int] | None = None
        for scale in self._scales():
            if scale > params.scale_factor:
                continue
            try:
                w, h = self.output_size(
                    source.width, source.height, params.replace(scale_factor=scale)
                )
            except ParamsError:
                continue
            if w * h <= cap:
                best = (scale, w, h)
                break
        asked = (
            f"{who} {cap / 1e6:g} MP: ×{params.scale_factor:g} of this {source.width}×"
            f"{source.height} image would be {width}×{height} ({width * height / 1e6:.1f} MP)."
        )
        if best is not None:
            scale, w, h = best
            advice = (
                f" The largest scale that fits is ×{scale:g} ({w}×{h}, {w * h / 1e6:.1f} MP); "
                "lower the scale factor."
            )
        else:
            advice = " Even the smallest scale would not fit; make the image smaller first."
        message = asked + advice
        raise JobError(
            ErrorKind.invalid_request,
            message,
            details={
                "fields": {"scale_factor": [message]},
                "largest_scale": best[0] if best else None,
                "max_output_pixels": cap,
            },
        )

    # --- the steps of ``run``; the public ones are the hooks a provider's own ``run`` uses ---
    async def input_refs(self, request: Request) -> tuple[str, str | None]:
        """The input image and the mask (None without one) as the provider takes them: the
        person's URL (``request.options["input_url"]``) as is, a local file prepared
        (upright sRGB where needed) and handed to :meth:`send_input`. An unreadable file is an
        ``invalid_request`` error."""
        url = request.options.get("input_url")
        if url:
            image = str(url)
        else:
            try:
                data = await asyncio.to_thread(remote_io.prepare_input, Path(request.input))
            except ImageError as exc:
                raise JobError(ErrorKind.invalid_request, str(exc)) from None
            image = await self.send_input(data)
        mask = request.params.mask
        if mask and not mask.startswith(("http://", "https://", "data:")):
            try:
                mask_file = await asyncio.to_thread(remote_io.prepare_input, Path(mask))
            except ImageError as exc:
                raise JobError(ErrorKind.invalid_request, f"mask: {exc}") from None
            mask = await self.send_input(mask_file)
        return image, mask

    async def _submit(
        self,
        request: Request,
        report: Report,
        fields: dict[str, Any],
        timings: dict[str, float],
        pending: list[Ticket],
    ) -> Ticket:
        t = time.monotonic()
        report(BackendEvent(state=JobState.uploading, stage=f"sending to {self.label}"))
        image, mask = await self.input_refs(request)
        timings["upload"] = time.monotonic() - t
        ticket = Ticket.new()
        pending.append(ticket)
        # What was sent, so a submit with no answer can be matched at the provider later.
        ticket.extra["image"] = image if len(image) < 2048 else ""
        ticket.extra["image_sha256"] = hashlib.sha256(image.encode()).hexdigest()
        # Persisted before the request leaves: after a crash we know a submit may have gone.
        report(
            BackendEvent(
                state=JobState.submitting,
                stage=f"submitting to {self.label}",
                remote=ticket.to_dict(),
            )
        )
        return await self._send(request, report, fields, image, mask, ticket)

    async def _send(
        self,
        request: Request,
        report: Report,
        fields: dict[str, Any],
        image: str,
        mask: str | None,
        ticket: Ticket,
    ) -> Ticket:
        tries = 0
        while True:
            tries += 1
            try:
                ticket = await self.submit(fields, image, mask, ticket)
                break
            except SubmitNoAnswer as exc:
                if self.idempotent_submit and tries < 6:
                    log.info(
                        "%s: no answer to submit (%s); re-sending with the same key",
                        self.label,
                        exc,
                    )
                    await self._backoff(tries)
                    continue
                found = await self.reconcile(ticket, fields, image)
                if found is None:
                    raise self.submit_unknown(ticket, str(exc)) from None
                ticket = found
                break
        ticket.phase = "submitted"
        ticket.submitted_at = ticket.submitted_at or time.time()
        report(
            BackendEvent(
                state=JobState.queued,
                stage=f"queued at {self.label}",
                message=f"queued at {self.label}",
                remote=ticket.to_dict(),
            )
        )
        return ticket

    def submit_unknown(self, ticket: Ticket, why: str) -> JobError:
        """The error for a submit that got no answer (``why`` says how): the job stops in
        ``submit-unknown`` with ``ticket`` as its checkpoint, and is never sent again unless the
        person asks."""
        return JobError(
            ErrorKind.submit_unknown,
            f"{self.label} did not answer the submit ({self.scrub(why)}), so it may or may not "
            f"have accepted and billed this job. Clarifier did not send it again. Check your "
            f"{self.label} account; retrying sends it again.",
            details={"remote": ticket.to_dict()},
        )

    async def _recover_submit(
        self, request: Request, report: Report, fields: dict[str, Any], ticket: Ticket
    ) -> Ticket:
        """A restart found a submit that may have been sent: re-send only where that is safe."""
        if self.idempotent_submit:
            # The same body as the first time (a fresh upload would change the image URL, and
            # an idempotency key replayed with a different body is refused).
            first = ticket.extra.get("image")
            if first and not request.params.mask:
                return await self._send(request, report, fields, first, None, ticket)
            image, mask = await self.input_refs(request)
            return await self._send(request, report, fields, image, mask, ticket)
        found = await self.reconcile(ticket, fields, ticket.extra.get("image", ""))
        if found is None:
            raise self.submit_unknown(ticket, "Clarifier stopped while the submit was in flight")
        found.phase = "submitted"
        found.submitted_at = found.submitted_at or time.time()
        report(BackendEvent(state=JobState.queued, remote=found.to_dict()))
        return found

    async def _wait(self, ticket: Ticket, report: Report) -> Ticket:
        deadline = (ticket.submitted_at or time.time()) + self.max_wait
        last_state: JobState | None = None
        for interval in self.poll_cadence.intervals():
            status = await self.poll(ticket)
            self.polls += 1
            if status.state in (JobState.queued, JobState.running):
                if status.state is JobState.running and ticket.running_at is None:
                    ticket.running_at = time.time()
                self._report_status(report, status, ticket if status.state != last_state else None)
                last_state = status.state
            elif status.state is JobState.succeeded:
                if not status.outputs:
                    status = await self.fetch_result(ticket, status)
                if not status.outputs:
                    raise JobError(
                        ErrorKind.model_failed,
                        f"{self.label} finished the job but returned no image.",
                    )
                ticket.phase = "done"
                ticket.outputs = list(status.outputs)
                ticket.done_at = time.time()
                ticket.running_at = ticket.running_at or ticket.done_at
                ticket.cost = status.cost if status.cost is not None else ticket.cost
                ticket.cost_unit = status.cost_unit or ticket.cost_unit
                ticket.seed = status.seed if status.seed is not None else ticket.seed
                ticket.extra.update(status.extra)
                report(
                    BackendEvent(
                        state=JobState.downloading,
                        stage="downloading",
                        message=f"downloading from {self.label}",
                        remote=ticket.to_dict(),
                    )
                )
                return ticket
            elif status.state is JobState.failed:
                raise status.error or self.failed(status.message)
            elif status.state is JobState.canceled:
                raise JobError(
                    ErrorKind.canceled,
                    status.message or f"{self.label} canceled the job",
                    details={"remote_final": True},
                )
            if time.time() > deadline:
                raise JobError(
                    ErrorKind.timeout,
                    f"{self.label} has not finished after {self.max_wait / 60:.0f} minutes; the "
                    f"job may still complete there (request {ticket.remote_id}).",
                )
            await self._sleep(max(interval, status.next_poll or 0.0))
        raise AssertionError("unreachable")

    def _report_status(self, report: Report, status: RemoteStatus, ticket: Ticket | None) -> None:
        if status.state is JobState.queued:
            where = f"queued at {self.label}"
            if status.queue_position is not None:
                where += f" (position {status.queue_position})"
            report(
                BackendEvent(
                    state=JobState.queued,
                    stage=where,
                    message=status.message or where,
                    remote=None if ticket is None else ticket.to_dict(),
                )
            )
            return
        done = round(100 * status.progress) if status.progress is not None else 0
        report(
            BackendEvent(
                state=JobState.running,
                stage=f"running at {self.label}",
                done=done,
                total=100 if status.progress is not None else 0,
                message=status.message or f"running at {self.label}",
                remote=None if ticket is None else ticket.to_dict(),
            )
        )

    async def download(self, url: str) -> bytes:
        """Fetch an output file. Override for providers whose CDN needs a special path."""
        if url.startswith("data:"):
            return remote_io.decode_data_url(url)
        response = await self.http(
            "GET", url, during="download", auth=self.url(url).startswith(self.base_url), paced=False
        )
        return response.content

    async def finish(self, request: Request, ticket: Ticket) -> Outcome:
        """The job is done at the provider (``ticket.outputs`` known, or the bytes already
        stashed): download the result unless it is stashed, keep it as received, then save the
        output with its metadata and the seed the provider reports. A dead result link is an
        ``expired`` error; an undecodable result keeps the stash and says where it is."""
        stash = remote_io.stash_path(Path(request.output), request.job_id)
        if stash.exists():
            data = await asyncio.to_thread(stash.read_bytes)
        else:
            try:
                data = await self.download(ticket.outputs[0])
            except JobError as err:
                if err.kind in (ErrorKind.expired, ErrorKind.auth, ErrorKind.invalid_request):
                    raise JobError(
                        ErrorKind.expired,
                        f"{self.label} finished the job, but its result link no longer works "
                        f"({err.message}); the result is lost.",
                    ) from None
                raise
            await asyncio.to_thread(remote_io.stash, Path(request.output), request.job_id, data)
        params = request.params
        if ticket.seed is not None and ticket.seed != params.seed:
            with contextlib.suppress(Exception):
                params = params.replace(seed=ticket.seed)
        source = await asyncio.to_thread(_probe_quietly, Path(request.input))
        try:
            saved = await asyncio.to_thread(
                remote_io.save_output,
                data,
                Path(request.output),
                params,
                engine=f"{self.name}/{self.model}" if self.model else self.name,
                models={"remote": self.model} if self.model else {},
                source=source,
            )
        except ImageError as exc:
            raise JobError(
                ErrorKind.protocol,
                f"{self.label}'s result could not be saved ({exc}); the file as received is kept "
                f"at {stash}.",
            ) from None
        remote_io.remove_quietly(stash)
        return Outcome(
            output=saved.path,
            info=saved.info.to_dict(),
            warnings=saved.warnings,
            remote_id=ticket.remote_id,
            cost=ticket.cost,
            cost_unit=ticket.cost_unit,
        )

    async def canceled(self, ticket: Ticket | None) -> JobError:
        """The person canceled the job (``ticket``: its checkpoint, None before a submit): stop it
        at the provider where it can, and return the ``canceled`` error the job ends with. The
        message says what that means for the person's account; ``details["remote_final"]``
        whether the provider's job is over for good, so a Retry must not resume it. Not for an
        app that is quitting (``detached``): that job resumes from its checkpoint."""
        message, final = await self._cancel_remote(ticket)
        return JobError(ErrorKind.canceled, message, details={"remote_final": final})

    async def _cancel_remote(self, ticket: Ticket | None) -> tuple[str, bool]:
        if ticket is None or ticket.phase == "done":
            return "canceled", False
        if ticket.remote_id is None:
            return (
                f"canceled while submitting; {self.label} may have received the job, and may "
                "still run and bill it",
                False,
            )
        if not self.can_cancel:
            return (
                f"Stopped watching. {self.label} has no way to cancel a job, so it may still "
                "finish and bill your account; Retry picks it up again.",
                False,
            )
        try:
            async with asyncio.timeout(15):
                answer = await self.cancel(ticket)
        except (JobError, SubmitNoAnswer, TimeoutError, httpx.HTTPError) as exc:
            log.warning("%s: cancel failed: %s", self.label, exc)
            answer = False
        if isinstance(answer, str):
            return answer, False
        if answer:
            return f"canceled at {self.label}", True
        return (
            f"Stopped watching; {self.label} did not confirm the cancel, so it may still bill.",
            False,
        )


def _probe_quietly(path: Path) -> SourceInfo | None:
    try:
        return probe_image(path) if os.path.exists(path) else None
    except ImageError:
        return None
