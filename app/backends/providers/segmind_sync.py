"""Segmind's v1 sync mode: one blocking ``POST /v1/{slug}`` whose answer is the image itself.

:class:`~app.backends.providers.segmind.SegmindBackend` runs short jobs this way when asked
(its ``sync``, or a job's ``segmind.sync`` option; ``auto`` as the model's page advises); its
``run`` delegates to :func:`run_sync`. The answer carries the image bytes as its body and
the billing in headers (``x-cost``, ``x-remaining-credits``, ``x-request-id``,
``x-generation-time``, ``x-seed-value``); :func:`read_answer` reads them into the job's ticket.
The bytes are stashed at once (they are paid for) and the ticket's output is a
:data:`SYNC_MARK` reference to them.

A dropped sync connection is a submit with no answer: the job ran and was billed if it got that
far, so it is never re-sent. A sync job's checkpoint resumes through the v2 template.

Kept apart from :mod:`app.backends.providers.segmind` because it bypasses the submit-and-poll
template that module fills in: it is a second, self-contained way of running a job, built from
the template's public hooks (``check_output_size``, ``input_refs``, ``submit_unknown``,
``finish``, ``canceled``) and
the backend's own (``request_body``, ``run_failure``), so it keeps the template's guarantees.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from app.backends.base import BackendEvent, ErrorKind, JobError, JobState, Outcome, Report, Request
from app.backends.providers.segmind_params import find_output, number
from app.backends.remote import SubmitNoAnswer, Ticket, body_of, message_of, stash

if TYPE_CHECKING:
    from app.backends.providers.segmind import SegmindBackend

__all__ = ["SYNC_MARK", "read_answer", "run_sync"]

SYNC_MARK = "segmind-sync:"  # a ticket output whose bytes came with the answer


async def run_sync(backend: SegmindBackend, request: Request, report: Report) -> Outcome:
    """One blocking ``POST /v1/{slug}``: the answer is the image, billing in headers."""
    backend.check_ready()
    fields = backend.map_params(request.params)
    await backend.check_output_size(request)
    started = time.monotonic()
    timings: dict[str, float] = {}
    ticket: Ticket | None = None
    try:
        report(BackendEvent(state=JobState.uploading, stage="sending to Segmind"))
        image, mask = await backend.input_refs(request)
        timings["upload"] = time.monotonic() - started
        ticket = Ticket.new()
        ticket.extra.update(sync=True, image_sha256=hashlib.sha256(image.encode()).hexdigest())
        report(
            BackendEvent(
                state=JobState.submitting,
                stage="submitting to Segmind",
                remote=ticket.to_dict(),
            )
        )
        report(BackendEvent(state=JobState.running, stage="running at Segmind (sync)"))
        ticket.submitted_at = time.time()
        sent = time.monotonic()
        try:
            response = await backend.http(
                "POST",
                f"/v1/{backend.model}",
                during="submit",
                json=backend.request_body(fields, image, mask),
                timeout=httpx.Timeout(backend.sync_timeout, connect=15.0),
                ok=(500, 502, 503, 504),
            )
        except SubmitNoAnswer as exc:
            raise backend.submit_unknown(ticket, str(exc)) from None
        timings["remote"] = time.monotonic() - sent
        data = await read_answer(backend, response, ticket)
        ticket.phase = "done"
        ticket.done_at = time.time()
        if data is not None:  # kept before anything else can fail: it is paid for
            await asyncio.to_thread(stash, Path(request.output), request.job_id, data)
        report(
            BackendEvent(
                state=JobState.downloading,
                stage="saving",
                message="saving the result from Segmind",
                remote=ticket.to_dict(),
            )
        )
        t = time.monotonic()
        outcome = await backend.finish(request, ticket)
        timings["download"] = time.monotonic() - t
    except asyncio.CancelledError:
        if backend.detached:
            raise  # the app is quitting: the checkpoint decides what happens next start
        raise await backend.canceled(ticket) from None
    timings["total"] = time.monotonic() - started
    return replace(outcome, timings={**timings, **outcome.timings})


async def read_answer(
    backend: SegmindBackend, response: httpx.Response, ticket: Ticket
) -> bytes | None:
    """Fill ``ticket`` from a v1 answer; return the image bytes (None: a URL to download)."""
    code = response.status_code
    if code in (502, 504):
        raise backend.submit_unknown(ticket, f"the gateway answered HTTP {code} while the job ran")
    if code == 503:
        raise backend.general_error(response, during="submit")
    if code == 500:  # the model ran and failed (often a value only the model checks)
        body = body_of(response)
        raise backend.run_failure(message_of(body, code) or "HTTP 500", {})
    headers = response.headers
    ticket.remote_id = headers.get("x-request-id") or None
    ticket.cost = number(headers.get("x-cost"))
    ticket.cost_unit = "credits" if ticket.cost is not None else ""
    credits = number(headers.get("x-remaining-credits"))
    if credits is not None:
        backend.remaining_credits = credits
    seed = number(headers.get("x-seed-value"))
    ticket.seed = int(seed) if seed is not None and float(seed).is_integer() else None
    if headers.get("x-generation-time"):
        ticket.extra["generation_time"] = number(headers["x-generation-time"])
    ctype = headers.get("content-type", "").lower()
    if ctype.startswith("image/") and response.content:
        ticket.outputs = [SYNC_MARK + (ticket.remote_id or ticket.key)]
        return response.content
    output = find_output(body_of(response)) if "json" in ctype else None
    if output:
        ticket.outputs = [output]
        return None
    raise JobError(
        ErrorKind.protocol,
        f"Segmind answered the sync request without an image ({ctype or 'no content type'}"
        f", request {ticket.remote_id or 'unknown'}); it may have billed the job.",
        details={"remote": ticket.to_dict()},
    )
