"""A self-hosted Cog server: Clarity (or any model with its inputs) on your own GPU box.

Cog's HTTP API has no polling. ``PUT /predictions/{id}`` with ``Prefer: respond-async`` answers
202 and reports progress only through webhooks, so the backend runs a small webhook listener
(:mod:`app.backends.remote.webhooks`) on 127.0.0.1 (an ephemeral port, started on first use) and
passes it with every prediction. When the server is elsewhere (its webhooks could not reach this
machine's loopback), or ``sync=True``, it sends a plain synchronous ``PUT`` that answers when the
image is done instead. If webhooks
turn out not to arrive (a server in Docker without host networking), the backend notices,
cancels, and switches to synchronous requests.

The prediction id is the ticket key, and a ``PUT`` of a running id returns that prediction
rather than starting another, so a submit is always safe to repeat. A Cog server keeps no record
of a prediction, though: its result exists only in the webhook (or the synchronous answer). A
run whose result can no longer reach us (Clarifier restarted, or the server did) is therefore
cancelled and run again under the same id. A self-hosted server bills nothing, so a re-run costs
only time. Outputs arrive as data URLs (or URLs with ``--upload-url``); data URLs are held in
memory until saved, never written into a checkpoint.

The server runs one prediction at a time by default: a busy server answers 409, and the job
waits, queued, until ``/health-check`` says READY.

Clarity's inputs and outputs are defined once, in :mod:`app.backends.providers.clarity_inputs`,
shared with the Replicate backend, which hosts the same model.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Mapping
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
from app.backends.remote import (
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    Ticket,
    WebhookListener,
    body_of,
    decode_data_url,
    object_of,
    stash_path,
)
from pipeline.params import UpscaleParams, random_seed

__all__ = ["CogBackend"]

log = logging.getLogger(__name__)

EVENTS = ["start", "output", "logs", "completed"]
_HELD = "cog-held:"  # an output held in memory, in place of a data URL in the checkpoint
_TERMINAL = ("succeeded", "failed", "canceled")
_LABEL = registry.get("cog").label
_WHO = _LABEL[:1].upper() + _LABEL[1:]  # the label, at the start of a sentence


@dataclass
class _Run:
    """What we know of one prediction id at the server."""

    body: dict[str, Any]  # the PUT body without the webhook
    sync: bool
    fitted: bool = False  # the inputs were fitted to the served model's schema
    number: int = 0  # bumps with each PUT that may start a run: older runs' webhooks are dropped
    sent: bool = False
    pending: str = ""  # why the PUT waits: "starting" or "busy"
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
    """A Cog server you run (``docker run -p 5000:5000 r8.im/philz1337x/clarity-upscaler``)."""

    idempotent_submit = True  # PUT /predictions/{id}: the id is ours
    submit_5xx_safe: ClassVar[bool] = True
    cadence: ClassVar[PollCadence] = PollCadence(0.0)  # poll() itself waits for the next webhook
    budget_limit: ClassVar[tuple[int, float]] = (6000, 60.0)  # your own server: no quota
    retention: ClassVar[float] = 0.0  # Cog keeps nothing: a result not received is gone
    default_concurrency: ClassVar[int] = 1  # one prediction at a time, as Cog runs them

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
        **kwargs: Any,
    ) -> None:
        """``heartbeat``: how long a silent prediction waits before the server's health is
        checked; ``webhook_grace``: how long a run may go unheard before webhooks are deemed
        not to arrive; ``busy_poll``: the health-check interval while the server is busy."""
        kwargs.setdefault("retry_for", 120.0)  # a box on the desk: do not retry for 15 minutes
        super().__init__(client, base_url, api_key, **kwargs)
        self.sync = sync or not _is_loopback(self.base_url)
        self.heartbeat = heartbeat
        self.webhook_grace = webhook_grace
        self.busy_poll = busy_poll
        self._runs: dict[str, _Run] = {}
        self._held: dict[str, str] = {}
        self._listener = WebhookListener(self._on_webhook)
        self._listener_lock = asyncio.Lock()
        self._schema: tuple[str | None, dict[str, Any] | None] | None = None
        self._server_instance: str | None = None  # the server's setup time, as last seen

    # --- parameters and running -------------------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        return clarity_input(params, self.label)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def run(self, request: Request, report: Report) -> Outcome:
        request = replace(request, params=effective_params(request.params))
        if request.resume is not None:
            request = replace(request, resume=self._resume_plan(request))
        keys: list[str] = []

        def noting(event: BackendEvent) -> None:
            if event.remote and event.remote.get("key"):
                keys.append(str(event.remote["key"]))
            report(event)

        try:
            return await super().run(request, noting)
        finally:  # however the run ends (a timeout, a crash), nothing of it keeps running here
            if keys:
                self._forget(keys[-1])

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

    # --- the server's state -----------------------------------------------------------------
    async def _health(self) -> dict[str, Any]:
        body = await self.json_of(await self.http("GET", "/health-check", during="health"))
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise self.protocol_error("the health check has no status", body)
        status = body["status"]
        self._server_instance = self._instance(body)
        if status == "SETUP_FAILED":
            setup = object_of(body.get("setup"))
            logs = str(setup.get("logs") or "").strip().splitlines()[-6:]
            tail = " | ".join(line.strip() for line in logs)[-600:] or "no logs"
            raise JobError(
                ErrorKind.model_failed,
                f"{_WHO} could not set up its model: {self.scrub(tail)}. Fix it and "
                "restart the server.",
                details={"setup_logs": logs},
            )
        if status == "DEFUNCT":
            raise JobError(
                ErrorKind.model_failed,
                f"{_WHO}'s model process has died (DEFUNCT); restart the server.",
            )
        if status == "UNHEALTHY":
            raise JobError(ErrorKind.transient, f"{_WHO} reports itself UNHEALTHY.")
        return body

    @staticmethod
    def _instance(health: Mapping[str, Any]) -> str | None:
        setup = health.get("setup")
        return str(setup.get("started_at")) if isinstance(setup, dict) else None

    async def _input_schema(self, health: Mapping[str, Any]) -> dict[str, Any] | None:
        """The served model's inputs, read once per server start; None when it publishes
        none (then everything is sent as is)."""
        instance = self._instance(health)
        if self._schema is None or self._schema[0] != instance:
            response = await self.http("GET", "/openapi.json", during="schema", ok=(404, 503))
            schema = input_schema(body_of(response)) if response.status_code == 200 else None
            self._schema = (instance, schema)
        return self._schema[1]

    async def _until_free(self, limit: float | None = None) -> None:
        started = time.monotonic()
        while (await self._health())["status"] != "READY":
            if limit is not None and time.monotonic() - started > limit:
                raise JobError(
                    ErrorKind.transient, f"{_WHO} stayed busy for {limit:.0f} s; try again."
                )
            await self._sleep(self.busy_poll)

    async def _cancel_at_server(self, key: str) -> bool:
        response = await self.http(
            "POST", f"/predictions/{key}/cancel", during="cancel", safe=True, ok=(404,)
        )
        return response.status_code < 300

    # --- submit -----------------------------------------------------------------------------
    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        orphan = bool(ticket.extra.pop("orphan", False))
        health = await self._health()
        seed = fields["seed"] if fields.get("seed") is not None else random_seed()
        inputs = {**fields, "seed": seed, "image": image, **({"mask": mask} if mask else {})}
        ticket.remote_id = ticket.key
        ticket.seed = seed
        run = self._runs.get(ticket.key)
        if run is None or orphan:
            if orphan and await self._cancel_at_server(ticket.key):
                log.info("%s: cancelled %s, whose result cannot reach us", self.label, ticket.key)
                await self._until_free(limit=60.0)
                health = await self._health()
            self._forget(ticket.key)
            run = _Run(body={"id": ticket.key, "input": inputs}, sync=self.sync)
            self._runs[ticket.key] = run
        if health["status"] == "STARTING":
            run.pending = "starting"  # poll() sends it once the model is loaded
        else:
            await self._start(ticket.key, run, health)
        return ticket

    async def _start(self, key: str, run: _Run, health: Mapping[str, Any] | None = None) -> None:
        """PUT the prediction: asynchronously with a webhook, or in a background request."""
        if not run.fitted:
            schema = await self._input_schema(health or await self._health())
            run.body["input"] = fit_input(run.body["input"], schema, self.label)
            run.fitted = True
        run.number += 1
        run.heard, run.idle_since, run.put_at = False, None, time.monotonic()
        run.instance = self._server_instance
        if run.sync:
            run.pending, run.sent = "", True
            run.update({"id": key, "status": "processing", "logs": ""})
            run.task = asyncio.create_task(self._sync_run(key, run))
            return
        async with self._listener_lock:
            hook = await self._listener.start()
        body = {
            **run.body,
            "webhook": f"{hook}/{urllib.parse.quote(key, safe='')}/{run.number}",
            "webhook_events_filter": EVENTS,
        }
        response = await self.http(
            "PUT",
            f"/predictions/{key}",
            during="submit",
            safe=True,
            json=body,
            headers={"Prefer": "respond-async"},
            ok=(409,),
        )
        if response.status_code == 409:  # another prediction holds the only slot
            run.pending = "busy"
            return
        run.pending, run.sent = "", True
        answer = body_of(response)
        if isinstance(answer, dict) and answer.get("status") and not run.heard:
            run.update(answer)

    async def _sync_run(self, key: str, run: _Run) -> None:
        try:
            for _ in range(4):
                response = await self.http(
                    "PUT",
                    f"/predictions/{key}",
                    during="submit",
                    safe=True,
                    json=run.body,
                    ok=(409,),
                    timeout=httpx.Timeout(30.0, read=None),  # answers when the image is done
                )
                if response.status_code == 409:  # the request waits here, not in poll()
                    run.update({"id": key, "status": "starting", "busy": True})
                    await self._until_free()
                    continue
                answer = await self.json_of(response)
                if response.status_code == 200 and answer.get("status") in _TERMINAL:
                    run.update(answer)
                    return
                # 202: the id was already running, started by a request whose answer was lost.
                # Its result cannot reach us: stop it and run it again.
                await self._cancel_at_server(key)
                await self._until_free(limit=60.0)
            raise JobError(
                ErrorKind.protocol, f"{_WHO} kept answering without finishing the image."
            )
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
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        """The next news of the prediction: a webhook, the synchronous answer, or, after a
        silent ``heartbeat``, the current state once the server's health has been checked."""
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
                return self._status(key, run)
            if run.pending:
                health = await self._health()
                if health["status"] == "READY":
                    await self._start(key, run, health)
                if run.pending:
                    await self._sleep(self.busy_poll)
                    why = "is still starting" if run.pending == "starting" else "is busy"
                    return RemoteStatus(JobState.queued, run.pending, f"{_WHO} {why}; waiting")
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
        health = await self._health()
        instance, now = self._instance(health), time.monotonic()
        if run.sync:
            return  # the open request answers, or fails and is sent again
        if instance and run.instance and run.instance != instance:
            await self._rerun(key, run, health, "restarted and lost the prediction")
        elif not run.heard and now - run.put_at > self.webhook_grace:
            log.warning(
                "%s: no webhook arrived in %.0f s (a server in Docker cannot reach "
                "Clarifier's 127.0.0.1); switching to synchronous requests",
                self.label,
                self.webhook_grace,
            )
            self.sync = True
            await self._cancel_at_server(key)
            await self._until_free(limit=60.0)
            run.sync = True
            await self._start(key, run)
        elif health["status"] == "READY":  # idle, yet our prediction never said it ended
            if run.idle_since is None:
                run.idle_since = now
            elif now - run.idle_since >= self.webhook_grace:
                await self._rerun(key, run, health, "finished without reporting the result")
        else:
            run.idle_since = None

    async def _rerun(self, key: str, run: _Run, health: Mapping[str, Any], why: str) -> None:
        run.reruns += 1
        if run.reruns > 2:
            raise JobError(ErrorKind.protocol, f"{_WHO} {why}, three times; giving up.")
        log.warning("%s %s; running prediction %s again", self.label, why, key)
        run.update({"id": key, "status": "starting"})
        if health["status"] == "STARTING":
            run.pending = "starting"  # poll() sends it once the model is loaded again
        else:
            await self._start(key, run, health)

    def _status(self, key: str, run: _Run) -> RemoteStatus:
        state = run.latest or {}
        raw = str(state.get("status") or "starting")
        if raw == "starting":
            busy = f"{_WHO} is busy; waiting" if state.get("busy") else ""
            return RemoteStatus(JobState.queued, raw, busy or f"starting at {self.label}")
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
        self._forget(ticket.key)
        if run is not None and not run.sent:
            return True  # it never reached the server
        await self._cancel_at_server(ticket.key)
        return True  # 200: it stops; 404: it is not running there

    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        if response.status_code == 404 and during in ("submit", "health"):
            return JobError(
                ErrorKind.protocol,
                f"{self.base_url} does not answer like a Cog server (no {response.url.path}); "
                "check the address.",
            )
        return self.general_error(response, during=during)

    async def aclose(self) -> None:
        for key in list(self._runs):
            self._forget(key)
        self._held.clear()
        await self._listener.close()
        await super().aclose()
