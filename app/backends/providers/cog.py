"""Self-hosted Cog servers: Clarity (or any model with its inputs) on your own GPU boxes.

Cog's HTTP API has no polling. ``PUT /predictions/{id}`` with ``Prefer: respond-async`` answers
202 and reports progress only through webhooks, so the backend runs a small webhook listener
(:mod:`app.backends.remote.webhooks`) on 127.0.0.1 (an ephemeral port, started on first use) and
passes it with every prediction. When a server is elsewhere (its webhooks could not reach this
machine's loopback), or ``sync=True``, it sends a plain synchronous ``PUT`` that answers when the
image is done instead. If webhooks turn out not to arrive (a server in Docker without host
networking), the backend notices, cancels, and switches that server to synchronous requests.

The prediction id is the ticket key, and a ``PUT`` of a running id returns that prediction
rather than starting another, so a submit is always safe to repeat. A Cog server keeps no record
of a prediction, though: its result exists only in the webhook (or the synchronous answer). A
run whose result can no longer reach us (Clarifier restarted, or the server did) is therefore
cancelled and run again under the same id. A self-hosted server bills nothing, so a re-run costs
only time. Outputs arrive as data URLs (or URLs with ``--upload-url``); data URLs are held in
memory until saved, never written into a checkpoint.

**Several servers, one pool.** The base URL may list several servers (``CLARIFIER_COG_BASE_URL=
"http://gpu-a:5000, http://gpu-b:5000"``, or the settings' list, see
:func:`app.store.settings.split_urls`). A job waits, holding nothing but its place, until one
has a free slot (:mod:`app.backends.providers.cog_pool`: by each server's free capacity, in
arrival order); a Cog server runs one prediction at a time by default and answers 409 past its
last slot, which sends the job to the next free one. When a job's server dies (it stops
answering, its health check fails, or it restarted and lost the prediction), the job moves, first
in line, to another server under the same id; webhooks of the run left behind carry an older run
number and are dropped, so exactly one result is saved. The checkpoint names the job's server,
so a resumed job cancels its orphan there. A job fails only when every server has failed for
good, or none has answered for ``retry_for`` seconds; its checkpoint stays, and a retry sends it
again.

Clarity's inputs and outputs are defined once, in :mod:`app.backends.providers.clarity_inputs`,
shared with the Replicate backend, which hosts the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import httpx

from app.backends import registry
from app.backends.base import BackendEvent, ErrorKind, JobError, JobState, Outcome, Report, Request
from app.backends.providers.clarity_inputs import (
    clarity_input,
    effective_params,
    fit_input,
    input_schema,
    no_image,
    outputs_of,
    progress_of,
)
from app.backends.providers.cog_pool import Claim, CogServer, ServerPool, ServerState, probe
from app.backends.remote import (
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    SubmitNoAnswer,
    Ticket,
    WebhookListener,
    body_of,
    decode_data_url,
    stash_path,
)
from app.backends.remote.retry import RetryPolicy
from app.store.settings import split_urls
from pipeline.params import UpscaleParams, random_seed

__all__ = ["CogBackend"]

log = logging.getLogger(__name__)

EVENTS = ["start", "output", "logs", "completed"]
_HELD = "cog-held:"  # an output held in memory, in place of a data URL in the checkpoint
_TERMINAL = ("succeeded", "failed", "canceled")
_LABEL = registry.get("cog").label
_WHO = _LABEL[:1].upper() + _LABEL[1:]  # the label, at the start of a sentence
# The slot the job now in ``run`` waits for or holds: set by ``run``, read by ``submit``, which
# the template calls in the same task.
_CLAIM: ContextVar[Claim | None] = ContextVar("cog_claim", default=None)


@dataclass
class _Run:
    """What we know of one prediction id at the servers."""

    key: str
    inputs: dict[str, Any]  # as mapped, before fitting to a server's model
    claim: Claim | None = None  # its slot (or its place in the queue while it moves)
    body: dict[str, Any] = field(default_factory=dict)  # the PUT body without the webhook
    fitted_for: str = ""  # the server (and its start) the body was fitted for
    sync: bool = False
    number: int = 0  # bumps with each PUT that may start a run: older runs' webhooks are dropped
    sent: bool = False
    pending: bool = False  # it waits for another server's slot (webhook runs; poll() sends it)
    latest: dict[str, Any] | None = None
    version: int = 0
    seen: int = 0
    heard: bool = False  # a webhook of this run arrived
    put_at: float = 0.0
    instance: str | None = None  # the server's setup time when the run was sent
    idle_since: float | None = None
    reruns: int = 0
    error: JobError | None = None
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def server(self) -> CogServer | None:
        return self.claim.server if self.claim is not None else None

    def update(self, state: Mapping[str, Any]) -> None:
        self.latest = dict(state)
        self.version += 1
        self.changed.set()


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CogBackend(RemoteBackend, backend="cog"):
    """Cog servers you run (``docker run -p 5000:5000 r8.im/philz1337x/clarity-upscaler``).

    ``base_url`` names one server or several (separated by commas or spaces)."""

    idempotent_submit = True  # PUT /predictions/{id}: the id is ours
    submit_5xx_safe: ClassVar[bool] = True
    cadence: ClassVar[PollCadence] = PollCadence(0.0)  # poll() itself waits for the next webhook
    budget_limit: ClassVar[tuple[int, float]] = (6000, 60.0)  # your own servers: no quota
    retention: ClassVar[float] = 0.0  # Cog keeps nothing: a result not received is gone
    # How many jobs the controller hands over at once. Each waits here, holding nothing, for a
    # free slot on one of the servers, so this bounds the queue, not the servers.
    default_concurrency: ClassVar[int] = 16

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        sync: bool = False,
        heartbeat: float = 5.0,
        webhook_grace: float = 10.0,
        busy_poll: float = 1.0,
        failover_after: float = 10.0,
        probe_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        """``heartbeat``: how long a silent prediction waits before its server's health is
        checked; ``webhook_grace``: how long a run may go unheard before webhooks are deemed
        not to arrive; ``busy_poll``: how often waiting jobs ask the servers again;
        ``failover_after``: how long a server may fail to answer before its job moves to
        another; ``probe_timeout``: how long a health check may take; ``retry_for``: how long
        a job waits while no server answers at all."""
        kwargs.setdefault("retry_for", 120.0)  # boxes on the desk: do not retry for 15 minutes
        urls = split_urls(base_url or "") or (self.default_base_url,)
        super().__init__(client, urls[0], api_key, **kwargs)
        self.servers = [CogServer(url, sync=sync or not _is_loopback(url)) for url in urls]
        self.heartbeat = heartbeat
        self.webhook_grace = webhook_grace
        self.failover_after = failover_after
        self.probe_timeout = probe_timeout
        self._pool = ServerPool(
            self.servers, self._probe, poll=busy_poll, reach_for=lambda: self.retry_for
        )
        self._runs: dict[str, _Run] = {}
        self._held: dict[str, str] = {}
        self._listener = WebhookListener(self._on_webhook)
        self._listener_lock = asyncio.Lock()

    @property
    def sync(self) -> bool:
        """Whether every server is driven with synchronous requests."""
        return all(server.sync for server in self.servers)

    @property
    def busy_poll(self) -> float:
        return self._pool.poll

    @busy_poll.setter
    def busy_poll(self, seconds: float) -> None:
        self._pool.poll = seconds

    @property
    def retry(self) -> RetryPolicy:
        """One request to one server rides out a blip for ``failover_after`` seconds; waiting
        longer for some server to come back is the pool's part (``retry_for``)."""
        return RetryPolicy(base=self.retry_base, retry_for=min(self.retry_for, self.failover_after))

    # --- parameters and running -------------------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        return clarity_input(params, self.label)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def run(self, request: Request, report: Report) -> Outcome:
        request = replace(request, params=effective_params(request.params))
        if request.resume is not None:
            request = replace(request, resume=self._resume_plan(request))
        plan = Ticket.from_dict(request.resume) if request.resume is not None else None
        claim: Claim | None = None
        if plan is None or plan.phase != "done":  # a result already here needs no server
            self.check_ready()
            self.map_params(request.params)  # a refused setting fails now, not after a wait
            if plan is not None and plan.extra.get("orphan"):
                await self._stop_orphan(plan)
            claim = await self._claim(report)
        keys: list[str] = []

        def noting(event: BackendEvent) -> None:
            if event.remote and event.remote.get("key"):
                keys.append(str(event.remote["key"]))
            report(event)

        token = _CLAIM.set(claim)
        try:
            return await super().run(request, noting)
        finally:  # however the run ends (a timeout, a crash), nothing of it keeps running here
            _CLAIM.reset(token)
            if keys:
                self._forget(keys[-1])
            self._pool.release(claim)

    def _resume_plan(self, request: Request) -> dict[str, Any]:
        """A checkpoint to go on from. The server keeps no results and a restarted Clarifier
        listens on a new port, so unless the result is already here, the prediction is sent
        again under the same id (a running one is cancelled first: its result could never
        reach us). A self-hosted server bills nothing; only the time is lost."""
        ticket = Ticket.from_dict(request.resume or {})
        if ticket.phase == "done" and ticket.outputs:
            first = ticket.outputs[0]
            stash = stash_path(Path(request.output), request.job_id)
            if not first.startswith(_HELD) or first in self._held or stash.exists():
                return ticket.to_dict()
        ticket.phase, ticket.outputs = "submitting", []
        ticket.extra["orphan"] = True
        return ticket.to_dict()

    async def _stop_orphan(self, ticket: Ticket) -> None:
        """Cancel the prediction a previous session left running (at the server its checkpoint
        names, or at every server for an older checkpoint), so it frees its slot."""
        where = ticket.extra.get("server")
        targets = [s for s in self.servers if s.url == where] or self.servers

        async def stop(server: CogServer) -> None:
            with contextlib.suppress(JobError, SubmitNoAnswer, httpx.HTTPError, TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    if await self._cancel_at(server, ticket.key):
                        log.info(
                            "%s: cancelled %s at %s, whose result cannot reach us",
                            self.label,
                            ticket.key,
                            server.url,
                        )

        await asyncio.gather(*(stop(server) for server in targets))

    # --- the servers ------------------------------------------------------------------------
    async def _probe(self, server: CogServer) -> None:
        await probe(self.client, server, headers=self.auth_headers(), limit=self.probe_timeout)

    async def _claim(self, report: Report | None, *, urgent: bool = False) -> Claim:
        """A slot on some server, waiting in line (and saying why) until one is free."""
        claim = self._pool.enqueue(urgent=urgent)
        said = ""
        try:
            while await self._pool.wait(claim, within=self.busy_poll) is None:
                if time.monotonic() - claim.since > self.max_wait:
                    raise JobError(
                        ErrorKind.timeout,
                        f"No slot on your Cog servers came free in {self.max_wait / 60:.0f} "
                        "minutes; nothing was sent. Try again later.",
                    )
                message = self._pool.waiting_message()
                if report is not None and message != said:
                    where = f"queued at {self.label}"
                    report(BackendEvent(state=JobState.queued, stage=where, message=message))
                    said = message
        except BaseException:
            self._pool.release(claim)
            raise
        return claim

    async def _input_schema(self, server: CogServer) -> dict[str, Any] | None:
        """The served model's inputs, read once per server start; None when it publishes
        none (then everything is sent as is)."""
        if server.schema is None or server.schema[0] != server.instance:
            response = await self.http(
                "GET", f"{server.url}/openapi.json", during="schema", ok=(404, 503)
            )
            schema = input_schema(body_of(response)) if response.status_code == 200 else None
            server.schema = (server.instance, schema)
        return server.schema[1]

    async def _fit(self, run: _Run, server: CogServer) -> None:
        """The PUT body with the inputs the server's model takes."""
        where = f"{server.url}#{server.instance}"
        if run.fitted_for != where:
            schema = await self._input_schema(server)
            run.body = {"id": run.key, "input": fit_input(run.inputs, schema, self.label)}
            run.fitted_for = where

    async def _until_free(self, server: CogServer, limit: float) -> None:
        started = time.monotonic()
        while True:
            await self._probe(server)
            if server.state is ServerState.ready:
                return
            if server.state is ServerState.failed and server.error is not None:
                raise server.error
            if time.monotonic() - started > limit:
                raise JobError(
                    ErrorKind.transient, f"{_WHO} stayed busy for {limit:.0f} s; try again."
                )
            await self._sleep(self.busy_poll)

    async def _cancel_at(self, server: CogServer, key: str) -> bool:
        response = await self.http(
            "POST",
            f"{server.url}/predictions/{key}/cancel",
            during="cancel",
            safe=True,
            ok=(404,),
        )
        return response.status_code < 300

    def _move(self, key: str, run: _Run, why: str, *, counts: bool = True) -> None:
        """Give up the run's slot and queue it, first in line, for another (its server died,
        lost it, or was full); ``counts``: a re-run that counts towards giving up."""
        if counts:
            run.reruns += 1
            if run.reruns > 2 + len(self.servers):
                raise JobError(ErrorKind.protocol, f"{_WHO} {why}, {run.reruns} times; giving up.")
        self._pool.release(run.claim)
        run.claim = self._pool.enqueue(urgent=True)
        run.pending = not run.sync  # a synchronous run's own task waits for the slot
        elsewhere = "sending it to another server" if len(self.servers) > 1 else "sending it again"
        note = f"{_WHO} is busy; waiting" if not counts else f"{_WHO} {why}; {elsewhere}"
        run.update({"id": key, "status": "starting", "note": note})

    # --- submit -----------------------------------------------------------------------------
    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        ticket.extra.pop("orphan", None)
        seed = fields["seed"] if fields.get("seed") is not None else random_seed()
        inputs = {**fields, "seed": seed, "image": image, **({"mask": mask} if mask else {})}
        ticket.remote_id = ticket.key
        ticket.seed = seed
        claim = _CLAIM.get() or await self._claim(None)
        run = self._runs.get(ticket.key)
        if run is None:
            run = _Run(key=ticket.key, inputs=inputs, claim=claim)
            self._runs[ticket.key] = run
        elif run.claim is not claim:  # the same submit again: keep the run's own slot
            self._pool.release(claim)
        await self._start(ticket.key, run)
        ticket.extra["server"] = run.server.url if run.server is not None else ""
        return ticket

    async def _start(self, key: str, run: _Run) -> None:
        """PUT the prediction to the run's server: asynchronously with a webhook, or in a
        background request."""
        server = run.server
        if server is None:
            raise RuntimeError("a Cog prediction was started without a server")
        run.pending = False
        run.sync = server.sync
        if run.sync:
            if run.task is None or run.task.done():
                run.sent = True
                run.update({"id": key, "status": "processing", "logs": ""})
                run.task = asyncio.create_task(self._sync_run(key, run))
            return
        try:
            await self._fit(run, server)
            async with self._listener_lock:
                hook = await self._listener.start()
            run.number += 1
            run.heard, run.idle_since, run.put_at = False, None, time.monotonic()
            run.instance = server.instance
            response = await self._put_async(key, run, server, hook)
        except JobError as err:
            if err.kind is not ErrorKind.transient:
                raise
            self._lost(server, key, run, err)
            return
        if response.status_code == 409:  # someone else took the last slot meanwhile
            self._move(key, run, "is busy", counts=False)
            return
        run.sent = True
        if run.claim is not None:
            self._pool.used(run.claim)
        answer = body_of(response)
        if isinstance(answer, dict) and answer.get("status") and not run.heard:
            run.update(answer)

    async def _put_async(self, key: str, run: _Run, server: CogServer, hook: str) -> httpx.Response:
        body = {
            **run.body,
            "webhook": f"{hook}/{urllib.parse.quote(key, safe='')}/{run.number}",
            "webhook_events_filter": EVENTS,
        }
        return await self.http(
            "PUT",
            f"{server.url}/predictions/{key}",
            during="submit",
            safe=True,
            json=body,
            headers={"Prefer": "respond-async"},
            ok=(409,),
        )

    def _lost(self, server: CogServer, key: str, run: _Run, err: JobError) -> None:
        log.warning("%s: %s stopped answering (%s); moving %s", self.label, server.url, err, key)
        self._pool.lost(server, "it stopped answering")
        self._move(key, run, f"at {server.url} stopped answering")

    async def _sync_run(self, key: str, run: _Run) -> None:
        try:
            resent = 0
            while True:
                if run.claim is not None and run.server is None:  # moving: wait for a slot
                    await self._pool.wait(run.claim)
                    run.update({"id": key, "status": "processing", "logs": ""})
                server = run.server
                if server is None:
                    raise RuntimeError("a Cog prediction lost its slot")
                if not server.sync:  # moved to a server whose webhooks reach us
                    run.sync = False
                    await self._start(key, run)
                    return
                try:
                    await self._fit(run, server)
                    if run.claim is not None:
                        self._pool.used(run.claim)
                    response = await self.http(
                        "PUT",
                        f"{server.url}/predictions/{key}",
                        during="submit",
                        safe=True,
                        json=run.body,
                        ok=(409,),
                        timeout=httpx.Timeout(30.0, read=None),  # answers when the image is done
                    )
                except JobError as err:
                    if err.kind is not ErrorKind.transient:
                        raise
                    self._lost(server, key, run, err)
                    continue
                if response.status_code == 409:  # the request waits here, not in poll()
                    self._move(key, run, "is busy", counts=False)
                    run.update({"id": key, "status": "starting", "busy": True})
                    continue
                answer = await self.json_of(response)
                if response.status_code == 200 and answer.get("status") in _TERMINAL:
                    run.update(answer)
                    return
                # 202: the id was already running, started by a request whose answer was lost.
                # Its result cannot reach us: stop it and run it again.
                resent += 1
                if resent > 3:
                    raise JobError(
                        ErrorKind.protocol, f"{_WHO} kept answering without finishing the image."
                    )
                await self._cancel_at(server, key)
                await self._until_free(server, limit=60.0)
        except JobError as err:
            run.error = err
            run.changed.set()
        except Exception as exc:  # a bug must end the job, not leave it waiting forever
            log.exception("%s: the synchronous request failed", self.label)
            run.error = JobError(ErrorKind.internal, f"internal error: {type(exc).__name__}: {exc}")
            run.changed.set()

    # --- watching ---------------------------------------------------------------------------
    def _on_webhook(self, key: str, number: int, payload: dict[str, Any]) -> None:
        run = self._runs.get(key)
        if run is None or number != run.number or payload.get("id") not in (None, key):
            return  # a finished job, or an earlier run of this id
        if run.latest and run.latest.get("status") in _TERMINAL:
            return
        run.heard = True
        run.update(payload)

    def _forget(self, key: str) -> None:
        run = self._runs.pop(key, None)
        if run is None:
            return
        if run.task is not None and not run.task.done():
            run.task.cancel()
        self._pool.release(run.claim)

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        """The next news of the prediction: a webhook, the synchronous answer, or, after a
        silent ``heartbeat``, the current state once its server's health has been checked."""
        key = ticket.key
        run = self._runs.get(key)
        if run is None:
            raise JobError(
                ErrorKind.protocol, f"Clarifier lost track of prediction {key}; retry the job."
            )
        while True:  # run() forgets the run however this ends
            if run.error is not None:
                raise run.error
            if run.version != run.seen:
                run.seen = run.version
                if run.server is not None:  # saved with the next checkpoint
                    ticket.extra["server"] = run.server.url
                return self._status(key, run)
            if run.pending and run.claim is not None:
                if await self._pool.wait(run.claim, within=self.busy_poll) is None:
                    return RemoteStatus(JobState.queued, "moving", self._pool.waiting_message())
                await self._start(key, run)
                continue
            run.changed.clear()
            try:
                async with asyncio.timeout(self.heartbeat):
                    await run.changed.wait()
            except TimeoutError:
                await self._check(key, run)
                if run.version == run.seen and not run.pending and run.error is None:
                    return self._status(key, run)

    async def _check(self, key: str, run: _Run) -> None:
        """No news for a while: is the prediction still running, and will we hear of it?"""
        server = run.server
        if server is None or run.sync:
            return  # moving; or the open request answers, or fails and moves
        await self._probe(server)
        now = time.monotonic()
        down_for = now - (server.down_since or now)
        if server.state is ServerState.failed or (
            server.state is ServerState.unreachable and down_for >= self.failover_after
        ):
            log.warning("%s at %s: %s; moving %s", self.label, server.url, server.problem, key)
            if server.state is ServerState.failed:  # it answers: stop what is left of the run
                with contextlib.suppress(JobError, SubmitNoAnswer):
                    await self._cancel_at(server, key)
            self._move(key, run, f"at {server.url} failed ({server.problem})")
        elif server.state is ServerState.unreachable:
            return  # a blip, perhaps: look again at the next heartbeat
        elif server.instance and run.instance and run.instance != server.instance:
            log.warning("%s restarted and lost the prediction; running %s again", self.label, key)
            self._move(key, run, "restarted and lost the prediction")
        elif not run.heard and now - run.put_at > self.webhook_grace:
            log.warning(
                "%s: no webhook arrived in %.0f s (a server in Docker cannot reach "
                "Clarifier's 127.0.0.1); switching %s to synchronous requests",
                self.label,
                self.webhook_grace,
                server.url,
            )
            server.sync = True
            await self._cancel_at(server, key)
            await self._until_free(server, limit=60.0)
            await self._start(key, run)
        elif server.state is ServerState.ready:  # a free slot, yet our prediction never ended
            if run.idle_since is None:
                run.idle_since = now
            elif now - run.idle_since >= self.webhook_grace:
                await self._ask_again(key, run, server)
        else:
            run.idle_since = None

    async def _ask_again(self, key: str, run: _Run, server: CogServer) -> None:
        """The server has room while our prediction never said it ended. The same PUT again
        returns the prediction if it still runs (a server with several slots), or runs it
        again if it finished unheard; its webhooks keep the run's number either way."""
        log.warning("%s: %s has not reported %s's end; asking again", self.label, server.url, key)
        run.idle_since = None
        async with self._listener_lock:
            hook = await self._listener.start()
        response = await self._put_async(key, run, server, hook)
        if response.status_code == 409:  # full, and ours is not among its predictions
            self._move(key, run, "finished without reporting the result")

    def _status(self, key: str, run: _Run) -> RemoteStatus:
        state = run.latest or {}
        raw = str(state.get("status") or "starting")
        if raw == "starting":
            note = str(state.get("note") or "")
            busy = f"{_WHO} is busy; waiting" if state.get("busy") else ""
            return RemoteStatus(JobState.queued, raw, note or busy or f"starting at {self.label}")
        if raw == "processing":
            progress, line = progress_of(state.get("logs"))
            message = f"running at {self.label}" + (f": {line}" if line else "")
            return RemoteStatus(JobState.running, raw, message, progress=progress)
        if raw == "succeeded":
            outputs = []
            for i, url in enumerate(outputs_of(state.get("output"))):
                if url.startswith("data:"):
                    held = f"{_HELD}{key}/{i}"
                    self._held[held] = url
                    url = held
                outputs.append(url)
            if not outputs:
                return RemoteStatus(
                    JobState.failed, raw, error=no_image(self.label, run.body.get("input"))
                )
            return RemoteStatus(JobState.succeeded, raw, outputs=tuple(outputs))
        if raw == "failed":
            return RemoteStatus(
                JobState.failed, raw, error=self.failed(str(state.get("error") or ""))
            )
        if raw == "canceled":
            return RemoteStatus(JobState.canceled, raw, f"{_WHO} canceled the prediction.")
        raise self.protocol_error(f"unknown prediction status {raw!r}", state)

    # --- results, cancel, errors, shutdown --------------------------------------------------
    async def download(self, url: str) -> bytes:
        if url.startswith(_HELD):
            data_url = self._held.pop(url, None)
            if data_url is None:
                raise JobError(
                    ErrorKind.expired, "the result was held by a Clarifier session that ended"
                )
            for other in [k for k in self._held if k.startswith(url.rpartition("/")[0] + "/")]:
                del self._held[other]  # Clarity's extra outputs, if any: only the first is saved
            return decode_data_url(data_url)
        return await super().download(url)

    async def cancel(self, ticket: Ticket) -> bool:
        run = self._runs.get(ticket.key)
        where = (run.server.url if run and run.server else "") or ticket.extra.get("server")
        self._forget(ticket.key)
        if run is not None and not run.sent:
            return True  # it never reached a server
        targets = [s for s in self.servers if s.url == where] or self.servers
        if len(targets) == 1:  # 200: it stops; 404: it is not running there
            await self._cancel_at(targets[0], ticket.key)
            return True
        for server in targets:  # an old checkpoint names no server: stop it wherever it runs
            with contextlib.suppress(JobError, SubmitNoAnswer):
                await self._cancel_at(server, ticket.key)
        return True

    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        if response.status_code == 404 and during in ("submit", "health"):
            origin = f"{response.url.scheme}://{response.url.netloc.decode('ascii')}"
            return JobError(
                ErrorKind.protocol,
                f"{origin} does not answer like a Cog server (no {response.url.path}); "
                "check the address.",
            )
        return self.general_error(response, during=during)

    async def aclose(self) -> None:
        for key in list(self._runs):
            self._forget(key)
        self._held.clear()
        await self._listener.close()
        await super().aclose()
