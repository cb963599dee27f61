"""A loopback double of Segmind's serverless API (provider-protocols.md §1 and §8.1).

Emulated: ``POST /v2/{slug}`` → 200 ``{request_id, status:"QUEUED", poll_url, status_url,
response_url}`` (absolute URLs back at the double); ``GET /v2/requests/{id}/status`` (QUEUED,
PROCESSING, COMPLETED; FAILED as HTTP 422 with the status body); ``GET /v2/requests/{id}`` (the
result: ``output`` URL on a fake CDN and ``metrics`` with cost and remaining credits; 422 when
FAILED); ``GET /v1/requests/{id}`` (the legacy ``poll_url``, mirroring the result [GUESS]);
``POST /v1/{slug}`` (sync: the image bytes with ``x-cost``, ``x-remaining-credits``,
``x-request-id``, ``x-generation-time``, ``x-seed-value``).

Gateway rules: ``x-api-key`` required (two 401 messages; a Bearer header alone is refused); a
missing or non-JSON ``Content-Type`` → 406 plain ``Invalid content type``; too little balance →
406 ``Insufficient credits…`` naming balance and cost [GUESS wording], or a team spend limit;
unknown slug 404; retired slug 410; GET on a model route → 405 with an HTML page; N requests per
minute per key → 429 with ``x-rate-limit-reset-at-utc`` and no ``Retry-After``. Records expire one
hour after submission (404 ``Request … not found``), CDN files after seven days, both on the
virtual clock. No cancel, no webhooks, no idempotency: every accepted POST is a new job, counted
per key (:meth:`jobs_for`) so tests can prove nothing was submitted twice. Credits are charged
only when a job completes.

Left out: the upload endpoints (``/upload-asset``, ``input-upload``: the backend inlines base64),
the request-history API, PixelFlow webhooks, multipart bodies.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.doubles.http_double import (
    LoopbackDouble,
    Req,
    Resp,
    Scenario,
    VirtualClock,
    WindowLimiter,
    tiny_png,
)

KEY = "SG_0123456789abcdef"
SLUGS = ("clarity-upscaler", "clarityai-creative-upscaler", "clarityai-flux-upscaler")
MISSING_KEY = "Missing Authorization or x-api-key in header"
BAD_KEY = "Unauthorized. API key is invalid or may have expired. Please check your API key."

_TILES = tuple(range(16, 257, 16))
_INT = "integer"
# Per slug: field → (type, minimum, maximum, choices), from the model pages (seeds 000-002).
_SCHEMAS: dict[str, dict[str, tuple[str, float | None, float | None, tuple | None]]] = {
    "clarity-upscaler": {
        "image": ("image", None, None, None),
        "mask": ("image", None, None, None),
        "prompt": ("string", None, None, None),
        "negative_prompt": ("string", None, None, None),
        "scale_factor": ("number", 1, 16, None),
        "creativity": ("number", 0, 1, None),
        "resemblance": ("number", 0, 3, None),
        "dynamic": ("number", 1, 50, None),
        "sharpen": ("number", 0, 10, None),
        "handfix": ("string", None, None, ("disabled", "hands_only", "image_and_hands")),
        "sd_model": (
            "string",
            None,
            None,
            (
                "epicrealism_naturalSinRC1VAE.safetensors [84d76a0328]",
                "juggernaut_reborn.safetensors [338b85bc4f]",
                "flat2DAnimerge_v45Sharp.safetensors",
            ),
        ),
        "scheduler": ("string", None, None, None),
        "tiling_width": (_INT, None, None, _TILES),
        "tiling_height": (_INT, None, None, _TILES),
        "num_inference_steps": (_INT, 1, 100, None),
        "seed": (_INT, 0, None, None),
        "downscaling": ("boolean", None, None, None),
        "downscaling_resolution": (_INT, 1, None, None),
        "output_format": ("string", None, None, ("webp", "jpg", "png")),
        "lora_links": ("string", None, None, None),
        "custom_sd_model": ("string", None, None, None),
    },
    "clarityai-creative-upscaler": {
        "image": ("image", None, None, None),
        "prompt": ("string", None, None, None),
        "scale_factor": (_INT, 2, 16, None),
        "creativity": (_INT, -10, 10, None),
        "resemblance": (_INT, -10, 10, None),
        "dynamic": (_INT, -10, 10, None),
        "fractality": (_INT, -10, 10, None),
        "style": ("string", None, None, ("default", "portrait", "anime")),
    },
    "clarityai-flux-upscaler": {
        "image": ("image", None, None, None),
        "prompt": ("string", None, None, None),
        "scale_factor": (_INT, 2, 16, None),
        "creativity": (_INT, -10, 10, None),
        "lora_link": ("string", None, None, None),
    },
}


@dataclass
class Job:
    id: str
    key: str
    slug: str
    body: dict[str, Any]
    at: float  # virtual submit time
    scenario: Scenario
    sync: bool = False
    price: float = 0.0
    seed: int = 0
    output_url: str | None = None
    charged: bool = False


class SegmindDouble(LoopbackDouble):
    """Segmind's gateway and queue on 127.0.0.1. Switches are plain attributes."""

    name = "segmind"

    def __init__(
        self,
        *,
        keys: Iterable[str] = (KEY,),
        clock: VirtualClock | None = None,
        rpm: int | None = None,
        rpm_window: float = 60.0,
        balance: float = 100.0,
    ) -> None:
        super().__init__(clock=clock)
        self.keys = set(keys)
        self.balance: dict[str, float] = {k: balance for k in self.keys}
        self.prices = dict(zip(SLUGS, (0.03, 0.3, 0.5), strict=True))  # credits per job
        self.jobs: dict[str, Job] = {}
        self.retired: set[str] = set()
        self.retention = 3600.0
        self.cdn_ttl = 7 * 86400.0
        self.spend_limited = False  # 406 for a team over its spend limit
        self.validate_at_submit = True  # False: accept anything, fail at run time (media models)
        self.reject_unknown = True  # a test aid: fields no model page lists are refused
        self.output_shape = "string"  # "string" | "list" | "object"
        self.sync_delay_cap = 2.0  # real seconds a sync call may hold the connection
        self.limiter = WindowLimiter(rpm, rpm_window, self.clock) if rpm else None
        self.default_scenario = Scenario(run_s=0.05)
        self.route("POST", r"/v2/(?P<slug>[A-Za-z0-9._-]+)", self.submit)
        self.route("GET", r"/v2/requests/(?P<id>[^/]+)/status", self.status)
        self.route("GET", r"/v2/requests/(?P<id>[^/]+)", self.result)
        self.route("GET", r"/v1/requests/(?P<id>[^/]+)", self.result)
        self.route("POST", r"/v1/(?P<slug>[A-Za-z0-9._-]+)", self.run_sync)

    # --- queries for tests ------------------------------------------------------------------
    def jobs_for(self, key: str = KEY) -> list[Job]:
        """Every job this key started (each one billable once it completes)."""
        with self.lock:
            return [j for j in self.jobs.values() if j.key == key]

    def charged(self, key: str = KEY) -> float:
        with self.lock:
            return round(sum(j.price for j in self.jobs.values() if j.key == key and j.charged), 6)

    # --- gateway ----------------------------------------------------------------------------
    def method_not_allowed(self, req: Req) -> Resp:
        return Resp.html(405, "405 Method Not Allowed")

    def _gate(self, req: Req) -> tuple[str, Resp | None]:
        """Auth, then the per-key rate limit."""
        key = req.header("x-api-key")
        if not key:
            return "", Resp.json(401, {"error": MISSING_KEY})  # Bearer is not read
        if key not in self.keys:
            return "", Resp.json(401, {"error": BAD_KEY})
        if self.limiter is not None:
            allowed, reset, _ = self.limiter.hit(key)
            if not allowed:
                at = math.ceil(reset * 1000) / 1000  # never announce a reset that is too early
                stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
                return key, Resp.json(
                    429,
                    {"error": "Rate limit exceeded. Please slow down your requests."},
                    {"x-rate-limit-reset-at-utc": stamp.replace("+00:00", "Z")},
                )
        return key, None

    def _accept(self, req: Req, slug: str) -> tuple[str, dict[str, Any] | None, Resp | None]:
        """Everything a submit (v1 or v2) passes before a job exists."""
        key, refused = self._gate(req)
        if refused is not None:
            return key, None, refused
        if slug in self.retired:
            return key, None, Resp.json(410, {"error": f"Model {slug} has been retired"})
        if slug not in _SCHEMAS:
            return key, None, Resp.json(404, {"error": f"Model {slug} not found"})
        ctype = (req.header("content-type") or "").lower()
        if not ctype.startswith(("application/json", "multipart/form-data")):
            return key, None, Resp.text(406, "Invalid content type")
        price = self.prices.get(slug, 0.0)
        if self.spend_limited:
            return key, None, Resp.json(406, {"error": "Team spend limit exceeded"})
        if self.balance.get(key, 0.0) < price:
            return (
                key,
                None,
                Resp.json(
                    406,
                    {
                        "error": f"Insufficient credits. Your balance is "
                        f"{self.balance.get(key, 0.0):.2f} credits and this request requires "
                        f"{price:.2f} credits."
                    },
                ),
            )
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            return key, None, Resp.json(400, {"error": "Request body is not valid JSON"})
        if not isinstance(body, dict):
            return key, None, Resp.json(400, {"error": "Request body must be a JSON object"})
        return key, body, None

    def _new_job(self, key: str, slug: str, body: dict[str, Any], sync: bool) -> Job:
        scenario = self.next_scenario()
        problem = validate(slug, body, self.reject_unknown)
        if problem:  # accepted anyway (validate_at_submit False): fails when it runs
            scenario = Scenario(scenario.queue_s, scenario.run_s, fail=problem)
        seed = body.get("seed") if isinstance(body.get("seed"), int) else secrets.randbelow(2**31)
        job = Job(
            str(uuid.uuid4()),
            key,
            slug,
            body,
            self.clock.now(),
            scenario,
            sync=sync,
            price=self.prices.get(slug, 0.0),
            seed=seed,
        )
        with self.lock:
            self.jobs[job.id] = job
        return job

    # --- v2 ---------------------------------------------------------------------------------
    def submit(self, req: Req) -> Resp:
        slug = req.match["slug"]
        key, body, refused = self._accept(req, slug)
        if refused is not None or body is None:
            return refused or Resp(500)
        if self.validate_at_submit:
            problem = validate(slug, body, self.reject_unknown)
            if problem:
                return Resp.json(400, {"error": problem})
        job = self._new_job(key, slug, body, sync=False)
        return Resp.json(200, {"request_id": job.id, "status": "QUEUED", **self._urls(job)})

    def _urls(self, job: Job) -> dict[str, str]:
        return {
            "poll_url": f"{self.url}/v1/requests/{job.id}",
            "status_url": f"{self.url}/v2/requests/{job.id}/status",
            "response_url": f"{self.url}/v2/requests/{job.id}",
        }

    def _find(self, req: Req) -> tuple[Job | None, Resp | None]:
        key, refused = self._gate(req)
        if refused is not None:
            return None, refused
        job_id = req.match["id"]
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None or job.key != key or self.clock.now() - job.at > self.retention:
            return None, Resp.json(404, {"error": f"Request {job_id} not found"})
        return job, None

    def _phase(self, job: Job) -> tuple[str, float]:
        elapsed = self.clock.now() - job.at
        phase = job.scenario.phase(elapsed)
        if phase == "done":
            self._complete(job)
        return phase, elapsed

    def _complete(self, job: Job) -> None:
        with self.lock:
            if job.charged:
                return
            job.charged = True
            self.balance[job.key] = round(self.balance.get(job.key, 0.0) - job.price, 6)
            if not job.sync and not job.scenario.empty_output:
                job.output_url = self.cdn_put(
                    job.scenario.output or _output_png(job), ttl=self.cdn_ttl, name="out.png"
                )

    def _metrics(self, job: Job, elapsed: float, billed: bool) -> dict[str, Any]:
        s = job.scenario
        metrics: dict[str, Any] = {
            "inference_time": round(s.run_s, 3),
            "queue_time": round(s.queue_s, 3),
            "total_time": round(s.queue_s + s.run_s, 3),
        }
        if billed:
            metrics.update(cost=job.price, remaining_credits=self.balance.get(job.key, 0.0))
        return metrics

    def _failed(self, job: Job, elapsed: float) -> Resp:
        return Resp.json(
            422,
            {
                "status": "FAILED",
                "request_id": job.id,
                "error": job.scenario.fail,
                "metrics": self._metrics(job, elapsed, billed=False),
            },
        )

    def status(self, req: Req) -> Resp:
        job, refused = self._find(req)
        if job is None:
            return refused or Resp(500)
        phase, elapsed = self._phase(job)
        if phase == "failed":
            return self._failed(job, elapsed)
        if phase == "done":
            body = {
                "status": "COMPLETED",
                "request_id": job.id,
                "metrics": {"inference_time": job.scenario.run_s},
            }
            return Resp.json(200, body)
        word = "QUEUED" if phase == "queued" else "PROCESSING"
        return Resp.json(
            200, {"status": word, "request_id": job.id, **self._urls(job), "metrics": {}}
        )

    def result(self, req: Req) -> Resp:
        job, refused = self._find(req)
        if job is None:
            return refused or Resp(500)
        phase, elapsed = self._phase(job)
        if phase == "failed":
            return self._failed(job, elapsed)
        if phase != "done":  # [GUESS] the result route before completion: the status, no output
            word = "QUEUED" if phase == "queued" else "PROCESSING"
            return Resp.json(
                200, {"status": word, "request_id": job.id, "output": None, "metrics": {}}
            )
        output: Any = job.output_url
        if output and self.output_shape == "list":
            output = [output]
        elif output and self.output_shape == "object":
            output = {"seed": job.seed, "images": [{"url": output, "width": 16}]}
        return Resp.json(
            200,
            {
                "status": "COMPLETED",
                "request_id": job.id,
                "error": None,
                "output": output,
                "metrics": self._metrics(job, elapsed, billed=True),
            },
        )

    # --- v1 sync ----------------------------------------------------------------------------
    def run_sync(self, req: Req) -> Resp:
        slug = req.match["slug"]
        key, body, refused = self._accept(req, slug)
        if refused is not None or body is None:
            return refused or Resp(500)
        problem = validate(slug, body, self.reject_unknown)
        if problem and self.validate_at_submit:
            return Resp.json(400, {"error": problem})
        job = self._new_job(key, slug, body, sync=True)
        s = job.scenario
        time.sleep(min(self.sync_delay_cap, (s.queue_s + s.run_s) / max(self.clock.speed, 1e-9)))
        if s.fail:  # [GUESS] v1 reports a model failure as a 500 with the error
            return Resp.json(500, {"error": s.fail})
        self._complete(job)
        data = s.output or _output_png(job)
        return Resp(
            200,
            data,
            {
                "Content-Type": "image/png",
                "x-cost": f"{job.price}",
                "x-remaining-credits": f"{self.balance.get(key, 0.0)}",
                "x-request-id": job.id,
                "x-generation-time": f"{s.run_s:.3f}",
                "x-seed-value": str(job.seed),
            },
        )


def validate(slug: str, body: dict[str, Any], reject_unknown: bool = True) -> str | None:
    """The first problem with ``body`` for ``slug``, worded like a validation error."""
    schema = _SCHEMAS[slug]
    if "image" not in body:
        return "Validation error: image is required"
    for name, value in body.items():
        if name not in schema:
            if reject_unknown:
                return f"Validation error: unknown parameter {name}"
            continue
        kind, low, high, choices = schema[name]
        problem = _check(name, value, kind, low, high, choices)
        if problem:
            return f"Validation error: {problem}"
    return None


def _check(name: str, value: Any, kind: str, low: Any, high: Any, choices: Any) -> str | None:
    if kind == "image":
        if not isinstance(value, str) or not value:
            return f"{name} must be a URL or base64 string"
        if value.startswith(("http://", "https://")):
            return None
        if value.startswith("data:"):  # [GUESS] unproven; the backend must send bare base64
            return f"{name} must be a URL or base64 string, not a data URI"
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"{name} is not valid base64"
        return None
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        return f"{name} must be a {kind}"
    if choices is not None and value not in choices:
        return f"{name} must be one of {', '.join(map(str, choices))}"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{name} must be between {low} and {high}"
    return None


def _output_png(job: Job) -> bytes:
    """An output image ``scale_factor`` times the input's size (capped), when it can be read."""
    from PIL import Image

    scale = job.body.get("scale_factor", 2)
    image = job.body.get("image", "")
    try:
        with Image.open(io.BytesIO(base64.b64decode(image, validate=True))) as im:
            size = im.size
    except (binascii.Error, ValueError, OSError):
        return tiny_png(24, 20, seed=job.seed % 7)
    width, height = (max(1, min(512, round(d * float(scale)))) for d in size)
    return tiny_png(width, height, seed=job.seed % 7)
