"""A Replicate double: the hosted predictions API, as far as a client can observe it.

What it emulates (see the provider reference, §4 and §8.4):

* auth: ``Authorization: Bearer r8_…`` or the older ``Token r8_…``; anything else is 401;
* models and versions: ``GET /v1/models/{owner}/{name}`` (``latest_version`` with its
  ``openapi_schema``) and ``…/versions/{id}``; several versions, so a model whose deployed schema
  lags (fewer inputs) can be served;
* ``POST /v1/predictions``: ``version`` as ``owner/name:<id>``, a bare 64-hex id, or
  ``owner/name`` for models flagged official (else 422 "Invalid version or not permitted");
  input validation against the version's schema (types, ranges, choices, required ``image``,
  files that exist) → 422 problem+json with ``invalid_fields``; 402 when the balance is zero;
  201 with the prediction and absolute ``urls.get/cancel/web``. ``Prefer: wait[=n]`` holds the
  answer until the prediction ends or n seconds pass (then, as the official client notes, it
  reads ``starting`` whatever it is doing, with a ``Location`` header). ``Cancel-After``: a
  deadline passing before the run starts ends it ``aborted`` (never billed), while it runs
  ``canceled`` (billed);
* the lifecycle ``starting → processing → succeeded | failed | canceled`` on the virtual clock
  (:class:`~tests.doubles.http_double.Scenario`), logs growing with a tqdm bar, ``metrics``
  at the end, output a list of CDN URLs (the input resized by ``scale_factor``) or ``null``
  (``Scenario(empty_output=True)``: Clarity's hand-fix quirk); runs over 30 minutes fail;
* ``POST /v1/predictions/{id}/cancel`` (a finished prediction: 400 problem, a [GUESS]);
* retention: an hour after the end, ``data_removed: true``, input/output/logs emptied, and the
  CDN files 404;
* Files API: ``POST /v1/files`` (multipart ``content``, ≤ 100 MB) → 201 file object;
  ``GET /v1/files``, ``GET``/``DELETE /v1/files/{id}`` (204);
* ``GET /v1/predictions``: newest first, cursor pages ``{results, next, previous}`` with
  absolute links; ``list_with_input=False`` gives lean items (id, status, times, urls);
* rate limits: 600 creates and 3000 other requests per minute per token, 429
  ``{"detail": "Request was throttled. Your rate limit resets in ~Ns."}`` (``Retry-After`` only
  when ``retry_after_header``);
* :meth:`billed`: predictions that reached a GPU, for "never pay twice" assertions.

Left out: webhooks and their signatures, streaming, deployments, trainings, the official-model
``POST /v1/models/{owner}/{name}/predictions`` route, and the account endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.doubles.http_double import (
    LoopbackDouble,
    Req,
    Resp,
    Scenario,
    WindowLimiter,
    parse_multipart,
    tiny_png,
)

__all__ = ["CLARITY_VERSION", "OLD_VERSION", "ReplicateDouble", "clarity_schema"]

CLARITY = "philz1337x/clarity-upscaler"
CLARITY_VERSION = hashlib.sha256(b"clarity-upscaler latest").hexdigest()
OLD_VERSION = hashlib.sha256(b"clarity-upscaler 2024").hexdigest()
RUN_LIMIT = 1800.0  # Replicate stops predictions after 30 minutes
RETENTION = 3600.0
FILE_LIMIT = 100 * 2**20
_SCHEDULERS = ["DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 3M SDE Karras", "Euler a", "DDIM"]
_SD_MODELS = [
    "epicrealism_naturalSinRC1VAE.safetensors [84d76a0328]",
    "juggernaut_reborn.safetensors [338b85bc4f]",
    "flat2DAnimerge_v45Sharp.safetensors",
]


def clarity_schema(*, old: bool = False) -> dict[str, Any]:
    """The version's OpenAPI document (§4.2 table). ``old``: an early version's ten inputs."""
    props: dict[str, dict[str, Any]] = {
        "image": {"type": "string", "format": "uri"},
        "prompt": {"type": "string", "default": "masterpiece"},
        "negative_prompt": {"type": "string", "default": ""},
        "scale_factor": {"type": "number", "default": 2},
        "dynamic": {"type": "number", "minimum": 1, "maximum": 50, "default": 6},
        "creativity": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.35},
        "resemblance": {"type": "number", "minimum": 0, "maximum": 3, "default": 0.6},
        "scheduler": {"type": "string", "enum": [*_SCHEDULERS, "DPM++ 3M SDE Exponential"]},
        "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 100, "default": 18},
        "seed": {"type": "integer", "default": 1337},
    }
    if not old:
        props.update(
            tiling_width={"type": "integer", "enum": list(range(16, 257, 16)), "default": 112},
            tiling_height={"type": "integer", "enum": list(range(16, 257, 16)), "default": 144},
            sd_model={"type": "string", "enum": _SD_MODELS},
            multistep_factor={"type": "number", "minimum": 0, "maximum": 2, "default": 0.8},
            downscaling={"type": "boolean", "default": False},
            downscaling_resolution={"type": "integer", "default": 768},
            lora_links={"type": "string", "default": ""},
            custom_sd_model={"type": "string", "default": ""},
            sharpen={"type": "number", "minimum": 0, "maximum": 10, "default": 0},
            mask={"type": "string", "format": "uri"},
            handfix={"type": "string", "enum": ["disabled", "hands_only", "image_and_hands"]},
            pattern={"type": "boolean", "default": False},
            output_format={"type": "string", "enum": ["webp", "jpg", "png"], "default": "png"},
        )
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "components": {
            "schemas": {
                "Input": {"type": "object", "required": ["image"], "properties": props},
                "Output": {"type": "array", "items": {"type": "string", "format": "uri"}},
            }
        },
    }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str, **extra: Any) -> Resp:
    body = {"type": "about:blank", "title": title, "detail": detail, "status": status, **extra}
    return Resp.json(status, body, {"Content-Type": "application/problem+json"})


@dataclass
class Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created: float
    scenario: Scenario
    deadline: float | None  # Cancel-After, seconds after creation
    source_png: bytes | None
    canceled_at: float | None = None
    output: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def timeline(self) -> tuple[str, float | None, float | None, str | None]:
        """(final status, started, ended, error) as the scenario and the deadline decide."""
        sc = self.scenario
        start = self.created + sc.queue_s
        natural = start + min(sc.run_s, RUN_LIMIT)
        stops = [(natural, "natural")]
        if self.canceled_at is not None:
            stops.append((self.canceled_at, "cancel"))
        if self.deadline is not None:
            stops.append((self.created + self.deadline, "deadline"))
        end, why = min(stops)
        if why == "natural":
            if sc.run_s > RUN_LIMIT:
                return "failed", start, end, "Prediction timed out after 30 minutes"
            return ("failed" if sc.fail else "succeeded"), start, end, sc.fail
        if end < start:  # stopped before a GPU picked it up: never started, never billed
            return ("aborted" if why == "deadline" else "canceled"), None, end, None
        return "canceled", start, end, None


class ReplicateDouble(LoopbackDouble):
    name = "replicate"

    def __init__(self, *, token: str = "r8_test_token", page_size: int = 100, **kw: Any) -> None:
        super().__init__(**kw)
        self.token = token
        self.page_size = page_size
        self.predictions: dict[str, Prediction] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.file_bytes: dict[str, bytes] = {}
        self.versions: dict[str, dict[str, Any]] = {
            OLD_VERSION: {"schema": clarity_schema(old=True), "created": 1_700_000_000.0},
            CLARITY_VERSION: {"schema": clarity_schema(), "created": 1_720_000_000.0},
        }
        self.latest = CLARITY_VERSION
        self.official = False  # philz1337x/clarity-upscaler is a community model
        self.balance_zero = False
        self.retry_after_header = False
        self.list_with_input = True
        self.strict_inputs = False  # reject inputs the schema does not declare
        self.data_url_limit: int | None = None  # refuse larger inline files (bytes)
        self.creates = WindowLimiter(600, 60.0, self.clock)
        self.others = WindowLimiter(3000, 60.0, self.clock)
        self.route("GET", r"/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)", self.get_model)
        self.route(
            "GET",
            r"/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)/versions/(?P<v>[^/]+)",
            self.get_ver,
        )
        self.route("POST", r"/v1/predictions", self.create)
        self.route("GET", r"/v1/predictions", self.list_predictions)
        self.route("GET", r"/v1/predictions/(?P<id>[^/]+)", self.get)
        self.route("POST", r"/v1/predictions/(?P<id>[^/]+)/cancel", self.cancel)
        self.route("POST", r"/v1/files", self.file_create)
        self.route("GET", r"/v1/files", self.file_list)
        self.route("GET", r"/v1/files/(?P<id>[^/]+)", self.file_get)
        self.route("DELETE", r"/v1/files/(?P<id>[^/]+)", self.file_delete)

    # --- queries for tests --------------------------------------------------------------------
    def billed(self) -> int:
        """Predictions that reached a GPU: what Replicate would charge for."""
        now = self.clock.now()
        with self.lock:
            starts = [p.timeline()[1] for p in self.predictions.values()]
        return sum(1 for started in starts if started is not None and started <= now)

    # --- gatekeeping --------------------------------------------------------------------------
    def dispatch(self, req: Req) -> Resp:
        if not req.path.startswith("/v1/"):
            return super().dispatch(req)
        auth = req.header("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme not in ("Bearer", "Token") or token.strip() != self.token:
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        create = req.method == "POST" and req.path == "/v1/predictions"
        allowed, reset, _ = (self.creates if create else self.others).hit(token)
        if not allowed:
            wait = max(1, math.ceil(reset - self.clock.now()))
            headers = {"Retry-After": str(wait)} if self.retry_after_header else {}
            return Resp.json(
                429,
                {"detail": f"Request was throttled. Your rate limit resets in ~{wait}s."},
                headers,
            )
        return super().dispatch(req)

    def not_found(self, req: Req) -> Resp:
        return _problem(404, "Not found", "The requested resource could not be found.")

    # --- models -------------------------------------------------------------------------------
    def _version_json(self, version: str) -> dict[str, Any]:
        info = self.versions[version]
        return {
            "id": version,
            "created_at": _iso(info["created"]),
            "cog_version": "0.9.4",
            "openapi_schema": info["schema"],
        }

    def get_model(self, req: Req) -> Resp:
        if f"{req.match['owner']}/{req.match['name']}" != CLARITY:
            return self.not_found(req)
        owner, name = CLARITY.split("/")
        return Resp.json(
            200,
            {
                "url": f"https://replicate.com/{CLARITY}",
                "owner": owner,
                "name": name,
                "description": "High resolution image Upscaler and Enhancer.",
                "visibility": "public",
                "github_url": "https://github.com/philz1337x/clarity-upscaler",
                "paper_url": None,
                "license_url": None,
                "run_count": 1_000_000,
                "cover_image_url": None,
                "default_example": None,
                "latest_version": self._version_json(self.latest),
            },
        )

    def get_ver(self, req: Req) -> Resp:
        known = f"{req.match['owner']}/{req.match['name']}" == CLARITY
        if not known or req.match["v"] not in self.versions:
            return self.not_found(req)
        return Resp.json(200, self._version_json(req.match["v"]))

    # --- predictions --------------------------------------------------------------------------
    def _resolve(self, ref: Any) -> str | None:
        if not isinstance(ref, str):
            return None
        if re.fullmatch(r"[0-9a-f]{64}", ref):
            return ref if ref in self.versions else None
        model, _, version = ref.partition(":")
        if model != CLARITY:
            return None
        if not version:
            return self.latest if self.official else None
        return version if version in self.versions else None

    def _image(self, value: str) -> bytes | None:
        if value.startswith("data:"):
            try:
                return base64.b64decode(value.partition(",")[2], validate=True)
            except (binascii.Error, ValueError):
                return None
        prefix = f"{self.url}/v1/files/"
        if value.startswith(prefix):
            return self.file_bytes.get(value[len(prefix) :])
        return None

    def _validate(self, version: str, inputs: Any) -> dict[str, list[str]]:
        props = self.versions[version]["schema"]["components"]["schemas"]["Input"]["properties"]
        if not isinstance(inputs, dict):
            return {"input": ["Invalid type. Expected: object"]}
        errors: dict[str, list[str]] = {}
        if "image" not in inputs:
            errors["image"] = ["image is required"]
        types = {"string": str, "number": (int, float), "integer": int, "boolean": bool}
        for name, value in inputs.items():
            spec = props.get(name)
            if spec is None:
                if self.strict_inputs:
                    errors[name] = ["Additional property is not allowed"]
                continue
            expected = types[spec["type"]]
            if (isinstance(value, bool) and spec["type"] != "boolean") or not isinstance(
                value, expected
            ):
                given = type(value).__name__
                errors[name] = [f"Invalid type. Expected: {spec['type']}, given: {given}"]
                continue
            if "minimum" in spec and value < spec["minimum"]:
                errors[name] = [f"Must be greater than or equal to {spec['minimum']}"]
            if "maximum" in spec and value > spec["maximum"]:
                errors[name] = [f"Must be less than or equal to {spec['maximum']}"]
            if "enum" in spec and value not in spec["enum"]:
                errors[name] = [f"{name} must be one of the following: {spec['enum']}"]
            if spec.get("format") == "uri" and not errors.get(name):
                if not value.startswith(("data:", "http://", "https://")):
                    errors[name] = ["Does not match format 'uri'"]
                elif value.startswith(f"{self.url}/v1/files/") and self._image(value) is None:
                    errors[name] = ["The file does not exist or has expired"]
                elif (
                    value.startswith("data:")
                    and self.data_url_limit is not None
                    and len(value) * 3 // 4 > self.data_url_limit
                ):
                    errors[name] = ["Data URLs must be smaller; upload the file instead"]
        return errors

    def create(self, req: Req) -> Resp:
        try:
            body = req.json()
        except ValueError:
            return _problem(400, "Bad request", "The request body is not valid JSON.")
        version = self._resolve(body.get("version") if isinstance(body, dict) else None)
        if version is None:
            return _problem(
                422,
                "Invalid version or not permitted",
                "The specified version does not exist (or perhaps you don't have permission "
                "to use it?)",
            )
        if self.balance_zero:
            return _problem(
                402,
                "Insufficient credit",
                "You have insufficient credit to run this model. Go to "
                "https://replicate.com/account/billing#billing to purchase credit.",
            )
        errors = self._validate(version, body.get("input"))
        if errors:
            lines = "".join(f"- input.{k}: {'; '.join(v)}\n" for k, v in errors.items())
            invalid = [
                {"type": "invalid", "field": f"input.{k}", "description": m}
                for k, v in errors.items()
                for m in v
            ]
            return _problem(422, "Input validation failed", lines, invalid_fields=invalid)
        deadline = _duration(req.header("cancel-after"))
        pid = base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")
        inputs = dict(body["input"])
        with self.lock:
            prediction = Prediction(
                pid,
                CLARITY,
                version,
                inputs,
                self.clock.now(),
                self.next_scenario(),
                deadline,
                self._image(inputs["image"]),
                extra={"webhook": body.get("webhook")},
            )
            self.predictions[pid] = prediction
        wait = _prefer_wait(req.header("prefer"))
        if wait is None:
            return Resp.json(201, self._json(prediction))
        limit = time.monotonic() + min(wait, 5.0)  # the double never holds a test longer
        while time.monotonic() < limit:
            if self._json(prediction)["status"] in ("succeeded", "failed", "canceled", "aborted"):
                return Resp.json(201, self._json(prediction))
            time.sleep(0.01)
        shown = {**self._json(prediction), "status": "starting"}
        return Resp.json(201, shown, {"Location": shown["urls"]["get"]})

    def _json(self, p: Prediction, *, lean: bool = False) -> dict[str, Any]:
        now = self.clock.now()
        final, started, ended, error = p.timeline()
        body: dict[str, Any] = {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "source": "api",
            "created_at": _iso(p.created),
            "data_removed": False,
            "urls": {
                "get": f"{self.url}/v1/predictions/{p.id}",
                "cancel": f"{self.url}/v1/predictions/{p.id}/cancel",
                "web": f"https://replicate.com/p/{p.id}",
            },
        }
        if ended is not None and now >= ended:
            status = final
        elif started is not None and now >= started:
            status = "processing"
        else:
            status = "starting"
        body["status"] = status
        body["started_at"] = _iso(started) if started is not None and now >= started else None
        body["completed_at"] = _iso(ended) if status == final else None
        body["error"] = error if status == "failed" else None
        if lean:
            return body
        progress = p.scenario.progress(now - p.created) if status == "processing" else 1.0
        done = int(progress * 18)
        bar = (
            f"{round(progress * 100):3d}%|{'#' * (done // 2):<9}| {done}/18 [00:0{done % 10}<00:02]"
        )
        logs = "Using seed: {}\n".format(p.input.get("seed", 1337))
        if started is not None and now >= started:
            logs += f"Upscaling ×{p.input.get('scale_factor', 2)}\n{bar}\n"
        body.update(input=p.input, logs=logs, output=None, metrics={})
        if status == final and final in ("succeeded", "failed", "canceled") and started:
            assert ended is not None
            body["metrics"] = {
                "predict_time": round(ended - started, 3),
                "total_time": round(ended - p.created, 3),
            }
        if status == "succeeded":
            body["output"] = self._outputs(p, ended or now)
        if status == final and ended is not None and now > ended + RETENTION:
            body.update(data_removed=True, input={}, output=None, logs="")
        return body

    def _outputs(self, p: Prediction, ended: float) -> list[str] | None:
        if p.scenario.empty_output:
            return None
        with self.lock:
            if p.output is None:
                data = p.scenario.output or _upscaled(p.source_png, p.input)
                ttl = ended + RETENTION - self.clock.now()
                p.output = [self.cdn_put(data, ttl=max(0.0, ttl), name=f"{p.id}-0.png")]
        return list(p.output)

    def get(self, req: Req) -> Resp:
        p = self.predictions.get(req.match["id"])
        if p is None:
            return _problem(404, "Not found", "The requested prediction could not be found.")
        return Resp.json(200, self._json(p))

    def cancel(self, req: Req) -> Resp:
        p = self.predictions.get(req.match["id"])
        if p is None:
            return _problem(404, "Not found", "The requested prediction could not be found.")
        with self.lock:
            if self._json(p, lean=True)["status"] not in ("starting", "processing"):
                return _problem(400, "Prediction cannot be canceled", "It has already finished.")
            p.canceled_at = self.clock.now()
        return Resp.json(200, self._json(p))

    def list_predictions(self, req: Req) -> Resp:
        with self.lock:
            ordered = sorted(self.predictions.values(), key=lambda p: p.created, reverse=True)
        try:
            start = int(base64.urlsafe_b64decode(req.query.get("cursor", "") + "==") or 0)
        except (binascii.Error, ValueError):
            return _problem(400, "Bad request", "Invalid cursor.")
        page = ordered[start : start + self.page_size]

        def link(offset: int) -> str:
            token = base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")
            return f"{self.url}/v1/predictions?cursor={token}"

        more = start + self.page_size < len(ordered)
        return Resp.json(
            200,
            {
                "next": link(start + self.page_size) if more else None,
                "previous": link(max(0, start - self.page_size)) if start else None,
                "results": [self._json(p, lean=not self.list_with_input) for p in page],
            },
        )

    # --- files --------------------------------------------------------------------------------
    def file_create(self, req: Req) -> Resp:
        if len(req.body) > FILE_LIMIT:
            return _problem(413, "Payload too large", "Files may be at most 100 MB.")
        try:
            parts = parse_multipart(req)
        except ValueError:
            return _problem(400, "Bad request", "Expected multipart/form-data.")
        if "content" not in parts:
            return _problem(400, "Bad request", "The 'content' field is required.")
        filename, ctype, data = parts["content"]
        metadata: Any = {}
        if "metadata" in parts:
            try:
                metadata = json.loads(parts["metadata"][2] or b"{}")
            except ValueError:
                return _problem(400, "Bad request", "metadata must be JSON.")
        fid = secrets.token_hex(12)
        now = self.clock.now()
        record = {
            "id": fid,
            "name": filename or "file",
            "content_type": ctype,
            "size": len(data),
            "etag": hashlib.md5(data).hexdigest(),  # an ETag, not security
            "checksums": {
                "sha256": hashlib.sha256(data).hexdigest(),
                "md5": hashlib.md5(data).hexdigest(),
            },
            "metadata": metadata,
            "created_at": _iso(now),
            "expires_at": _iso(now + 24 * 3600),
            "urls": {"get": f"{self.url}/v1/files/{fid}"},
        }
        with self.lock:
            self.files[fid] = record
            self.file_bytes[fid] = data
        return Resp.json(201, record)

    def file_list(self, req: Req) -> Resp:
        with self.lock:
            results = list(self.files.values())[::-1]
        return Resp.json(200, {"next": None, "previous": None, "results": results})

    def file_get(self, req: Req) -> Resp:
        record = self.files.get(req.match["id"])
        return Resp.json(200, record) if record else self.not_found(req)

    def file_delete(self, req: Req) -> Resp:
        with self.lock:
            if self.files.pop(req.match["id"], None) is None:
                return self.not_found(req)
            self.file_bytes.pop(req.match["id"], None)
        return Resp(204)


def _duration(value: str | None) -> float | None:
    """A ``Cancel-After`` value (``90s``, ``15m``, ``1h30m``) in seconds."""
    if not value:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value.strip())
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _prefer_wait(value: str | None) -> float | None:
    if not value:
        return None
    match = re.search(r"\bwait(?:=(\d+))?", value)
    if match is None:
        return None
    return float(max(1, min(60, int(match.group(1) or 60))))


def _upscaled(source: bytes | None, inputs: dict[str, Any]) -> bytes:
    """The input resized by ``scale_factor``: an output whose size tests can check."""
    if source is None:
        return tiny_png(24, 20)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source)) as im:
            rgb = im.convert("RGB")
    except OSError:
        return tiny_png(24, 20)
    k = float(inputs.get("scale_factor", 2))
    out = rgb.resize((max(1, round(rgb.width * k)), max(1, round(rgb.height * k))))
    buffer = io.BytesIO()
    out.save(buffer, "PNG")
    return buffer.getvalue()
