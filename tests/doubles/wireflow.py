"""A loopback double of Wireflow's workflow API (reference §3, §8.3).

Emulated:

* Bearer auth with the four documented 401 messages; per-key scopes → 403 ``{"error":
  "Forbidden"}``; ``X-Request-Id`` and ``X-RateLimit-Limit/Remaining/Reset`` (epoch) on every
  API answer; a requests/minute window per key and a separate executions/minute window on
  execute and run, answering 429 with a switchable set of hints (``Retry-After`` seconds,
  ``X-RateLimit-Reset`` epoch, body ``retryAfter`` epoch);
* both error envelopes, switchable: flat ``{"error": "..."}`` or Stripe-style ``{"error":
  {type, message, code}}`` (422 ``invalid_graph`` always comes Stripe-style, as documented);
* ``GET /api/v1/nodes``: the catalog, with ``process:clarityai_crystal_upscaler`` (an ``image``
  port; ``scale_factor`` 1–16 and ``creativity`` an integer 0–10 as config [GUESS]); it can be
  replaced or switched off (404);
* ``POST /api/v1/workflows``: required fields (400), empty graphs (400), and a lint → 422
  ``invalid_graph`` with ``violations[]`` (unknown nodeType, duplicate ids, dangling edges,
  handles not in the catalog or not matching, unknown or out-of-range config keys [GUESS]);
  success → 201 ``{data: {id, ...}, meta: {migrations, warnings}}``;
* ``POST /api/v1/workflows/{id}/execute``: 404 unknown, 400 "Workflow is not active", the lint
  again, a credit pre-check → 402 ``{insufficientCredits, requiredCredits, availableCredits,
  breakdown}``; ``Idempotency-Key`` honoured or ignored (``honour_idempotency``; same key and
  body → the same execution, another body → 409 [GUESS]); 201 + ``Location`` +
  ``{workflowId, batchId, executionRuns: [...]}``, or ``{executionId, status}`` for
  ``targetNodeId``; ``GET/POST /workflows/{id}/run`` (inputs, 202);
* ``GET /api/v1/workflows/executions/{id}[/poll]``: RUNNING → COMPLETED | FAILED | CANCELLED,
  bare or ``{data: ...}``, with any of ``finalOutput``, ``nodeStates[]``, ``nodeResults.nodeRuns``
  (the input node reports the *input* URL, as a trap for careless parsers); optional retention
  after which the execution is 404;
* ``POST /api/v1/media/upload``: multipart ``file`` or ``{url}`` (our CDN) → ``{data: {url}}``;
* the CDN refuses non-browser User-Agents (or everyone) with a 403 page, and
  ``GET /api/download?url=`` (no auth) serves our CDN files past that block.

Left out: webhooks (Wireflow's are inbound triggers), ``/workflows/lint``, ``/estimate``, PATCH
and PUT (``stale_write``), cycles in the lint (a two-node graph has none).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.doubles.http_double import (
    LoopbackDouble,
    Req,
    Resp,
    WindowLimiter,
    parse_multipart,
    tiny_png,
)

__all__ = ["NODE_TYPE", "WfKey", "WireflowDouble", "default_catalog"]

NODE_TYPE = "process:clarityai_crystal_upscaler"
SCOPES = frozenset(
    {"workflows:read", "workflows:write", "workflows:execute", "executions:read", "usage:read"}
)


def default_catalog() -> list[dict[str, Any]]:
    """The node catalog the double serves (the real one's item keys are [GUESS])."""
    media = [{"key": k, "type": k if k != "media" else "image"} for k in ("image", "media", "url")]
    return [
        {
            "nodeType": "input:image",
            "label": "Image",
            "category": "input",
            "inputs": [
                {"key": "image", "type": "string", "isPort": False},
                {"key": "imageUrl", "type": "string", "isPort": False},
            ],
            "outputs": media,
        },
        {
            "nodeType": "input:text",
            "label": "Text",
            "category": "input",
            "inputs": [{"key": "prompt", "type": "string", "isPort": False}],
            "outputs": [{"key": "prompt", "type": "text"}, {"key": "text", "type": "text"}],
        },
        {
            "nodeType": NODE_TYPE,
            "label": "Crystal Upscaler",
            "category": "process",
            "inputs": [
                {"key": "image", "type": "image", "isPort": True, "required": True},
                {"key": "scale_factor", "type": "number", "isPort": False, "min": 1, "max": 16},
                {"key": "creativity", "type": "integer", "isPort": False, "min": 0, "max": 10},
            ],
            "outputs": [{"key": "image", "type": "image"}],
        },
    ]


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
    nodes: list[dict[str, Any]]
    at: float
    scenario: Any
    cancelled_at: float | None = None
    result: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class WireflowDouble(LoopbackDouble):
    """Wireflow on 127.0.0.1; the Free plan's limits unless :meth:`plan` says otherwise."""

    name = "wireflow"
    NODE_COST = 4  # credits per run of a process/generate node

    def __init__(self, *, keys: dict[str, WfKey] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.keys = keys if keys is not None else {"sk-test": WfKey()}
        self.envelope = "flat"  # "flat" | "stripe"
        self.poll_envelope = "data"  # "data" | "bare"
        self.poll_fields = {"finalOutput", "nodeStates", "nodeResults"}
        self.honour_idempotency = True
        self.cdn_block = "non-browser"  # "non-browser" | "all" | "none"
        self.hints = {"retry-after", "reset", "body"}  # what a 429 carries
        self.catalog = default_catalog()
        self.serve_catalog = True
        self.serve_poll_suffix = True  # False: only /executions/{id} (no /poll) exists
        self.retention: float | None = None
        self.upload_limit: int | None = None
        self.workflows: dict[str, dict[str, Any]] = {}
        self.executions: dict[str, _Execution] = {}
        self.replays: dict[tuple[str, str], tuple[str, str]] = {}  # (key, idem) → (digest, id)
        self.ledger: list[tuple[str, int]] = []
        self.plan(requests=10, executions=10)
        api = r"/api/v1"
        self.route("GET", api + r"/nodes", self.nodes)
        self.route("POST", api + r"/workflows", self.create)
        self.route("POST", api + r"/workflows/(?P<id>[^/]+)/execute", self.execute)
        self.route("GET", api + r"/workflows/(?P<id>[^/]+)/run", self.run_inputs)
        self.route("POST", api + r"/workflows/(?P<id>[^/]+)/run", self.run)
        self.route("GET", api + r"/workflows/executions/(?P<id>[^/]+)/poll", self.poll)
        self.route("GET", api + r"/workflows/executions/(?P<id>[^/]+)", self.poll)
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

    # --- plumbing -----------------------------------------------------------------------------
    def error(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str = "",
        **extra,
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

    def _limited(self, message: str, reset: float, limit: int) -> Resp:
        wait = max(1, math.ceil(reset - self.clock.now()))
        headers = {"Retry-After": str(wait)} if "retry-after" in self.hints else {}
        if "reset" in self.hints:
            headers.update(
                {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"}
                | {"X-RateLimit-Reset": str(math.ceil(reset))}
            )
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
                limits = {
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": str(remaining),
                    "X-RateLimit-Reset": str(math.ceil(reset)),
                }
                if not allowed:
                    resp = self._limited("Too many requests. Please try again later.", reset, limit)
        resp = resp or super().dispatch(req)
        for name, value in limits.items():
            resp.headers.setdefault(name, value)
        resp.headers.setdefault("X-Request-Id", uuid.uuid4().hex)
        return resp

    # --- the catalog and the lint ---------------------------------------------------------------
    def nodes(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:read")
        if isinstance(auth, Resp):
            return auth
        if not self.serve_catalog:
            return self.error(404, "Not Found")
        return Resp.json(200, {"nodes": self.catalog})

    def lint(self, nodes: list[Any], edges: list[Any]) -> list[dict[str, Any]]:
        catalog = {entry["nodeType"]: entry for entry in self.catalog}
        violations: list[dict[str, Any]] = []

        def bad(rule: str, message: str, fix: str = "", **where: Any) -> None:
            violations.append({"rule": rule, "message": message, "fix": fix, **where})

        seen: dict[str, dict[str, Any]] = {}
        for node in nodes:
            node_id = node.get("id") if isinstance(node, dict) else None
            data = node.get("data") if isinstance(node, dict) else None
            if not node_id or not isinstance(data, dict):
                bad("malformed-node", "A node needs an id and data")
                continue
            if node_id in seen:
                bad("duplicate-id", f"Node id {node_id!r} is used twice", nodeId=node_id)
            seen[node_id] = data
            entry = catalog.get(data.get("nodeType"))
            if entry is None:
                bad(
                    "unknown-node-type",
                    f"Unknown nodeType {data.get('nodeType')!r}",
                    "See GET /api/v1/nodes for valid types",
                    nodeId=node_id,
                )
                continue
            known = {i["key"]: i for i in entry["inputs"] if not i.get("isPort")}
            for key, value in (data.get("config") or {}).items():
                rule = known.get(key)
                if rule is None:
                    bad(
                        "unknown-config-key",
                        f"{entry['label']} has no config {key!r}",
                        nodeId=node_id,
                    )
                elif isinstance(value, int | float) and (
                    value < rule.get("min", -math.inf) or value > rule.get("max", math.inf)
                ):
                    bad("config-out-of-range", f"{key}={value} is out of range", nodeId=node_id)
        for edge in edges:
            if not isinstance(edge, dict):
                bad("malformed-edge", "An edge must be an object")
                continue
            source, target = seen.get(edge.get("source")), seen.get(edge.get("target"))
            if source is None or target is None:
                bad("dangling-edge", "Edge points at a missing node", edgeId=edge.get("id"))
                continue
            out_key = str(edge.get("sourceHandle", "")).removeprefix("out-")
            in_key = str(edge.get("targetHandle", "")).removeprefix("in-")
            outs = [o["key"] for o in catalog[source["nodeType"]]["outputs"]]
            ins = [i["key"] for i in catalog[target["nodeType"]]["inputs"] if i.get("isPort")]
            if out_key not in outs:
                bad(
                    "bad-source-handle",
                    f"No output {out_key!r}",
                    f'Did you mean "out-{outs[0]}"?',
                    edgeId=edge.get("id"),
                )
            if in_key not in ins:
                fix = f'Did you mean "in-{ins[0]}"?' if ins else ""
                bad("bad-target-handle", f"No input {in_key!r}", fix, edgeId=edge.get("id"))
            elif out_key != in_key:
                bad(
                    "handle-mismatch", "Handle keys must match on both sides", edgeId=edge.get("id")
                )
        return violations

    def _invalid_graph(self, violations: list[dict[str, Any]]) -> Resp:
        message = f"Workflow graph failed validation ({len(violations)} errors)."
        error = {"type": "invalid_request_error", "code": "invalid_graph", "message": message}
        body = {"error": error, "violations": violations, "warnings": [], "migrations": []}
        return Resp.json(422, body)

    # --- workflows and executions ---------------------------------------------------------------
    def create(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:write")
        if isinstance(auth, Resp):
            return auth
        try:
            body = req.json()
        except ValueError:
            return self.error(400, "Invalid JSON body")
        missing = [
            k for k in ("name", "nodes", "edges") if not isinstance(body, dict) or k not in body
        ]
        if missing:
            return self.error(
                400, f"Missing required fields: {', '.join(missing)}", code="missing_fields"
            )
        if not body["nodes"]:
            return self.error(400, "Empty workflows are rejected (0 nodes)", code="empty_graph")
        violations = self.lint(body["nodes"], body["edges"])
        if violations:
            return self._invalid_graph(violations)
        workflow_id = "cm" + secrets.token_hex(10)
        with self.lock:
            self.workflows[workflow_id] = {
                "id": workflow_id,
                "owner": auth[1].user,
                "name": body["name"],
                "nodes": body["nodes"],
                "edges": body["edges"],
                "isActive": body.get("isActive", True),
            }
        data = {"id": workflow_id, "name": body["name"], "isActive": body.get("isActive", True)}
        return Resp.json(201, {"data": data, "meta": {"migrations": [], "warnings": []}})

    def _start(self, req: Req, *, via_run: bool) -> Resp | tuple[_Execution, dict[str, Any]]:
        """What execute and run share: scope, executions window, workflow, lint, credits."""
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
            body = req.json() if req.body else {}
        except ValueError:
            return self.error(400, "Invalid JSON body")
        nodes = copy.deepcopy(body.get("nodes") or workflow["nodes"])
        edges = body.get("edges") or workflow["edges"]
        if via_run:
            for node in nodes:
                if node["id"] in (body.get("inputs") or {}):
                    url = body["inputs"][node["id"]]
                    node["data"]["config"].update(image=url, imageUrl=url)
        violations = self.lint(nodes, edges)
        if violations:
            return self._invalid_graph(violations)
        idem = req.header("idempotency-key") if self.honour_idempotency else None
        digest = _digest(body)
        with self.lock:
            if idem and (key, idem) in self.replays:
                known, execution_id = self.replays[(key, idem)]
                if known != digest:
                    return self.error(
                        409,
                        "Idempotency-Key reused with a different body",
                        code="idempotency_conflict",
                    )
                return self.executions[execution_id], body
            paid = [n for n in nodes if n["data"]["category"] in ("process", "generate")]
            cost = self.NODE_COST * len(paid)
            if account.credits < cost:
                breakdown = [
                    {
                        "nodeId": n["id"],
                        "nodeLabel": n["data"].get("label"),
                        "credits": self.NODE_COST,
                    }
                    for n in paid
                ]
                return self.error(
                    402,
                    f"Insufficient credits. Required: {cost}, Available: {account.credits}",
                    "insufficient_credits_error",
                    "insufficient_credits",
                    insufficientCredits=True,
                    requiredCredits=cost,
                    availableCredits=account.credits,
                    breakdown=breakdown,
                )
            execution = _Execution(
                "exec_" + secrets.token_hex(8),
                account.user,
                workflow["id"],
                nodes,
                self.clock.now(),
                self.next_scenario(),
            )
            self.executions[execution.id] = execution
            account.credits -= cost
            self.ledger.append((execution.id, cost))
            if idem:
                self.replays[(key, idem)] = (digest, execution.id)
        return execution, body

    def execute(self, req: Req) -> Resp:
        started = self._start(req, via_run=False)
        if isinstance(started, Resp):
            return started
        execution, body = started
        if body.get("targetNodeId"):
            return Resp.json(201, {"executionId": execution.id, "status": "RUNNING"})
        run = {
            "id": execution.id,
            "startTime": self._iso(execution.at),
            "endTime": None,
            "status": "RUNNING",
            "error": None,
            "nodeRuns": [],
            "batchId": execution.extra.setdefault("batch", str(uuid.uuid4())),
            "runIndexInBatch": 0,
            "inputIndex": 0,
        }
        location = f"{self.url}/api/v1/workflows/executions/{execution.id}"
        return Resp.json(
            201,
            {
                "workflowId": execution.workflow_id,
                "batchId": run["batchId"],
                "executionRuns": [run],
            },
            {"Location": location},
        )

    def run_inputs(self, req: Req) -> Resp:
        auth = self._allowed(req, "workflows:read")
        if isinstance(auth, Resp):
            return auth
        workflow = self.workflows.get(req.match["id"])
        if workflow is None:
            return self.error(404, "Workflow not found")
        inputs = [
            {
                "nodeId": n["id"],
                "label": n["data"].get("label"),
                "type": "image",
                "required": True,
                "default": (n["data"].get("config") or {}).get("image"),
            }
            for n in workflow["nodes"]
            if n["data"]["nodeType"] == "input:image"
        ]
        return Resp.json(200, {"data": {"workflowId": workflow["id"], "inputs": inputs}})

    def run(self, req: Req) -> Resp:
        started = self._start(req, via_run=True)
        if isinstance(started, Resp):
            return started
        return Resp.json(202, {"data": {"executionId": started[0].id, "status": "RUNNING"}})

    @staticmethod
    def _iso(t: float | None) -> str | None:
        from datetime import UTC, datetime

        return (
            None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
        )

    def _view(self, execution: _Execution) -> dict[str, Any]:
        now = self.clock.now()
        scenario = execution.scenario
        done_at = execution.at + scenario.queue_s + scenario.run_s
        phase = scenario.phase(now - execution.at)
        image = next(n for n in execution.nodes if n["data"]["nodeType"] == "input:image")
        upscaler = next(n for n in execution.nodes if n["data"]["nodeType"] != "input:image")
        status, error = "RUNNING", None
        if execution.cancelled_at is not None and execution.cancelled_at < done_at:
            status = "CANCELLED"
        elif phase == "failed":
            status, error = "FAILED", scenario.fail
        elif phase == "done":
            status = "COMPLETED"
            if execution.result is None and not scenario.empty_output:
                execution.result = self.cdn_put(
                    scenario.output or tiny_png(24, 20), ttl=self.retention
                )
        source = image["data"]["config"].get("image")
        result = execution.result if status == "COMPLETED" else None
        view: dict[str, Any] = {
            "id": execution.id,
            "workflowId": execution.workflow_id,
            "status": status,
            "startTime": self._iso(execution.at),
            "endTime": self._iso(done_at) if status != "RUNNING" else None,
            "error": f"Node {upscaler['data'].get('label')!r} failed" if error else None,
        }
        label = upscaler["data"].get("label")
        if "nodeStates" in self.poll_fields:
            view["nodeStates"] = [
                {
                    "nodeId": image["id"],
                    "label": "Image",
                    "status": "COMPLETED",
                    "error": None,
                    "outputUrl": source,
                },
                {
                    "nodeId": upscaler["id"],
                    "label": label,
                    "status": status,
                    "error": error,
                    "outputUrl": result,
                },
            ]
        if "nodeResults" in self.poll_fields:
            view["nodeResults"] = {
                "nodeRuns": [
                    {
                        "nodeId": image["id"],
                        "status": "COMPLETED",
                        "output": {"images": [{"url": source}]},
                    },
                    {
                        "nodeId": upscaler["id"],
                        "status": status,
                        "error": error,
                        "output": {"images": [{"url": result}]} if result else None,
                    },
                ]
            }
        if "finalOutput" in self.poll_fields and result:
            view["finalOutput"] = {"url": result}
        return view

    def poll(self, req: Req) -> Resp:
        if req.path.endswith("/poll") and not self.serve_poll_suffix:
            return self.error(404, "Not Found")
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
        if "multipart/form-data" in (req.header("content-type") or ""):
            part = parse_multipart(req).get("file")
            if part is None:
                return self.error(400, "No file provided", code="missing_file")
            name, ctype, data = part
        else:
            try:
                source = str(req.json()["url"])
            except (ValueError, KeyError, TypeError):
                return self.error(400, 'Send a multipart file or {"url": ...}')
            data = self._cdn_bytes(source)
            if data is None:
                return self.error(400, "Could not fetch url")
            name, ctype = source.rsplit("/", 1)[-1], "image/png"
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

    def _cdn_bytes(self, url: str) -> bytes | None:
        return self.cdn_lookup(url) if url.startswith(self.url + "/cdn/") else None

    def download_proxy(self, req: Req) -> Resp:
        url = req.query.get("url", "")
        if not url.startswith(self.url + "/cdn/"):
            return Resp.json(400, {"error": "URL host is not allowed"})
        data = self._cdn_bytes(url)
        if data is None:
            return Resp.json(404, {"error": "Not found"})
        return Resp(200, data, {"Content-Type": "application/octet-stream"})
