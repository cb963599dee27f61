"""Segmind: the open Clarity upscaler and the ClarityAI creative and flux upscalers, hosted.

The v2 protocol: ``POST /v2/{slug}`` answers 200 with a ``request_id`` and absolute
``status_url``/``response_url``; ``GET status_url`` says QUEUED, PROCESSING, COMPLETED or FAILED
(FAILED arrives as **HTTP 422** carrying the status body, so the body is read before the code);
``GET response_url`` holds ``output`` (the image URL) and ``metrics`` (cost, remaining credits).
Records live one hour after submission, output files seven days.

Segmind has no idempotency and no cancel: every accepted POST is a new billable job, so a submit
that got no answer is never re-sent. It bills only HTTP 200, so a 500/503 answer to a submit made
nothing and may be retried; a 502/504 from the gateway is treated as "no answer" because the
gateway may have handed the job on before giving up.

The v1 sync mode is one blocking ``POST /v1/{slug}`` (each page's "API Endpoint") that answers
with the image bytes ("Returns: Image") and the billing in headers. It is chosen per job with
the registry's ``sync`` option, ``request.options["segmind.sync"]`` (``"true"``, ``"false"`` or
``"auto"``; the old ``segmind_sync`` key is read too), or for every job with the constructor's
``sync``. ``auto`` follows the pages' advice, "Sync is simplest for fast image … calls", async for
"long-running (>~60s)" ones: sync for the models whose page gives a typical time under a minute
(clarity-upscaler's ~18 s), async for the others. A dropped sync connection is a submit with no
answer: the job ran and was billed if it got that far. It lives in
:mod:`app.backends.providers.segmind_sync`; the per-model parameter mapping (with each page's
defaults) in :mod:`app.backends.providers.segmind_params`.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import httpx

from app.backends.base import ErrorKind, JobError, JobState, Outcome, Report, Request
from app.backends.providers import segmind_params, segmind_sync
from app.backends.providers.segmind_params import find_output, number
from app.backends.providers.segmind_sync import SYNC_MARK
from app.backends.remote import (
    InputFile,
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    SubmitNoAnswer,
    Ticket,
    body_of,
    is_content_rejection,
    message_of,
    object_of,
)
from pipeline.params import UpscaleParams

__all__ = ["SegmindBackend"]

log = logging.getLogger(__name__)

_STATES = {
    "QUEUED": JobState.queued,
    "PROCESSING": JobState.running,
    "COMPLETED": JobState.succeeded,
    "FAILED": JobState.failed,
}
_NUMBER = r"\$?\s*(\d+(?:\.\d+)?)"
_REQUIRED = re.compile(r"(?:requir\w*|needs?|needed|costs?|price)\D{0,24}?" + _NUMBER, re.I)
_AVAILABLE = re.compile(r"(?:balance|available|have|remaining|left)\D{0,24}?" + _NUMBER, re.I)
_REQUIRED_AFTER = re.compile(_NUMBER + r"[^\d]{0,40}?(?:requir|need)", re.I)
_INVALID_AT_RUN = re.compile(
    r"validation error|is mandatory|is required|must be (?:a|an|one|between|string|integer|"
    r"number|less|greater|at)|invalid (?:value|parameter|input)",
    re.I,
)
_FIELD_NAMES = (
    "image", "mask", "prompt", "negative_prompt", "scale_factor", "creativity", "resemblance",
    "dynamic", "fractality", "style", "sharpen", "handfix", "sd_model", "scheduler",
    "tiling_width", "tiling_height", "num_inference_steps", "seed", "downscaling",
    "downscaling_resolution", "output_format", "lora_links", "lora_link", "custom_sd_model",
)  # fmt: skip


class SegmindBackend(RemoteBackend, backend="segmind"):
    """Segmind's serverless API: v2 submit + poll, or the v1 sync call for short jobs."""

    idempotent_submit = False
    submit_5xx_safe: ClassVar[bool] = True  # only HTTP 200 is billed
    cadence: ClassVar[PollCadence] = PollCadence(1.0)  # the SDK's fixed 1 s
    budget_limit: ClassVar[tuple[int, float]] = (5, 60.0)  # the free tier's 5 RPM
    retention: ClassVar[float] = 3600.0

    def __init__(
        self, *args: Any, sync: bool | str = False, sync_timeout: float = 900.0, **kwargs: Any
    ) -> None:
        """``sync``: run every job with the v1 sync call (True), never (False, the default),
        or as each model's page advises (``"auto"``); a job's ``segmind.sync`` option wins."""
        super().__init__(*args, **kwargs)
        # The SDK's base URL ends in /v1; the backend adds /v1 or /v2 itself.
        self.base_url = re.sub(r"/v[12]$", "", self.base_url)
        self.sync = sync
        self.sync_timeout = sync_timeout
        self.remaining_credits: float | None = None  # the balance Segmind last reported

    # --- parameters -------------------------------------------------------------------------
    def effective_params(self, params: UpscaleParams) -> UpscaleParams:
        """The parameters as they actually run at Segmind, for the output's metadata: always the
        diffusion pass (``mode="creative"``); the ClarityAI models take no seed."""
        return segmind_params.effective_params(self.model, params)

    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        return segmind_params.map_params(self.model, params)

    # --- the protocol -----------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key or ""}

    async def send_input(self, image: InputFile) -> str:
        return image.base64()  # Segmind types ``image`` "string (base64)"; data: URIs unproven

    def request_body(self, fields: dict[str, Any], image: str, mask: str | None) -> dict[str, Any]:
        """The JSON body of a v2 submit or a v1 sync call: the mapped ``fields`` with the image
        and mask references as Segmind takes them (bare base64 or a URL)."""
        body = {**fields, "image": _bare(image)}
        if mask:
            body["mask"] = _bare(mask)
        return body

    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        response = await self.http(
            "POST",
            f"/v2/{self.model}",
            during="submit",
            json=self.request_body(fields, image, mask),
            ok=(502, 504),
        )
        if response.status_code in (502, 504):
            raise SubmitNoAnswer(f"the gateway answered HTTP {response.status_code}")
        body = body_of(response)
        request_id = body.get("request_id") if isinstance(body, Mapping) else None
        if not isinstance(request_id, str) or not request_id:
            raise SubmitNoAnswer(f"it answered HTTP {response.status_code} without a request id")
        ticket.remote_id = request_id
        base = f"{self.base_url}/v2/requests/{urllib.parse.quote(request_id, safe='')}"
        ticket.urls["status"] = self._own(body.get("status_url"), base + "/status")
        ticket.urls["result"] = self._own(body.get("response_url"), base)
        if isinstance(body.get("poll_url"), str):
            ticket.urls["poll"] = body["poll_url"]
        return ticket

    def _own(self, url: Any, fallback: str) -> str:
        """``url`` if it is on the API's own host; the key is never sent anywhere else."""
        if not isinstance(url, str) or not url:
            return fallback
        target = self.url(url)
        if _origin(target) != _origin(self.base_url):
            log.warning("Segmind pointed a job at another host (%s); not following", target)
            return fallback
        return target

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        response = await self.http("GET", ticket.urls["status"], during="poll", ok=(422,))
        return self._status(response, during="poll")

    async def fetch_result(self, ticket: Ticket, status: RemoteStatus) -> RemoteStatus:
        result = status
        for attempt in range(6):
            if attempt:  # the status said COMPLETED before the result was there: ask again
                await self._sleep(self.poll_cadence.first)
            response = await self.http("GET", ticket.urls["result"], during="result", ok=(422,))
            result = self._status(response, during="result")
            if result.state is JobState.failed:
                raise result.error or self.failed(result.message)
            if result.outputs or result.state is JobState.succeeded:
                break
        return result

    def _status(self, response: httpx.Response, *, during: str) -> RemoteStatus:
        """Read a status or result body; the body decides before the HTTP code (422 = FAILED)."""
        body = body_of(response)
        raw = body.get("status") if isinstance(body, Mapping) else None
        if response.status_code == 422 and raw != "FAILED":
            raise self.classify(response, during=during)
        if not isinstance(body, Mapping):
            raise self.protocol_error(
                f"expected JSON, got {message_of(body) or 'an empty body'}", body
            )
        metrics = object_of(body.get("metrics"))
        output = find_output(body.get("output"))
        state = _STATES.get(raw) if isinstance(raw, str) else None
        if state is None:
            if raw is None and output:  # a result body without a status word
                state = JobState.succeeded
            else:
                raise self.protocol_error(f"unknown status {raw!r}", body)
        if state is JobState.failed:
            message = str(body.get("error") or "no reason given")
            return RemoteStatus(state, raw or "", message, error=self.run_failure(message, metrics))
        credits = number(metrics.get("remaining_credits"))
        if credits is not None:
            self.remaining_credits = credits
        seed = body.get("seed", metrics.get("seed"))
        return RemoteStatus(
            state,
            raw or "",
            outputs=(output,) if output else (),
            cost=number(metrics.get("cost")),
            cost_unit="credits" if metrics.get("cost") is not None else "",
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )

    def run_failure(self, message: str, metrics: Mapping[str, Any]) -> JobError:
        """The error for a job that ran and FAILED (``message``: Segmind's reason, ``metrics``
        what it reported alongside): content rules, parameters checked only when the job ran,
        or the model itself."""
        details = {"metrics": dict(metrics)} if metrics else {}
        if _INVALID_AT_RUN.search(message) and not is_content_rejection(message):
            text = self.scrub(message)
            fields = _fields_named(text)
            if fields:
                details["fields"] = fields
            return JobError(
                ErrorKind.invalid_request,
                f"Segmind refused the parameters when the job ran: {text}",
                details=details,
            )
        return self.failed(message, **details)

    # --- errors -----------------------------------------------------------------------------
    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        details: dict[str, Any] = {"http_status": code}
        if isinstance(body, Mapping) and body.get("status") == "FAILED":
            metrics = body.get("metrics")
            return self.run_failure(
                str(body.get("error") or text), metrics if isinstance(metrics, Mapping) else {}
            )
        if code == 406:
            return self._not_acceptable(text, details)
        simple = {
            403: (ErrorKind.auth, f"Segmind does not let this API key use {self.model} ({text})."),
            405: (
                ErrorKind.protocol,
                f"Segmind refused how Clarifier called it (HTTP 405: {text}). Please report this.",
            ),
            410: (ErrorKind.model_failed, f"Segmind has retired {self.model} ({text})."),
        }
        if code == 404 and during == "submit":
            simple[404] = (
                ErrorKind.model_failed,
                f"Segmind does not know the model {self.model} ({text}).",
            )
        elif code == 404 and during in ("poll", "result"):
            simple[404] = (
                ErrorKind.expired,
                f"Segmind no longer has this job ({text}). It keeps a job's record for one hour "
                "after submission; the result was not fetched in time and is lost.",
            )
        if code in simple:
            kind, message = simple[code]
            return JobError(kind, message, details=details)
        if code in (400, 422):
            fields = _fields_named(text)
            if fields:
                details["fields"] = fields
            return JobError(
                ErrorKind.invalid_request, f"Segmind refused the request: {text}", details=details
            )
        return self.general_error(response, during=during)

    def _not_acceptable(self, text: str, details: dict[str, Any]) -> JobError:
        """406 means either an unacceptable content type or too little money: read the text."""
        lowered = text.lower()
        if "content type" in lowered or "content-type" in lowered:
            return JobError(
                ErrorKind.invalid_request,
                f"Segmind refused the request's content type ({text}). This is a Clarifier "
                "bug; please report it.",
                details=details,
            )
        if "spend" in lowered and "limit" in lowered:
            return JobError(
                ErrorKind.insufficient_funds,
                f"Segmind says your team's spend limit is reached ({text}).",
                details=details,
            )
        required, available = _amounts(text)
        amounts = []
        if required is not None:
            details["required"] = required
            amounts.append(f"needs {required:g}")
        if available is not None:
            details["available"] = available
            amounts.append(f"have {available:g}")
        shown = f"{', '.join(amounts)}" if amounts else text
        return JobError(
            ErrorKind.insufficient_funds,
            f"Segmind says your credits are insufficient ({shown}). Top up at segmind.com.",
            details=details,
        )

    # --- running: v2 through the template, v1 sync in segmind_sync --------------------------
    def uses_sync(self, options: Mapping[str, Any]) -> bool:
        """Whether a job with these ``Request.options`` runs with the v1 sync call."""
        choice: Any = self.sync
        for key in ("segmind.sync", "segmind_sync"):
            if key in options:
                choice = options[key]
                break
        if isinstance(choice, str):
            choice = choice.strip().lower()
            if choice == "auto":
                return segmind_params.sync_suits(self.model)
            return choice in ("true", "1", "yes", "on")
        return bool(choice)

    async def run(self, request: Request, report: Report) -> Outcome:
        request = replace(request, params=self.effective_params(request.params))
        if request.resume is None and self.uses_sync(request.options):
            return await segmind_sync.run_sync(self, request, report)
        return await super().run(request, report)  # a sync checkpoint resumes here too

    async def download(self, url: str) -> bytes:
        if url.startswith(SYNC_MARK):  # the bytes came with the answer and were stashed
            raise JobError(ErrorKind.expired, "the sync answer's image was not kept")
        return await super().download(url)


# --- helpers ----------------------------------------------------------------------------------
def _bare(ref: str) -> str:
    """A data URL as the bare base64 Segmind documents; URLs and base64 unchanged."""
    if ref.startswith("data:") and ";base64," in ref[:100]:
        return ref.split(",", 1)[1]
    return ref


def _origin(url: str) -> tuple[str, str]:
    split = urllib.parse.urlsplit(url)
    return split.scheme.lower(), split.netloc.lower()


def _amounts(text: str) -> tuple[float | None, float | None]:
    """The cost and the balance a 406 names, whichever way round it words them [GUESS]."""
    available = _AVAILABLE.search(text)
    required = _REQUIRED.search(text)
    if required is None or (available and required.group(1) == available.group(1)):
        required = _REQUIRED_AFTER.search(text)
    have = float(available.group(1)) if available else None
    need = float(required.group(1)) if required else None
    return need, have


def _fields_named(text: str) -> dict[str, list[str]]:
    """The fields a Segmind message names (its envelope has no per-field list)."""
    return {
        name: [text]
        for name in _FIELD_NAMES
        if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text)
    }
