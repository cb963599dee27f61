"""The Segmind backend against its loopback double, and the double against Segmind's own SDK."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.segmind import SegmindBackend
from app.backends.remote import PollCadence, RequestBudget, stash
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.doubles.http_double import Resp, Scenario, until
from tests.doubles.segmind import BAD_KEY, KEY, MISSING_KEY, SegmindDouble

V2_SUBMIT = r"^/v2/clarity"
STATUS = r"^/v2/requests/[^/]+/status$"


@pytest.fixture
def double():
    with SegmindDouble() as d:
        yield d


def make(client, double, **kw) -> SegmindBackend:
    kw.setdefault("budget", RequestBudget(1000, 1.0))
    kw.setdefault("cadence", PollCadence(0.01))
    kw.setdefault("retry_base", 0.01)
    return SegmindBackend(client, double.url, kw.pop("key", KEY), **kw)


def request(photo, tmp_path, params=None, **kw) -> Request:
    return Request("j1", photo, tmp_path / "out.png", params or UpscaleParams(), **kw)


def run(double, photo, tmp_path, *, params=None, events=None, options=None, resume=None, **kw):
    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            backend = make(client, double, **kw)
            req = request(photo, tmp_path, params, options=options or {}, resume=resume)
            outcome = await backend.run(req, (events if events is not None else []).append)
            return outcome, backend

    return asyncio.run(go())


def error_of(*args, **kw) -> JobError:
    with pytest.raises(JobError) as err:
        run(*args, **kw)
    return err.value


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def sent_body(double, path=V2_SUBMIT) -> dict:
    return json.loads(double.requests("POST", path)[-1].body)


def params_backend(model: str) -> SegmindBackend:
    return SegmindBackend(httpx.AsyncClient(), "http://127.0.0.1:9", KEY, model=model)


# --- success ------------------------------------------------------------------------------------
def test_v2_success_saves_output_with_metadata_and_cost(double, photo, tmp_path):
    double.scenarios.append(Scenario(queue_s=0.05, run_s=0.05))
    events = []
    outcome, backend = run(double, photo, tmp_path, events=events)
    info = read_run_info(outcome.output)
    assert info.engine == "segmind/clarity-upscaler" and info.output_size == (24, 20)
    assert info.params.mode == "creative"  # what ran at Segmind is the diffusion pass
    (job,) = double.jobs_for(KEY)
    assert outcome.remote_id == job.id and job.charged
    assert outcome.cost == pytest.approx(0.03) and outcome.cost_unit == "credits"
    assert backend.remaining_credits == pytest.approx(100 - 0.03)
    body = sent_body(double)
    assert base64.b64decode(body["image"]) == photo.read_bytes()  # bare base64, no data: URI
    assert body["scale_factor"] == 2 and body["creativity"] == 0.35 and body["seed"] == 1337
    assert body["handfix"] == "disabled" and "mode" not in body and "pattern" not in body
    assert double.requests("POST", V2_SUBMIT)[0].headers["x-api-key"] == KEY
    states = [e.state for e in events if e.state]
    assert states[:3] == [JobState.uploading, JobState.submitting, JobState.queued]
    assert JobState.running in states and states[-1] is JobState.downloading
    assert double.count("GET", r"^/v2/requests/[^/]+$") == 1  # the result, once


def test_input_url_is_passed_through(double, photo, tmp_path):
    url = "https://example.com/photo.png"
    outcome, _ = run(double, photo, tmp_path, options={"input_url": url})
    assert outcome.output.exists() and sent_body(double)["image"] == url


@pytest.mark.parametrize("shape", ["list", "object"])
def test_output_as_list_or_object_takes_the_first_url(double, photo, tmp_path, shape):
    double.output_shape = shape
    outcome, _ = run(double, photo, tmp_path)
    assert read_run_info(outcome.output).output_size == (24, 20)


def test_creative_and_flux_upscalers_send_their_own_knobs(double, photo, tmp_path):
    params = UpscaleParams().replace(
        scale_factor=4, **{"creative.fractality": 5, "creative.style": "anime"}
    )
    outcome, _ = run(double, photo, tmp_path, params=params, model="clarityai-creative-upscaler")
    body = sent_body(double, r"^/v2/clarityai-creative")
    assert {k: v for k, v in body.items() if k != "image"} == {
        "scale_factor": 4,
        "creativity": 2,
        "resemblance": 3,
        "dynamic": 0,
        "fractality": 5,
        "style": "anime",
        "prompt": "Maximize detail with vibrant color enhancement.",  # the page's own default
    }
    assert read_run_info(outcome.output).params.seed is None  # the model takes no seed
    params = UpscaleParams().replace(
        scale_factor=2, prompt="a cat", **{"flux.lora_link": "https://x.test/l.safetensors"}
    )
    run(double, photo, tmp_path, params=params, model="clarityai-flux-upscaler")
    body = sent_body(double, r"^/v2/clarityai-flux")
    assert body["lora_link"] == "https://x.test/l.safetensors" and body["creativity"] == 3
    assert body["scale_factor"] == 2 and body["prompt"] == "a cat"


# --- map_params refusals ------------------------------------------------------------------------
def test_clarity_fields_cover_the_open_model():
    params = UpscaleParams().replace(
        seed=None,
        mask="https://x.test/m.png",
        lora_links="https://x.test/a.safetensors, https://x.test/b.safetensors",
        custom_sd_model="https://x.test/c.safetensors",
        handfix="hands_only",
        downscaling=True,
        scale_factor=2.5,
    )
    fields = params_backend("clarity-upscaler").map_params(params)
    assert "seed" not in fields and fields["scale_factor"] == 2.5
    assert fields["lora_links"] == "https://x.test/a.safetensors,https://x.test/b.safetensors"
    assert fields["custom_sd_model"] == "https://x.test/c.safetensors"
    assert fields["handfix"] == "hands_only" and fields["downscaling"] is True


@pytest.mark.parametrize(
    ("model", "changes", "field"),
    [
        ("clarity-upscaler", {"pattern": True}, "pattern"),
        ("clarity-upscaler", {"multistep_factor": 0.5}, "multistep_factor"),
        ("clarity-upscaler", {"upscaler": "realesrgan-x4plus-anime"}, "upscaler"),
        ("clarity-upscaler", {"noise_source": "cpu"}, "noise_source"),
        ("clarity-upscaler", {"lora_links": "/home/me/lora.safetensors"}, "lora_links"),
        ("clarityai-creative-upscaler", {"scale_factor": 2.5}, "scale_factor"),
        ("clarityai-flux-upscaler", {"scale_factor": 1}, "scale_factor"),
        ("clarityai-flux-upscaler", {"mask": "https://x.test/m.png"}, "mask"),
        ("clarityai-creative-upscaler", {"lora_links": "https://x.test/a"}, "lora_links"),
        ("clarityai-creative-upscaler", {"sharpen": 2}, "sharpen"),
        ("clarityai-flux-upscaler", {"flux.lora_link": "lora.safetensors"}, "flux.lora_link"),
    ],
)
def test_settings_segmind_cannot_express_are_refused(model, changes, field):
    with pytest.raises(JobError) as err:
        params_backend(model).map_params(UpscaleParams().replace(**changes))
    assert err.value.kind is ErrorKind.invalid_request and field in err.value.details["fields"]
    assert "Segmind" in err.value.message and field in err.value.message


def test_refusal_happens_before_anything_is_sent(double, photo, tmp_path):
    err = error_of(double, photo, tmp_path, params=UpscaleParams().replace(pattern=True))
    assert err.kind is ErrorKind.invalid_request and double.count() == 0


# --- errors -------------------------------------------------------------------------------------
def test_missing_key_and_bad_key(double, photo, tmp_path):
    err = error_of(double, photo, tmp_path, key=None)
    assert err.kind is ErrorKind.auth and "SEGMIND_API_KEY" in err.message
    err = error_of(double, photo, tmp_path, key="SG_ffffffffffffffff")
    assert err.kind is ErrorKind.auth and "invalid or may have expired" in err.message
    assert "SG_ffff" not in err.message and not double.jobs


def test_insufficient_credits_names_the_amounts(double, photo, tmp_path):
    double.balance[KEY] = 0.1
    err = error_of(double, photo, tmp_path, model="clarityai-creative-upscaler")
    assert err.kind is ErrorKind.insufficient_funds
    assert err.details["required"] == 0.3 and err.details["available"] == 0.1
    assert "needs 0.3, have 0.1" in err.message and not double.jobs
    double.spend_limited = True
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "spend limit" in err.message


@pytest.mark.parametrize(
    ("text", "required", "available"),
    [
        ("Insufficient credits. Required: 0.30, available: 0.10", 0.3, 0.1),
        ("Not enough credits: need $0.30, have $0.10", 0.3, 0.1),
        ("Insufficient credits: your balance of 0.10 is less than the 0.30 it requires", 0.3, 0.1),
        ("Not enough credits in your account to process the request", None, None),
    ],
)
def test_406_wordings_give_the_amounts_they_name(text, required, available):
    err = params_backend("clarity-upscaler").classify(
        httpx.Response(406, json={"error": text}), during="submit"
    )
    assert err.kind is ErrorKind.insufficient_funds
    assert err.details.get("required") == required
    assert err.details.get("available") == available


def test_406_invalid_content_type_is_a_client_bug_not_money(double, photo, tmp_path):
    double.inject("POST", V2_SUBMIT, "respond", response=Resp.text(406, "Invalid content type"))
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request and "content type" in err.message


def test_invalid_request_names_the_field(double, photo, tmp_path):
    err = error_of(double, photo, tmp_path, options={"input_url": "ftp://x.test/in.png"})
    assert err.kind is ErrorKind.invalid_request and "image" in err.details["fields"]
    assert not double.jobs


def test_invalid_body_accepted_then_failed_at_run_time(double, photo, tmp_path):
    double.validate_at_submit = False  # Segmind's media endpoints validate only when they run
    err = error_of(double, photo, tmp_path, options={"input_url": "ftp://x.test/in.png"})
    assert err.kind is ErrorKind.invalid_request and "when the job ran" in err.message
    assert "image" in err.details["fields"] and double.charged() == 0


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("CUDA error: out of memory", ErrorKind.model_failed),
        ("Output blocked by RAI content policy", ErrorKind.content_rejected),
    ],
)
def test_failed_jobs_arrive_as_422_with_the_status_body(double, photo, tmp_path, message, kind):
    double.scenarios.append(Scenario(run_s=0.05, fail=message))
    err = error_of(double, photo, tmp_path)
    assert err.kind is kind and message in err.message
    assert err.details["metrics"]["inference_time"] == 0.05 and double.charged() == 0


def test_retired_model(double, photo, tmp_path):
    double.retired.add("clarity-upscaler")
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and "retired" in err.message


def test_polls_ride_out_5xx_bursts_and_html_pages(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.2))
    double.inject("GET", STATUS, "respond", times=3, response=Resp.json(503, {"error": "busy"}))
    double.inject("GET", STATUS, "respond", response=Resp.html(502, "502 Bad Gateway"))
    double.inject("GET", r"^/v2/requests/[^/]+$", "respond", response=Resp.html(504, "Timeout"))
    outcome, _ = run(double, photo, tmp_path)
    assert outcome.output.exists() and len(double.jobs) == 1


@pytest.mark.parametrize(
    ("response", "expect"),
    [
        (Resp.html(200, "Welcome"), "HTML"),
        (Resp.json(200, {"status": "RUNNING_SOMEWHERE"}), "unknown status"),
    ],
)
def test_unreadable_poll_answers_are_protocol_errors(double, photo, tmp_path, response, expect):
    double.inject("GET", STATUS, "respond", response=response)
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and expect in err.message


def test_405_html_is_a_protocol_error(double, photo, tmp_path):
    double.inject("POST", V2_SUBMIT, "respond", response=Resp.html(405, "405 Not Allowed"))
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "HTML" in err.message


def test_rate_limit_reset_header_is_honoured(photo, tmp_path):
    window = 0.25
    with SegmindDouble(rpm=3, rpm_window=window) as double:
        double.scenarios.append(Scenario(run_s=0.6))
        outcome, _ = run(double, photo, tmp_path)
        api = [s for s in double.log if not s.path.startswith("/cdn/")]
    assert outcome.output.exists() and len(double.jobs) == 1
    refused = [i for i, s in enumerate(api) if s.status == 429]
    assert refused  # the limit was hit, and every retry waited for the announced reset
    for i in refused:
        reset = (math.floor((api[i].at - 0.002) / window) + 1) * window  # logged just after
        assert api[i + 1].at >= reset - 0.005


def test_rate_limited_submit_is_retried_without_a_second_job(double, photo, tmp_path):
    at = datetime.now(UTC) + timedelta(seconds=0.3)
    reset = at.isoformat().replace("+00:00", "Z")
    limited = Resp.json(429, {"error": "Rate limit exceeded"}, {"x-rate-limit-reset-at-utc": reset})
    double.inject("POST", V2_SUBMIT, "respond", response=limited)
    outcome, _ = run(double, photo, tmp_path)
    _, second = double.requests("POST", V2_SUBMIT)
    # The second submit waits for the reset time itself (not a fixed delay after the first).
    assert outcome.output.exists() and second.at >= at.timestamp() - 0.02
    assert len(double.jobs) == 1


def test_a_long_rate_limit_pause_gives_the_hint_back(double, photo, tmp_path):
    reset = (datetime.now(UTC) + timedelta(seconds=600)).isoformat()
    limited = Resp.json(429, {"error": "Rate limit exceeded"}, {"x-rate-limit-reset-at-utc": reset})
    double.inject("GET", STATUS, "respond", response=limited)
    err = error_of(double, photo, tmp_path, retry_for=1)
    assert err.kind is ErrorKind.rate_limited and 590 < err.retry_after <= 600


# --- never pay twice ----------------------------------------------------------------------------
def test_dropped_submit_is_never_resent(double, photo, tmp_path):
    double.inject("POST", V2_SUBMIT, "drop_after")
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and "may or may not" in err.message
    assert double.count("POST", V2_SUBMIT) == 1 and len(double.jobs_for(KEY)) == 1
    assert KEY not in err.message and err.details["remote"]["phase"] == "submitting"


def test_submit_500_is_retried_but_gateway_502_is_not(double, photo, tmp_path):
    double.inject("POST", V2_SUBMIT, "respond", response=Resp.json(500, {"error": "oops"}))
    outcome, _ = run(double, photo, tmp_path)
    assert outcome.output.exists() and double.count("POST", V2_SUBMIT) == 2
    assert len(double.jobs) == 1
    double.inject("POST", V2_SUBMIT, "respond", response=Resp.html(502, "Bad Gateway"))
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and double.count("POST", V2_SUBMIT) == 3


def test_a_200_without_request_id_is_submit_unknown(double, photo, tmp_path):
    double.inject("POST", V2_SUBMIT, "respond", response=Resp.json(200, {"status": "QUEUED"}))
    err = error_of(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and "without a request id" in err.message


def test_resume_polls_instead_of_submitting(double, photo, tmp_path):
    events = []
    double.scenarios.append(Scenario(run_s=0.2))
    run(double, photo, tmp_path, events=events)
    ticket = next(e.remote for e in events if e.state is JobState.queued)
    (tmp_path / "out.png").unlink()
    outcome, _ = run(double, photo, tmp_path, resume=ticket)
    assert outcome.output.exists() and double.count("POST") == 1 and len(double.jobs) == 1


def test_resume_of_an_unanswered_submit_does_not_resend(double, photo, tmp_path):
    events = []
    double.inject("POST", V2_SUBMIT, "drop_after")
    with pytest.raises(JobError):
        run(double, photo, tmp_path, events=events)
    ticket = next(e.remote for e in events if e.state is JobState.submitting)
    err = error_of(double, photo, tmp_path, resume=ticket)
    assert err.kind is ErrorKind.submit_unknown and double.count("POST") == 1


def test_status_urls_on_another_host_are_not_followed(double, photo, tmp_path):
    with httpx.Client() as raw:
        job = raw.post(
            f"{double.url}/v2/clarity-upscaler",
            json={"image": "https://x.test/a.png"},
            headers={"x-api-key": KEY},
        ).json()
    evil = {
        "request_id": job["request_id"],
        "status": "QUEUED",
        "status_url": "https://evil.test/steal/status",
        "response_url": "https://evil.test/steal",
    }
    double.inject("POST", V2_SUBMIT, "respond", response=Resp.json(200, evil))
    outcome, _ = run(double, photo, tmp_path)
    assert outcome.remote_id == job["request_id"] and double.count("GET", STATUS) >= 1


# --- retention and cancel -----------------------------------------------------------------------
def test_record_expired_after_an_hour_is_lost(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=5))
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            task = asyncio.create_task(
                make(client, double).run(request(photo, tmp_path), events.append)
            )
            await until(lambda: any(e.state is JobState.running for e in events))
            double.clock.advance(3601)
            await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.expired and "one hour" in err.value.message


def test_output_file_expired_after_seven_days_is_lost(double, photo, tmp_path):
    events = []
    run(double, photo, tmp_path, events=events)
    done = next(e.remote for e in events if e.state is JobState.downloading)
    (tmp_path / "out.png").unlink()
    double.clock.advance(7 * 86400 + 1)
    err = error_of(double, photo, tmp_path, resume=done)
    assert err.kind is ErrorKind.expired and "lost" in err.message


def test_cancel_says_segmind_may_still_bill(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=30))
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            task = asyncio.create_task(
                make(client, double).run(request(photo, tmp_path), events.append)
            )
            await until(lambda: any(e.state is JobState.running for e in events))
            task.cancel()
            await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and "Stopped watching" in err.value.message
    assert "bill" in err.value.message and double.count("POST") == 1


# --- v1 sync ------------------------------------------------------------------------------------
def test_sync_mode_returns_bytes_with_billing_headers(double, photo, tmp_path):
    params = UpscaleParams().replace(seed=None)
    outcome, backend = run(double, photo, tmp_path, params=params, options={"segmind_sync": True})
    (job,) = double.jobs_for(KEY)
    info = read_run_info(outcome.output)
    assert info.output_size == (24, 20) and info.params.seed == job.seed  # x-seed-value
    assert outcome.remote_id == job.id and outcome.cost == pytest.approx(0.03)
    assert outcome.cost_unit == "credits" and backend.remaining_credits == pytest.approx(99.97)
    assert double.count(path=r"^/v2/") == 0 and double.count("POST", r"^/v1/clarity") == 1
    assert not list(tmp_path.glob(".*.download"))


def test_sync_mode_from_the_constructor(double, photo, tmp_path):
    outcome, _ = run(double, photo, tmp_path, sync=True)
    assert outcome.output.exists() and double.count(path=r"^/v2/") == 0


def test_dropped_sync_call_is_submit_unknown_and_billed_once(double, photo, tmp_path):
    double.inject("POST", r"^/v1/clarity", "drop_after")
    err = error_of(double, photo, tmp_path, sync=True)
    assert err.kind is ErrorKind.submit_unknown
    assert double.count("POST") == 1 and double.charged() == pytest.approx(0.03)


def test_sync_model_failure_is_not_retried(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.01, fail="NSFW content detected"))
    err = error_of(double, photo, tmp_path, sync=True)
    assert err.kind is ErrorKind.content_rejected and double.count("POST") == 1
    double.inject("POST", r"^/v1/clarity", "respond", response=Resp.html(504, "Timeout"))
    err = error_of(double, photo, tmp_path, sync=True)
    assert err.kind is ErrorKind.submit_unknown and double.count("POST") == 2


def test_sync_result_kept_before_a_crash_is_saved_on_resume(double, photo, tmp_path):
    events = []
    run(double, photo, tmp_path, events=events, sync=True)
    done = next(e.remote for e in events if e.state is JobState.downloading)
    assert done["phase"] == "done" and done["outputs"][0].startswith("segmind-sync:")
    # As if Clarifier stopped after keeping the paid-for bytes but before saving the output.
    (tmp_path / "out.png").unlink()
    stash(tmp_path / "out.png", "j1", _png(30, 20))
    outcome, _ = run(double, photo, tmp_path, resume=done, sync=True)
    assert read_run_info(outcome.output).output_size == (30, 20) and double.count("POST") == 1
    err = error_of(double, photo, tmp_path, resume=done, sync=True)  # the stash is gone now
    assert err.kind is ErrorKind.expired and "lost" in err.message


def test_sync_call_interrupted_by_quitting_leaves_the_checkpoint(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=1.0))
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            backend = make(client, double, sync=True)
            backend.detached = True  # the app is quitting, not the person canceling
            task = asyncio.create_task(backend.run(request(photo, tmp_path), events.append))
            await until(lambda: len(double.jobs) == 1)  # the call is in flight at Segmind
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
    assert [e.remote["phase"] for e in events if e.remote] == ["submitting"]


def test_sync_checkpoint_resumes_as_submit_unknown(double, photo, tmp_path):
    events = []
    double.inject("POST", r"^/v1/clarity", "drop_after")
    with pytest.raises(JobError):
        run(double, photo, tmp_path, events=events, sync=True)
    ticket = next(e.remote for e in events if e.remote)
    assert ticket["extra"]["sync"] is True
    err = error_of(double, photo, tmp_path, resume=ticket, sync=True)
    assert err.kind is ErrorKind.submit_unknown and double.count("POST") == 1


# --- the double, as Segmind's own SDK sees it ---------------------------------------------------
@pytest.fixture
def sdk(double):
    """A Segmind SDK client pointed at the double (the SDK derives /v2 from the /v1 base)."""
    segmind = pytest.importorskip("segmind")
    clients = []

    def client(key=KEY):
        made = segmind.SegmindClient(api_key=key, base_url=f"{double.url}/v1")
        clients.append(made)
        return made

    yield segmind, client
    for made in clients:
        made._client.close()  # the SDK has no close(); its httpx client would leak a socket


def _png_b64() -> str:
    return base64.b64encode(_png(8, 6)).decode()


def test_contract_sdk_submit_and_wait(double, sdk):
    _, make_client = sdk
    client = make_client()
    job = client.submit_async("clarity-upscaler", image=_png_b64(), scale_factor=2)
    assert job.submit_response["status"] == "QUEUED" and job.submit_response["poll_url"]
    result = job.wait(timeout=10, interval=0.01)
    assert result["status"] == "COMPLETED" and result["metrics"]["cost"] == 0.03
    with httpx.Client() as raw:
        image = Image.open(io.BytesIO(raw.get(result["output"]).content))
    assert image.size == (16, 12)
    request_log = double.requests("POST")[0]
    assert request_log.headers["x-initiator"] == "SDK-PY"


def test_contract_sdk_sees_failure_as_inference_failed(double, sdk):
    segmind, make_client = sdk
    double.scenarios.append(Scenario(run_s=0.02, fail="Prompt is Mandatory and must be string"))
    client = make_client()
    job = client.submit_async("clarityai-flux-upscaler", image=_png_b64(), scale_factor=2)
    with pytest.raises(segmind.InferenceFailed) as err:
        job.wait(timeout=10, interval=0.01)
    assert err.value.detail == "Prompt is Mandatory and must be string"
    assert err.value.status_body["status"] == "FAILED"
    assert job.result()["status"] == "FAILED"  # the result route serves the 422 body too


def test_contract_sdk_run_sync_and_errors(double, sdk):
    segmind, make_client = sdk
    client = make_client()
    response = client.run_sync("clarity-upscaler", image=_png_b64(), scale_factor=2, seed=7)
    assert response.headers["x-seed-value"] == "7" and float(response.headers["x-cost"]) == 0.03
    assert Image.open(io.BytesIO(response.content)).size == (16, 12)
    bad = make_client("SG_nope")
    with pytest.raises(segmind.SegmindError) as err:
        bad.submit_async("clarity-upscaler", image=_png_b64())
    assert err.value.status == 401 and err.value.detail == BAD_KEY
    double.balance[KEY] = 0.0
    with pytest.raises(segmind.SegmindError) as err:
        client.submit_async("clarity-upscaler", image=_png_b64())
    assert err.value.status == 406 and "Insufficient credits" in err.value.detail
    double.balance[KEY] = 1.0
    job = client.submit_async("clarity-upscaler", image=_png_b64())
    double.clock.advance(3601)
    with pytest.raises(segmind.SegmindError) as err:
        job.status()
    assert err.value.status == 404 and "not found" in err.value.detail


# --- the double's own gateway rules -------------------------------------------------------------
def test_double_gateway_rules():
    with SegmindDouble(keys=(KEY, "SG_fedcba9876543210"), rpm=5) as double, httpx.Client() as raw:
        page = raw.get(f"{double.url}/v2/clarity-upscaler", headers={"x-api-key": KEY})
        assert page.status_code == 405 and page.headers["content-type"].startswith("text/html")
        plain = raw.post(
            f"{double.url}/v2/clarity-upscaler", content=b"{}", headers={"x-api-key": KEY}
        )
        assert plain.status_code == 406 and plain.text == "Invalid content type"
        bearer = raw.post(
            f"{double.url}/v2/clarity-upscaler",
            json={"image": "https://x.test/a.png"},
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert bearer.status_code == 401 and bearer.json()["error"] == MISSING_KEY
        # 5 requests per minute per key, in a fresh window; the other key is unaffected.
        now = double.clock.now()
        double.clock.advance(math.ceil(now / 60) * 60 - now + 0.01)
        codes = [raw.get(f"{double.url}/v2/requests/x/status", headers={"x-api-key": KEY})]
        codes += [
            raw.get(f"{double.url}/v2/requests/x/status", headers={"x-api-key": KEY})
            for _ in range(5)
        ]
        assert [c.status_code for c in codes] == [404] * 3 + [404, 404, 429]
        assert "x-rate-limit-reset-at-utc" in codes[-1].headers
        assert "retry-after" not in codes[-1].headers
        other = raw.get(
            f"{double.url}/v2/requests/x/status", headers={"x-api-key": "SG_fedcba9876543210"}
        )
        assert other.status_code == 404


def test_double_poll_url_mirrors_the_result(double):
    with httpx.Client(headers={"x-api-key": KEY}) as raw:
        job = raw.post(f"{double.url}/v2/clarity-upscaler", json={"image": _png_b64()}).json()
        time.sleep(0.08)
        legacy = raw.get(job["poll_url"]).json()
        assert legacy == raw.get(job["response_url"]).json()
        assert legacy["status"] == "COMPLETED" and legacy["output"].startswith(double.url)


def test_cancelling_a_sync_call_says_segmind_may_still_bill(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=1.5)
    events = []

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            backend = make(client, double, sync=True)
            task = asyncio.create_task(backend.run(request(photo, tmp_path), events.append))
            await until(lambda: any(e.state is JobState.submitting for e in events))
            await asyncio.sleep(0.3)  # the call is in flight (the double holds it 1.5 s)
            task.cancel()
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and isinstance(err.value.message, str)
    assert "may" in err.value.message and "bill" in err.value.message
    assert err.value.details == {"remote_final": False}


def test_clarity_s_own_pre_upscaler_is_not_refused():
    """Segmind's clarity-upscaler runs Clarity, whose pre-upscaler is 4x-UltraSharp: asking for
    it (the "Clarity default" preset does when it is installed) changes nothing there."""
    fields = params_backend("clarity-upscaler").map_params(UpscaleParams(upscaler="4x-UltraSharp"))
    assert "upscaler" not in fields
