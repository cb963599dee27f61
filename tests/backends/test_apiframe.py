"""Apiframe: the double's contract (raw requests from the reference) and the backend against it."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.apiframe import ApiframeBackend
from app.backends.remote import PollCadence, RequestBudget
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.backends.seeds import fixture
from tests.doubles.apiframe import Account, ApiframeDouble
from tests.doubles.http_double import Resp, Scenario, tiny_png, until

KEY = "afk_test"


@pytest.fixture
def double():
    with ApiframeDouble() as d:
        d.default_scenario = Scenario(queue_s=0.02, run_s=0.1)
        yield d


def backend_for(client, double, key=KEY, **kw):
    kw.setdefault("cadence", PollCadence(0.01))
    kw.setdefault("budget", RequestBudget(1000, 1.0))
    return ApiframeBackend(client, double.url, key, retry_base=0.01, **kw)


def run(double, photo, tmp_path, *, params=None, resume=None, events=None, key=KEY, **kw):
    options = kw.pop("options", {})

    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double, key, **kw)
            request = Request(
                "j1",
                photo,
                tmp_path / "out.png",
                params or UpscaleParams(),
                options=options,
                resume=resume,
            )
            return await backend.run(request, (events if events is not None else []).append)

    return asyncio.run(go())


def failure(*args, **kw) -> JobError:
    with pytest.raises(JobError) as err:
        run(*args, **kw)
    return err.value


# --- the double's contract: the page's own requests ----------------------------------------------
PAGE = fixture("003_5faef4169034b570")
EXAMPLE = PAGE["submit"]["body"]  # the quick start's body, verbatim
FULL = {  # every one of the nine clarityUpscaleParams, typed as the input schema types them
    "model": "clarity-upscale",
    "clarityUpscaleParams": {
        "image": "https://example.com/input.png",
        "prompt": "highly detailed, sharp focus, intricate textures",
        "scale_factor": "2",
        "creativity": 0.35,
        "resemblance": 0.6,
        "dynamic": 6,
        "num_inference_steps": 18,
        "output_format": "png",
        "seed": 1337,
    },
    "webhook_url": "https://example.com/apiframe-hook",
}


def test_contract_submit_replay_poll_and_result(double):
    # Long enough in real time that a slow first request never sees the job done already; the
    # virtual clock's jump below finishes it.
    double.default_scenario = Scenario(queue_s=0.0, run_s=10.0)
    headers = {"X-API-Key": KEY, "Idempotency-Key": "7b0c2f0e-6d0b-4b55-9a53-1f3f3c0d9a11"}
    assert sorted(FULL["clarityUpscaleParams"]) == sorted(PAGE["params"])  # the page's nine
    with httpx.Client(base_url=double.url) as http:
        first = http.post(PAGE["submit"]["path"], json=EXAMPLE, headers=headers)
        assert first.status_code == 202 and first.headers["x-request-id"]
        accepted = first.json()
        assert set(accepted) == set(PAGE["submitted"]) and accepted["status"] == "QUEUED"
        uuid.UUID(accepted["jobId"])
        again = http.post(PAGE["submit"]["path"], json=EXAMPLE, headers=headers)
        assert again.status_code == 202 and again.json()["jobId"] == accepted["jobId"]
        assert http.post(PAGE["submit"]["path"], json=FULL, headers=headers).status_code == 409
        job = http.get(f"/v2/jobs/{accepted['jobId']}", headers={"X-API-Key": KEY}).json()
        assert set(PAGE["poll"]["reads"]) - {"result"} <= set(job)
        assert job["status"] in ("QUEUED", "PROCESSING") and job["creditCost"] == 3
        double.clock.advance(11)
        done = http.get(f"/v2/jobs/{accepted['jobId']}", headers={"X-API-Key": KEY}).json()
        assert done["status"] == "COMPLETED" and done["progress"] == 100
        assert done["expired"] is False and http.get(done["result"]).status_code == 200
        double.clock.advance(24 * 3600 + 1)
        gone = http.get(f"/v2/jobs/{accepted['jobId']}", headers={"X-API-Key": KEY}).json()
        assert gone["expired"] is True and http.get(done["result"]).status_code == 404
        listed = http.get("/v2/jobs", params={"search": accepted["jobId"]}, headers=headers)
        assert [j["id"] for j in listed.json()["jobs"]] == [accepted["jobId"]]
        full = http.post(PAGE["submit"]["path"], json=FULL, headers={"X-API-Key": KEY})
        assert full.status_code == 202, full.text
    assert len(double.jobs) == 2 and double.billed() == 6


def _with(**changes) -> dict:
    params = {**FULL["clarityUpscaleParams"], **changes}
    return {**FULL, "clarityUpscaleParams": {k: v for k, v in params.items() if v is not None}}


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (_with(scale_factor=2), "clarityUpscaleParams.scale_factor", "Expected string"),
        (_with(scale_factor="3"), "clarityUpscaleParams.scale_factor", "Invalid enum value"),
        (_with(negative_prompt="blurry"), "clarityUpscaleParams", "'negative_prompt'"),
        (_with(sharpen=0), "clarityUpscaleParams", "'sharpen'"),
        (_with(creativity=0.37), "clarityUpscaleParams.creativity", "multiple of 0.05"),
        (_with(resemblance=0.61), "clarityUpscaleParams.resemblance", "multiple of 0.05"),
        (_with(dynamic=6.5), "clarityUpscaleParams.dynamic", "multiple of 1"),
        (_with(creativity=1.5), "clarityUpscaleParams.creativity", "less than or equal to 1"),
        (_with(seed=1.5), "clarityUpscaleParams.seed", "multiple of 1"),
        (_with(output_format="tiff"), "clarityUpscaleParams.output_format", "Invalid enum"),
        ({**FULL, "webhookUrl": "https://x.test"}, "(root)", "'webhookUrl'"),
    ],
)
def test_contract_requests_of_any_other_shape_are_refused(double, body, path, message):
    with httpx.Client(base_url=double.url) as http:
        answer = http.post("/v2/images/upscale", json=body, headers={"X-API-Key": KEY})
    assert answer.status_code == 400
    assert message in " ".join(answer.json()["details"][path])
    assert double.jobs == {} and double.billed() == 0


def test_contract_auth_and_funds(double):
    api = "/v2/images/upscale"
    with httpx.Client(base_url=double.url) as http:
        assert http.post(api, json=EXAMPLE).json() == {"error": "API key is required"}
        assert http.post(api, json=EXAMPLE, headers={"X-API-Key": "nope"}).status_code == 401
        double.accounts["afk_off"] = Account(active=False, user="user-2")
        assert http.post(api, json=EXAMPLE, headers={"X-API-Key": "afk_off"}).status_code == 403
        double.accounts[KEY].credits = 2
        poor = http.post(api, json=EXAMPLE, headers={"X-API-Key": KEY})
        assert poor.status_code == 402
        assert poor.json() == {
            "error": "Insufficient credits",
            "creditsRequired": 3,
            "creditsAvailable": 2,
        }
        assert http.get("/v2/jobs/not-a-uuid", headers={"X-API-Key": KEY}).status_code == 400
        double.rate_limit(1, 3600)
        http.get("/v2/jobs", headers={"X-API-Key": KEY})
        limited = http.get("/v2/jobs", headers={"X-API-Key": KEY})
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        double.limiter = None
        assert http.get(f"/v2/jobs/{uuid.uuid4()}", headers={"X-API-Key": KEY}).status_code == 404
    assert double.jobs == {} and double.billed() == 0


def test_contract_uploads(double):
    with httpx.Client(base_url=double.url, headers={"X-API-Key": KEY}) as http:
        png = tiny_png()
        # The declared type is ignored: the bytes are sniffed.
        made = http.post("/v2/uploads", files={"file": ("a.bin", png, "text/plain")})
        assert made.status_code == 201
        body = made.json()
        assert body["kind"] == "image" and body["contentType"] == "image/png"
        assert body["byteSize"] == len(png) and body["expiresAt"].endswith("Z")
        assert http.get(body["url"]).content == png
        text = http.post("/v2/uploads", files={"file": ("a.png", b"hello", "image/png")})
        assert text.status_code == 400
        huge = http.post("/v2/uploads", files={"file": ("a.png", png + bytes(25 * 2**20), "x/y")})
        assert huge.status_code == 400 and "25 MB" in huge.json()["error"]
        double.clock.advance(2 * 3600)  # uploads are reaped after 1–2 h
        assert http.get(body["url"]).status_code == 404
        request = {**EXAMPLE, "clarityUpscaleParams": {"image": body["url"], "scale_factor": "2"}}
        dead = http.post("/v2/images/upscale", json=request)
        assert dead.status_code == 400 and "source image" in dead.json()["error"]
    assert double.billed() == 0


# --- the backend --------------------------------------------------------------------------------
def test_the_pages_example_is_what_clarifier_sends(double, photo, tmp_path):
    """The quick start's settings and image: the body Clarifier sends is the page's, field for
    field (the image URL is the double's own copy, which it can fetch)."""
    page = EXAMPLE["clarityUpscaleParams"]
    url = double.cdn_put(tiny_png(12, 10), name="input.jpg")
    params = UpscaleParams(
        prompt=page["prompt"],
        scale_factor=float(page["scale_factor"]),
        creativity=page["creativity"],
        seed=None,
    )
    outcome = run(double, photo, tmp_path, params=params, options={"input_url": url})
    (submit,) = double.requests("POST", r"^/v2/images/upscale$")
    sent = json.loads(submit.body)
    assert sent == {**EXAMPLE, "clarityUpscaleParams": {**page, "image": url}}
    assert list(sent["clarityUpscaleParams"]) == list(page)  # in the page's order, too
    assert submit.headers["x-api-key"] == KEY and submit.headers["content-type"].startswith(
        PAGE["submit"]["headers"]["Content-Type"]
    )
    assert double.requests("POST", r"^/v2/uploads$") == []
    polls = double.requests("GET", r"^/v2/jobs/")
    assert {p.path for p in polls} == {PAGE["poll"]["path"].format(id=outcome.remote_id)}


def test_every_one_of_the_nine_is_sent_as_the_page_types_it(double, photo, tmp_path):
    params = UpscaleParams(
        prompt="crisp",
        scale_factor=8,
        creativity=0.5,
        resemblance=1.25,
        dynamic=9,
        num_inference_steps=30,
        output_format="webp",
        seed=7,
    )
    run(double, photo, tmp_path, params=params)
    sent = double.jobs[next(iter(double.jobs))].body["clarityUpscaleParams"]
    assert set(sent) == set(PAGE["params"])
    assert {k: v for k, v in sent.items() if k != "image"} == {
        "prompt": "crisp",
        "scale_factor": "8",
        "creativity": 0.5,
        "resemblance": 1.25,
        "dynamic": 9,
        "num_inference_steps": 30,
        "output_format": "webp",
        "seed": 7,
    }
    types = PAGE["param_types"]
    assert all(
        isinstance(sent[k], str) == types[k].startswith("string") for k in sent if k != "image"
    )


def test_success_uploads_submits_and_saves_with_metadata(double, photo, tmp_path):
    double.default_scenario = Scenario(queue_s=0.05, run_s=0.3)
    events = []
    outcome = run(double, photo, tmp_path, events=events)
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == "apiframe/clarity-upscale"
    assert info.output_size == (24, 20) and info.source_size == (12, 10)
    assert info.params.mode == "creative"  # what ran at the provider, not the local default
    assert outcome.cost == 3 and outcome.cost_unit == "credits"
    assert outcome.remote_id in double.jobs
    submit = double.requests("POST", r"^/v2/images/upscale$")[0]
    sent = submit.headers
    assert sent["x-api-key"] == KEY and sent["idempotency-key"] == events[1].remote["key"]
    body = double.jobs[outcome.remote_id].body
    assert body["clarityUpscaleParams"]["image"] in double.uploads.values()
    assert body["clarityUpscaleParams"]["scale_factor"] == "2"
    running = [e.done for e in events if e.state is JobState.running]
    assert running and running == sorted(running) and all(0 <= d <= 100 for d in running)
    assert double.billed() == 3


@pytest.mark.parametrize("shape", ["string", "images", "list"])
def test_every_documented_result_shape(double, photo, tmp_path, shape):
    double.result_shape = shape
    outcome = run(double, photo, tmp_path)
    # What survived: the result's own bytes and pixels, from one submit, billed once.
    result = double.jobs[outcome.remote_id].result  # as the double served it, in its shape
    url = result if shape == "string" else (result["images"] if shape == "images" else result)[0]
    served = double.cdn_lookup(url)
    assert served is not None
    with Image.open(outcome.output) as kept, Image.open(io.BytesIO(served)) as original:
        assert np.array_equal(np.asarray(kept), np.asarray(original))
    assert _idat(outcome.output.read_bytes()) == _idat(served)
    assert double.count("POST", r"^/v2/images/upscale$") == 1 and double.billed() == 3


def _idat(data: bytes) -> bytes:
    pos, out = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            out += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return out


def test_parameters_it_cannot_express_are_refused_before_anything_is_sent(double):
    client = httpx.AsyncClient()
    backend = ApiframeBackend(client, double.url, KEY)
    fields = backend.map_params(UpscaleParams(seed=None, scale_factor=4))
    assert fields == {"prompt": UpscaleParams().prompt, "scale_factor": "4", "creativity": 0.35}
    bad = UpscaleParams(
        scale_factor=3,
        scheduler="Euler a",
        tiling_width=96,
        prompt="x" * 2001,
        negative_prompt="blurry",
        sharpen=2,
        creativity=0.37,
        dynamic=6.5,
        noise_source="cpu",
    )
    with pytest.raises(JobError) as err:
        backend.map_params(bad)
    asyncio.run(client.aclose())
    assert err.value.kind is ErrorKind.invalid_request
    refused = {
        "scale_factor",
        "scheduler",
        "tiling_width",
        "prompt",
        "negative_prompt",
        "sharpen",
        "creativity",
        "dynamic",
        "noise_source",
    }
    assert set(err.value.details["fields"]) == refused
    assert "1, 2, 4 or 8" in err.value.message and "steps of 0.05" in err.value.message
    assert double.log == []


def test_oversized_input_is_refused_before_uploading(double, photo, tmp_path, monkeypatch):
    monkeypatch.setattr(ApiframeBackend, "max_upload", 64)  # the photo is a few hundred bytes
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request and "accepts uploads up to" in err.message
    assert double.log == []


def test_auth_errors(double, photo, tmp_path):
    err = failure(double, photo, tmp_path, key=None)
    assert err.kind is ErrorKind.auth and "CLARIFIER_APIFRAME_API_KEY" in err.message
    err = failure(double, photo, tmp_path, key="afk_wrong_secret")
    assert err.kind is ErrorKind.auth and "afk_wrong_secret" not in err.message
    assert "Invalid API key" in err.message
    double.accounts["afk_off"] = Account(active=False, user="user-2")
    err = failure(double, photo, tmp_path, key="afk_off")
    assert err.kind is ErrorKind.auth and "inactive" in err.message


def test_insufficient_credits_names_the_amounts(double, photo, tmp_path):
    double.accounts[KEY].credits = 1
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds
    assert "needs 3, have 1" in err.message
    assert err.details["required"] == 3 and err.details["available"] == 1
    assert double.jobs == {}


def test_validation_error_carries_field_errors(double, photo, tmp_path):
    zod = {
        "error": "Validation failed",
        "details": {"clarityUpscaleParams.dynamic": ["Number must be less than or equal to 50"]},
    }
    double.inject("POST", r"^/v2/images/upscale$", "respond", response=Resp.json(400, zod))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request
    assert err.details["fields"] == zod["details"]
    assert "clarityUpscaleParams.dynamic" in err.message and "Nothing was charged" in err.message


def test_unreadable_image_is_refused_without_charge(double, photo, tmp_path):
    double.probe_fail = True
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request and "source image" in err.message
    assert double.billed() == 0


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Provider returned an error: CUDA out of memory", ErrorKind.model_failed),
        ("Provider returned an error: content policy violation", ErrorKind.content_rejected),
    ],
)
def test_failed_jobs_are_refunded(double, photo, tmp_path, message, kind):
    double.scenarios.append(Scenario(run_s=0.05, fail=message))
    err = failure(double, photo, tmp_path)
    assert err.kind is kind and message.split(": ")[1] in err.message
    assert "refunded" in err.message and double.billed() == 0


def test_cancelled_at_the_provider(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=30)
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            task = asyncio.create_task(
                backend_for(client, double).run(
                    Request("j1", photo, tmp_path / "out.png", UpscaleParams()), events.append
                )
            )
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.cancel_job(next(iter(double.jobs)))
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and "Apiframe cancelled" in err.value.message


def test_rate_limit_hint_is_honoured(double, photo, tmp_path):
    limited = Resp.json(429, {"error": "Rate limit exceeded"}, {"Retry-After": "1"})
    double.inject("GET", r"^/v2/jobs/", "respond", response=limited)
    assert run(double, photo, tmp_path).output.exists()
    polls = double.requests("GET", r"^/v2/jobs/")
    assert polls[0].status == 429 and polls[1].real - polls[0].real >= 0.9


def test_long_rate_limit_fails_with_the_hint_and_creates_nothing(double, photo, tmp_path):
    limited = Resp.json(429, {"error": "Rate limit exceeded"}, {"Retry-After": "3600"})
    double.inject("POST", r"^/v2/images/upscale$", "respond", response=limited)
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.rate_limited and err.retry_after == 3600
    assert double.jobs == {} and double.count("POST", r"^/v2/images/upscale$") == 1


def test_polls_ride_out_5xx_bursts_and_html_pages(double, photo, tmp_path):
    double.inject("GET", r"^/v2/jobs/", "respond", times=3, response=Resp.json(503, {"error": "x"}))
    double.inject("GET", r"^/v2/jobs/", "respond", response=Resp.html(502, "Bad Gateway"))
    double.inject("GET", r"^/v2/jobs/", "drop_before")
    assert run(double, photo, tmp_path).output.exists()
    assert double.count("GET", r"^/v2/jobs/") >= 6


def test_protocol_errors(double, photo, tmp_path):
    double.inject("GET", r"^/v2/jobs/", "respond", response=Resp.html(200, "Just a moment"))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "HTML" in err.message
    weird = Resp.json(200, {"id": "x", "status": "TELEPORTING"})
    double.inject("GET", r"^/v2/jobs/", "respond", response=weird)
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "TELEPORTING" in err.message
    no_id = Resp.json(202, {"status": "QUEUED"})
    double.inject("POST", r"^/v2/images/upscale$", "respond", response=no_id)
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "jobId" in err.message


def test_expired_result_is_lost(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.3)
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double, cadence=PollCadence(0.5))
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend.run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.clock.advance(2 * 24 * 3600)  # the app slept through the retention
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.expired and "lost" in err.value.message


def test_dead_result_link_is_lost(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.05)
    double.inject("GET", r"^/cdn/", "respond", response=Resp.text(404, "Not Found"))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.expired and "lost" in err.message


def test_cancel_only_stops_watching(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=30)
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend_for(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            task.cancel()
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and "Stopped watching" in err.value.message
    assert "may still finish and bill" in err.value.message
    assert len(double.jobs) == 1  # nothing else was asked of Apiframe: it has no cancel


def test_resume_polls_without_submitting_again(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.3)
    events = []

    async def first():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend_for(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            task.cancel()  # the app quits while the job runs
            with pytest.raises(JobError):
                await task

    asyncio.run(first())
    ticket = next(e.remote for e in events if e.state is JobState.queued)
    outcome = run(double, photo, tmp_path, resume=ticket)
    assert outcome.output.exists() and outcome.remote_id == ticket["remote_id"]
    assert double.count("POST", r"^/v2/images/upscale$") == 1
    assert double.count("POST", r"^/v2/uploads$") == 1


def test_dropped_submit_is_resent_with_its_key_and_billed_once(double, photo, tmp_path):
    double.inject("POST", r"^/v2/images/upscale$", "drop_after")
    double.inject("POST", r"^/v2/images/upscale$", "respond", response=Resp.json(503, {}))
    outcome = run(double, photo, tmp_path)
    assert outcome.output.exists()
    submits = double.requests("POST", r"^/v2/images/upscale$")
    assert len(submits) == 3 and len({s.headers["idempotency-key"] for s in submits}) == 1
    assert len(double.jobs) == 1 and double.billed() == 3


def test_outage_that_lasts_is_transient(double, photo, tmp_path):
    double.outage = True
    err = failure(double, photo, tmp_path, retry_for=0.2)
    assert err.kind is ErrorKind.transient and "503" in err.message
    assert double.jobs == {}


def test_restart_mid_submit_finds_the_same_job(double, photo, tmp_path):
    """The app dies while the submit is in flight; the resumed job re-uploads, but re-sends the
    first body with the same key, so Apiframe answers with the job it already made."""
    slow = double.inject("POST", r"^/v2/images/upscale$", "delay", delay=0.3)
    events = []

    async def crash():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend_for(client, double).run(request, events.append))
            await until(lambda: slow.times == 0)  # the submit has reached Apiframe
            task.cancel()
            with pytest.raises(JobError) as err:
                await task
            assert err.value.kind is ErrorKind.canceled

    asyncio.run(crash())
    checkpoint = next(e.remote for e in events if e.state is JobState.submitting)
    assert checkpoint["phase"] == "submitting" and checkpoint["remote_id"] is None
    asyncio.run(until(lambda: len(double.jobs) == 1))  # the first submit did arrive
    outcome = run(double, photo, tmp_path, resume=checkpoint)
    assert outcome.output.exists() and outcome.remote_id in double.jobs
    assert double.count("POST", r"^/v2/uploads$") == 1  # the first upload's URL is re-sent
    assert double.count("POST", r"^/v2/images/upscale$") == 2
    assert len(double.jobs) == 1 and double.billed() == 3


def test_restart_after_the_replay_window_reconciles_instead_of_resending(double, photo, tmp_path):
    double.inject("POST", r"^/v2/images/upscale$", "drop_after", times=10)
    events = []
    with pytest.raises(JobError):
        run(double, photo, tmp_path, events=events, retry_for=0.3)
    assert len(double.jobs) == 1
    checkpoint = dict(next(e.remote for e in events if e.state is JobState.submitting))
    checkpoint["extra"] = {**checkpoint["extra"], "created_at": time.time() - 25 * 3600}
    double.faults.clear()
    submits = double.count("POST", r"^/v2/images/upscale$")
    double.clock.advance(25 * 3600)
    err = failure(double, photo, tmp_path, resume=checkpoint)
    # Found by its input among the recent jobs (not re-sent); by now its result is purged.
    assert err.kind is ErrorKind.expired
    assert double.count("GET", r"^/v2/jobs$") == 1
    assert double.count("POST", r"^/v2/images/upscale$") == submits
    assert len(double.jobs) == 1 and double.billed() == 3


def test_completed_without_a_result_is_a_failure(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.05, empty_output=True))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and "returned no image" in err.message
