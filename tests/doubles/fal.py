"""A loopback double of fal.ai's queue, storage and CDN for ``fal-ai/clarity-upscaler``.

What it emulates (provider-protocols §5, §8.6):

* ``POST /{owner}/{app}[/path]``: ``Authorization: Key`` (401), a locked account (402, or 403
  with fal's "User is locked" text), input validation (422 pydantic ``detail`` list) at submit
  or, with ``validate_at_submit=False``, only when the job runs; answers ``IN_QUEUE`` with
  absolute ``status_url``/``response_url``/``cancel_url`` back at the double. Honours
  ``?fal_webhook=``, ``x-fal-queue-priority``, ``x-fal-request-timeout``, ``x-fal-no-retry`` and
  ``X-Fal-Object-Lifecycle-Preference``;
* ``GET …/requests/{id}/status[?logs=1]``: 202 ``IN_QUEUE`` (``queue_position`` counting down) or
  ``IN_PROGRESS`` (logs), 200 ``COMPLETED`` (metrics; with ``status_reports_errors`` also
  ``error``/``error_type``, as fal's Python client expects); a concurrency limit holds jobs
  ``IN_QUEUE`` instead of refusing them;
* ``GET …/requests/{id}``: 200 ``{image, seed, timings}`` + ``x-fal-request-id``; 422 detail list
  or string (model failure, content policy, validation, an input it could not download);
  503/504 with ``error_type`` + ``X-Fal-Error-Type`` (runner failure after fal's own retries,
  request timeout); 504 + ``x-fal-request-timeout-type: user`` when the start timeout passed;
  499 ``client_cancelled`` after a cancel [GUESS]; 400 before completion [GUESS];
* ``PUT …/requests/{id}/cancel``: body ``status`` ``CANCELLATION_REQUESTED`` / ``ALREADY_COMPLETED``
  / ``NOT_FOUND``, each with a configurable HTTP code (:attr:`FalDouble.cancel_codes`);
* storage: ``POST /storage/upload/initiate`` → signed ``PUT /upload/{token}`` (no key; 403 once
  the signature expires) → ``file_url`` served from ``/files/{token}/{name}`` until it expires;
  also the v3 path fal's Python client takes by default (``POST /storage/auth/token``, then
  ``POST /files/upload`` with the CDN token);
* data URIs in ``image_url``; output files on the harness CDN (7 days, or the lifecycle header);
* internal retries (``FalScenario.retries``): the same ``request_id``, a new
  ``gateway_request_id`` per attempt; webhooks (``{request_id, gateway_request_id, status,
  payload, error}``, redelivered on non-2xx up to 10 times); billing (:attr:`FalDouble.billed`).

Left out: the SSE status stream, multipart uploads, webhook signatures (unverified), the sync
host ``fal.run``, fal's real request-record retention (unknown; :attr:`FalDouble.record_ttl`).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import secrets
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.doubles.http_double import LoopbackDouble, Req, Resp, Scenario, WindowLimiter, tiny_png

__all__ = ["DAY", "KEY", "MODEL", "FalDouble", "FalJob", "FalScenario"]

KEY = "fal-test-id:fal-test-secret"
MODEL = "fal-ai/clarity-upscaler"
DAY = 24 * 3600.0
_BILLED = ("done", "empty", "model", "model_text")  # fal bills what ran, 422s included
_INFRA = {  # verdict: (HTTP code, error_type, detail) of fal's infrastructure errors
    "timed_out": (504, "request_timeout", "Request timed out before it started"),
    "canceled": (499, "client_cancelled", "Request cancelled by the client"),
    "runner": (503, "runner_disconnected", "Runner disconnected unexpectedly"),
    "timeout": (504, "request_timeout", "Request timed out"),
}


@dataclass
class FalScenario(Scenario):
    """A fal job. ``fail`` is the message; ``failure`` how it shows: ``model`` (422 detail
    list), ``model_text`` (422 detail string), ``content`` (422 content_policy_violation),
    ``runner`` (503 once fal's retries are spent), ``timeout`` (504 request_timeout)."""

    failure: str = "model"
    retries: int = 0  # attempts that fail with runner_disconnected before the outcome
    ahead: int = 0  # other accounts' jobs ahead at submit, served during queue_s
    seed: int = 4242  # what fal reports when the request had no seed


@dataclass
class FalJob:
    id: str
    body: dict[str, Any]
    scenario: FalScenario
    submitted: float
    low: bool = False  # x-fal-queue-priority: low
    start_timeout: float | None = None
    no_retry: bool = False
    webhook: str | None = None
    output_ttl: float | None = None
    started: float | None = None
    timed_out: bool = False
    canceled_at: float | None = None
    gateway_ids: list[str] = field(default_factory=list)
    output_url: str | None = None
    hook_attempts: int = 0
    hook_next: float = 0.0
    hook_done: bool = False

    @property
    def ready_at(self) -> float:
        return self.submitted + self.scenario.queue_s

    @property
    def attempts(self) -> int:
        return 1 if self.no_retry and self.scenario.retries else self.scenario.retries + 1

    @property
    def end(self) -> float:
        natural = (self.started or 0.0) + self.attempts * self.scenario.run_s
        return min(natural, self.canceled_at) if self.canceled_at is not None else natural


@dataclass
class Upload:
    content_type: str
    ttl: float
    put_until: float = math.inf
    data: bytes | None = None
    expires: float | None = None


class FalDouble(LoopbackDouble):
    name = "fal"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.default_scenario = FalScenario()
        self.keys = {KEY}
        self.apps = {MODEL}
        self.jobs: dict[str, FalJob] = {}
        self.uploads: dict[str, Upload] = {}
        self.locked: int | None = None  # 402 (or 403) with fal's "User is locked" text
        self.validate_at_submit = True
        self.limits = {"upscale_factor": (1.0, 4.0), "creativity": (0.0, 1.0)}
        self.concurrency_limit: int | None = None
        self.status_reports_errors = False
        self.honour_cancel = True  # the app stops when fal signals a cancel while it runs
        self.cancel_codes = {"CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 409}
        self.cancel_codes["NOT_FOUND"] = 404
        self.storage_enabled = True
        self.cdn_ttl = 7 * DAY
        self.upload_url_ttl = 3600.0
        self.record_ttl = 7 * DAY  # [GUESS] how long the queue keeps a request
        self.limiter: WindowLimiter | None = None
        self.hooks: list[dict[str, Any]] = []  # what the double's own /_hook received
        self.hook_refuse = 0  # answer 500 to this many deliveries first
        self.hook_retry_s = 0.05
        self._stop = threading.Event()
        app, job = r"/(?P<app>[^/]+/[^/]+)", r"/requests/(?P<id>[^/]+)"
        for method, pattern, handler in (
            ("POST", r"/storage/upload/initiate", self.initiate),
            ("POST", r"/storage/auth/token", self.cdn_token),
            ("POST", r"/files/upload", self.v3_upload),
            ("PUT", r"/upload/(?P<token>[^/]+)", self.put_upload),
            ("GET", r"/files/(?P<token>[^/]+)/[^/]*", self.get_file),
            ("POST", r"/_hook", self.receive_hook),
            ("GET", app + job + "/status", self.status),
            ("GET", app + job, self.result),
            ("PUT", app + job + "/cancel", self.cancel),
            ("POST", app + r"(?:/.*)?", self.submit),
        ):
            self.route(method, pattern, handler)

    @property
    def billed(self) -> list[str]:
        """Requests fal charges for: finished, or failed by the model after running."""
        with self.lock:
            now = self.clock.now()
            self._schedule(now)
            return [
                j.id
                for j in self.jobs.values()
                if self._phase(j, now) not in ("queued", "running")
                and self._verdict(j, self._phase(j, now)) in _BILLED
            ]

    # --- protocol helpers ---------------------------------------------------------------------
    def not_found(self, req: Req) -> Resp:
        return Resp.json(404, {"detail": "Not Found"})

    def _refused(self, req: Req, *, billing: bool = False) -> Resp | None:
        auth = req.header("authorization") or ""
        if not auth:
            return Resp.json(401, {"detail": "Missing authorization header"})
        if not auth.startswith("Key ") or auth[4:] not in self.keys:
            return Resp.json(401, {"detail": "Invalid Key authorization header"})
        if billing and self.locked:
            text = "User is locked. Reason: Exhausted balance. Top up your balance."
            return Resp.json(self.locked, {"detail": text})
        if self.limiter is not None and not self.limiter.hit(auth)[0]:
            return Resp.json(429, {"detail": "Too many requests"})
        return None

    def _urls(self, app: str, job_id: str) -> dict[str, str]:
        base = f"{self.url}/{app}/requests/{job_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _validate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """fal's pydantic checks, for the ranges the docs give (and any a test adds)."""
        errors = []
        if not isinstance(body.get("image_url"), str) or not body["image_url"]:
            errors.append(_detail("image_url", "Field required", "missing"))
        for name in ("upscale_factor", "creativity", "resemblance", "guidance_scale"):
            value = body.get(name)
            low, high = self.limits.get(name, (-math.inf, math.inf))
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                errors.append(_detail(name, "Input should be a valid number", "float_parsing"))
            elif value < low:
                errors.append(_detail(name, f"Input should be ≥ {low}", "greater_than_equal"))
            elif value > high:
                errors.append(_detail(name, f"Input should be ≤ {high}", "less_than_equal"))
        steps = body.get("num_inference_steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            errors.append(_detail("num_inference_steps", "Input should be an integer", "int_type"))
        return errors

    # --- the queue ----------------------------------------------------------------------------
    def submit(self, req: Req) -> Resp:
        if (refused := self._refused(req, billing=True)) is not None:
            return refused
        if req.match["app"] not in self.apps:
            return Resp.json(404, {"detail": f"Application '{req.match['app']}' not found"})
        try:
            body = req.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Resp.json(422, {"detail": [_detail(None, "Invalid JSON", "json_invalid")]})
        if self.validate_at_submit and (errors := self._validate(body)):
            return Resp.json(422, {"detail": errors})
        timeout = req.header("x-fal-request-timeout")
        job = FalJob(
            id=str(uuid.uuid4()),
            body=body,
            scenario=_fal_scenario(self.next_scenario()),
            submitted=self.clock.now(),
            low=req.header("x-fal-queue-priority") == "low",
            start_timeout=float(timeout) if timeout else None,
            no_retry=(req.header("x-fal-no-retry") or "").lower() in ("1", "true"),
            webhook=req.query.get("fal_webhook"),
            output_ttl=_lifecycle(req.header("x-fal-object-lifecycle-preference")),
        )
        job.gateway_ids.append(job.id)
        with self.lock:
            self.jobs[job.id] = job
            self._schedule(job.submitted)
            position = self._position(job, job.submitted)
        return Resp.json(
            200,
            {"status": "IN_QUEUE", "request_id": job.id, "gateway_request_id": job.id}
            | self._urls(req.match["app"], job.id)
            | {"queue_position": position},
        )

    def _schedule(self, now: float) -> None:
        """Start the jobs whose turn has come by ``now``: lazily, but exactly in virtual time
        (a job starts once it is ready and a slot is free; normal priority before low)."""
        waiting = [j for j in self.jobs.values() if j.started is None and not j.timed_out]
        pending = sorted(
            (j for j in waiting if j.canceled_at is None), key=lambda j: (j.low, j.submitted)
        )
        while pending:
            at = min(j.ready_at for j in pending)
            while self.concurrency_limit is not None:
                busy = [j for j in self.jobs.values() if j.started is not None and j.started <= at]
                busy = [j for j in busy if at < j.end]
                if len(busy) < self.concurrency_limit:
                    break
                at = min(j.end for j in busy)
            for j in list(pending):  # x-fal-request-timeout: it did not start in time
                if j.start_timeout is not None and min(at, now) - j.submitted > j.start_timeout:
                    j.timed_out = True
                    pending.remove(j)
            if at > now:
                return
            ready = [j for j in pending if j.ready_at <= at]
            for j in ready if self.concurrency_limit is None else ready[:1]:
                j.started = at
                pending.remove(j)

    def _position(self, job: FalJob, now: float) -> int:
        waiting = [j for j in self.jobs.values() if j.started is None and j is not job]
        ahead = sum(
            1
            for j in waiting
            if j.canceled_at is None
            and not j.timed_out
            and (j.low, j.submitted) < (job.low, job.submitted)
        )
        s = job.scenario
        if s.ahead and s.queue_s > 0:
            ahead += math.ceil(s.ahead * max(0.0, 1 - (now - job.submitted) / s.queue_s))
        return ahead

    def _phase(self, job: FalJob, now: float) -> str:
        """queued, running, canceled, timed_out, runner_failed, failed or done."""
        if job.timed_out:
            return "timed_out"
        if job.started is None:
            return "canceled" if job.canceled_at is not None else "queued"
        run_s = job.scenario.run_s
        attempt = min(job.attempts - 1, int((now - job.started) // run_s) if run_s else 0)
        while len(job.gateway_ids) <= attempt:  # fal's internal retry: a new gateway id
            job.gateway_ids.append(str(uuid.uuid4()))
        if now < job.end:
            return "running"
        if job.canceled_at is not None and job.canceled_at < job.started + job.attempts * run_s:
            return "canceled"
        if job.no_retry and job.scenario.retries:
            return "runner_failed"
        return "failed" if job.scenario.fail else "done"

    def _verdict(self, job: FalJob, phase: str) -> str:
        """How an ended job ended: a key of ``_INFRA``, ``validation``, ``download``, a
        ``FalScenario.failure``, ``empty`` or ``done``."""
        if phase in ("timed_out", "canceled"):
            return phase
        if phase == "runner_failed":
            return "runner"
        if not self.validate_at_submit and self._validate(job.body):
            return "validation"
        if self._input(job) is None:
            return "download"
        if phase == "failed":
            return job.scenario.failure
        return "empty" if job.scenario.empty_output else "done"

    def _lookup(self, req: Req) -> tuple[FalJob | None, str, Resp | None]:
        if (refused := self._refused(req)) is not None:
            return None, "", refused
        with self.lock:
            now = self.clock.now()
            self._schedule(now)
            job = self.jobs.get(req.match["id"])
            phase = self._phase(job, now) if job else ""
            if job and phase not in ("queued", "running"):
                ended = job.end if job.started is not None else job.submitted
                if now - ended > self.record_ttl:
                    job = None
        if job is None:
            return None, "", Resp.json(404, {"detail": f"Request {req.match['id']} not found"})
        return job, phase, None

    def status(self, req: Req) -> Resp:
        job, phase, refused = self._lookup(req)
        if job is None:
            return refused  # type: ignore[return-value]
        logs = req.query.get("logs", "").lower() in ("1", "true")
        base = {"request_id": job.id} | self._urls(req.match["app"], job.id)
        if phase == "queued":
            with self.lock:
                position = self._position(job, self.clock.now())
            return Resp.json(202, {"status": "IN_QUEUE", "queue_position": position, **base})
        if phase == "running":
            run_s, started = job.scenario.run_s, job.started or 0.0
            share = ((self.clock.now() - started) % run_s) / run_s if run_s else 1.0
            lines = [_log("Loading models"), _log(f"Upscaling: {round(100 * share)}%")]
            if len(job.gateway_ids) > 1:
                lines.insert(0, _log("Runner disconnected; retrying on a new runner", "WARNING"))
            return Resp.json(
                202, {"status": "IN_PROGRESS", "logs": lines if logs else None, **base}
            )
        body = {"status": "COMPLETED", "logs": [_log("Done")] if logs else None, **base}
        body["metrics"] = {"inference_time": job.scenario.run_s}
        if self.status_reports_errors:
            with self.lock:
                code, payload, _ = self._outcome(job, phase)
            if code >= 400:
                detail = payload["detail"]
                if isinstance(detail, list):
                    detail = "; ".join(str(d["msg"]) for d in detail)
                body |= {"error": detail, "error_type": payload.get("error_type")}
        return Resp.json(200, body)

    def result(self, req: Req) -> Resp:
        job, phase, refused = self._lookup(req)
        if job is None:
            return refused  # type: ignore[return-value]
        if phase in ("queued", "running"):
            return Resp.json(400, {"detail": "Request is still in progress"})
        with self.lock:
            code, payload, headers = self._outcome(job, phase)
        return Resp.json(code, payload, {"x-fal-request-id": job.id, **headers})

    def _outcome(self, job: FalJob, phase: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """What ``GET response_url`` answers for an ended job (call with the lock held)."""
        verdict, s = self._verdict(job, phase), job.scenario
        if verdict in _INFRA:
            code, kind, text = _INFRA[verdict]
            headers = {"X-Fal-Error-Type": kind}
            if verdict == "timed_out":
                headers["x-fal-request-timeout-type"] = "user"
            return code, {"detail": text, "error_type": kind}, headers
        if verdict == "validation":
            return 422, {"detail": self._validate(job.body)}, {}
        if verdict == "model_text":
            return 422, {"detail": s.fail}, {}
        if verdict == "download":
            error = _detail("image_url", "Failed to download the file.", "file_download_error")
            return 422, {"detail": [error]}, {}
        if verdict not in ("done", "empty"):
            kind = "content_policy_violation" if verdict == "content" else "internal_error"
            return 422, {"detail": [_detail(None, s.fail or "", kind)]}, {}
        data, width, height = self._upscale(job)
        image = None
        if verdict == "done":
            if job.output_url is None:
                ttl = (job.output_ttl or self.cdn_ttl) - (self.clock.now() - job.end)
                job.output_url = self.cdn_put(data, ttl=ttl, name=f"{job.id[:8]}.png")
            image = {"url": job.output_url, "content_type": "image/png"}
            image |= {"file_name": f"{job.id[:8]}.png", "file_size": len(data)}
            image |= {"width": width, "height": height}
        seed = job.body.get("seed")
        seed = seed if isinstance(seed, int) else s.seed
        return 200, {"image": image, "seed": seed, "timings": {"inference": s.run_s}}, {}

    def _input(self, job: FalJob) -> bytes | None:
        """The input as fal's runner downloads it when the job starts."""
        url = str(job.body.get("image_url", ""))
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except ValueError:
                return None
        if url.startswith(f"{self.url}/files/"):
            upload = self.uploads.get(url[len(self.url) + 7 :].split("/")[0])
            alive = upload and (upload.expires is None or (job.started or 0) <= upload.expires)
            return upload.data if upload and alive else None
        return tiny_png(16, 16)  # a URL elsewhere: the double cannot fetch it; any image will do

    def _upscale(self, job: FalJob) -> tuple[bytes, int, int]:
        from PIL import Image

        data = job.scenario.output
        if data is None:
            factor = float(job.body.get("upscale_factor", 2))
            with Image.open(io.BytesIO(self._input(job) or b"")) as im:
                size = (max(1, int(im.width * factor)), max(1, int(im.height * factor)))
                buffer = io.BytesIO()
                im.convert("RGB").resize(size).save(buffer, "PNG")
            data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as im:
            return data, im.width, im.height

    def cancel(self, req: Req) -> Resp:
        if (refused := self._refused(req)) is not None:
            return refused
        with self.lock:
            now = self.clock.now()
            self._schedule(now)
            job = self.jobs.get(req.match["id"])
            phase = self._phase(job, now) if job else ""
            if job is None:
                answer = "NOT_FOUND"
            elif phase in ("queued", "running"):
                answer = "CANCELLATION_REQUESTED"  # while running, fal signals the app
                if phase == "queued" or self.honour_cancel:
                    job.canceled_at = now
            else:
                answer = "ALREADY_COMPLETED"
        return Resp.json(self.cancel_codes[answer], {"status": answer})

    # --- storage ------------------------------------------------------------------------------
    def initiate(self, req: Req) -> Resp:
        if not self.storage_enabled:
            return self.not_found(req)
        if (refused := self._refused(req)) is not None:
            return refused
        try:
            body = req.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("content_type"), str):
            return Resp.json(
                422, {"detail": [_detail("content_type", "Field required", "missing")]}
            )
        token, name = secrets.token_hex(8), str(body.get("file_name") or "upload.bin")
        ttl = _lifecycle(req.header("x-fal-object-lifecycle-preference")) or self.cdn_ttl
        with self.lock:
            put_until = self.clock.now() + self.upload_url_ttl
            self.uploads[token] = Upload(body["content_type"], ttl, put_until)
        return Resp.json(
            200,
            {
                "upload_url": f"{self.url}/upload/{token}",
                "file_url": f"{self.url}/files/{token}/{name.replace('/', '_')}",
            },
        )

    def put_upload(self, req: Req) -> Resp:
        with self.lock:
            upload, now = self.uploads.get(req.match["token"]), self.clock.now()
            if upload is None or now > upload.put_until:
                return Resp.text(403, "Request has expired", ctype="application/xml")
            upload.data, upload.expires = req.body, now + upload.ttl
            upload.content_type = req.header("content-type") or upload.content_type
        return Resp(200)

    def get_file(self, req: Req) -> Resp:
        with self.lock:
            upload, now = self.uploads.get(req.match["token"]), self.clock.now()
        if upload is None or upload.data is None or (upload.expires or math.inf) < now:
            return Resp.text(404, "Not Found")
        return Resp(200, upload.data, {"Content-Type": upload.content_type})

    def cdn_token(self, req: Req) -> Resp:
        if (refused := self._refused(req)) is not None:
            return refused
        expires = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
        token = {"token": "cdn-" + secrets.token_hex(8), "token_type": "Bearer"}
        return Resp.json(200, token | {"base_url": self.url, "expires_at": expires})

    def v3_upload(self, req: Req) -> Resp:
        if not (req.header("authorization") or "").startswith("Bearer cdn-"):
            return Resp.json(401, {"detail": "Invalid CDN token"})
        token, name = secrets.token_hex(8), req.header("x-fal-file-name") or "upload.bin"
        with self.lock:
            upload = Upload(req.header("content-type") or "application/octet-stream", self.cdn_ttl)
            upload.data, upload.expires = req.body, self.clock.now() + self.cdn_ttl
            self.uploads[token] = upload
        return Resp.json(200, {"access_url": f"{self.url}/files/{token}/{name}"})

    # --- webhooks -----------------------------------------------------------------------------
    def receive_hook(self, req: Req) -> Resp:
        with self.lock:
            if self.hook_refuse > 0:
                self.hook_refuse -= 1
                return Resp.json(500, {"error": "hook down"})
            self.hooks.append(req.json())
        return Resp(200)

    def _due_hooks(self) -> list[tuple[FalJob, dict[str, Any]]]:
        due = []
        with self.lock:
            now = self.clock.now()
            self._schedule(now)
            for job in self.jobs.values():
                phase = self._phase(job, now)
                if not job.webhook or job.hook_done or phase in ("queued", "running"):
                    continue
                if job.hook_attempts >= 10 or time.monotonic() < job.hook_next:
                    continue
                code, payload, _ = self._outcome(job, phase)
                ok = code < 400
                message = {"request_id": job.id, "gateway_request_id": job.gateway_ids[-1]}
                message |= {"status": "OK" if ok else "ERROR", "payload": payload}
                due.append((job, message | {"error": None if ok else str(payload["detail"])}))
        return due

    def _deliver_hooks(self) -> None:
        while not self._stop.wait(0.02):
            for job, message in self._due_hooks():
                headers = {"Content-Type": "application/json"}
                request = urllib.request.Request(
                    job.webhook or "", json.dumps(message).encode(), headers
                )
                try:
                    with urllib.request.urlopen(request, timeout=15) as answer:
                        delivered = 200 <= answer.status < 300
                except OSError:
                    delivered = False
                with self.lock:
                    job.hook_attempts += 1
                    job.hook_done = delivered
                    job.hook_next = time.monotonic() + self.hook_retry_s * 2**job.hook_attempts

    def start(self) -> FalDouble:
        super().start()
        self._stop.clear()
        threading.Thread(target=self._deliver_hooks, daemon=True, name="fal-hooks").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        super().stop()


def _fal_scenario(scenario: Scenario) -> FalScenario:
    if isinstance(scenario, FalScenario):
        return scenario
    return FalScenario(**dataclasses.asdict(scenario))


def _lifecycle(header: str | None) -> float | None:
    """``expiration_duration_seconds`` from an ``X-Fal-Object-Lifecycle-Preference`` header."""
    try:
        value = json.loads(header or "null")
    except ValueError:
        return None
    seconds = value.get("expiration_duration_seconds") if isinstance(value, dict) else None
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None


def _log(message: str, level: str = "INFO") -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return {"message": message, "level": level, "source": "user", "timestamp": stamp}


def _detail(name: str | None, msg: str, kind: str) -> dict[str, Any]:
    loc = ["body", name] if name else ["body"]
    return {"loc": loc, "msg": msg, "type": kind, "url": f"https://docs.fal.ai/errors#{kind}"}
