"""Replicate: philz1337x/clarity-upscaler, the open Clarity model, hosted.

``POST /v1/predictions {"version": "owner/name:<id>", "input": {...}}`` answers 201 with the
prediction and its absolute ``urls.get``/``urls.cancel``; ``GET urls.get`` moves through
``starting → processing → succeeded | failed | canceled`` (plus ``aborted``: our ``Cancel-After``
deadline passed before a GPU picked it up, and nothing was charged). ``output`` is a list of
file URLs; inputs, outputs and logs are removed an hour after the prediction ends.

Replicate has **no idempotency**: a create that got no answer may have made a billed
prediction, so it is never re-sent. It is *reconciled* instead: the recent predictions are
listed and one is adopted only when it is certainly ours (the same uploaded file, or the same
image, parameters and version sent after our submit began). Anything less certain stops the job
in ``submit-unknown`` for the person to decide.

The model's inputs and outputs (the mapping from :class:`UpscaleParams`, fitting to the served
schema, reading logs and output) live in :mod:`app.backends.providers.clarity_inputs`, shared with
the self-hosted Cog backend, which runs the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

import httpx

from app.backends.base import ErrorKind, JobError, JobState, Outcome, Report, Request
from app.backends.providers.clarity_inputs import (
    clarity_input,
    effective_params,
    fit_input,
    input_schema,
    no_image,
    outputs_of,
    progress_of,
)
from app.backends.remote import (
    InputFile,
    PollCadence,
    RemoteBackend,
    RemoteStatus,
    Ticket,
    body_of,
    message_of,
    object_of,
)
from pipeline.params import UpscaleParams, random_seed

__all__ = ["ReplicateBackend"]

log = logging.getLogger(__name__)

DATA_URL_LIMIT = 256 * 1024  # Replicate: "use an HTTP URL when you have a large file > 256kb"
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _seconds(deadline: str) -> float:
    match = _DURATION.match(deadline)
    if not deadline or match is None:
        raise ValueError(f"a Cancel-After deadline looks like 30m, 1h or 1h30m, not {deadline!r}")
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600.0 + m * 60.0 + s


# --- the backend ------------------------------------------------------------------------------
class ReplicateBackend(RemoteBackend, backend="replicate"):
    """Replicate's predictions API, polled every 0.5 s (the official client's cadence)."""

    idempotent_submit = False
    submit_5xx_safe: ClassVar[bool] = False  # a 5xx may come after the prediction was made
    cadence: ClassVar[PollCadence] = PollCadence(0.5)
    # Replicate allows 600 creates and 3000 other requests a minute. One budget at the stricter
    # number can never exceed either, and costs nothing in practice: the default four jobs
    # polling every 0.5 s need 480 a minute. A 429 pauses the budget anyway.
    budget_limit: ClassVar[tuple[int, float]] = (600, 60.0)
    retention: ClassVar[float] = 3600.0  # inputs, outputs and logs go an hour after the end
    default_concurrency: ClassVar[int] = 4

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        cancel_after: str | None = "30m",
        reconcile_pages: int = 3,
        **kwargs: Any,
    ) -> None:
        """``model`` may pin a version (``owner/name:<id>``); otherwise the latest is used.
        ``cancel_after``: Replicate's server-side deadline; one that passes before the run
        starts ends the prediction ``aborted``, uncharged (None: no deadline)."""
        name, _, version = (model or self.models[0]).partition(":")
        super().__init__(client, base_url, api_key, model=name, **kwargs)
        self.pinned_version = version or None
        self.cancel_after = cancel_after
        self.cancel_after_s = _seconds(cancel_after) if cancel_after else None
        self.reconcile_pages = reconcile_pages
        self._version: tuple[str, dict[str, Any] | None] | None = None
        self._version_lock = asyncio.Lock()

    # --- parameters -------------------------------------------------------------------------
    def map_params(self, params: UpscaleParams) -> dict[str, Any]:
        return clarity_input(params, self.label)

    async def run(self, request: Request, report: Report) -> Outcome:
        return await super().run(replace(request, params=effective_params(request.params)), report)

    # --- the protocol -----------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key or ''}"}

    async def send_input(self, image: InputFile) -> str:
        """Small files inline; larger ones through the Files API, whose URL is also unique to
        this job (which makes a lost submit certain to reconcile)."""
        if len(image.data) < DATA_URL_LIMIT:
            return image.data_url()
        response = await self.http(
            "POST",
            "/v1/files",
            during="upload",
            safe=True,  # a second upload makes a second file, never a second prediction
            files={"content": (image.name, image.data, image.mime)},
            timeout=httpx.Timeout(300.0, connect=15.0),
        )
        body = await self.json_of(response)
        url = (body.get("urls") or {}).get("get") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            raise self.protocol_error("the uploaded file has no urls.get", body)
        return url

    async def resolve_version(self) -> tuple[str, dict[str, Any] | None]:
        """``owner/name:<id>`` and the version's input schema, looked up once per backend."""
        async with self._version_lock:
            if self._version is None:
                if self.pinned_version:
                    path = f"/v1/models/{self.model}/versions/{self.pinned_version}"
                    body = await self.json_of(await self.http("GET", path, during="model"))
                else:
                    path = f"/v1/models/{self.model}"
                    model = await self.json_of(await self.http("GET", path, during="model"))
                    body = model.get("latest_version") if isinstance(model, dict) else None
                    if not isinstance(body, dict):
                        raise JobError(
                            ErrorKind.model_failed,
                            f"Replicate lists no runnable version of {self.model}.",
                        )
                version = body.get("id") if isinstance(body, dict) else None
                if not isinstance(version, str) or not version:
                    raise self.protocol_error("the model version has no id", body)
                self._version = (
                    f"{self.model}:{version}",
                    input_schema(body.get("openapi_schema")),
                )
            return self._version

    async def submit(
        self, fields: dict[str, Any], image: str, mask: str | None, ticket: Ticket
    ) -> Ticket:
        version, schema = await self.resolve_version()
        seed = fields["seed"] if fields.get("seed") is not None else random_seed()
        inputs = {**fields, "seed": seed, "image": image, **({"mask": mask} if mask else {})}
        inputs = fit_input(inputs, schema, "Replicate")
        ticket.seed = seed
        ticket.extra["version"] = version
        ticket.extra["sent_at"] = time.time()  # reconciling only trusts predictions after this
        headers = {"Cancel-After": self.cancel_after} if self.cancel_after else {}
        response = await self.http(
            "POST",
            "/v1/predictions",
            during="submit",
            json={"version": version, "input": inputs},
            headers=headers,
        )
        self._fill(ticket, await self.json_of(response))
        return ticket

    def _fill(self, ticket: Ticket, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise self.protocol_error("the prediction has no id", body)
        ticket.remote_id = body["id"]
        urls = object_of(body.get("urls"))
        ticket.urls["status"] = urls.get("get") or f"/v1/predictions/{ticket.remote_id}"
        ticket.urls["cancel"] = urls.get("cancel") or f"/v1/predictions/{ticket.remote_id}/cancel"
        if urls.get("web"):
            ticket.urls["web"] = urls["web"]

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        url = ticket.urls.get("status") or f"/v1/predictions/{ticket.remote_id}"
        body = await self.json_of(await self.http("GET", url, during="poll"))
        status = self._status(body, ticket)
        if status.state not in (JobState.queued, JobState.running):
            await self._delete_upload(ticket)
        return status

    def _status(self, body: Any, ticket: Ticket) -> RemoteStatus:
        if not isinstance(body, dict):
            raise self.protocol_error("the prediction is not an object", body)
        raw = str(body.get("status") or "")
        inputs = object_of(body.get("input"))
        seed = inputs.get("seed") if isinstance(inputs.get("seed"), int) else None
        metrics = object_of(body.get("metrics"))
        if isinstance(metrics.get("predict_time"), int | float):
            ticket.extra["predict_time"] = float(metrics["predict_time"])
        if body.get("data_removed"):
            raise JobError(
                ErrorKind.expired,
                f"Replicate has removed prediction {ticket.remote_id}'s data (it keeps API "
                "results for an hour), so the result is lost.",
            )
        if raw == "starting":
            return RemoteStatus(JobState.queued, raw, "starting at Replicate", seed=seed)
        if raw == "processing":
            progress, line = progress_of(body.get("logs"))
            message = f"running at Replicate: {line}" if line else "running at Replicate"
            return RemoteStatus(JobState.running, raw, message, progress=progress, seed=seed)
        if raw == "succeeded":
            outputs = outputs_of(body.get("output"))
            if not outputs:
                return RemoteStatus(JobState.failed, raw, error=no_image(self.label, inputs))
            return RemoteStatus(JobState.succeeded, raw, outputs=outputs, seed=seed)
        if raw == "failed":
            error = body.get("error") or "no reason given"
            return RemoteStatus(JobState.failed, raw, error=self.failed(str(error)))
        if raw == "aborted":
            deadline = f" of {self.cancel_after}" if self.cancel_after else ""
            return RemoteStatus(
                JobState.failed,
                raw,
                error=JobError(
                    ErrorKind.model_failed,
                    f"Replicate aborted the prediction before it started (the deadline{deadline} "
                    "passed while it waited for a GPU); nothing was charged. Retry to send it "
                    "again.",
                ),
            )
        if raw == "canceled":
            return RemoteStatus(JobState.canceled, raw, self._canceled_why(body))
        raise self.protocol_error(f"unknown prediction status {raw!r}", body)

    def _canceled_why(self, body: Mapping[str, Any]) -> str:
        created, ended = _epoch(body.get("created_at")), _epoch(body.get("completed_at"))
        if self.cancel_after_s and created and ended and ended - created >= self.cancel_after_s:
            return (
                f"Replicate canceled the prediction at the {self.cancel_after} deadline while it "
                "ran; the time it ran is charged. Raise the deadline for large images."
            )
        return "Replicate canceled the prediction."

    async def _delete_upload(self, ticket: Ticket) -> None:
        """The input has served its purpose; do not leave the person's photo on Replicate."""
        image = ticket.extra.get("image") or ""
        prefix = f"{self.base_url}/v1/files/"
        if not image.startswith(prefix) or ticket.extra.get("upload_deleted"):
            return
        ticket.extra["upload_deleted"] = True
        with contextlib.suppress(JobError, httpx.HTTPError):
            async with asyncio.timeout(10):
                await self.http("DELETE", image, during="cleanup", ok=(404,))

    async def cancel(self, ticket: Ticket) -> bool:
        url = ticket.urls.get("cancel") or f"/v1/predictions/{ticket.remote_id}/cancel"
        # Cancelling twice is harmless, so a cancel is retried through network faults.
        response = await self.http("POST", url, during="cancel", safe=True, ok=(400, 404, 409, 422))
        body = body_of(response)
        return (
            response.status_code < 300
            and isinstance(body, dict)
            and (body.get("status") in ("canceled", "aborted"))
        )

    # --- a submit that got no answer --------------------------------------------------------
    async def reconcile(self, ticket: Ticket, fields: dict[str, Any], image: str) -> Ticket | None:
        """Find the prediction a lost create made, if it is certainly ours.

        Certain means: the same image (our own upload, whose URL no other job has; or, for an
        inline image, the same image, parameters and version in a prediction created after our
        submit began). Without the submit's time (a restart mid-submit) only an upload counts."""
        image = image or str(ticket.extra.get("image") or "")
        digest = ticket.extra.get("image_sha256")
        unique = image.startswith(f"{self.base_url}/v1/files/")
        sent_at = ticket.extra.get("sent_at")
        if sent_at is None and not unique:
            return None
        since = None if sent_at is None else float(sent_at) - 120.0  # clocks differ a little
        matches: list[dict[str, Any]] = []
        fetched = 0
        url: str | None = "/v1/predictions"
        for _ in range(self.reconcile_pages):
            page = await self.json_of(await self.http("GET", url, during="reconcile"))
            results = page.get("results") if isinstance(page, dict) else None
            older = False
            for item in results if isinstance(results, list) else []:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    continue
                created = _epoch(item.get("created_at"))
                if since is not None and created is not None and created < since:
                    older = True
                    continue
                if "input" not in item and fetched < 20:  # a lean listing: read the prediction
                    fetched += 1
                    item = await self.json_of(
                        await self.http("GET", f"/v1/predictions/{item['id']}", during="reconcile")
                    )
                if self._is_ours(item, ticket, fields, image, digest):
                    matches.append(item)
            url = page.get("next") if isinstance(page, dict) else None
            if older or not url:
                break
        if len(matches) != 1:
            log.info("Replicate: %d predictions match the lost submit; not adopting", len(matches))
            return None
        self._fill(ticket, matches[0])
        return ticket

    @staticmethod
    def _is_ours(
        item: Mapping[str, Any],
        ticket: Ticket,
        fields: Mapping[str, Any],
        image: str,
        digest: Any,
    ) -> bool:
        inputs = item.get("input")
        if not isinstance(inputs, Mapping):
            return False
        version = str(ticket.extra.get("version") or "")
        if version and item.get("version") and version.rpartition(":")[2] != item["version"]:
            return False
        sent = inputs.get("image")
        if not isinstance(sent, str) or not (
            (image and sent == image)
            or (digest and hashlib.sha256(sent.encode()).hexdigest() == digest)
        ):
            return False
        for name, value in fields.items():
            if name == "seed" and value is None:
                continue  # drawn at random when it was sent
            if name in inputs and inputs[name] != value:
                return False
        return True

    # --- errors -----------------------------------------------------------------------------
    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        title = str(body.get("title") or "") if isinstance(body, dict) else ""
        details: dict[str, Any] = {"http_status": code}
        if code == 402:
            return JobError(
                ErrorKind.insufficient_funds,
                f"Replicate says your account has insufficient credit ({text}). Add credit at "
                "replicate.com/account/billing, wait a few minutes, then retry.",
                details=details,
            )
        if code == 404 and during == "model":
            which = f"{self.model}:{self.pinned_version}" if self.pinned_version else self.model
            return JobError(
                ErrorKind.model_failed,
                f"Replicate has no model {which} that this token can use ({text}).",
                details=details,
            )
        if code == 422:
            fields = _invalid_fields(body)
            if fields:
                details["fields"] = fields
            if "version" in title.lower() or "version" in text.lower():
                return JobError(
                    ErrorKind.invalid_request,
                    f"Replicate refused the model version ({text}). A new account must add a "
                    "payment method before it can run models.",
                    details=details,
                )
            return JobError(
                ErrorKind.invalid_request, f"Replicate refused the input: {text}", details=details
            )
        return self.general_error(response, during=during)


def _invalid_fields(body: Any) -> dict[str, list[str]]:
    """Per-input errors from a 422: ``invalid_fields`` entries, else the ``- input.x: …`` lines
    of ``detail``."""
    fields: dict[str, list[str]] = {}
    if not isinstance(body, Mapping):
        return fields
    items = body.get("invalid_fields")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping) and item.get("field"):
                name = str(item["field"]).removeprefix("input.")
                fields.setdefault(name, []).append(str(item.get("description") or ""))
    if not fields and isinstance(body.get("detail"), str):
        for match in re.finditer(r"^\s*-\s*input\.([\w.]+):\s*(.+)$", body["detail"], re.M):
            fields.setdefault(match.group(1), []).append(match.group(2).strip())
    return fields
