"""A loopback double of Apiframe v2 for ``clarity-upscale``, as its page documents it (seed 003).

From the page, and strict about it:

* ``POST /v2/images/upscale``: the top level holds ``model`` (``"clarity-upscale"``),
  ``clarityUpscaleParams`` and, as the FAQ says, "the common ``prompt`` and ``webhook_url``
  fields"; nothing else. ``clarityUpscaleParams`` holds the nine parameters of the input schema
  and nothing else, typed as the page types them: ``image`` a URL, ``prompt`` a string,
  ``scale_factor`` a *string* "1", "2", "4" or "8" (a number is refused), ``creativity`` 0–1 and
  ``resemblance`` 0–3 in steps of 0.05, ``dynamic`` 1–50 and ``num_inference_steps`` 1–100 in
  steps of 1, ``output_format`` png/jpg/webp, ``seed`` a whole number. A violation → 400
  ``{error, details: {path: [msgs]}}`` (Zod's wording, as the notes show it); success → 202
  ``{jobId, status: "QUEUED"}``;
* ``GET /v2/jobs/{id}``: ``status`` QUEUED → PROCESSING → COMPLETED | FAILED, and ``result``,
  "the output URL(s)", once COMPLETED (``result_shape``: a string, ``{images: [...]}`` or a list).

From the provider notes, where the page is silent (reference §2, §8.2): ``X-API-Key`` auth
(missing → 401 "API key is required", unknown → 401 "Invalid API key", inactive → 403 "API key
is inactive"); ``x-request-id`` on every answer; the image "probed" (a dead or non-http URL →
400, nothing charged); low balance → 402 ``{creditsRequired, creditsAvailable}``; 3 credits per
job; ``Idempotency-Key`` (same key + body within 24 h → the original job; another body → 409; a
key over 255 characters → 400 [GUESS]); the job's ``progress``, ``creditCost`` (0 once refunded
on FAILED), CANCELLED (:meth:`cancel_job`), ``expired: true`` and a dead CDN link after
``retention`` (24 h); ``GET /v2/jobs`` with ``status``, ``model``, ``search``, ``limit``,
``cursor``; ``POST /v2/uploads`` (multipart ``file``, ≤ 25 MB, magic bytes sniffed → 201
``{id, url, kind, contentType, byteSize, expiresAt}``, dead after ``upload_ttl``); 429 with
``Retry-After`` from an optional per-key window; a 503 ``outage`` mode.

Left out: webhook delivery (``webhook_url`` is validated and accepted, but no event is posted
and ``webhookStatus`` stays null): Clarifier polls, having no public URL.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.doubles.http_double import (
    LoopbackDouble,
    Req,
    Resp,
    WindowLimiter,
    parse_multipart,
    tiny_png,
)

__all__ = ["MODEL", "Account", "ApiframeDouble", "validate_upscale"]

MODEL = "clarity-upscale"
PRICE = 3  # "3 credits per generation, regardless of scale factor"
REPLAY_WINDOW = 24 * 3600.0
_TOP = {"model", "clarityUpscaleParams", "prompt", "webhook_url"}
_NUMBERS = {  # field: (minimum, maximum, step), from the page's input schema
    "creativity": (0, 1, 0.05),
    "resemblance": (0, 3, 0.05),
    "dynamic": (1, 50, 1),
    "num_inference_steps": (1, 100, 1),
    "seed": (None, None, 1),
}
_PARAMS = {"image", "prompt", "scale_factor", "output_format", *_NUMBERS}
SCALES = ("1", "2", "4", "8")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_url(value: Any) -> bool:
    """What ``new URL()`` (Zod's ``.url()``) accepts: a scheme, a colon, something after."""
    return isinstance(value, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:\S", value) is not None


def validate_upscale(body: Any) -> dict[str, list[str]]:
    """The Zod errors of the ``ImageUpscaleRequest`` clarity branch, as ``{path: [msgs]}``."""
    errors: dict[str, list[str]] = {}

    def add(path: str, message: str) -> None:
        errors.setdefault(path, []).append(message)

    if not isinstance(body, dict):
        add("(root)", f"Expected object, received {_type_name(body)}")
        return errors
    extra = sorted(set(body) - _TOP)
    if extra:
        add("(root)", "Unrecognized key(s) in object: " + ", ".join(f"'{k}'" for k in extra))
    if body.get("model") != MODEL:
        add("model", f'Invalid literal value, expected "{MODEL}"')
    if "webhook_url" in body and not _is_url(body["webhook_url"]):
        add("webhook_url", "Invalid url")
    if "prompt" in body and not isinstance(body["prompt"], str):
        add("prompt", f"Expected string, received {_type_name(body['prompt'])}")
    params = body.get("clarityUpscaleParams")
    if not isinstance(params, dict):
        add("clarityUpscaleParams", "Required" if params is None else "Expected object")
        return errors
    extra = sorted(set(params) - _PARAMS)
    if extra:
        add(
            "clarityUpscaleParams",
            "Unrecognized key(s) in object: " + ", ".join(f"'{k}'" for k in extra),
        )
    p = "clarityUpscaleParams."
    if "image" not in params:
        pass  # optional on the page; the probe below finds nothing to upscale
    elif not isinstance(params["image"], str):
        add(p + "image", f"Expected string, received {_type_name(params['image'])}")
    elif not _is_url(params["image"]):
        add(p + "image", "Invalid url")
    if "prompt" in params:
        if not isinstance(params["prompt"], str):
            add(p + "prompt", f"Expected string, received {_type_name(params['prompt'])}")
        elif len(params["prompt"]) > 2000:
            add(p + "prompt", "String must contain at most 2000 character(s)")
    if "scale_factor" in params:
        value = params["scale_factor"]
        if not isinstance(value, str):
            add(p + "scale_factor", f"Expected string, received {_type_name(value)}")
        elif value not in SCALES:
            add(
                p + "scale_factor",
                f"Invalid enum value. Expected '1' | '2' | '4' | '8', received '{value}'",
            )
    if "output_format" in params and params["output_format"] not in ("png", "jpg", "webp"):
        add(
            p + "output_format",
            "Invalid enum value. Expected 'png' | 'jpg' | 'webp', received "
            f"'{params['output_format']}'",
        )
    for name, (low, high, step) in _NUMBERS.items():
        if name not in params:
            continue
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            add(p + name, f"Expected number, received {_type_name(value)}")
        elif not math.isclose(value / step, round(value / step), abs_tol=1e-9):
            add(p + name, f"Number must be a multiple of {step}")
        elif low is not None and value < low:
            add(p + name, f"Number must be greater than or equal to {low}")
        elif high is not None and value > high:
            add(p + name, f"Number must be less than or equal to {high}")
    return errors


@dataclass
class Account:
    credits: int = 100
    active: bool = True
    user: str = "user-1"


@dataclass
class _Job:
    id: str
    owner: str
    body: dict[str, Any]
    at: float
    scenario: Any
    cancelled_at: float | None = None
    refunded: bool = False
    result: Any = None
    cost: int = PRICE


@dataclass
class _Replay:
    digest: str
    job_id: str
    at: float


class ApiframeDouble(LoopbackDouble):
    """Apiframe v2 on 127.0.0.1. ``accounts`` maps API keys to balances (default: one key,
    ``afk_test``, with 100 credits)."""

    name = "apiframe"

    def __init__(
        self,
        *,
        accounts: dict[str, Account] | None = None,
        result_shape: str = "string",
        retention: float = 24 * 3600.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.accounts = accounts if accounts is not None else {"afk_test": Account()}
        self.result_shape = result_shape  # "string" | "images" | "list"
        self.retention = retention  # 24 h (OpenAPI); 90 days per the upscale docs
        self.upload_ttl = 3600.0
        self.upload_limit = 25 * 1024 * 1024
        self.outage = False  # 503 on submit: the queue or database is down
        self.probe_fail = False  # every image probe fails (an unreachable host)
        self.jobs: dict[str, _Job] = {}
        self.replays: dict[tuple[str, str], _Replay] = {}
        self.ledger: list[tuple[str, int]] = []  # (job id, credits): charges; refunds negative
        self.uploads: dict[str, str] = {}  # upload id → CDN url
        self.limiter: WindowLimiter | None = None
        self.route("POST", r"/v2/images/upscale", self.upscale)
        self.route("GET", r"/v2/jobs", self.list_jobs)
        self.route("GET", r"/v2/jobs/(?P<id>[^/]+)", self.get_job)
        self.route("POST", r"/v2/uploads", self.upload)

    # --- helpers for tests --------------------------------------------------------------------
    def rate_limit(self, limit: int, window: float = 60.0) -> None:
        self.limiter = WindowLimiter(limit, window, self.clock)

    def billed(self, key: str = "afk_test") -> int:
        """Net credits charged to ``key``'s account (charges minus refunds)."""
        owner = self.accounts[key].user
        return sum(c for job_id, c in self.ledger if self.jobs[job_id].owner == owner)

    def cancel_job(self, job_id: str) -> None:
        with self.lock:
            self.jobs[job_id].cancelled_at = self.clock.now()

    # --- plumbing -----------------------------------------------------------------------------
    def dispatch(self, req: Req) -> Resp:
        resp = super().dispatch(req)
        resp.headers.setdefault("x-request-id", uuid.uuid4().hex)
        return resp

    def _auth(self, req: Req) -> tuple[str, Account] | Resp:
        key = req.header("x-api-key")
        if not key:
            return Resp.json(401, {"error": "API key is required"})
        account = self.accounts.get(key)
        if account is None:
            return Resp.json(401, {"error": "Invalid API key"})
        if not account.active:
            return Resp.json(403, {"error": "API key is inactive"})
        if self.limiter is not None:
            allowed, reset, _ = self.limiter.hit(key)
            if not allowed:
                wait = max(1, math.ceil(reset - self.clock.now()))
                return Resp.json(429, {"error": "Rate limit exceeded"}, {"Retry-After": str(wait)})
        return key, account

    def _probe(self, image: str) -> str | None:
        """Why the source image cannot be read, or None. Our own CDN links die with their TTL."""
        if self.probe_fail or not image.startswith(("http://", "https://")):
            return "Could not fetch the source image to compute the price"
        if image.startswith(self.url + "/cdn/") and self.cdn_lookup(image) is None:
            return "Could not fetch the source image to compute the price (HTTP 404)"
        return None

    # --- routes -------------------------------------------------------------------------------
    def upscale(self, req: Req) -> Resp:
        auth = self._auth(req)
        if isinstance(auth, Resp):
            return auth
        key, account = auth
        if self.outage:
            return Resp.json(503, {"error": "Service temporarily unavailable; retry with backoff"})
        try:
            body = req.json()
        except ValueError:
            return Resp.json(400, {"error": "Invalid JSON body"})
        idem = req.header("idempotency-key")
        if idem is not None and not 0 < len(idem) <= 255:
            return Resp.json(
                400,
                {
                    "error": "Validation failed",
                    "details": {
                        "Idempotency-Key": ["String must contain at most 255 character(s)"]
                    },
                },
            )
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        now = self.clock.now()
        with self.lock:
            replay = self.replays.get((key, idem)) if idem else None
            if replay is not None and now - replay.at < REPLAY_WINDOW:
                if replay.digest != digest:
                    return Resp.json(
                        409,
                        {"error": "Idempotency key reused with a different request body"},
                    )
                job = self.jobs[replay.job_id]
                return Resp.json(202, {"jobId": job.id, "status": self._view(job)["status"]})
            details = validate_upscale(body)
            if details:
                return Resp.json(400, {"error": "Validation failed", "details": details})
            why = self._probe(str(body["clarityUpscaleParams"].get("image", "")))
            if why:
                return Resp.json(400, {"error": why})
            if account.credits < PRICE:
                return Resp.json(
                    402,
                    {
                        "error": "Insufficient credits",
                        "creditsRequired": PRICE,
                        "creditsAvailable": account.credits,
                    },
                )
            job = _Job(str(uuid.uuid4()), account.user, body, now, self.next_scenario())
            self.jobs[job.id] = job
            account.credits -= PRICE
            self.ledger.append((job.id, PRICE))
            if idem:
                self.replays[(key, idem)] = _Replay(digest, job.id, now)
        return Resp.json(202, {"jobId": job.id, "status": "QUEUED"})

    def _view(self, job: _Job) -> dict[str, Any]:
        """The ``Job`` object as of now (called with the lock held or from one thread)."""
        now = self.clock.now()
        scenario = job.scenario
        done_at = job.at + scenario.queue_s + scenario.run_s
        view: dict[str, Any] = {
            "id": job.id,
            "status": "QUEUED",
            "model": MODEL,
            "progress": 0,
            "error": None,
            "creditCost": job.cost,
            "webhookStatus": None,
            "createdAt": _iso(job.at),
            "completedAt": None,
            "input": job.body["clarityUpscaleParams"],
        }
        phase = scenario.phase(now - job.at)
        if job.cancelled_at is not None and job.cancelled_at < done_at:
            view.update(status="CANCELLED", completedAt=_iso(job.cancelled_at))
            self._refund(job)
            view["creditCost"] = job.cost
        elif phase == "running":
            view.update(status="PROCESSING", progress=int(100 * scenario.progress(now - job.at)))
        elif phase == "failed":
            self._refund(job)
            view.update(
                status="FAILED", error=scenario.fail, creditCost=job.cost, completedAt=_iso(done_at)
            )
        elif phase == "done":
            if job.result is None and not scenario.empty_output:
                ttl = max(0.0, done_at + self.retention - now)
                url = self.cdn_put(scenario.output or tiny_png(24, 20), ttl=ttl)
                job.result = {
                    "string": url,
                    "images": {"images": [url]},
                    "list": [url],
                }[self.result_shape]
            view.update(status="COMPLETED", progress=100, completedAt=_iso(done_at))
            view["result"] = job.result
            view["expired"] = now > done_at + self.retention
        return view

    def _refund(self, job: _Job) -> None:
        if not job.refunded:
            job.refunded = True
            job.cost = 0
            for account in self.accounts.values():
                if account.user == job.owner:
                    account.credits += PRICE
                    break
            self.ledger.append((job.id, -PRICE))

    def get_job(self, req: Req) -> Resp:
        auth = self._auth(req)
        if isinstance(auth, Resp):
            return auth
        _, account = auth
        try:
            uuid.UUID(req.match["id"])
        except ValueError:
            return Resp.json(400, {"error": "Invalid job id: expected a UUID"})
        with self.lock:
            job = self.jobs.get(req.match["id"])
            if job is None or job.owner != account.user:
                return Resp.json(404, {"error": "Job not found"})
            return Resp.json(200, self._view(job))

    def list_jobs(self, req: Req) -> Resp:
        auth = self._auth(req)
        if isinstance(auth, Resp):
            return auth
        _, account = auth
        q = req.query
        try:
            limit = min(100, max(1, int(q.get("limit", "20"))))
            start = int(q.get("cursor") or 0)
        except ValueError:
            return Resp.json(400, {"error": "Validation failed", "details": {"limit": ["NaN"]}})
        with self.lock:
            views = [
                self._view(job)
                for job in sorted(self.jobs.values(), key=lambda j: j.at, reverse=True)
                if job.owner == account.user
            ]
        views = [
            v
            for v in views
            if (not q.get("status") or v["status"] == q["status"])
            and (not q.get("model") or v["model"] == q["model"])
            and (not q.get("search") or v["id"] == q["search"])
        ]
        page = views[start : start + limit]
        more = start + limit < len(views)
        return Resp.json(
            200, {"jobs": page, "nextCursor": str(start + limit) if more else None, "hasMore": more}
        )

    def upload(self, req: Req) -> Resp:
        auth = self._auth(req)
        if isinstance(auth, Resp):
            return auth
        try:
            parts = parse_multipart(req)
        except ValueError:
            parts = {}
        if "file" not in parts:
            return Resp.json(400, {"error": "No file provided (multipart field 'file')"})
        name, _declared, data = parts["file"]
        if len(data) > self.upload_limit:
            return Resp.json(400, {"error": "File too large: images may be at most 25 MB"})
        ctype = next((t for magic, t in _MAGIC if data.startswith(magic)), None)
        if ctype is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            ctype = "image/webp"
        if ctype is None:
            return Resp.json(400, {"error": "Unsupported file type"})
        upload_id = str(uuid.uuid4())
        url = self.cdn_put(data, ctype, ttl=self.upload_ttl, name=name or "upload")
        with self.lock:
            self.uploads[upload_id] = url
        return Resp.json(
            201,
            {
                "id": upload_id,
                "url": url,
                "kind": "image",
                "contentType": ctype,
                "byteSize": len(data),
                "expiresAt": _iso(self.clock.now() + self.upload_ttl),
            },
        )
