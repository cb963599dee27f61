"""A loopback double of Wireflow as its ClarityAI guide documents it (seed 004).

From the guide, and strict about it: a request of any other shape is refused, as a real server
validating its schema would (unknown fields, a float scale, an ``input:image`` node, an edge
whose handles are not the nodes' ports, an execute body that overrides anything but the input
node's ``params.prompt``):

* ``POST /api/v1/workflows``: exactly ``{name, nodes, edges}``; nodes of the two documented
  types, ``input:text`` (``params.prompt``, output ``prompt``) and
  ``process:clarityai_crystal_upscaler`` (``params`` ``scale_factor`` an integer 1–16,
  ``creativity`` a number 0.0–1.0, ``output_format`` png/jpg/webp; input ``image_url``, output
  ``images``), each with exactly ``{id, type: "basedNode", position, data: {label, nodeType,
  category, params, inputs, outputs}}`` and the ports as the guide lists them; edges exactly
  ``{id, source, target, sourceHandle: "out-<output>", targetHandle: "in-<input>"}``. A field
  or value problem → 400 ``{"error"}``; a graph problem → 422 ``invalid_graph`` with
  ``violations`` (the notes' shape). Success → 201 with the workflow's id;
* ``PUT /api/v1/workflows/{id}``: the same body and checks → 200 (404 for an unknown id);
* ``POST /api/v1/workflows/{id}/execute``: exactly ``{"nodes": [{"id": <an input:text node>,
  "data": {"params": {"prompt": <an http(s) URL>}}}], "edges": []}``; ``Idempotency-Key``
  honoured for 24 h (same key and body → the same execution; another body → 409 [GUESS]); a
  credit pre-check → 402 ``{error, requiredCredits, availableCredits, breakdown}``; 201
  ``{"executionId", "status": "RUNNING"}``;
* ``GET /api/v1/workflows/executions/{id}/poll``: ``{id, workflowId, status, error, nodes}``
  (``RUNNING`` → ``COMPLETED`` | ``FAILED``; ``CANCELLED`` by :meth:`cancel_execution`), the
  upscaler node's result URL in its ``outputs.images``; the input node's outputs carry the
  *input* URL, a trap for careless parsers. ``poll_layout`` and ``envelope`` switch to the other
  layouts the notes report. The result is the input image scaled by the upscaler's
  ``scale_factor`` (capped), encoded in its ``output_format``;
* ``Retry-After`` on a 429; ``X-RateLimit-Remaining`` on every answer (with
  ``X-RateLimit-Limit`` and ``X-RateLimit-Reset`` epoch too, as the notes add, unless
  ``reset_headers`` is off); ``X-Request-Id`` on every answer.

From the provider notes, where the guide is silent: Bearer auth with the four documented 401
messages and scope checks (403); a second, executions-per-minute window on execute; a 429 body
``retryAfter`` epoch; both error envelopes (flat ``{"error": "..."}`` or Stripe-style, switch
``envelope``); "Workflow is not active" (400); ``POST /api/v1/media/upload`` (multipart
``file`` → ``{data: {url}}``); a CDN that refuses non-browser User-Agents, and the
unauthenticated ``GET /api/download?url=`` proxy.

When an execution reads its workflow's params is not documented: this double reads them when
the execution finishes (``params_read_at = "completion"``, the worst case for a client that
changes them while it runs), or at execute (``"execute"``).

Left out: webhook triggers (``/workflow/{id}/trigger``), the node catalog, ``/run``, PATCH.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.doubles.http_double import (
    LoopbackDouble,
    Req,
    Resp,
    WindowLimiter,
    parse_multipart,
)

__all__ = [
    "CATALOG",
    "NODE_TYPE",
    "WfKey",
    "WireflowDouble",
    "picture",
    "validate_execution",
    "validate_workflow",
]

NODE_TYPE = "process:clarityai_crystal_upscaler"
SCOPES = frozenset(
    {"workflows:read", "workflows:write", "workflows:execute", "executions:read", "usage:read"}
)
REPLAY_WINDOW = 24 * 3600.0
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}

# The two node types of the guide's step 1, their ports and params (type, minimum, maximum).
CATALOG: dict[str, dict[str, Any]] = {
    "input:text": {
        "category": "input",
        "inputs": [],
        "outputs": [{"id": "prompt", "type": "TEXT", "label": "Text"}],
        "params": {"prompt": ("string", None, None)},
    },
    NODE_TYPE: {
        "category": "process",
        "inputs": [{"id": "image_url", "type": "IMAGE", "label": "Image"}],
        "outputs": [{"id": "images", "type": "IMAGE", "label": "Upscaled Image"}],
        "params": {
            "scale_factor": ("integer", 1, 16),
            "creativity": ("number", 0.0, 1.0),
            "output_format": ("format", None, None),
        },
    },
}
_NODE_KEYS = {"id", "type", "position", "data"}
_DATA_KEYS = {"label", "nodeType", "category", "params", "inputs", "outputs"}
_EDGE_KEYS = {"id", "source", "target", "sourceHandle", "targetHandle"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def _check_param(node_type: str, name: str, value: Any) -> str | None:
    spec = CATALOG[node_type]["params"].get(name)
    if spec is None:
        return f"{node_type} has no param {name!r}"
    kind, low, high = spec
    if kind == "format":
        return None if value in FORMATS else f"{name} must be one of png, jpg, webp"
    if kind == "string":
        return None if isinstance(value, str) else f"{name} must be a string"
    if kind == "integer" and _kind(value) != "integer":
        return f"{name} must be an integer (got {_kind(value)} {value!r})"
    if kind == "number" and _kind(value) not in ("integer", "number"):
        return f"{name} must be a number (got {_kind(value)})"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{name} must be from {low} to {high} (got {value!r})"
    return None


def validate_workflow(body: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The body of a create or PUT: field problems (400) and graph violations (422)."""
    errors: list[str] = []
    violations: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        return ["the body must be a JSON object"], []
    missing = sorted({"name", "nodes", "edges"} - set(body))
    extra = sorted(set(body) - {"name", "nodes", "edges"})
    if missing:
        errors.append(f"Missing required fields: {', '.join(missing)}")
    if extra:
        errors.append(f"Unknown fields: {', '.join(extra)}")
    if errors:
        return errors, []
    if not isinstance(body["name"], str) or not body["name"].strip():
        errors.append("name must be a non-empty string")
    nodes, edges = body["nodes"], body["edges"]
    if not isinstance(nodes, list) or not nodes:
        return [*errors, "Empty workflows are rejected (0 nodes)"], []
    if not isinstance(edges, list):
        return [*errors, "edges must be a list"], []

    def bad(rule: str, message: str, **where: Any) -> None:
        violations.append({"rule": rule, "message": message, "fix": "", **where})

    seen: dict[str, dict[str, Any]] = {}
    for node in nodes:
        if not isinstance(node, dict) or set(node) != _NODE_KEYS:
            errors.append(f"a node must have exactly {sorted(_NODE_KEYS)}")
            continue
        node_id, data = node["id"], node["data"]
        if not isinstance(node_id, str) or not node_id:
            errors.append("a node id must be a non-empty string")
            continue
        if node_id in seen:
            bad("duplicate-id", f"Node id {node_id!r} is used twice", nodeId=node_id)
        position = node["position"]
        if node["type"] != "basedNode":
            errors.append(f"node {node_id}: type must be 'basedNode'")
        if not isinstance(position, dict) or set(position) != {"x", "y"}:
            errors.append(f"node {node_id}: position must be {{x, y}}")
        if not isinstance(data, dict) or set(data) != _DATA_KEYS:
            errors.append(f"node {node_id}: data must have exactly {sorted(_DATA_KEYS)}")
            continue
        entry = CATALOG.get(data["nodeType"])
        if entry is None:
            bad("unknown-node-type", f"Unknown nodeType {data['nodeType']!r}", nodeId=node_id)
            continue
        seen[node_id] = data
        if data["category"] != entry["category"]:
            errors.append(f"node {node_id}: category must be {entry['category']!r}")
        if not isinstance(data["label"], str):
            errors.append(f"node {node_id}: label must be a string")
        for side in ("inputs", "outputs"):
            if data[side] != entry[side]:
                bad("bad-ports", f"{data['nodeType']} {side} must be {entry[side]}", nodeId=node_id)
        params = data["params"]
        if not isinstance(params, dict):
            errors.append(f"node {node_id}: params must be an object")
            continue
        for name, value in params.items():
            problem = _check_param(data["nodeType"], name, value)
            if problem:
                errors.append(f"node {node_id}: {problem}")
    for edge in edges:
        if not isinstance(edge, dict) or set(edge) != _EDGE_KEYS:
            errors.append(f"an edge must have exactly {sorted(_EDGE_KEYS)}")
            continue
        source, target = seen.get(edge["source"]), seen.get(edge["target"])
        if source is None or target is None:
            bad("dangling-edge", "Edge points at a missing node", edgeId=edge["id"])
            continue
        outs = [f"out-{o['id']}" for o in CATALOG[source["nodeType"]]["outputs"]]
        ins = [f"in-{i['id']}" for i in CATALOG[target["nodeType"]]["inputs"]]
        if edge["sourceHandle"] not in outs:
            bad("bad-source-handle", f"No output {edge['sourceHandle']!r}", edgeId=edge["id"])
        if edge["targetHandle"] not in ins:
            bad("bad-target-handle", f"No input {edge['targetHandle']!r}", edgeId=edge["id"])
    return errors, violations


def validate_execution(body: Any, workflow: dict[str, Any]) -> str | None:
    """Why an execute body is not the guide's ``{nodes: [{id, data: {params: {prompt}}}],
    edges: []}`` for an input node of ``workflow``; None when it is."""
    if not isinstance(body, dict) or set(body) != {"nodes", "edges"}:
        return "the body must be exactly {nodes, edges}"
    if body["edges"] != []:
        return "an execution cannot change the edges"
    nodes = body["nodes"]
    if not isinstance(nodes, list) or not nodes:
        return "nodes must list the input nodes to override"
    inputs = {n["id"] for n in workflow["nodes"] if n["data"]["nodeType"] == "input:text"}
    for node in nodes:
        if not isinstance(node, dict) or set(node) != {"id", "data"}:
            return "an override must be exactly {id, data}"
        if node["id"] not in inputs:
            return f"node {node['id']!r} is not an input node of this workflow"
        data = node["data"]
        if not isinstance(data, dict) or set(data) != {"params"}:
            return "an override's data must be exactly {params}"
        params = data["params"]
        if not isinstance(params, dict) or set(params) != {"prompt"}:
            return "an input:text override sets params.prompt only"
        if not isinstance(params["prompt"], str) or not params["prompt"].startswith(
            ("http://", "https://")
        ):
            return "the image URL must be an http(s) URL"
    return None


@dataclass
class WfKey:
    user: str = "user-1"
    credits: int = 100
    scopes: frozenset[str] = SCOPES
    expired: bool = False


@dataclass
class _Execution:
    id: str
    owner: str
    workflow_id: str
    image_url: str
    params: dict[str, Any]  # the upscaler's params when it was started
    at: float
    scenario: Any
    cancelled_at: float | None = None
    result: str | None = None
    ran_with: dict[str, Any] | None = None  # the params the result was made with
    extra: dict[str, Any] = field(default_factory=dict)


def picture(width: int, height: int) -> Image.Image:
    """A result with structure (a gradient and a diagonal), so a test can tell its pixels."""
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    rgb = np.stack(
        np.broadcast_arrays(
            (x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), ((x + y) % 7) * 36
        ),
        axis=-1,
    ).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class WireflowDouble(LoopbackDouble):
    """Wireflow on 127.0.0.1; the Free plan's limits unless :meth:`plan` says otherwise."""

    name = "wireflow"
    NODE_COST = 4  # credits per run of the upscaler node

    def __init__(self, *, keys: dict[str, WfKey] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.keys = keys if keys is not None else {"sk-test": WfKey()}
        self.envelope = "flat"  # "flat" | "stripe": the error envelope
        self.poll_envelope = "bare"  # "bare" (the guide's code reads result.status) | "data"
        self.poll_layout = "nodes"  # "nodes" | "nodeRuns" | "outputs" (by node id)
        self.images_shape = "list"  # outputs.images as "list" of URLs | "string" | "objects"
        self.params_read_at = "completion"  # "completion" | "execute"
        self.honour_idempotency = True
        self.cdn_block = "non-browser"  # "non-browser" | "all" | "none"
        self.hints = {"retry-after", "reset", "body"}  # what a 429 carries
        self.reset_headers = True  # X-RateLimit-Limit/Reset besides Remaining on every answer
        self.retention: float | None = None
        self.upload_limit: int | None = None
        self.workflows: dict[str, dict[str, Any]] = {}
        self.executions: dict[str, _Execution] = {}
        self.replays: dict[tuple[str, str], tuple[str, str, float]] = {}
        self.ledger: list[tuple[str, int]] = []
        self.plan(requests=10, executions=10)
        api = r"/api/v1"
        self.route("POST", api + r"/workflows", self.create)
        self.route("PUT", api + r"/workflows/(?P<id>[^/]+)", self.update)
        self.route("POST", api + r"/workflows/(?P<id>[^/]+)/execute", self.execute)
        self.route("GET", api + r"/workflows/executions/(?P<id>[^/]+)/poll", self.poll)
        self.route("POST", api + r"/media/upload", self.upload)
        self.route("GET", r"/api/download", self.download_proxy)

    # --- set-up and queries for tests ---------------------------------------------------------
    def plan(self, requests: int, executions: int = 10, window: float = 60.0) -> None:
        self.requests_window = WindowLimiter(requests, window, self.clock)
        self.executions_window = WindowLimiter(executions, window, self.clock)

    def cancel_execution(self, execution_id: str) -> None:
        with self.lock:
            self.executions[execution_id].cancelled_at = self.clock.now()

    def billed(self, key: str = "sk-test") -> int:
        user = self.keys[key].user
        return sum(c for eid, c in self.ledger if self.executions[eid].owner == user)

    def upscaler_params(self, workflow_id: str) -> dict[str, Any]:
        nodes = self.workflows[workflow_id]["nodes"]
        return next(n["data"]["params"] for n in nodes if n["data"]["nodeType"] == NODE_TYPE)

    # --- plumbing -----------------------------------------------------------------------------
    def error(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str = "",
        **extra: Any,
    ) -> Resp:
        if self.envelope == "stripe":
            inner = {"type": kind, "message": message, **({"code": code} if code else {})}
            return Resp.json(status, {"error": inner, **extra})
        return Resp.json(status, {"error": message, **extra})

    def _key(self, req: Req) -> tuple[str, WfKey] | Resp:
        header = req.header("authorization")
        if not header:
            return self.error(401, "Missing Authorization header", "authentication_error")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return self.error(
                401, "Invalid API key format. Expected: Bearer sk-...", "authentication_error"
            )
        key = header[7:].strip()
        found = self.keys.get(key)
        if found is None:
            return self.error(401, "Invalid API key", "authentication_error")
        if found.expired:
            return self.error(401, "API key has expired", "authentication_error")
        return key, found

    def _allowed(self, req: Req, scope: str) -> tuple[str, WfKey] | Resp:
        auth = self._key(req)
        if not isinstance(auth, Resp) and scope not in auth[1].scopes:
            return Resp.json(403, {"error": "Forbidden"})
        return auth

    def _json(self, req: Req) -> Any:
        """The JSON body; raises ValueError unless it is JSON sent as application/json."""
        if not (req.header("content-type") or "").startswith("application/json"):
            raise ValueError("Content-Type must be application/json")
        return req.json()

    def _limited(self, message: str, reset: float, limit: int) -> Resp:
        wait = max(1, math.ceil(reset - self.clock.now()))
        headers = {"Retry-After": str(wait)} if "retry-after" in self.hints else {}
        headers["X-RateLimit-Remaining"] = "0"
        if "reset" in self.hints:
            headers["X-RateLimit-Limit"] = str(limit)
            headers["X-RateLimit-Reset"] = str(math.ceil(reset))
        extra = {"retryAfter": math.ceil(reset)} if "body" in self.hints else {}
        resp = self.error(429, message, "rate_limit_error", "rate_limited", **extra)
        resp.headers.update(headers)
        return resp

    def dispatch(self, req: Req) -> Resp:
        limits: dict[str, str] = {}
        resp: Resp | None = None
        if req.path.startswith("/api/v1/"):
            auth = self._key(req)
            if isinstance(auth, Resp):
                resp = auth
            else:
                allowed, reset, remaining = self.requests_window.hit(auth[0])
                limit = self.requests_window.limit
                limits = {"X-RateLimit-Remaining": str(remaining)}
                if self.reset_headers:
                    limits["X-RateLimit-Limit"] = str(limit)
                    limits["X-RateLimit-Reset"] = str(math.ceil(reset))
                if not allowed:
                    resp = self._limited("Too many requests. Please try again later.", reset, limit)
        resp = resp or super().dispatch(req)
        for name, value in limits.items():
            resp.headers.setdefault(name, value)
        resp.headers.setdefault("X-Request-Id", uuid.uuid4().hex)
        return resp

    # --- workflows ------------------------------------------------------------------------------
    def _graph_answer(self, body: Any) -> Resp | None:
        errors, violations = validate_workflow(body)
        if errors:
            return self.error(400, "; ".join(errors), code="invalid_body")
        if violations:
            message = f"Workflow graph failed validation ({len(violations)} errors)."
            error = {"type": "invalid_request_error", "code": "invalid_graph", "message": message}
            return Resp.json(422, {"error": error, "violations": violations, "warnings": []})
        return None

    def create(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:write")
        if isinstance(auth, Resp):
            return auth
        try:
            body = self._json(req)
        except ValueError as exc:
            return self.error(400, f"Invalid JSON body ({exc})")
        refused = self._graph_answer(body)
        if refused is not None:
            return refused
        workflow_id = "cm" + secrets.token_hex(10)
        with self.lock:
            self.workflows[workflow_id] = {
                "id": workflow_id,
                "owner": auth[1].user,
                "name": body["name"],
                "nodes": copy.deepcopy(body["nodes"]),
                "edges": copy.deepcopy(body["edges"]),
                "isActive": True,
            }
        data = {"id": workflow_id, "name": body["name"]}
        return Resp.json(201, {"data": data, "meta": {"migrations": [], "warnings": []}})

    def update(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:write")
        if isinstance(auth, Resp):
            return auth
        workflow = self.workflows.get(req.match["id"])
        if workflow is None or workflow["owner"] != auth[1].user:
            return self.error(404, "Workflow not found", code="not_found")
        try:
            body = self._json(req)
        except ValueError as exc:
            return self.error(400, f"Invalid JSON body ({exc})")
        refused = self._graph_answer(body)
        if refused is not None:
            return refused
        with self.lock:
            workflow.update(
                name=body["name"],
                nodes=copy.deepcopy(body["nodes"]),
                edges=copy.deepcopy(body["edges"]),
            )
        return Resp.json(200, {"data": {"id": workflow["id"], "name": workflow["name"]}})

    def execute(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:execute")
        if isinstance(auth, Resp):
            return auth
        key, account = auth
        allowed, reset, _ = self.executions_window.hit(key)
        if not allowed:
            limit = self.executions_window.limit
            return self._limited(
                "Too many workflow executions. Please try again later.", reset, limit
            )
        workflow = self.workflows.get(req.match["id"])
        if workflow is None or workflow["owner"] != account.user:
            return self.error(404, "Workflow not found", code="not_found")
        if not workflow["isActive"]:
            return self.error(400, "Workflow is not active", code="workflow_inactive")
        try:
            body = self._json(req)
        except ValueError as exc:
            return self.error(400, f"Invalid JSON body ({exc})")
        problem = validate_execution(body, workflow)
        if problem:
            return self.error(400, problem, code="invalid_body")
        idem = req.header("idempotency-key") if self.honour_idempotency else None
        digest = _digest([workflow["id"], body])
        now = self.clock.now()
        with self.lock:
            replay = self.replays.get((key, idem)) if idem else None
            if replay is not None and now - replay[2] < REPLAY_WINDOW:
                if replay[0] != digest:
                    return self.error(
                        409,
                        "Idempotency-Key reused with a different body",
                        code="idempotency_conflict",
                    )
                return Resp.json(201, {"executionId": replay[1], "status": "RUNNING"})
            upscalers = [n for n in workflow["nodes"] if n["data"]["category"] == "process"]
            cost = self.NODE_COST * len(upscalers)
            if account.credits < cost:
                breakdown = [
                    {"nodeId": n["id"], "nodeLabel": n["data"]["label"], "credits": self.NODE_COST}
                    for n in upscalers
                ]
                return self.error(
                    402,
                    f"Insufficient credits. Required: {cost}, Available: {account.credits}",
                    "insufficient_credits_error",
                    "insufficient_credits",
                    requiredCredits=cost,
                    availableCredits=account.credits,
                    breakdown=breakdown,
                )
            execution = _Execution(
                "exec_" + secrets.token_hex(8),
                account.user,
                workflow["id"],
                body["nodes"][0]["data"]["params"]["prompt"],
                copy.deepcopy(self.upscaler_params(workflow["id"])),
                now,
                self.next_scenario(),
            )
            self.executions[execution.id] = execution
            account.credits -= cost
            self.ledger.append((execution.id, cost))
            if idem:
                self.replays[(key, idem)] = (digest, execution.id, now)
        return Resp.json(201, {"executionId": execution.id, "status": "RUNNING"})

    # --- executions -----------------------------------------------------------------------------
    @staticmethod
    def _iso(t: float | None) -> str | None:
        from datetime import UTC, datetime

        if t is None:
            return None
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")

    def _result(self, execution: _Execution) -> str:
        """The result: the input scaled by the params it runs with, in their format."""
        params = {"scale_factor": 2, "output_format": "png"}
        if self.params_read_at == "completion" and execution.workflow_id in self.workflows:
            params.update(self.upscaler_params(execution.workflow_id))
        else:
            params.update(execution.params)
        execution.ran_with = dict(params)
        scenario = execution.scenario
        fmt = str(params["output_format"])
        if scenario.output is not None:
            return self.cdn_put(scenario.output, ttl=self.retention)
        source = self.cdn_lookup(execution.image_url)
        size = (24, 20)
        if source is not None:
            try:
                with Image.open(io.BytesIO(source)) as im:
                    k = int(params["scale_factor"])
                    size = (min(512, im.width * k), min(512, im.height * k))
            except OSError:
                pass
        buffer = io.BytesIO()
        picture(*size).save(buffer, FORMATS[fmt])
        ctype = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[fmt]
        return self.cdn_put(buffer.getvalue(), ctype, ttl=self.retention, name=f"out.{fmt}")

    def _images(self, url: str) -> Any:
        if self.images_shape == "string":
            return url
        if self.images_shape == "objects":
            return [{"url": url}]
        return [url]

    def _view(self, execution: _Execution) -> dict[str, Any]:
        now = self.clock.now()
        scenario = execution.scenario
        done_at = execution.at + scenario.queue_s + scenario.run_s
        phase = scenario.phase(now - execution.at)
        status, error = "RUNNING", None
        if execution.cancelled_at is not None and execution.cancelled_at < done_at:
            status = "CANCELLED"
        elif phase == "failed":
            status, error = "FAILED", scenario.fail
        elif phase == "done":
            status = "COMPLETED"
            if execution.result is None and not scenario.empty_output:
                execution.result = self._result(execution)
        result = execution.result if status == "COMPLETED" else None
        upscaler_outputs = {"images": self._images(result)} if result else {}
        nodes = [
            ("input-1", {"status": "COMPLETED", "outputs": {"prompt": execution.image_url}}),
            ("upscale-1", {"status": status, "error": error, "outputs": upscaler_outputs}),
        ]
        view: dict[str, Any] = {
            "id": execution.id,
            "workflowId": execution.workflow_id,
            "status": status,
            "startTime": self._iso(execution.at),
            "endTime": self._iso(done_at) if status != "RUNNING" else None,
            "error": error,
        }
        if self.poll_layout == "nodes":
            view["nodes"] = [{"id": node_id, **record} for node_id, record in nodes]
        elif self.poll_layout == "nodeRuns":
            view["nodeResults"] = {
                "nodeRuns": [{"nodeId": node_id, **record} for node_id, record in nodes]
            }
        else:
            view["outputs"] = {node_id: record["outputs"] for node_id, record in nodes}
        return view

    def poll(self, req: Req) -> Resp:
        auth = self._key(req)
        if isinstance(auth, Resp):
            return auth
        if not auth[1].scopes & {"executions:read", "workflows:read"}:
            return Resp.json(403, {"error": "Forbidden"})
        with self.lock:
            execution = self.executions.get(req.match["id"])
            if execution is None or execution.owner != auth[1].user:
                return self.error(404, "Execution not found", code="not_found")
            scenario = execution.scenario
            done_at = execution.at + scenario.queue_s + scenario.run_s
            if self.retention is not None and self.clock.now() > done_at + self.retention:
                return self.error(404, "Execution not found", code="not_found")
            view = self._view(execution)
        return Resp.json(200, {"data": view} if self.poll_envelope == "data" else view)

    # --- media, CDN and the download proxy ------------------------------------------------------
    def upload(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:write")
        if isinstance(auth, Resp):
            return auth
        try:
            part = parse_multipart(req).get("file")
        except ValueError:
            part = None
        if part is None:
            return self.error(400, "Send the image as the multipart field 'file'")
        name, ctype, data = part
        if self.upload_limit is not None and len(data) > self.upload_limit:
            return self.error(413, "File too large")
        url = self.cdn_put(data, ctype, name=name or "upload")
        return Resp.json(200, {"data": {"url": url, "id": uuid.uuid4().hex, "mimeType": ctype}})

    def cdn_refuse(self, req: Req) -> Resp | None:
        if req.header("x-double-proxy"):
            return None
        browser = "Mozilla/" in (req.header("user-agent") or "")
        if self.cdn_block == "all" or (self.cdn_block == "non-browser" and not browser):
            return Resp.html(403, "403 Forbidden")
        return None

    def download_proxy(self, req: Req) -> Resp:
        url = req.query.get("url", "")
        if not url.startswith(self.url + "/cdn/"):
            return Resp.json(400, {"error": "URL host is not allowed"})
        data = self.cdn_lookup(url)
        if data is None:
            return Resp.json(404, {"error": "Not found"})
        return Resp(200, data, {"Content-Type": "application/octet-stream"})
