"""Apiframe (v2): the open Clarity upscaler as ``clarity-upscale``, one flat-priced job per image.

Its page (seed 003) is the specification of what is sent and read:

* ``POST /v2/images/upscale`` with ``{"model": "clarity-upscale", "clarityUpscaleParams":
  {...}}`` and ``X-API-Key``; the nine ``clarityUpscaleParams`` are ``image`` (a URL),
  ``prompt``, ``scale_factor`` (a *string*: "1", "2", "4" or "8"), ``creativity`` (0–1, steps
  of 0.05), ``resemblance`` (0–3, steps of 0.05), ``dynamic`` (1–50, steps of 1),
  ``num_inference_steps`` (1–100), ``output_format`` (png, jpg, webp) and ``seed``. Nothing else
  is sent; any other setting, or a value off those steps, is refused before sending, naming it.
  The quick start's fields (image, prompt, scale, creativity) are always sent, the others when
  they differ from the page's defaults (resemblance 0.6, dynamic 6, 18 steps, png, no seed), so
  the page's own example settings send the page's example body;
* the answer is ``202 {jobId, status}``; ``GET /v2/jobs/{id}`` until ``status`` is COMPLETED (or
  FAILED), when ``result`` holds the output URL(s).

From the provider notes, where the page is silent (reference §2): local files go first through
``POST /v2/uploads`` (multipart ``file``, at most 25 MB, kept 1–2 h) and the returned URL is the
image; ``Idempotency-Key`` (the page: "idempotency ... across every Apiframe model"): the same
key and body within 24 h returns the original job, a different body is a 409, so a submit that
got no answer is simply sent again and can never make a second billed job; the job's states
``QUEUED → PROCESSING (progress 0–100) → COMPLETED | FAILED | CANCELLED``; ``result`` as a
string, ``{images: [...]}`` or a list; ``expired: true`` once purged (24 h); a failed job is
refunded (``creditCost: 0``); there is no cancel endpoint: cancelling stops watching.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import httpx

from app.backends.base import ErrorKind, JobError, JobState
from app.backends.remote import (
    InputFile,
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    Ticket,
    body_of,
    field_errors,
    message_of,
)
from app.backends.remote.fields import refusal, untaken
from pipeline.params import UpscaleParams

__all__ = ["ApiframeBackend"]

MODEL = "clarity-upscale"
SCALES = (1, 2, 4, 8)
PROMPT_LIMIT = 2000
UPLOAD_LIMIT = 25 * 1024 * 1024
REPLAY_WINDOW = 24 * 3600.0  # how long Apiframe remembers an Idempotency-Key

# The page's clarityUpscaleParams besides the image, with their steps and, for those the quick
# start leaves out, their documented defaults.
_TAKEN = frozenset(
    {
        "prompt", "scale_factor", "creativity", "resemblance", "dynamic",
        "num_inference_steps", "output_format", "seed",
    }
)  # fmt: skip
_STEPS = {"creativity": 0.05, "resemblance": 0.05, "dynamic": 1.0}
_PAGE_DEFAULTS: dict[str, Any] = {
    "resemblance": 0.6,
    "dynamic": 6,
    "num_inference_steps": 18,
    "output_format": "png",
}
_STATES = {
    "QUEUED": JobState.queued,
    "PROCESSING": JobState.running,
    "COMPLETED": JobState.succeeded,
    "FAILED": JobState.failed,
    "CANCELLED": JobState.canceled,
    "CANCELED": JobState.canceled,
}


class ApiframeBackend(RemoteBackend, backend="apiframe"):
    """Apiframe's ``clarity-upscale``: upload, submit with an idempotency key, poll, download."""

    idempotent_submit = True
    cadence: ClassVar[PollCadence] = PollCadence(2.0, 1.5, 5.0)  # the vendor SDK's waitFor
    budget_limit: ClassVar[tuple[int, float]] = (60, 60.0)  # not published; 429s are honoured
    retention: ClassVar[float] = 24 * 3600.0  # the OpenAPI's "default 24h retention"
    default_concurrency: ClassVar[int] = 4
    max_upload: int = UPLOAD_LIMIT

    def auth_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key or ""}

    # --- parameters -------------------------------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        """``clarityUpscaleParams`` without the image, as the page types them; refuses every
        other setting and every value off the page's steps."""
        where = f"{self.label}'s {MODEL}"
        problems = untaken(params, _TAKEN, where, seed=True)
        if params.scale_factor not in SCALES:
            problems["scale_factor"] = [
                f"{where} scales by 1, 2, 4 or 8 only (got {params.scale_factor:g})"
            ]
        for name, step in _STEPS.items():
            value = getattr(params, name)
            if not math.isclose(value / step, round(value / step), abs_tol=1e-6):
                problems[name] = [f"{where} takes {name} in steps of {step:g} (got {value:g})"]
        if len(params.prompt) > PROMPT_LIMIT:
            problems["prompt"] = [f"at most {PROMPT_LIMIT} characters on {self.label}"]
        if problems:
            raise refusal(self.label, problems)
        fields: dict[str, Any] = {}
        if params.prompt:
            fields["prompt"] = params.prompt
        fields["scale_factor"] = str(int(params.scale_factor))  # the page's type: a string
        fields["creativity"] = round(params.creativity, 2)
        optional = {
            "resemblance": round(params.resemblance, 2),
            "dynamic": round(params.dynamic),  # steps of 1: a whole number
            "num_inference_steps": params.num_inference_steps,
            "output_format": params.output_format,
        }
        fields.update({k: v for k, v in optional.items() if v != _PAGE_DEFAULTS[k]})
        if params.seed is not None:  # no seed: Apiframe picks one
            fields["seed"] = params.seed
        return fields

    # --- input ------------------------------------------------------------------------------
    async def send_input(self, image: InputFile) -> str:
        """Upload to ``/v2/uploads``; checked against the 25 MB limit first, so an oversized
        file fails at once with a useful message instead of after a long upload."""
        if len(image.data) > self.max_upload:
            raise JobError(
                ErrorKind.invalid_request,
                f"The image is {len(image.data) / 2**20:.1f} MB as it would be sent; {self.label} "
                f"accepts uploads up to {self.max_upload / 2**20:.0f} MB. Save it as JPEG or "
                "make it smaller first.",
                details={"bytes": len(image.data), "limit": self.max_upload},
            )
        # An upload makes nothing billable, so a dropped connection is simply retried.
        response = await self.http(
            "POST",
            "/v2/uploads",
            during="upload",
            safe=True,
            files={"file": (image.name, image.data, image.mime)},
        )
        body = await self.json_of(response)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise self.protocol_error("the upload answer has no url", body)
        return url

    # --- submit -----------------------------------------------------------------------------
    def _body(self, fields: Mapping[str, Any], image: str) -> dict[str, Any]:
        return {"model": MODEL, "clarityUpscaleParams": {"image": image, **fields}}

    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        # Re-sent after a restart, the body must be the first one's or Apiframe answers 409:
        # keep the image URL of the first attempt, not the template's fresh re-upload.
        first = ticket.extra.get("image")
        if isinstance(first, str) and first.startswith(("https://", "http://")):
            image = first
        created = ticket.extra.get("created_at")
        if isinstance(created, int | float) and time.time() - created > REPLAY_WINDOW - 3600:
            # Past the replay window the key no longer protects us: re-sending could bill twice.
            found = await self.reconcile(ticket, fields, image)
            if found is not None:
                return found
            raise JobError(
                ErrorKind.submit_unknown,
                f"{self.label} may have received this job more than a day ago, too long for it "
                "to recognise a re-send, and it is not among your recent jobs. Clarifier did "
                f"not send it again; check your {self.label} account.",
                details={"remote": ticket.to_dict()},
            )
        response = await self.http(
            "POST",
            "/v2/images/upscale",
            during="submit",
            safe=True,  # the Idempotency-Key makes a re-send return the same job
            json=self._body(fields, image),
            headers={"Idempotency-Key": ticket.key},
        )
        body = await self.json_of(response)
        job_id = body.get("jobId") if isinstance(body, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise self.protocol_error("the submit answer has no jobId", body)
        return self._fill(ticket, job_id)

    def _fill(self, ticket: Ticket, job_id: str) -> Ticket:
        ticket.remote_id = job_id
        ticket.urls["status"] = self.url(f"/v2/jobs/{job_id}")
        ticket.cost_unit = "credits"
        return ticket

    async def reconcile(self, ticket: Ticket, fields: dict[str, Any], image: str) -> Ticket | None:
        """Find the job among the recent ones by its exact input (upload URLs are unique per
        upload, so a match is this job). None when the list cannot say."""
        if not image:
            return None
        try:
            response = await self.http(
                "GET", "/v2/jobs", during="reconcile", params={"model": MODEL, "limit": 100}
            )
        except JobError:
            return None
        body = body_of(response)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        wanted = self._body(fields, image)["clarityUpscaleParams"]
        matches = [
            job
            for job in (jobs if isinstance(jobs, list) else [])
            if isinstance(job, dict)
            and isinstance(job.get("input"), dict)
            and _params_of(job["input"]) == wanted
            and isinstance(job.get("id"), str)
        ]
        if len(matches) != 1:
            return None
        return self._fill(ticket, matches[0]["id"])

    # --- watching ---------------------------------------------------------------------------
    async def poll(self, ticket: Ticket) -> RemoteStatus:
        url = ticket.urls.get("status") or f"/v2/jobs/{ticket.remote_id}"
        job = await self.json_of(await self.http("GET", url, during="poll"))
        if not isinstance(job, dict):
            raise self.protocol_error("the job answer is not an object", job)
        raw = str(job.get("status") or "")
        state = _STATES.get(raw.upper())
        if state is None:
            raise self.protocol_error(f"unknown job status {raw!r}", job)
        cost = _number(job.get("creditCost"))
        if state is JobState.succeeded:
            if job.get("expired"):
                raise JobError(
                    ErrorKind.expired,
                    f"{self.label} finished the job, but has already purged its result (it keeps "
                    f"results about {self.retention / 3600:.0f} h); the result is lost.",
                    details={"remote_id": ticket.remote_id},
                )
            return RemoteStatus(
                state,
                raw,
                progress=1.0,
                outputs=_result_urls(job.get("result")),
                cost=cost,
                cost_unit="credits",
            )
        if state is JobState.failed:
            message = str(job.get("error") or "")
            error = self.failed(message, refunded=cost == 0, remote_id=ticket.remote_id)
            if cost == 0:
                error = replace(error, message=f"{error.message} (the credits were refunded)")
            return RemoteStatus(state, raw, message=message, error=error)
        if state is JobState.canceled:
            return RemoteStatus(state, raw, message=f"{self.label} cancelled the job.")
        progress = _number(job.get("progress"))
        return RemoteStatus(
            state,
            raw,
            progress=None
            if state is JobState.queued or progress is None
            else max(0.0, min(1.0, progress / 100)),
        )

    # --- errors -----------------------------------------------------------------------------
    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        details: dict[str, Any] = {"http_status": code}
        if code == 402:
            need = _number(body.get("creditsRequired")) if isinstance(body, dict) else None
            have = _number(body.get("creditsAvailable")) if isinstance(body, dict) else None
            amounts = ""
            if need is not None and have is not None:
                amounts = f" (needs {need:g}, have {have:g})"
                details.update(required=need, available=have, unit="credits")
            return JobError(
                ErrorKind.insufficient_funds,
                f"{self.label} says your credits are insufficient{amounts}. Nothing was charged.",
                details=details,
            )
        if code == 409:
            return JobError(
                ErrorKind.invalid_request,
                f"{self.label} refused to reuse this job's request key: it was already used for "
                f"a different request ({text}). Retry the job to send it as a new one.",
                details=details,
            )
        if code == 400 and during in ("submit", "upload"):
            fields = field_errors(body)
            shown = "; ".join(f"{k}: {', '.join(v)}" for k, v in list(fields.items())[:4])
            if fields:
                details["fields"] = fields
            what = "upload" if during == "upload" else "request"
            return JobError(
                ErrorKind.invalid_request,
                f"{self.label} refused the {what}: {text}{f' ({shown})' if shown else ''}. "
                "Nothing was charged.",
                details=details,
            )
        return self.general_error(response, during=during)


def _params_of(job_input: Mapping[str, Any]) -> Any:
    inner = job_input.get("clarityUpscaleParams")
    return inner if isinstance(inner, dict) else job_input


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _result_urls(result: Any) -> tuple[str, ...]:
    """``result`` as a string URL, ``{images: [...]}`` (or ``{url}``), or a list of either."""
    if isinstance(result, str):
        return (result,) if result else ()
    if isinstance(result, Mapping):
        for key in ("images", "urls", "image", "url"):
            if key in result:
                return _result_urls(result[key])
        return ()
    if isinstance(result, list):
        return tuple(url for item in result for url in _result_urls(item))
    return ()
