"""Wireflow: ClarityAI's Crystal upscaler as the two-node workflow its guide documents (seed 004).

The guide, "How to Upscale Images with ClarityAI via API", is the specification:

1. **The workflow** (step 1): ``POST /api/v1/workflows`` with an ``input:text`` node
   (``input-1``) whose ``params.prompt`` will hold the image URL, wired ``out-prompt`` →
   ``in-image_url`` into ``process:clarityai_crystal_upscaler`` (``upscale-1``), whose
   ``params`` are ``scale_factor`` (an integer 1–16), ``creativity`` (a float 0.0–1.0, default
   0) and ``output_format`` (png, jpg or webp). It is made once per account and its id cached
   (``workflow_cache``) with the params it has; when a job needs other params they are changed
   with ``PUT /api/v1/workflows/{id}``, "as described in the workflow management docs".
2. **Each execution** (step 2): ``POST /api/v1/workflows/{id}/execute`` with an
   ``Idempotency-Key`` and ``{"nodes":[{"id":"input-1","data":{"params":{"prompt":URL}}}],
   "edges":[]}``; it answers 201 with an ``executionId``. The key "prevents duplicate runs if
   your client retries the same request within 24 hours", so an execute that got no answer is
   sent again with it (``idempotent_submit``); past that window it is not, and the job stops in
   ``submit-unknown``.
3. **Polling** (step 3): ``GET /api/v1/workflows/executions/{id}/poll`` from 1 s, ×1.5 each
   time, at most 10 s apart, until ``COMPLETED`` or ``FAILED`` (whose ``error`` says why). The
   upscaler node returns the image URL in ``outputs.images``; nothing else is taken for it.
4. **Errors**: 402 carries ``requiredCredits``, ``availableCredits`` and a per-node
   ``breakdown``, all shown; a 429's ``Retry-After`` is waited out; every answer's
   ``X-RateLimit-Remaining`` paces the requests before Wireflow has to refuse one (the Free
   plan's 10 a minute by default); a 500's ``X-Request-Id`` is logged and shown, for support.

Creative and Crystal: the guide names one node, the Crystal upscaler, and its Creative mode is
that node's creativity slider ("0.0 = faithful, 1.0 = creative"); no other node type is named,
so none is guessed.

Where the guide is silent, the safe choice, and where it comes from:

* **Local files**: the guide takes "a publicly accessible image URL" and says to upload a local
  image "to any public host first"; Clarifier uploads to Wireflow's own
  ``POST /api/v1/media/upload`` (multipart ``file`` → ``data.url``, from Wireflow's agent skill
  in the provider notes), whose URLs its executor accepts. A URL the person gives is passed on.
* **Answers' envelopes**: the new workflow's id is read as ``id`` or ``data.id``; a poll answer
  is read bare, as the guide's code does, or inside ``data``; the nodes' outputs in any of the
  layouts :func:`~app.backends.providers.wireflow_graph.result_urls` lists.
* **The PUT body**: the whole workflow (name, nodes, edges), as it was created, with the new
  params. A PUT answered 404 (the workflow was deleted) makes it anew, as does an execute
  answered 404 or "Workflow is not active".
* **When an execution reads its params**: not said, so Clarifier never changes them while one of
  its own executions with other params is running on that workflow (jobs with other params
  wait their turn; jobs with the same params run side by side). Another program, or the
  Wireflow editor, changing the workflow meanwhile is not guarded against.
* **Executions per minute**: a second budget (10 a minute, from Wireflow's rate-limit page in
  the notes) paces ``execute``, besides the requests budget.
* **Downloads**: ``cdn.wireflow.ai`` turns away non-browser clients (the notes), so the result
  is fetched with a browser User-Agent, and through ``/api/download?url=`` on a 403; neither
  gets the key.
* **Cancel**: none is documented; cancelling stops watching. A seed: none is taken; a job
  asking for one is refused, one left random (or at the default) runs with Wireflow's own.
* **Statuses** besides RUNNING, COMPLETED and FAILED: ``PENDING``/``QUEUED`` read as queued and
  ``CANCELLED`` as canceled (the notes list them); any other word is a protocol error.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.backends.base import ErrorKind, JobError, JobState, Outcome, Report, Request
from app.backends.providers.wireflow_graph import (
    NODE_TYPE,
    breakdown,
    execution,
    failure,
    node_params,
    result_urls,
    workflow,
)
from app.backends.remote import (
    BROWSER_USER_AGENT,
    InputFile,
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    RequestBudget,
    SubmitNoAnswer,
    Ticket,
    body_of,
    decode_data_url,
    message_of,
)
from app.store.files import write_json_atomic
from pipeline.params import UpscaleParams

__all__ = ["WireflowBackend"]

log = logging.getLogger(__name__)

GRAPH_VERSION = 2  # bumped when the workflow changes shape, so cached ones are not reused
REPLAY_WINDOW = 24 * 3600.0  # how long the Idempotency-Key protects a re-sent execute
_STATES = {
    **dict.fromkeys(("PENDING", "QUEUED"), JobState.queued),
    "RUNNING": JobState.running,
    "COMPLETED": JobState.succeeded,
    "FAILED": JobState.failed,
    **dict.fromkeys(("CANCELLED", "CANCELED"), JobState.canceled),
}
_PROCESS_WORKFLOWS: dict[str, Any] = {}  # the in-process cache when none is given


@dataclass
class _Lease:
    """The params one job holds the shared workflow at, from its execute to its end."""

    key: str | None = None


_LEASE: contextvars.ContextVar[_Lease | None] = contextvars.ContextVar(
    "wireflow_lease", default=None
)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: the workflow is simply made again
    return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}


def _params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True)


class WireflowBackend(RemoteBackend, backend="wireflow"):
    """Wireflow's ClarityAI Crystal upscaler, run as the guide's cached two-node workflow."""

    idempotent_submit = True  # the constructor's idempotent_submit sets it per instance
    cadence: ClassVar[PollCadence] = PollCadence(1.0, 1.5, 10.0)  # the guide's backoff
    budget_limit: ClassVar[tuple[int, float]] = (10, 60.0)  # "Free plans allow 10 requests/min"
    execute_limit: ClassVar[tuple[int, float]] = (10, 60.0)  # executions/minute, every plan
    retention: ClassVar[float] = 24 * 3600.0  # unverified; results are downloaded at once
    default_concurrency: ClassVar[int] = 2

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        idempotent_submit: bool = True,
        workflow_cache: MutableMapping[str, Any] | str | os.PathLike[str] | None = None,
        execute_budget: RequestBudget | None = None,
        **kwargs: Any,
    ) -> None:
        """``idempotent_submit``: re-send an unanswered execute with its Idempotency-Key (the
        guide's promise). ``workflow_cache``: a JSON file path or a dict the caller persists;
        default in-process. ``execute_budget``: the executions/minute budget, shared like
        ``budget``."""
        super().__init__(client, _canonical_base(base_url), api_key, **kwargs)
        self.idempotent_submit = idempotent_submit
        self._cache_path: Path | None = None
        if isinstance(workflow_cache, str | os.PathLike):
            self._cache_path = Path(workflow_cache)
            workflow_cache = _load(self._cache_path)
        # {"id", "params"} by account and graph version (never the key itself).
        self.workflows = _PROCESS_WORKFLOWS if workflow_cache is None else workflow_cache
        self.execute_budget = execute_budget or RequestBudget(*self.execute_limit)
        self._turn = asyncio.Condition()
        self._running: collections.Counter[str] = collections.Counter()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key or ''}"}

    # --- parameters -------------------------------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        """The upscaler node's ``params`` (see
        :func:`~app.backends.providers.wireflow_graph.node_params`)."""
        return node_params(params, self.label)

    def output_size(self, width: int, height: int, params: UpscaleParams) -> tuple[int, int]:
        """The guide's arithmetic: "a 2x scale factor on a 4000x3000 input, you get 8000x6000"."""
        return round(width * params.scale_factor), round(height * params.scale_factor)

    # --- running ----------------------------------------------------------------------------
    async def run(self, request: Request, report: Report) -> Outcome:
        self.map_params(request.params)  # refuses a seed (and the rest) before it is dropped
        if request.params.seed is not None:  # Wireflow draws its own: the output says so
            request = replace(request, params=request.params.replace(seed=None))
        lease = _Lease()
        token = _LEASE.set(lease)
        try:
            resume = request.resume or {}
            extra = resume.get("extra")
            held = extra.get("params") if isinstance(extra, dict) else None
            if resume.get("phase") == "submitted" and isinstance(held, dict):
                await self._hold(lease, _params_key(held))  # it may still run with those params
            return await super().run(request, report)
        finally:
            _LEASE.reset(token)
            if lease.key is not None:
                async with self._turn:
                    self._running[lease.key] -= 1
                    self._turn.notify_all()

    async def _hold(self, lease: _Lease, key: str) -> None:
        async with self._turn:
            if lease.key is None:
                self._running[key] += 1
                lease.key = key

    # --- the workflow -----------------------------------------------------------------------
    def _cache_key(self) -> str:
        account = hashlib.sha256((self.api_key or "").encode()).hexdigest()[:16]
        return f"{self.base_url}|{account}|{NODE_TYPE}|v{GRAPH_VERSION}"

    def _remember(self, entry: dict[str, Any] | None) -> None:
        if entry is None:
            self.workflows.pop(self._cache_key(), None)
        else:
            self.workflows[self._cache_key()] = entry
        if self._cache_path is not None:
            try:
                write_json_atomic(self._cache_path, dict(self.workflows))
            except OSError as exc:  # a read-only folder costs a new workflow next run
                log.warning("cannot save Wireflow's workflow cache %s: %s", self._cache_path, exc)

    def _cached(self) -> dict[str, Any] | None:
        entry = self.workflows.get(self._cache_key())
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
            return entry
        return None

    async def _create(self, params: Mapping[str, Any]) -> str:
        try:
            response = await self.http(
                "POST", "/api/v1/workflows", during="workflow", json=workflow(params)
            )
        except SubmitNoAnswer as exc:
            raise JobError(
                ErrorKind.transient,
                f"{self.label} did not answer while Clarifier created its workflow ({exc}); "
                "nothing was run.",
            ) from None
        body = await self.json_of(response)
        made = body.get("data") if isinstance(body, dict) else None
        if not isinstance(made, dict):  # the id bare, or inside ``data``: the guide shows neither
            made = body if isinstance(body, dict) else {}
        found = made.get("id")
        if not isinstance(found, str) or not found:
            raise self.protocol_error("the new workflow has no id", body)
        self._remember({"id": found, "params": dict(params)})
        return found

    async def _workflow(self, params: Mapping[str, Any]) -> str:
        """The workflow's id, with ``params`` on its upscaler node (called holding the turn)."""
        entry = self._cached()
        if entry is None:
            return await self._create(params)
        if entry.get("params") == dict(params):
            return entry["id"]
        response = await self.http(
            "PUT",
            f"/api/v1/workflows/{entry['id']}",
            during="workflow",
            json=workflow(params),
            ok=(404,),
        )
        if response.status_code == 404:
            log.info("Wireflow workflow %s is gone; creating it again", entry["id"])
            return await self._create(params)
        self._remember({"id": entry["id"], "params": dict(params)})
        return entry["id"]

    async def _take_turn(self, params: Mapping[str, Any], gone: str | None = None) -> str:
        """Wait until no execution of ours runs with other params, set ``params`` on the
        workflow, and count this job among those running with them. ``gone``: a workflow id
        Wireflow no longer runs, made anew."""
        key = _params_key(params)
        lease = _LEASE.get()
        async with self._turn:
            await self._turn.wait_for(
                lambda: all(n <= 0 for k, n in self._running.items() if k != key)
            )
            if gone is not None and (self._cached() or {}).get("id") == gone:
                self._remember(None)
            workflow_id = await self._workflow(params)
            if lease is not None and lease.key is None:
                self._running[key] += 1
                lease.key = key
        return workflow_id

    # --- input, submit, watch ---------------------------------------------------------------
    async def send_input(self, image: InputFile) -> str:
        response = await self.http(
            "POST",
            "/api/v1/media/upload",
            during="upload",
            safe=True,  # nothing billable: a dropped upload is simply sent again
            files={"file": (image.name, image.data, image.mime)},
        )
        body = await self.json_of(response)
        data = body.get("data") if isinstance(body, dict) else None
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise self.protocol_error("the upload answer has no url", body)
        return url

    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        first = ticket.extra.get("image")  # a re-send must repeat the first body exactly
        if isinstance(first, str) and first.startswith(("https://", "http://")):
            image = first
        created = ticket.extra.get("created_at")
        if (
            self.idempotent_submit
            and isinstance(created, int | float)
            and time.time() - created > REPLAY_WINDOW - 3600
        ):
            raise JobError(
                ErrorKind.submit_unknown,
                f"{self.label} may have received this job more than a day ago, too long for "
                "its Idempotency-Key to stop a second run. Clarifier did not send it again; "
                f"check your {self.label} account.",
                details={"remote": ticket.to_dict()},
            )
        body = execution(image)
        workflow_id = await self._take_turn(fields)
        for attempt in (1, 2):
            async with self.execute_budget.slot():
                response = await self.http(
                    "POST",
                    f"/api/v1/workflows/{workflow_id}/execute",
                    during="submit",
                    safe=self.idempotent_submit,
                    json=body,
                    headers={"Idempotency-Key": ticket.key},
                    ok=(400, 404) if attempt == 1 else (),
                )
            gone = response.status_code == 404 or (
                response.status_code == 400
                and "not active" in message_of(body_of(response)).lower()
            )
            if not gone:
                break
            # Deleted or switched off in Wireflow's editor: nothing ran; make it anew.
            log.info("Wireflow workflow %s is gone or inactive; creating it again", workflow_id)
            workflow_id = await self._take_turn(fields, gone=workflow_id)
        if response.status_code >= 400:
            raise self.classify(response, during="submit")
        answer = await self.json_of(response)
        run_id = answer.get("executionId") if isinstance(answer, dict) else None
        if not isinstance(run_id, str) or not run_id:
            raise self.protocol_error("the execute answer has no executionId", answer)
        ticket.remote_id = run_id
        ticket.urls["status"] = self.url(f"/api/v1/workflows/executions/{run_id}/poll")
        ticket.extra.update(workflow_id=workflow_id, params=dict(fields))
        return ticket

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        url = ticket.urls.get("status") or self.url(
            f"/api/v1/workflows/executions/{ticket.remote_id}/poll"
        )
        body = await self.json_of(await self.http("GET", url, during="poll"))
        if isinstance(body, dict) and "status" not in body and isinstance(body.get("data"), dict):
            body = body["data"]
        if not isinstance(body, dict):
            raise self.protocol_error("the poll answer is not an object", body)
        raw = str(body.get("status") or "")
        state = _STATES.get(raw.upper())
        if state is None:
            raise self.protocol_error(f"unknown execution status {raw!r}", body)
        if state is JobState.succeeded:
            return RemoteStatus(state, raw, outputs=result_urls(body))
        if state is JobState.failed:
            message = failure(body)
            return RemoteStatus(state, raw, message=message, error=self.failed(message))
        if state is JobState.canceled:
            return RemoteStatus(state, raw, message=f"{self.label} cancelled the execution.")
        return RemoteStatus(state, raw)

    async def download(self, url: str) -> bytes:
        """The CDN refuses non-browser clients (403); the proxy fetches for us. Neither needs
        the key, so it is never sent there."""
        if url.startswith("data:"):
            return decode_data_url(url)
        opts: dict[str, Any] = {"during": "download", "auth": False, "paced": False}
        opts.update(headers={"User-Agent": BROWSER_USER_AGENT}, follow_redirects=True)
        response = await self.http("GET", url, ok=(403,), **opts)
        if response.status_code == 403:
            log.info("Wireflow CDN refused the download; using the /api/download proxy")
            response = await self.http("GET", "/api/download", params={"url": url}, **opts)
        return response.content

    # --- rate limits and request ids --------------------------------------------------------
    def observe(self, response: httpx.Response, *, during: str) -> None:
        """Every answer says how many requests are left in the window
        (``X-RateLimit-Remaining``): with none left every request waits for the window to end;
        with a quarter of the plan or less left, the remaining ones are spread over what is
        left of it, so Wireflow never has to refuse one. A 5xx's ``X-Request-Id`` is logged."""
        headers = response.headers
        if response.status_code >= 500:
            log.warning(
                "%s answered HTTP %s to a %s request (X-Request-Id %s)",
                self.label,
                response.status_code,
                during,
                headers.get("x-request-id") or "not given",
            )
        remaining = _integer(headers.get("x-ratelimit-remaining"))
        if remaining is None:
            return
        limit = _integer(headers.get("x-ratelimit-limit")) or self.budget.limit
        reset = _integer(headers.get("x-ratelimit-reset"))  # epoch seconds, where sent
        left = self.budget.window
        if reset is not None and reset > 1e9:
            left = min(self.budget.window, max(0.0, reset - time.time()))
        if remaining <= 0:
            self.budget.pause_for(left)
        elif remaining <= max(1, limit // 4):
            self.budget.pause_for(left / (remaining + 1))

    # --- errors -----------------------------------------------------------------------------
    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        data = body if isinstance(body, dict) else {}
        error = data.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        code_name = error.get("code") if isinstance(error, dict) else None
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        request_id = response.headers.get("x-request-id") or ""
        details: dict[str, Any] = {"http_status": code}
        if request_id:
            details["request_id"] = request_id
        if code == 402 or kind == "insufficient_credits_error" or data.get("insufficientCredits"):
            need, have = _number(data.get("requiredCredits")), _number(data.get("availableCredits"))
            parts = []
            if need is not None and have is not None:
                parts.append(f"needs {need:g}, have {have:g}")
                details.update(required=need, available=have, unit="credits")
            per_node = breakdown(data.get("breakdown"))
            if per_node:
                parts.append(f"per node: {per_node}")
                details["breakdown"] = data["breakdown"]
            shown = f" ({'; '.join(parts)})" if parts else ""
            return JobError(
                ErrorKind.insufficient_funds,
                f"{self.label} says your credits are insufficient{shown}. Top up your balance, "
                "then retry; nothing was run.",
                details=details,
            )
        if code == 422 or code_name == "invalid_graph":
            violations = [v for v in data.get("violations") or [] if isinstance(v, dict)]
            shown = "; ".join(
                f"{v.get('rule', 'error')}: {v.get('message', '')}" for v in violations[:3]
            )
            details["violations"] = violations
            return JobError(
                ErrorKind.invalid_request,
                f"{self.label} refused Clarifier's workflow: {text.rstrip('.')}"
                f"{f' ({shown})' if shown else ''}",
                details=details,
            )
        if code == 403 or kind == "authentication_error":
            return JobError(
                ErrorKind.auth,
                f"{self.label} refused the API key ({text}). It needs the scopes "
                "workflows:read, workflows:write, workflows:execute and executions:read; check "
                f"the key in the settings, or set {self.key_envs[0]}.",
                details=details,
            )
        if code == 409:
            return JobError(
                ErrorKind.invalid_request,
                f"{self.label} refused to reuse this job's request key for a different request "
                f"({text}). Retry the job to send it as a new one.",
                details=details,
            )
        general = self.general_error(response, during=during)
        if code >= 500:
            asked = f" Give {self.label} support the request id {request_id}." if request_id else ""
            return replace(general, message=general.message + asked, details=details)
        return replace(general, details={**general.details, **details})


def _canonical_base(base_url: str | None) -> str | None:
    """Scheme and host only; ``wireflow.ai`` redirects to ``www.`` (losing a POST on the way)."""
    if not base_url:
        return base_url
    parts = urlsplit(base_url.rstrip("/").removesuffix("/api/v1"))
    if parts.hostname == "wireflow.ai":
        parts = parts._replace(netloc=parts.netloc.replace("wireflow.ai", "www.wireflow.ai", 1))
    return urlunsplit(parts)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None and value.strip() else None
    except ValueError:
        return None
