"""The fal backend against a loopback double of fal's queue, storage and CDN, and the double
against fal's own Python client (``fal_client``), so the double is proven faithful."""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import pytest

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.fal import FalBackend
from app.backends.remote import PollCadence, RequestBudget
from pipeline.io.load import read_run_info
from pipeline.params import SD_MODELS, UpscaleParams
from tests.doubles.fal import DAY, KEY, FalDouble, FalScenario
from tests.doubles.http_double import Resp, tiny_png, until

STATUS = r"/requests/[^/]+/status$"
RESULT = r"/requests/[^/]+$"
SUBMIT = r"^/fal-ai/clarity-upscaler$"


@pytest.fixture
def double():
    with FalDouble() as d:
        d.default_scenario = FalScenario(run_s=0.05)
        yield d


def make(client, double, key=KEY, **kw) -> FalBackend:
    kw.setdefault("cadence", PollCadence(0.01))
    kw.setdefault("budget", RequestBudget(1000, 1.0))  # fal's 10/s would pace a 0.01 s cadence
    kw.setdefault("retry_base", 0.01)
    return FalBackend(client, double.url, key, storage_url=double.url, **kw)


def run(double, photo, tmp_path, params=None, *, resume=None, events=None, key=KEY, **kw):
    async def go():
        async with httpx.AsyncClient() as client:
            backend = make(client, double, key, **kw)
            request = Request(
                "j1", photo, tmp_path / "out.png", params or UpscaleParams(), resume=resume
            )
            return await backend.run(request, (events if events is not None else []).append)

    return asyncio.run(go())


def fails(double, photo, tmp_path, params=None, **kw) -> JobError:
    with pytest.raises(JobError) as err:
        run(double, photo, tmp_path, params, **kw)
    assert KEY not in err.value.message
    return err.value


def run_then_cancel(double, photo, tmp_path, *, when=JobState.queued) -> JobError:
    events: list = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(make(client, double).run(request, events.append))
            await until(lambda: any(e.state is when for e in events))
            task.cancel()
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled
    return err.value


def fields(**changes) -> dict:
    backend = FalBackend(httpx.AsyncClient(), api_key=KEY)
    return backend.map_params(UpscaleParams().replace(**changes))


# --- success --------------------------------------------------------------------------------
def test_success_uploads_submits_polls_and_saves_with_fals_seed(double, photo, tmp_path):
    outcome = run(double, photo, tmp_path, UpscaleParams(seed=None))
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == "fal/fal-ai/clarity-upscaler"
    assert info.output_size == (24, 20) and info.source_size == (12, 10)
    assert info.params.seed == 4242  # fal chose it; the metadata says which
    (job,) = double.jobs.values()
    assert outcome.remote_id == job.id and double.billed == [job.id]
    initiate, put = double.requests("POST", "/storage/")[0], double.requests("PUT")[0]
    token = put.path.rsplit("/", 1)[-1]
    assert job.body["image_url"].startswith(f"{double.url}/files/{token}/")  # the file_url
    assert put.body == photo.read_bytes() and "authorization" not in put.headers
    assert json.loads(initiate.headers["x-fal-object-lifecycle-preference"]) == {
        "expiration_duration_seconds": 86400
    }
    submit = double.requests("POST", SUBMIT)[0]
    assert (
        submit.headers["authorization"] == f"Key {KEY}" and "x-fal-no-retry" not in submit.headers
    )
    assert json.loads(submit.headers["x-fal-object-lifecycle-preference"]) == {
        "expiration_duration_seconds": 7 * 86400
    }
    assert job.body == {
        "image_url": job.body["image_url"],
        "prompt": "masterpiece, best quality, highres",
        "negative_prompt": "(worst quality, low quality, normal quality:2)",
        "upscale_factor": 2.0,
        "creativity": 0.35,
        "resemblance": 0.6,
        "guidance_scale": 6.0,
        "num_inference_steps": 18,
        "enable_safety_checker": True,
    }
    polls = double.requests("GET", STATUS)
    assert polls and all(p.query == {"logs": "1"} for p in polls)


def test_a_given_seed_is_sent_and_kept(double, photo, tmp_path):
    outcome = run(double, photo, tmp_path, UpscaleParams(seed=7))
    assert next(iter(double.jobs.values())).body["seed"] == 7
    assert read_run_info(outcome.output).params.seed == 7


def test_progress_logs_and_queue_position_are_reported(double, photo, tmp_path):
    double.scenarios.append(FalScenario(queue_s=0.3, run_s=0.3, ahead=5))
    events: list = []
    run(double, photo, tmp_path, events=events)
    positions = [int(e.stage.split()[-1][:-1]) for e in events if "position" in e.stage]
    assert positions[0] > positions[-1] and positions == sorted(positions, reverse=True)
    running = [e for e in events if e.state is JobState.running]
    assert running and running[-1].message.startswith("Upscaling") and running[-1].total == 100


# --- parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scale_factor": 6}, "scale_factor"),
        ({"sd_model": SD_MODELS[0]}, "sd_model"),
        ({"scheduler": "Euler"}, "scheduler"),
        ({"tiling_width": 64}, "tiling_width"),
        ({"sharpen": 2.0}, "sharpen"),
        ({"mask": "mask.png"}, "mask"),
        ({"handfix": "hands_only"}, "handfix"),
        ({"downscaling": True}, "downscaling"),
        ({"pattern": True}, "pattern"),
        ({"lora_links": "https://example.com/a.safetensors"}, "lora_links"),
        ({"custom_sd_model": "https://example.com/m.safetensors"}, "custom_sd_model"),
        ({"creative.creativity": 5}, "creative"),
        ({"flux.creativity": 0}, "flux"),
        ({"prompt": "a cat <lora:add_detail:1>"}, "prompt"),
        ({"scale_factor": 4, "multistep_factor": 1.0}, "multistep_factor"),
    ],
)
def test_what_fal_cannot_run_is_refused_by_name(changes, field):
    with pytest.raises(JobError) as err:
        fields(**changes)
    assert err.value.kind is ErrorKind.invalid_request
    assert field in err.value.details["fields"] and "fal" in err.value.message


def test_scale_above_four_names_the_limit():
    with pytest.raises(JobError) as err:
        fields(scale_factor=8)
    assert "at most ×4" in err.value.message


def test_clarifier_side_choices_pass_and_fal_fields_map():
    mapped = fields(
        mode="creative",
        output_format="jpg",
        upscaler="realesr-animevideov3",
        scale_factor=4,
        dynamic=3.5,
        prompt="a harbour at dusk, <lora:more_details:0.5>",
        seed=None,
    )
    assert mapped["upscale_factor"] == 4 and mapped["guidance_scale"] == 3.5
    assert mapped["prompt"] == "a harbour at dusk" and "seed" not in mapped
    assert fields(multistep_factor=1.0)["upscale_factor"] == 2  # one pass: the factor is moot
    unchecked = FalBackend(httpx.AsyncClient(), api_key=KEY, safety_checker=False)
    assert unchecked.map_params(UpscaleParams())["enable_safety_checker"] is False


def test_a_refused_run_sends_nothing(double, photo, tmp_path):
    err = fails(double, photo, tmp_path, UpscaleParams(scale_factor=8))
    assert err.kind is ErrorKind.invalid_request and double.log == []


def test_jpg_output_is_made_by_clarifier(double, photo, tmp_path):
    outcome = run(double, photo, tmp_path, UpscaleParams(output_format="jpg"))
    assert outcome.output.read_bytes()[:3] == b"\xff\xd8\xff"


# --- errors at submit -----------------------------------------------------------------------
def test_missing_and_refused_key(double, photo, tmp_path):
    err = fails(double, photo, tmp_path, key=None)
    assert err.kind is ErrorKind.auth and "FAL_KEY" in err.message and double.log == []
    err = fails(double, photo, tmp_path, key="wrong-key:secret")
    assert err.kind is ErrorKind.auth and "wrong-key" not in err.message


@pytest.mark.parametrize("code", [402, 403])
def test_locked_account_is_insufficient_funds(double, photo, tmp_path, code):
    double.locked = code
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "Exhausted balance" in err.message
    assert err.details["http_status"] == code and double.jobs == {}


def test_validation_at_submit_names_the_fields(double, photo, tmp_path):
    double.limits["resemblance"] = (0, 1)  # fal's real range is unverified; say it is 0-1
    err = fails(double, photo, tmp_path, UpscaleParams(resemblance=1.5))
    assert err.kind is ErrorKind.invalid_request and "resemblance" in err.details["fields"]
    assert double.jobs == {}


def test_validation_when_the_job_runs_names_the_fields(double, photo, tmp_path):
    double.validate_at_submit = False
    double.limits["resemblance"] = (0, 1)
    err = fails(double, photo, tmp_path, UpscaleParams(resemblance=1.5))
    assert err.kind is ErrorKind.invalid_request and "resemblance" in err.details["fields"]
    assert double.billed == []


def test_a_dropped_submit_is_never_sent_twice(double, photo, tmp_path):
    double.inject("POST", SUBMIT, "drop_after")
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and "did not send it again" in err.message
    assert double.count("POST", SUBMIT) == 1 and len(double.jobs) == 1  # fal has it, we don't


@pytest.mark.parametrize(
    "answer",
    [
        Resp.html(502, "Bad Gateway"),
        Resp.json(503, {"detail": "Service unavailable"}),
        Resp.json(200, {"status": "IN_QUEUE"}),  # accepted, but no id to follow
        Resp.text(200, "<html>captive portal</html>", ctype="text/html"),
    ],
)
def test_an_unusable_answer_to_a_submit_is_submit_unknown(double, photo, tmp_path, answer):
    double.inject("POST", SUBMIT, "respond", response=answer)
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and double.count("POST", SUBMIT) == 1


def test_submit_rate_limit_is_waited_out(double, photo, tmp_path):
    hint = Resp.json(429, {"detail": "Too many requests"}, {"Retry-After": "0.2"})
    double.inject("POST", SUBMIT, "respond", response=hint)
    assert run(double, photo, tmp_path).output.exists()
    first, second = double.requests("POST", SUBMIT)
    assert second.real - first.real >= 0.19 and len(double.jobs) == 1


# --- the input ------------------------------------------------------------------------------
def test_without_a_storage_api_small_inputs_go_inline(double, photo, tmp_path):
    double.storage_enabled = False
    assert run(double, photo, tmp_path).output.exists()
    (job,) = double.jobs.values()
    assert job.body["image_url"].startswith("data:image/png;base64,")


def test_without_a_storage_api_large_inputs_are_refused(double, photo, tmp_path, monkeypatch):
    double.storage_enabled = False
    monkeypatch.setattr(FalBackend, "inline_limit", 10)
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request and "too large to send inline" in err.message
    assert double.jobs == {}


def test_a_refused_upload_is_transient(double, photo, tmp_path):
    double.inject("PUT", r"^/upload/", "respond", response=Resp.text(403, "Request has expired"))
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.transient and "file storage" in err.message
    assert double.jobs == {}


def test_an_input_that_expired_before_the_job_started(double, photo, tmp_path):
    double.scenarios.append(FalScenario(queue_s=2 * DAY))  # our upload lives one day
    events: list = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(make(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.clock.advance(2 * DAY + 1)
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.model_failed and "download" in err.value.message


# --- watching -------------------------------------------------------------------------------
def test_polls_ride_out_5xx_html_and_429_with_its_hint(double, photo, tmp_path):
    double.default_scenario = FalScenario(run_s=0.3)
    double.inject("GET", STATUS, "respond", times=2, response=Resp.json(503, {"detail": "busy"}))
    double.inject("GET", STATUS, "respond", response=Resp.html(502, "Bad Gateway"))
    hint = Resp.json(429, {"detail": "Too many requests"}, {"Retry-After": "0.2"})
    double.inject("GET", STATUS, "respond", response=hint)
    assert run(double, photo, tmp_path).output.exists()
    polls = double.requests("GET", STATUS)
    limited = next(i for i, p in enumerate(polls) if p.status == 429)
    assert polls[limited + 1].real - polls[limited].real >= 0.19


def test_unknown_statuses_are_not_terminal(double, photo, tmp_path):
    odd = Resp.json(202, {"status": "WARMING_UP"})
    double.inject("GET", STATUS, "respond", times=3, response=odd)
    assert run(double, photo, tmp_path).output.exists()
    assert double.count("GET", RESULT) == 1


def test_an_unreadable_status_is_a_protocol_error(double, photo, tmp_path):
    page = Resp.text(200, "<html><title>Maintenance</title></html>", ctype="text/html")
    double.inject("GET", STATUS, "respond", response=page)
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "Maintenance" in err.message


def test_a_failed_status_with_an_error_ends_the_job(double, photo, tmp_path):
    double.inject(
        "GET",
        STATUS,
        "respond",
        response=Resp.json(200, {"status": "FAILED", "error": "CUDA error"}),
    )
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and "CUDA error" in err.message
    assert double.count("GET", RESULT) == 0


def test_errors_in_a_completed_status_are_confirmed_by_the_result(double, photo, tmp_path):
    double.status_reports_errors = True
    double.scenarios.append(FalScenario(run_s=0.05, fail="gone", failure="runner"))
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and err.details["error_type"] == "runner_disconnected"
    assert double.count("GET", RESULT) == 1


def test_the_concurrency_limit_queues_instead_of_refusing(double, photo, tmp_path):
    double.concurrency_limit = 1
    double.default_scenario = FalScenario(run_s=0.15)

    async def go():
        async with httpx.AsyncClient() as client:
            backend = make(client, double)
            requests = [
                Request(f"j{i}", photo, tmp_path / f"out{i}.png", UpscaleParams()) for i in range(3)
            ]
            return await asyncio.gather(*(backend.run(r, lambda e: None) for r in requests))

    assert all(o.output.exists() for o in asyncio.run(go()))
    spans = sorted((j.started, j.end) for j in double.jobs.values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert len(double.billed) == 3


def test_fals_internal_retries_keep_the_request(double, photo, tmp_path):
    double.scenarios.append(FalScenario(run_s=0.05, retries=2))
    assert run(double, photo, tmp_path).output.exists()
    (job,) = double.jobs.values()
    assert len(set(job.gateway_ids)) == 3 and double.count("POST", SUBMIT) == 1
    assert double.billed == [job.id]


# --- the result -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "message", "kind"),
    [
        ("model", "CUDA out of memory", ErrorKind.model_failed),
        ("model_text", "Image could not be processed", ErrorKind.model_failed),
        ("content", "The content was flagged by the safety checker", ErrorKind.content_rejected),
    ],
)
def test_model_failures_show_on_the_result(double, photo, tmp_path, failure, message, kind):
    double.scenarios.append(FalScenario(run_s=0.05, fail=message, failure=failure))
    err = fails(double, photo, tmp_path)
    assert err.kind is kind and message in err.message and err.details["http_status"] == 422


@pytest.mark.parametrize(
    ("failure", "error_type"), [("runner", "runner_disconnected"), ("timeout", "request_timeout")]
)
def test_infrastructure_failures_are_final_and_not_billed(
    double, photo, tmp_path, failure, error_type
):
    double.scenarios.append(FalScenario(run_s=0.05, fail="x", failure=failure, retries=1))
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and not err.retryable
    assert err.details["error_type"] == error_type and err.details["remote_final"]
    assert "even after retrying it on its side" in err.message and "not bill" in err.message
    assert double.count("GET", RESULT) == 1 and double.billed == []


def test_a_start_timeout_is_not_retried(double, photo, tmp_path):
    timeout = Resp.json(
        504,
        {"detail": "Request timed out", "error_type": "request_timeout"},
        {"X-Fal-Error-Type": "request_timeout", "x-fal-request-timeout-type": "user"},
    )
    double.inject("GET", RESULT, "respond", response=timeout)
    err = fails(double, photo, tmp_path)
    assert err.details["timeout"] == "start" and "start timeout" in err.message
    assert not err.retryable and double.count("GET", RESULT) == 1


def test_the_result_read_rides_out_gateway_errors(double, photo, tmp_path):
    double.inject("GET", RESULT, "respond", times=2, response=Resp.html(502, "Bad Gateway"))
    double.inject("GET", RESULT, "respond", response=Resp.text(503, "nginx: upstream down"))
    assert run(double, photo, tmp_path).output.exists()
    assert double.count("GET", RESULT) == 4 and len(double.billed) == 1


def test_a_result_read_just_before_it_is_stored_is_repeated(double, photo, tmp_path):
    early = Resp.json(400, {"detail": "Request is still in progress"})
    double.inject("GET", RESULT, "respond", response=early)
    assert run(double, photo, tmp_path).output.exists()
    assert double.count("GET", RESULT) == 2


def test_a_server_error_that_fal_signs_is_final(double, photo, tmp_path):
    crash = Resp.json(500, {"detail": "Internal Server Error"}, {"x-fal-request-id": "r1"})
    double.inject("GET", RESULT, "respond", response=crash)
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and "Internal Server Error" in err.message
    assert double.count("GET", RESULT) == 1


def test_a_result_without_an_image(double, photo, tmp_path):
    double.scenarios.append(FalScenario(run_s=0.05, empty_output=True))
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and "no image" in err.message


# --- expiry, resume, cancel -----------------------------------------------------------------
def test_an_expired_record_is_lost(double, photo, tmp_path):
    double.scenarios.append(FalScenario(run_s=5))
    events: list = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(make(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.clock.advance(8 * DAY)
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.expired


def test_an_expired_output_link_is_lost(double, photo, tmp_path):
    events: list = []
    run(double, photo, tmp_path, events=events)
    done = next(e.remote for e in events if e.state is JobState.downloading)
    (tmp_path / "out.png").unlink()
    double.cdn_expire(done["outputs"][0])
    err = fails(double, photo, tmp_path, resume=done)
    assert err.kind is ErrorKind.expired and "no longer works" in err.message


def test_resume_polls_without_submitting(double, photo, tmp_path):
    double.default_scenario = FalScenario(run_s=0.2)
    events: list = []
    run(double, photo, tmp_path, events=events)
    ticket = next(e.remote for e in events if e.state is JobState.queued and e.remote)
    (tmp_path / "out.png").unlink()
    polls = double.count("GET", STATUS)
    assert run(double, photo, tmp_path, resume=ticket).output.exists()
    assert double.count("POST", SUBMIT) == 1 and double.count("GET", STATUS) > polls


def test_cancel_while_queued_reaches_fal(double, photo, tmp_path):
    double.default_scenario = FalScenario(queue_s=30)
    err = run_then_cancel(double, photo, tmp_path)
    assert "canceled at fal" in err.message and double.count("PUT", r"/cancel$") == 1
    (job,) = double.jobs.values()
    assert job.canceled_at is not None and double.billed == []


def test_cancel_while_running_reaches_fal(double, photo, tmp_path):
    double.default_scenario = FalScenario(run_s=30)
    err = run_then_cancel(double, photo, tmp_path, when=JobState.running)
    assert "canceled at fal" in err.message and double.billed == []


@pytest.mark.parametrize(
    ("code", "answer", "confirmed"),
    [
        (202, "CANCELLATION_REQUESTED", True),
        (409, "CANCELLATION_REQUESTED", True),  # the code disagrees; the body decides
        (200, "ALREADY_COMPLETED", False),
        (409, "ALREADY_COMPLETED", False),
        (404, "NOT_FOUND", False),
    ],
)
def test_cancel_branches_on_the_body(double, photo, tmp_path, code, answer, confirmed):
    double.default_scenario = FalScenario(queue_s=30)
    double.cancel_codes[answer] = code
    if answer != "CANCELLATION_REQUESTED":
        double.inject("PUT", r"/cancel$", "respond", response=Resp.json(code, {"status": answer}))
    err = run_then_cancel(double, photo, tmp_path)
    assert ("canceled at fal" in err.message) is confirmed
    assert ("may still bill" in err.message) is not confirmed


# --- the key --------------------------------------------------------------------------------
def test_the_key_only_goes_to_fal_hosts():
    backend = FalBackend(httpx.AsyncClient(), api_key=KEY)
    assert backend._trusted("https://queue.fal.run/fal-ai/clarity-upscaler/requests/1/status")
    assert backend._trusted("https://queue.falrun.com/x") and backend._trusted(
        "https://rest.fal.ai"
    )
    assert not backend._trusted("https://storage.googleapis.com/signed?x=1")
    assert not backend._trusted("https://evil-fal.run.example.com/x")


# --- the double against fal's own client -----------------------------------------------------
@pytest.fixture
def sdk(double, monkeypatch):
    """fal_client pointed at the double. Its hosts come from FAL_QUEUE_RUN_HOST/FAL_RUN_HOST,
    read once at import and always prefixed with https://, so the env vars cannot reach a
    plain-http loopback server; the module's URL constants can, and are read at call time."""
    fal_client = pytest.importorskip("fal_client")
    import fal_client.client as module

    monkeypatch.setattr(module, "QUEUE_URL_FORMAT", double.url + "/")
    monkeypatch.setattr(module, "REST_URL", double.url)
    monkeypatch.setattr(module, "CDN_URL", double.url)
    return fal_client


def test_contract_fal_client_runs_a_job_end_to_end(double, sdk):
    double.scenarios.append(FalScenario(queue_s=0.1, run_s=0.1, ahead=3, retries=1))

    async def go():
        client = sdk.AsyncClient(key=KEY)
        via_storage = await client.upload(tiny_png(8, 6), "image/png", "in.png", repository="fal")
        via_v3 = await client.upload(tiny_png(8, 6), "image/png", "in.png")
        handle = await client.submit(
            "fal-ai/clarity-upscaler",
            {"image_url": via_storage, "upscale_factor": 2, "seed": 5},
            webhook_url=double.url + "/_hook",
            start_timeout=60,
        )
        events = [e async for e in handle.iter_events(with_logs=True, interval=0.01)]
        return via_v3, handle, events, await handle.get()

    via_v3, handle, events, result = asyncio.run(go())
    assert via_v3.startswith(double.url + "/files/")
    assert isinstance(events[0], sdk.Queued) and events[0].position >= 1
    assert any(isinstance(e, sdk.InProgress) and e.logs for e in events)
    assert isinstance(events[-1], sdk.Completed) and events[-1].metrics["inference_time"] > 0
    assert result["seed"] == 5 and (result["image"]["width"], result["image"]["height"]) == (16, 12)
    assert handle.status_url.startswith(double.url)
    job = double.jobs[handle.request_id]
    assert job.start_timeout == 60 and job.body["image_url"].startswith(double.url + "/files/")
    asyncio.run(until(lambda: bool(double.hooks)))
    (hook,) = double.hooks
    assert hook["status"] == "OK" and hook["request_id"] == handle.request_id
    assert hook["gateway_request_id"] != handle.request_id  # one internal retry
    assert hook["payload"]["image"]["url"] == result["image"]["url"]


@pytest.mark.parametrize(
    ("scenario", "code", "error_type"),
    [
        (FalScenario(run_s=0.05, fail="CUDA out of memory"), 422, None),
        (FalScenario(run_s=0.05, fail="x", failure="runner"), 503, "runner_disconnected"),
        (FalScenario(run_s=0.05, fail="x", failure="timeout"), 504, "request_timeout"),
    ],
)
def test_contract_fal_client_reads_failures_without_retrying(
    double, sdk, scenario, code, error_type
):
    double.scenarios.append(scenario)

    async def go():
        client = sdk.AsyncClient(key=KEY)
        image = sdk.encode(tiny_png(), "image/png")  # data URIs are accepted
        handle = await client.submit("fal-ai/clarity-upscaler", {"image_url": image})
        await handle.get(interval=0.01)

    with pytest.raises(sdk.FalClientHTTPError) as err:
        asyncio.run(go())
    assert err.value.status_code == code and err.value.error_type == error_type
    assert double.count("GET", RESULT) == 1  # fal's answer, not a gateway's: not retried


def test_contract_fal_client_start_timeout_cancel_and_auth(double, sdk):
    double.concurrency_limit = 1
    double.scenarios.extend([FalScenario(run_s=60), FalScenario(run_s=0.05)])
    url = sdk.encode(tiny_png(), "image/png")

    async def go():
        client = sdk.AsyncClient(key=KEY)
        busy = await client.submit("fal-ai/clarity-upscaler", {"image_url": url})
        late = await client.submit("fal-ai/clarity-upscaler", {"image_url": url}, start_timeout=2)
        assert isinstance(await late.status(), sdk.Queued)  # held, not refused
        double.clock.advance(3)
        with pytest.raises(sdk.FalClientHTTPError) as timed_out:
            await late.get(interval=0.01)
        await busy.cancel()
        with pytest.raises(sdk.FalClientHTTPError) as canceled:
            await busy.get(interval=0.01)
        with pytest.raises(sdk.FalClientHTTPError) as refused:
            await sdk.AsyncClient(key="nope:nope").submit("fal-ai/clarity-upscaler", {})
        return timed_out.value, canceled.value, refused.value

    timed_out, canceled, refused = asyncio.run(go())
    assert timed_out.status_code == 504
    assert timed_out.response_headers["x-fal-request-timeout-type"] == "user"
    assert canceled.status_code == 499 and canceled.error_type == "client_cancelled"
    assert refused.status_code == 401 and double.billed == []


def test_double_redelivers_webhooks(double, sdk):
    double.hook_refuse = 2

    async def go():
        client = sdk.AsyncClient(key=KEY)
        url = sdk.encode(tiny_png(), "image/png")
        return await client.submit(
            "fal-ai/clarity-upscaler", {"image_url": url}, webhook_url=double.url + "/_hook"
        )

    handle = asyncio.run(go())
    # hook_done, not the received hook: the double counts an attempt once its POST returns,
    # which is after the receiving end has recorded it.
    asyncio.run(until(lambda: double.jobs[handle.request_id].hook_done))
    assert len(double.hooks) == 1
    assert double.jobs[handle.request_id].hook_attempts == 3
    assert double.count("POST", "/_hook") == 3
