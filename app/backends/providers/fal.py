"""fal.ai's queue API for ``fal-ai/clarity-upscaler``.

The protocol in brief (provider-protocols §5):

* the input goes to fal's storage (``POST {storage}/storage/upload/initiate`` then ``PUT`` the
  bytes to the signed ``upload_url``) and the job gets the ``file_url``;
* ``POST {queue}/{model}`` answers ``status_url``/``response_url``/``cancel_url``. They are
  followed as given, never built here: fal's URL rules differ between apps with sub-paths;
* ``GET {status_url}?logs=1`` says 202 ``IN_QUEUE`` (with ``queue_position``) or ``IN_PROGRESS``
  (with logs), then 200 ``COMPLETED``. **Completed does not mean succeeded**: the outcome shows
  only when the result is fetched (200 with the image, 422 for the model's own refusal, 5xx with
  ``error_type`` when fal's infrastructure gave up on it);
* ``PUT {cancel_url}`` answers a body ``status`` that decides, whatever the HTTP code.

There is no idempotency and no way to list requests, so a submit that got no answer cannot be
reconciled: the job stops in submit-unknown for the person to decide.

Decisions, with their reasons:

* ``x-fal-no-retry`` is **not** sent. fal retries infrastructure failures itself (a runner that
  disconnected, no runner free) under the same ``request_id`` and does not bill them; doing it
  ourselves would mean a new submit, a new upload and a new chance of a submit with no answer.
* ``X-Fal-Object-Lifecycle-Preference`` **is** sent: the person's photo expires from fal's
  public CDN after a day (the job runs within minutes; a day covers long queues), and the result
  after seven days, so what fal keeps is bounded and :attr:`retention` is a known number.
* A data URI replaces the upload only when fal's storage API is not there (404/405/501, as on a
  fal-compatible gateway without it) and the file is small; fal warns that large inline files
  slow requests down, and they would sit in every queue record.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from app.backends.base import ErrorKind, JobError, JobState
from app.backends.remote import (
    InputFile,
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    SubmitNoAnswer,
    Ticket,
    body_of,
    field_errors,
    is_content_rejection,
    message_of,
)
from pipeline.params import UpscaleParams

__all__ = ["FalBackend"]

log = logging.getLogger(__name__)

LIFECYCLE_HEADER = "X-Fal-Object-Lifecycle-Preference"
_FAL_DOMAINS = ("fal.run", "fal.ai", "falrun.com")  # where the key may go
# Answers to a result request that say something about the job rather than the request; 429 is
# left to RemoteBackend.http, which pauses the shared budget.
_RESULT_CODES = tuple(c for c in range(400, 600) if c != 429)
_CANCEL_CODES = (400, 404, 409, 410, 422)
_STORAGE_ABSENT = (404, 405, 501)
# fal retries these itself (503/504 on the queue) before it gives up and reports them.
_RETRIED_BY_FAL = re.compile(r"^(runner_|startup_timeout$|request_timeout$)")
_CONTENT_TYPES = {"content_policy_violation", "nsfw_content_detected"}
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>", re.I)
_BUILTIN_LORAS = {"more_details", "sdxlrender_v2.0"}  # Clarity's defaults, not fal's to load
_BUILTIN_EMBEDDING = re.compile(r"\bJuggernautNegative-neg\b")
_NOT_YET = re.compile(r"still in progress|in queue|not (yet )?(completed|finished|ready)", re.I)
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s?%")

# Fields fal's clarity-upscaler has no input for; refused unless they are at Clarifier's default.
_FIXED_AT_DEFAULT = {
    "sd_model": "the checkpoint is fal's choice",
    "scheduler": "the sampler is fal's choice",
    "tiling_width": "fal chooses the tile size",
    "tiling_height": "fal chooses the tile size",
    "sharpen": "fal has no sharpening step",
    "mask": "fal takes no mask",
    "handfix": "fal has no hand fix",
    "downscaling": "fal has no pre-downscaling",
    "pattern": "fal has no seamless-pattern mode",
    "lora_links": "fal loads no extra LoRAs",
    "custom_sd_model": "fal runs no custom checkpoint",
    "creative": "these knobs belong to the ClarityAI creative upscaler",
    "flux": "these knobs belong to the ClarityAI flux upscaler",
}


class FalBackend(RemoteBackend, backend="fal"):
    """fal's queue API; see the module docstring for the protocol and the choices made."""

    default_storage_url: ClassVar[str] = "https://rest.fal.ai"
    idempotent_submit = False
    # A 5xx to a submit may come from a gateway after the queue took the job: not proof.
    submit_5xx_safe: ClassVar[bool] = False
    # fal-js polls every 0.5 s; a clarity run takes tens of seconds, so grow to 3 s and keep
    # long queues (and many jobs) from spending the budget on "still queued".
    cadence: ClassVar[PollCadence] = PollCadence(0.5, 1.15, 3.0)
    budget_limit: ClassVar[tuple[int, float]] = (10, 1.0)  # "10 requests per second per user"
    retention: ClassVar[float] = 7 * 24 * 3600.0  # outputs, by the lifecycle header we send
    # fal queues requests over the account's concurrency limit (2 to 40) instead of refusing
    # them, at no cost, so the controller need not hold jobs back to stay under it; 8 keeps
    # uploads and polling bounded.
    default_concurrency: ClassVar[int] = 8
    input_ttl: ClassVar[int] = 24 * 3600
    output_ttl: ClassVar[int] = 7 * 24 * 3600
    inline_limit: ClassVar[int] = 4 * 1024 * 1024  # bytes sent as a data URI when storage is absent

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        storage_url: str | None = None,
        safety_checker: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, base_url, api_key, **kwargs)
        self.storage_url = (storage_url or self.default_storage_url).rstrip("/")
        self.safety_checker = safety_checker
        self._own_hosts = {httpx.URL(self.base_url).host, httpx.URL(self.storage_url).host}

    # --- parameters -------------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.api_key}"} if self.api_key else {}

    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        """fal's fields for ``params``; refuses what fal's clarity-upscaler cannot run.

        ``mode``, ``upscaler`` and ``upscaler_channel_order`` choose Clarifier's own engine
        and ``output_format`` is applied when Clarifier saves the result, so they pass.
        Clarity's built-in LoRA tags and negative embedding are dropped from the prompts (fal's
        defaults are Clarity's prompts without them); any other LoRA tag is refused."""
        problems: dict[str, list[str]] = {}
        if params.scale_factor > 4:
            problems["scale_factor"] = [
                f"fal's clarity-upscaler enlarges at most ×4 (asked ×{params.scale_factor:g}); "
                "choose ×4 or less, or a backend that goes further"
            ]
        defaults = UpscaleParams()
        for field_name, why in _FIXED_AT_DEFAULT.items():
            if getattr(params, field_name) != getattr(defaults, field_name):
                problems[field_name] = [f"must stay at its default on fal: {why}"]
        if params.scale_factor > 2 and params.multistep_factor != defaults.multistep_factor:
            problems["multistep_factor"] = ["must stay at its default on fal: fal sets the passes"]
        prompt = self._plain_prompt(params.prompt, "prompt", problems)
        negative = self._plain_prompt(params.negative_prompt, "negative_prompt", problems)
        negative = _tidy(_BUILTIN_EMBEDDING.sub("", negative))
        if problems:
            listed = "; ".join(f"{k}: {v[0]}" for k, v in problems.items())
            raise JobError(
                ErrorKind.invalid_request,
                f"fal cannot run these settings ({listed}).",
                details={"fields": problems},
            )
        fields: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative,
            "upscale_factor": params.scale_factor,
            "creativity": params.creativity,
            "resemblance": params.resemblance,
            "guidance_scale": params.dynamic,  # Clarity's "HDR" is its CFG scale
            "num_inference_steps": params.num_inference_steps,
            "enable_safety_checker": self.safety_checker,
        }
        if params.seed is not None:
            fields["seed"] = params.seed
        return fields

    @staticmethod
    def _plain_prompt(text: str, field_name: str, problems: dict[str, list[str]]) -> str:
        others = [n for n in _LORA_TAG.findall(text) if n.lower() not in _BUILTIN_LORAS]
        if others:
            problems[field_name] = [
                f"fal loads no LoRAs; remove <lora:{others[0]}:…> from the {field_name}"
            ]
        return _tidy(_LORA_TAG.sub("", text))

    # --- input ------------------------------------------------------------------------------
    async def send_input(self, image: InputFile) -> str:
        lifecycle = json.dumps({"expiration_duration_seconds": self.input_ttl})
        try:
            response = await self.http(
                "POST",
                f"{self.storage_url}/storage/upload/initiate?storage_type=fal-cdn-v3",
                during="upload",
                safe=True,  # it only reserves a file slot; nothing is run or billed
                json={"content_type": image.mime, "file_name": image.name},
                headers={LIFECYCLE_HEADER: lifecycle},
            )
        except JobError as err:
            code = err.details.get("http_status")
            if code not in _STORAGE_ABSENT:
                raise
            if len(image.data) <= self.inline_limit:
                log.info("fal: no storage API at %s; sending the input inline", self.storage_url)
                return image.data_url()
            raise JobError(
                ErrorKind.invalid_request,
                f"fal's file storage is not at {self.storage_url} (HTTP {code}), and the input "
                f"({len(image.data) / 1e6:.1f} MB) is too large to send inline. Check the "
                "storage URL in the settings.",
                details={"http_status": code},
            ) from None
        body = await self.json_of(response)
        upload_url, file_url = body.get("upload_url"), body.get("file_url")
        if not (isinstance(upload_url, str) and isinstance(file_url, str)):
            raise self.protocol_error("the storage answer has no upload_url/file_url", body)
        # A signed URL on another host: the key must not go there.
        await self.http(
            "PUT",
            upload_url,
            during="upload-put",
            auth=False,
            paced=False,
            content=image.data,
            headers={"Content-Type": image.mime},
        )
        return file_url

    # --- submit, poll, result, cancel -------------------------------------------------------
    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        lifecycle = json.dumps({"expiration_duration_seconds": self.output_ttl})
        response = await self.http(
            "POST",
            f"{self.base_url}/{self.model}",
            during="submit",
            safe=False,
            json={"image_url": image, **fields},
            headers={LIFECYCLE_HEADER: lifecycle},
        )
        body = body_of(response)
        if not isinstance(body, dict):
            raise SubmitNoAnswer(f"unreadable answer: {message_of(body)[:120]}")
        ticket.remote_id = body.get("request_id") or None
        urls = {
            "status": body.get("status_url"),
            "result": body.get("response_url"),
            "cancel": body.get("cancel_url"),
        }
        if not ticket.remote_id or not urls["status"] or not urls["result"]:
            # fal may well have queued it: this is a submit without a usable answer.
            raise SubmitNoAnswer("the answer had no request_id/status_url/response_url")
        ticket.urls = {k: v for k, v in urls.items() if isinstance(v, str) and v}
        if body.get("gateway_request_id"):
            ticket.extra["gateway_request_id"] = body["gateway_request_id"]
        return ticket

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        url = ticket.urls["status"]
        response = await self.http(
            "GET", url, during="poll", auth=self._trusted(url), params={"logs": "1"}
        )
        body = await self.json_of(response)
        if not isinstance(body, dict):
            raise self.protocol_error("the status is not a JSON object", body)
        raw = str(body.get("status") or "")
        error = body.get("error")
        error_type = body.get("error_type")
        if raw == "IN_QUEUE":
            position = body.get("queue_position")
            return RemoteStatus(
                JobState.queued, raw, queue_position=position if isinstance(position, int) else None
            )
        if raw in ("CANCELED", "CANCELLED") or error_type == "client_cancelled":
            return RemoteStatus(JobState.canceled, raw, message="the job was canceled at fal")
        if raw == "COMPLETED":
            # The result decides (it carries the structured error); what the status said is
            # kept in case the result has nothing to say. fal's Python client reads these two
            # fields on COMPLETED; fal-js does not.
            if error or error_type:
                ticket.extra["status_error"] = {"error": error, "error_type": error_type}
            if isinstance(body.get("metrics"), dict):
                ticket.extra["metrics"] = body["metrics"]
            return RemoteStatus(JobState.succeeded, raw)
        if error or error_type or raw in ("FAILED", "ERROR"):
            err = self._status_error(error or f"status {raw}", error_type)
            return RemoteStatus(JobState.failed, raw, message=err.message, error=err)
        if raw != "IN_PROGRESS":
            log.info("fal: unknown status %r for %s; still waiting", raw, ticket.remote_id)
        message, progress = self._last_log(body.get("logs"))
        return RemoteStatus(JobState.running, raw, message=message, progress=progress)

    async def fetch_result(self, ticket: Ticket, status: RemoteStatus) -> RemoteStatus:
        url = ticket.urls["result"]
        started, failures = time.monotonic(), 0
        while True:
            response = await self.http(
                "GET", url, during="result", auth=self._trusted(url), ok=_RESULT_CODES
            )
            code = response.status_code
            if code < 400:
                break
            error_type = _error_type(response)
            hiccup = (
                code >= 500 and error_type is None and "x-fal-request-id" not in response.headers
            )
            not_yet = code == 400 and _NOT_YET.search(message_of(body_of(response)))
            if hiccup or not_yet:
                # A gateway's hiccup (fal's own answers about a job name its type or carry the
                # request id), or a result read a moment before it is stored: read it again.
                failures += 1
                if time.monotonic() - started > self.retry_for:
                    raise self.classify(response, during="result")
                await self._backoff(failures)
                continue
            if code == 404:
                raise self.classify(response, during="result")
            raise self._result_error(response, error_type)
        body = await self.json_of(response)
        image = body.get("image") if isinstance(body, dict) else None
        if image is None and isinstance(body, dict) and isinstance(body.get("images"), list):
            image = body["images"][0] if body["images"] else None
        url_out = image.get("url") if isinstance(image, dict) else None
        said = ticket.extra.get("status_error")
        if not url_out and isinstance(said, dict):
            raise self._status_error(said.get("error") or "no reason given", said.get("error_type"))
        seed = body.get("seed") if isinstance(body, dict) else None
        return RemoteStatus(
            JobState.succeeded,
            status.raw,
            outputs=(url_out,) if isinstance(url_out, str) and url_out else (),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )

    async def cancel(self, ticket: Ticket) -> bool:
        """fal's answer is in the body (the HTTP code differs between sources): the job is
        stopped on ``CANCELLATION_REQUESTED``/``OK``; ``ALREADY_COMPLETED`` means it ran and is
        billed; ``NOT_FOUND`` that fal does not know it."""
        url = ticket.urls.get("cancel")
        if not url:
            return False
        response = await self.http(
            "PUT", url, during="cancel", auth=self._trusted(url), ok=_CANCEL_CODES
        )
        body = body_of(response)
        answer = str(body.get("status") or "") if isinstance(body, dict) else ""
        if answer in ("CANCELLATION_REQUESTED", "OK"):
            return True
        log.info(
            "fal: cancel of %s answered %r (HTTP %d)",
            ticket.remote_id,
            answer,
            response.status_code,
        )
        return False

    # --- errors -----------------------------------------------------------------------------
    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        details: dict[str, Any] = {"http_status": code}
        if during == "upload-put":
            return JobError(
                ErrorKind.transient,
                f"fal's file storage refused the upload of the input (HTTP {code}: {text}).",
                details=details,
            )
        if code == 402 or (code == 403 and re.search(r"locked|balance|billing", text, re.I)):
            return JobError(
                ErrorKind.insufficient_funds,
                f"fal says your balance is too low or your account is locked ({text}). Top up "
                "at fal.ai/dashboard/billing.",
                details=details,
            )
        if code == 422 and _detail_types(body) & _CONTENT_TYPES:
            return JobError(
                ErrorKind.content_rejected, f"fal rejected the content: {text}", details=details
            )
        if code == 404 and during == "submit":
            return JobError(
                ErrorKind.invalid_request,
                f"fal has no model {self.model} ({text}).",
                details=details,
            )
        return self.general_error(response, during=during)

    def _result_error(self, response: httpx.Response, error_type: str | None) -> JobError:
        code = response.status_code
        body = body_of(response)
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        if error_type is not None or code >= 500:
            return self._job_error(code, text, error_type, response.headers)
        if code == 499:
            return JobError(ErrorKind.canceled, "the job was canceled at fal")
        if code == 422:
            types = _detail_types(body)
            fields = {k: v for k, v in field_errors(body).items() if k}
            details: dict[str, Any] = {"http_status": code, "types": sorted(types)}
            if types & _CONTENT_TYPES or is_content_rejection(text):
                return JobError(
                    ErrorKind.content_rejected, f"fal rejected the content: {text}", details=details
                )
            if fields and all(_is_validation(t) for t in types):
                details["fields"] = fields
                return JobError(
                    ErrorKind.invalid_request, f"fal refused the settings: {text}", details=details
                )
            return self.failed(text, **details)
        return self.classify(response, during="result")

    def _status_error(self, error: Any, error_type: Any) -> JobError:
        if error_type:
            return self._job_error(200, str(error), error_type, {})
        return self.failed(str(error))

    def _job_error(
        self, code: int, text: str, error_type: Any, headers: Mapping[str, str]
    ) -> JobError:
        """A job fal ran (or tried to) and gave up on. Not an automatic retry: the checkpoint
        would only read the same answer again; *Retry* sends the job anew (it was not billed).
        ``remote_final`` marks it for the controller (see the report)."""
        kind = str(error_type or "")
        details: dict[str, Any] = {
            "http_status": code,
            "error_type": kind or None,
            "billed": False,
            "remote_final": True,
        }
        text = self.scrub(text)
        if kind == "client_cancelled":
            return JobError(ErrorKind.canceled, "the job was canceled at fal", details=details)
        if str(headers.get("x-fal-request-timeout-type", "")).lower() == "user":
            return JobError(
                ErrorKind.model_failed,
                f"fal did not start the job within its start timeout ({text}); it was not run "
                "or billed. Retry sends it again.",
                details={**details, "timeout": "start"},
            )
        why = f"{kind}: {text}" if kind and kind not in text else text
        tried = " even after retrying it on its side" if _RETRIED_BY_FAL.match(kind) else ""
        return JobError(
            ErrorKind.model_failed,
            f"fal could not run the job{tried} ({why}); fal does not bill these failures. "
            "Retry sends it again.",
            details=details,
        )

    # --- helpers ----------------------------------------------------------------------------
    def _trusted(self, url: str) -> bool:
        """Whether the key may go to ``url``: fal's hosts and the ones configured here."""
        host = httpx.URL(url).host
        return host in self._own_hosts or any(
            host == d or host.endswith("." + d) for d in _FAL_DOMAINS
        )

    def _last_log(self, logs: Any) -> tuple[str, float | None]:
        if not isinstance(logs, list) or not logs:
            return "", None
        last = logs[-1]
        text = str(last.get("message", "")) if isinstance(last, dict) else str(last)
        text = self.scrub(text.strip())[:200]
        match = _PERCENT.search(text)
        progress = min(1.0, float(match.group(1)) / 100) if match else None
        return text, progress


def _tidy(text: str) -> str:
    """A prompt without the gaps and dangling commas that removing tags leaves."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,\s*(,\s*)+", ", ", text)
    return text.strip(" ,")


def _error_type(response: httpx.Response) -> str | None:
    body = body_of(response)
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        return body["error_type"]
    return response.headers.get("x-fal-error-type") or None


def _detail_types(body: Any) -> set[str]:
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, list):
        return set()
    return {str(d.get("type")) for d in detail if isinstance(d, dict) and d.get("type")}


def _is_validation(kind: str) -> bool:
    """pydantic's validation types (``less_than_equal``, ``missing``, ``float_parsing``...)."""
    return kind in ("missing", "extra_forbidden") or bool(
        re.match(r"(less|greater)_than|.*_(parsing|type)$|value_error|literal_error", kind)
    )
