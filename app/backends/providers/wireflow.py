"""Wireflow: ClarityAI's Crystal upscaler as a two-node workflow graph (reference §3).

Wireflow runs graphs, not models. Clarifier keeps one workflow per account, an ``input:image``
node wired ``out-image → in-image`` into the upscaler node, creates it on first use and caches
its id (``workflow_cache``). Each job then

1. uploads the input (``POST /api/v1/media/upload``, multipart ``file`` → ``data.url``);
2. executes the workflow with the whole graph carrying the current input URL and upscaler
   config (``POST /api/v1/workflows/{id}/execute`` → 201, ``executionRuns[0].id`` or
   ``executionId``), paced by a second budget for the separate 10 executions/minute limit;
3. polls ``/api/v1/workflows/executions/{id}/poll`` (parsed defensively: ``data`` wrapper or
   not, ``finalOutput.url``, ``nodeStates[].outputUrl``, ``nodeResults.nodeRuns[]``);
4. downloads with a browser User-Agent, because ``cdn.wireflow.ai`` answers 403 to anything
   else, and falls back to the unauthenticated ``/api/download?url=`` proxy on a 403.

What is unverified, and how it is handled:

* the node type, ports and config keys: read from ``GET /api/v1/nodes`` when the catalog answers;
  otherwise the documented guess (``process:clarityai_crystal_upscaler``, ports ``image``,
  config ``scale_factor`` 1–16 and ``creativity`` an integer 0–10, as ClarityAI's Crystal API
  has it). Canonical ``creativity`` (0–1) is spread linearly over an integer range;
* whether ``Idempotency-Key`` is honoured: the key is always sent, but a dropped execute is
  re-sent only when the backend is built with ``idempotent_submit=True``; by default it ends in
  ``submit-unknown`` (never two billed runs);
* no cancel endpoint is documented: cancelling stops watching.

The catalog parsing, graph building and poll-body parsing are pure functions, in
:mod:`app.backends.providers.wireflow_graph`; this module is the HTTP protocol around them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from app.backends.base import ErrorKind, JobError, JobState
from app.backends.providers.wireflow_graph import (
    GRAPH_VERSION,
    INPUT_NODE,
    NODE_TYPE,
    SYNONYMS,
    UPSCALE_NODE,
    NodeSpec,
    catalog_lists_nodes,
    execution_id,
    fallback_spec,
    find_node,
    graph,
    node_config,
    poll_error,
    poll_outputs,
    unwrap,
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

WORKFLOW_NAME = "Clarifier: Clarity upscale"

# Canonical fields no Clarity node on Wireflow takes: refused unless at their defaults.
_UNSUPPORTED = (
    *("sd_model", "scheduler", "tiling_width", "tiling_height", "lora_links", "custom_sd_model"),
    *("mask", "handfix", "downscaling", "pattern", "multistep_factor"),
    *("creative", "flux"),  # the closed ClarityAI models' knobs
)
_STATES = {
    **dict.fromkeys(("PENDING", "QUEUED"), JobState.queued),
    **dict.fromkeys(("RUNNING", "PROCESSING"), JobState.running),
    "COMPLETED": JobState.succeeded,
    "FAILED": JobState.failed,
    **dict.fromkeys(("CANCELLED", "CANCELED"), JobState.canceled),
}
_PROCESS_WORKFLOWS: dict[str, str] = {}  # the in-process cache when none is given


def _load_ids(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: the workflow is simply made again
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class WireflowBackend(RemoteBackend, backend="wireflow"):
    """Wireflow's Crystal upscaler node, run as a cached two-node workflow."""

    idempotent_submit = False  # the constructor's idempotent_submit sets it
    cadence: ClassVar[PollCadence] = PollCadence(1.0, 1.5, 10.0)  # the vendor's advice
    budget_limit: ClassVar[tuple[int, float]] = (10, 60.0)  # the Free plan's requests/minute
    execute_limit: ClassVar[tuple[int, float]] = (10, 60.0)  # executions/minute, every plan
    retention: ClassVar[float] = 24 * 3600.0  # unverified; results are downloaded at once
    default_concurrency: ClassVar[int] = 2

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        idempotent_submit: bool = False,
        workflow_cache: MutableMapping[str, str] | str | os.PathLike[str] | None = None,
        execute_budget: RequestBudget | None = None,
        **kwargs: Any,
    ) -> None:
        """``idempotent_submit``: trust Wireflow to honour ``Idempotency-Key`` (unverified).
        ``workflow_cache``: a JSON file path or a dict the caller persists; default in-process.
        ``execute_budget``: the executions/minute budget, shared like ``budget``."""
        super().__init__(client, _canonical_base(base_url), api_key, **kwargs)
        self.idempotent_submit = idempotent_submit
        self._cache_path: Path | None = None
        if isinstance(workflow_cache, str | os.PathLike):
            self._cache_path = Path(workflow_cache)
            workflow_cache = _load_ids(self._cache_path)
        # Workflow ids by account, node and graph version (never the key itself).
        self.workflows = _PROCESS_WORKFLOWS if workflow_cache is None else workflow_cache
        self.execute_budget = execute_budget or RequestBudget(*self.execute_limit)
        self._spec: NodeSpec | None = None
        self._lock = asyncio.Lock()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key or ''}"}

    # --- parameters -------------------------------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        """The canonical values a Clarity node may take, refusing what none can. Which of them
        this node takes, under which keys and ranges, is settled against its catalog entry at
        submit (:func:`node_config`)."""
        defaults = UpscaleParams()
        problems = {
            name: [f"no Clarity node on {self.label} has {name} (got {getattr(params, name)!r})"]
            for name in _UNSUPPORTED
            if getattr(params, name) != getattr(defaults, name)
        }
        if problems:
            listed = "; ".join(f"{k}: {v[0]}" for k, v in problems.items())
            raise JobError(
                ErrorKind.invalid_request,
                f"{self.label} cannot run these settings ({listed}). Change them, or run the "
                "job on another backend.",
                details={"fields": problems},
            )
        return {name: getattr(params, name) for name in SYNONYMS}

    # --- the node catalog and the workflow --------------------------------------------------
    async def node_spec(self) -> NodeSpec:
        """The upscaler node as the catalog describes it (fetched once), or the guess."""
        if self._spec is not None:
            return self._spec
        response = await self.http(
            "GET", "/api/v1/nodes", during="catalog", ok=(403, 404, 405, 410, 500, 502, 503, 504)
        )
        body = body_of(response)
        if response.status_code >= 400 or not catalog_lists_nodes(body):
            # No catalog, or one in a shape this parser does not know: the documented guess.
            log.info("Wireflow node catalog unavailable (HTTP %s)", response.status_code)
            return fallback_spec()
        spec = find_node(body, NODE_TYPE)
        if spec is None:
            raise JobError(
                ErrorKind.model_failed,
                f"{self.label}'s node catalog has no Clarity upscaler node (looked for "
                f"{NODE_TYPE}); it may have been renamed or withdrawn.",
            )
        self._spec = spec
        return spec

    def _remember(self, spec: NodeSpec, workflow_id: str | None) -> None:
        key = self._cache_key(spec)
        if workflow_id is None:
            self.workflows.pop(key, None)
        else:
            self.workflows[key] = workflow_id
        if self._cache_path is not None:
            try:
                write_json_atomic(self._cache_path, dict(self.workflows))
            except OSError as exc:  # a read-only folder costs a new workflow next run
                log.warning("cannot save Wireflow's workflow cache %s: %s", self._cache_path, exc)

    def _cache_key(self, spec: NodeSpec) -> str:
        account = hashlib.sha256((self.api_key or "").encode()).hexdigest()[:16]
        return f"{self.base_url}|{account}|{spec.node_type}|v{GRAPH_VERSION}"

    async def _workflow(self, spec: NodeSpec, nodes_edges: Mapping[str, Any]) -> str:
        async with self._lock:  # concurrent first jobs create one workflow, not several
            found = self.workflows.get(self._cache_key(spec))
            if found:
                return found
            body = {
                "name": WORKFLOW_NAME,
                "description": "Created by Clarifier to run Clarity upscales; safe to keep.",
                "tags": ["clarifier"],
                "isActive": True,
                **nodes_edges,
            }
            try:
                response = await self.http(
                    "POST", "/api/v1/workflows", during="workflow", json=body
                )
            except SubmitNoAnswer as exc:
                raise JobError(
                    ErrorKind.transient,
                    f"{self.label} did not answer while Clarifier created its workflow ({exc}); "
                    "nothing was run.",
                ) from None
            data = unwrap(await self.json_of(response))
            workflow_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(workflow_id, str) or not workflow_id:
                raise self.protocol_error("the new workflow has no id", data)
            self._remember(spec, workflow_id)
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
        data = unwrap(await self.json_of(response))
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise self.protocol_error("the upload answer has no url", data)
        return url

    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        spec = await self.node_spec()
        config = node_config(spec, fields, UpscaleParams(), self.label)
        first = ticket.extra.get("image")  # a re-send must repeat the first body exactly
        if isinstance(first, str) and first.startswith(("https://", "http://")):
            image = first
        body = graph(spec, image, config)
        for attempt in (1, 2):
            workflow_id = await self._workflow(spec, body)
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
            if gone:  # deleted or switched off in Wireflow's editor: nothing ran; make anew
                log.info("Wireflow workflow %s is gone or inactive; creating it again", workflow_id)
                self._remember(spec, None)
                continue
            if response.status_code >= 400:
                raise self.classify(response, during="submit")
            break
        else:  # the second attempt accepts no 400/404, so only a changed http() gets here
            raise self.protocol_error("the workflow vanished again right after it was made", None)
        data = await self.json_of(response)
        run_id = execution_id(data)
        if not run_id:
            raise self.protocol_error("the execute answer has no execution id", data)
        ticket.remote_id = run_id
        ticket.urls["status"] = self.url(f"/api/v1/workflows/executions/{run_id}/poll")
        location = response.headers.get("location")
        if location:
            ticket.urls["location"] = urljoin(str(response.url), location)
        ticket.extra.update(workflow_id=workflow_id, node_id=UPSCALE_NODE)
        return ticket

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        url = ticket.urls.get("status") or self.url(
            f"/api/v1/workflows/executions/{ticket.remote_id}/poll"
        )
        response = await self.http("GET", url, during="poll", ok=(404,))
        if response.status_code == 404 and url.endswith("/poll"):
            # The index page documents the path without /poll; try it before calling it lost.
            plain = url.removesuffix("/poll")
            response = await self.http("GET", plain, during="poll")
            ticket.urls["status"] = plain
        elif response.status_code == 404:
            raise self.classify(response, during="poll")
        body = unwrap(await self.json_of(response))
        if not isinstance(body, dict):
            raise self.protocol_error("the poll answer is not an object", body)
        raw = str(body.get("status") or "")
        state = _STATES.get(raw.upper())
        if state is None:
            raise self.protocol_error(f"unknown execution status {raw!r}", body)
        node = str(ticket.extra.get("node_id") or UPSCALE_NODE)
        if state is JobState.succeeded:
            return RemoteStatus(state, raw, outputs=poll_outputs(body, node, INPUT_NODE))
        if state is JobState.failed:
            message = poll_error(body, node)
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

    # --- errors -----------------------------------------------------------------------------
    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        data = body if isinstance(body, dict) else {}
        error = data.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        code_name = error.get("code") if isinstance(error, dict) else None
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        details: dict[str, Any] = {"http_status": code}
        if code == 402 or kind == "insufficient_credits_error" or data.get("insufficientCredits"):
            need, have = _number(data.get("requiredCredits")), _number(data.get("availableCredits"))
            amounts = ""
            if need is not None and have is not None:
                amounts = f" (needs {need:g}, have {have:g})"
                details.update(required=need, available=have, unit="credits")
            if isinstance(data.get("breakdown"), list):
                details["breakdown"] = data["breakdown"]
            return JobError(
                ErrorKind.insufficient_funds,
                f"{self.label} says your credits are insufficient{amounts}. Nothing was run.",
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
                f"{self.label} refused Clarifier's workflow graph: {text.rstrip('.')}"
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
        return self.general_error(response, during=during)


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
