"""The Replicate backend against the Replicate double, and the double against the official SDK."""

from __future__ import annotations

import asyncio
import io
import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.clarity_inputs import clarity_input
from app.backends.providers.replicate import ReplicateBackend
from app.backends.remote import PollCadence, Ticket, prepare_input, retry_hint
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.doubles.http_double import Resp, Scenario, VirtualClock, WindowLimiter, until
from tests.doubles.replicate import CLARITY, CLARITY_VERSION, OLD_VERSION, ReplicateDouble

CREATE = r"^/v1/predictions$"


@pytest.fixture
def double():
    with ReplicateDouble() as d:
        d.default_scenario = Scenario(run_s=0.1)
        yield d


@pytest.fixture
def big_photo(tmp_path: Path) -> Path:
    """Noise does not compress: over Replicate's 256 KB inline limit, so it is uploaded."""
    path = tmp_path / "big.png"
    rng = random.Random(3)
    Image.frombytes("RGB", (320, 320), rng.randbytes(320 * 320 * 3)).save(path)
    assert path.stat().st_size > 256 * 1024
    return path


def backend(client: httpx.AsyncClient, double: ReplicateDouble, **kw) -> ReplicateBackend:
    kw.setdefault("cadence", PollCadence(0.01))
    kw.setdefault("retry_base", 0.01)
    return ReplicateBackend(client, double.url, kw.pop("key", double.token), **kw)


def run(double, photo, tmp_path, *, params=None, resume=None, events=None, **kw):
    async def go():
        async with httpx.AsyncClient() as client:
            request = Request(
                "j1", photo, tmp_path / "out.png", params or UpscaleParams(), resume=resume
            )
            sink = events if events is not None else []
            return await backend(client, double, **kw).run(request, sink.append)

    return asyncio.run(go())


def fails(double, photo, tmp_path, **kw) -> JobError:
    with pytest.raises(JobError) as err:
        run(double, photo, tmp_path, **kw)
    return err.value


def created(double) -> list[dict]:
    return [json.loads(s.body) for s in double.requests("POST", CREATE)]


# --- success ----------------------------------------------------------------------------------
def test_success_sends_clarity_inputs_and_saves_with_metadata(double, photo, tmp_path):
    events: list = []
    mask = tmp_path / "mask.png"
    Image.new("L", (12, 10), 255).save(mask)
    params = UpscaleParams(seed=None, sharpen=2, mask=str(mask))
    double.scenarios.append(Scenario(run_s=0.4))  # long enough to be seen running
    outcome = run(double, photo, tmp_path, params=params, events=events)
    [sent] = created(double)
    seen = double.requests("POST", CREATE)[0]
    assert seen.headers["authorization"] == f"Bearer {double.token}"
    assert seen.headers["cancel-after"] == "30m"
    assert sent["version"] == f"{CLARITY}:{CLARITY_VERSION}"
    inputs = sent["input"]
    assert inputs["image"].startswith("data:image/png;base64,")  # small: inline
    assert inputs["mask"].startswith("data:image/png;base64,") and inputs["mask"] != inputs["image"]
    assert inputs["sharpen"] == 2 and inputs["handfix"] == "disabled" and inputs["pattern"] is False
    assert isinstance(inputs["seed"], int)  # drawn here: Clarity's own default is 1337
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == f"replicate/{CLARITY}"
    assert info.output_size == (24, 20) and info.source_size == (12, 10)
    assert info.params.seed == inputs["seed"] and info.params.mode == "creative"
    assert outcome.remote_id in double.predictions and double.billed() == 1
    states = [e.state for e in events if e.state]
    assert states[:3] == [JobState.uploading, JobState.submitting, JobState.queued]
    assert JobState.running in states and states[-1] is JobState.downloading
    assert any(e.total == 100 and e.done > 0 for e in events)  # progress from the tqdm logs


def test_latest_version_is_looked_up_once_per_backend(double, photo, tmp_path):
    async def go():
        async with httpx.AsyncClient() as client:
            b = backend(client, double)
            for i in range(2):
                request = Request(f"j{i}", photo, tmp_path / f"o{i}.png", UpscaleParams())
                await b.run(request, lambda e: None)

    asyncio.run(go())
    assert double.count("GET", r"^/v1/models/") == 1 and len(double.predictions) == 2


def test_pinned_old_version_drops_default_inputs_and_refuses_changed_ones(double, photo, tmp_path):
    model = f"{CLARITY}:{OLD_VERSION}"
    run(double, photo, tmp_path, model=model)
    [sent] = created(double)
    assert sent["version"] == model and "tiling_width" not in sent["input"]
    assert double.count("GET", rf"/versions/{OLD_VERSION}$") == 1
    err = fails(double, photo, tmp_path, model=model, params=UpscaleParams(tiling_width=64))
    assert err.kind is ErrorKind.invalid_request and "tiling_width" in err.details["fields"]
    err = fails(double, photo, tmp_path, model=model, params=UpscaleParams(mask=str(photo)))
    assert err.kind is ErrorKind.invalid_request and list(err.details["fields"]) == ["mask"]
    assert len(double.predictions) == 1  # refused before anything was created


def test_large_input_goes_through_the_files_api_and_is_deleted_after(double, big_photo, tmp_path):
    run(double, big_photo, tmp_path)
    upload = double.requests("POST", r"^/v1/files$")[0]
    assert b'name="content"' in upload.body
    [sent] = created(double)
    assert sent["input"]["image"].startswith(f"{double.url}/v1/files/")
    assert double.count("DELETE", r"^/v1/files/") == 1 and not double.files


# --- refusals and errors ----------------------------------------------------------------------
def test_mapping_refuses_what_clarity_cannot_take_before_any_request(double, photo, tmp_path):
    params = UpscaleParams(upscaler="4x-NMKD-Siax", lora_links="/home/me/detail.safetensors")
    params = params.replace(**{"creative.fractality": 4})
    err = fails(double, photo, tmp_path, params=params)
    assert err.kind is ErrorKind.invalid_request
    assert {"upscaler", "lora_links", "creative"} <= set(err.details["fields"])
    assert not double.log
    fields = clarity_input(UpscaleParams(lora_links=" https://a/x.safetensors ,"), "Replicate")
    assert fields["lora_links"] == "https://a/x.safetensors"
    # Clarity's own pre-upscaler is what hosted Clarity runs anyway: the preset that picks it
    # locally runs there unchanged.
    assert "upscaler" not in clarity_input(UpscaleParams(upscaler="4x-UltraSharp"), "Replicate")


def test_missing_and_bad_token(double, photo, tmp_path):
    err = fails(double, photo, tmp_path, key=None)
    assert err.kind is ErrorKind.auth and "REPLICATE_API_TOKEN" in err.message
    err = fails(double, photo, tmp_path, key="r8_wrong_secret")
    assert err.kind is ErrorKind.auth and "r8_wrong_secret" not in err.message
    assert "authentication token" in err.message


def test_insufficient_credit(double, photo, tmp_path):
    double.balance_zero = True
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "insufficient credit" in err.message
    assert err.details["http_status"] == 402 and not double.predictions


def test_invalid_input_names_the_field(double, photo, tmp_path):
    err = fails(double, photo, tmp_path, params=UpscaleParams(scheduler="LMS"))
    assert err.kind is ErrorKind.invalid_request and "Replicate refused the input" in err.message
    assert list(err.details["fields"]) == ["scheduler"]


def test_refused_version_and_unknown_model(double, photo, tmp_path):
    body = {
        "title": "Invalid version or not permitted",
        "detail": "The specified version does not exist (or perhaps you don't have permission "
        "to use it?)",
        "status": 422,
    }
    double.inject("POST", CREATE, "respond", response=Resp.json(422, body))
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request and "payment method" in err.message
    err = fails(double, photo, tmp_path, model=f"{CLARITY}:{'0' * 64}")
    assert err.kind is ErrorKind.model_failed and "no model" in err.message


def test_failed_run_and_content_rejection(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.05, fail="CUDA error: out of memory"))
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and "CUDA error" in err.message
    double.scenarios.append(Scenario(run_s=0.05, fail="NSFW content detected in the output"))
    assert fails(double, photo, tmp_path).kind is ErrorKind.content_rejected


def test_no_output_is_the_handfix_quirk(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.05, empty_output=True))
    err = fails(double, photo, tmp_path, params=UpscaleParams(handfix="hands_only"))
    assert err.kind is ErrorKind.model_failed and "returned no image" in err.message
    assert "no hands" in err.message


def test_deadline_before_start_aborts_uncharged_and_while_running_cancels(photo, tmp_path):
    with ReplicateDouble(clock=VirtualClock(speed=20)) as double:
        double.scenarios.append(Scenario(queue_s=30))
        err = fails(double, photo, tmp_path, cancel_after="2s")
        assert err.kind is ErrorKind.model_failed and "nothing was charged" in err.message
        assert double.billed() == 0
        double.scenarios.append(Scenario(queue_s=0, run_s=60))
        err = fails(double, photo, tmp_path, cancel_after="2s")
        assert err.kind is ErrorKind.canceled and "deadline" in err.message
        assert double.billed() == 1
        assert double.requests("POST", CREATE)[0].headers["cancel-after"] == "2s"


def test_throttled_submit_waits_the_hint_and_creates_once(double, photo, tmp_path):
    throttled = {"detail": "Request was throttled. Your rate limit resets in ~1s."}
    assert retry_hint({}, {"detail": "Your rate limit resets in ~30s."}) == 30.0
    double.inject("POST", CREATE, "respond", response=Resp.json(429, throttled))
    run(double, photo, tmp_path)
    first, second = double.requests("POST", CREATE)
    assert first.status == 429 and second.status == 201 and len(double.predictions) == 1
    assert second.real - first.real >= 0.9


def test_the_doubles_own_poll_limit_is_ridden_out(double, photo, tmp_path):
    double.others = WindowLimiter(4, 0.5, double.clock)
    double.default_scenario = Scenario(run_s=0.6)
    assert run(double, photo, tmp_path).output.exists()
    assert any(s.status == 429 for s in double.log)


def test_polls_ride_out_5xx_bursts_and_html_pages(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.3)
    poll = r"^/v1/predictions/\w+$"
    double.inject("GET", poll, "respond", times=3, response=Resp.json(503, {"detail": "busy"}))
    double.inject("GET", poll, "respond", response=Resp.html(502, "Bad Gateway"))
    outcome = run(double, photo, tmp_path)
    # What survived: the prediction's own pixels (24×20: the input ×2), from one create.
    [prediction] = double.predictions.values()
    assert prediction.output is not None
    served = double.cdn_lookup(prediction.output[0])
    assert served is not None
    with Image.open(outcome.output) as kept, Image.open(io.BytesIO(served)) as original:
        assert kept.size == (24, 20)
        assert np.array_equal(np.asarray(kept.convert("RGB")), np.asarray(original.convert("RGB")))
    assert double.count("POST", CREATE) == 1 and outcome.remote_id == prediction.id
    statuses = [s.status for s in double.requests("GET", poll)]
    assert statuses[:4] == [503, 503, 503, 502] and statuses[-1] == 200


def test_non_json_and_unknown_status_are_protocol_errors(double, photo, tmp_path):
    poll = r"^/v1/predictions/\w+$"
    double.inject("GET", poll, "respond", response=Resp.text(200, "<html>maintenance</html>"))
    assert fails(double, photo, tmp_path).kind is ErrorKind.protocol
    weird = Resp.json(200, {"id": "x", "status": "teleporting"})
    double.inject("GET", poll, "respond", response=weird)
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "teleporting" in err.message


# --- expiry, resume, cancel -------------------------------------------------------------------
def test_removed_data_is_lost(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=2)
    events: list = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.clock.advance(3 * 3600)
            await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.expired and "an hour" in err.value.message


def test_expired_output_link_is_lost_when_resuming_late(double, photo, tmp_path):
    events: list = []
    run(double, photo, tmp_path, events=events)
    done = next(e.remote for e in events if e.remote and e.remote["phase"] == "done")
    (tmp_path / "out.png").unlink()
    double.clock.advance(2 * 3600)
    err = fails(double, photo, tmp_path, resume=done)
    assert err.kind is ErrorKind.expired and "lost" in err.message


def test_resume_polls_without_creating_again(double, photo, tmp_path):
    events: list = []
    run(double, photo, tmp_path, events=events)
    queued = next(e.remote for e in events if e.state is JobState.queued)
    (tmp_path / "out.png").unlink()
    assert run(double, photo, tmp_path, resume=queued).output.exists()
    assert len(double.predictions) == 1 and double.count("POST", CREATE) == 1


def test_cancel_reaches_replicate(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=60)
    events: list = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.running for e in events))
            task.cancel()
            await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and "canceled at Replicate" in err.value.message
    [prediction] = double.predictions.values()
    assert double.count("POST", r"/cancel$") == 1 and prediction.timeline()[0] == "canceled"


# --- never pay twice --------------------------------------------------------------------------
@pytest.mark.parametrize("lean", [False, True])
def test_dropped_create_is_reconciled_not_resent(double, photo, tmp_path, lean):
    double.list_with_input = not lean
    double.inject("POST", CREATE, "drop_after")
    outcome = run(double, photo, tmp_path)
    assert outcome.output.exists() and outcome.remote_id in double.predictions
    assert double.count("POST", CREATE) == 1 and len(double.predictions) == 1
    assert double.billed() == 1 and double.count("GET", r"^/v1/predictions$") >= 1


def test_dropped_upload_job_is_reconciled_across_pages(double, photo, big_photo, tmp_path):
    double.page_size = 1
    double.inject("POST", CREATE, "drop_after")
    # The listing is answered late, after two newer predictions: ours is on the third page.
    double.inject("GET", r"^/v1/predictions$", "delay", delay=0.5)
    other = {"version": f"{CLARITY}:{CLARITY_VERSION}", "input": {"image": "https://x/a.png"}}

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", big_photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend(client, double).run(request, lambda e: None))
            await until(lambda: len(double.predictions) == 1)
            for _ in range(2):
                answer = await client.post(
                    f"{double.url}/v1/predictions",
                    json=other,
                    headers={"Authorization": f"Bearer {double.token}"},
                )
                assert answer.status_code == 201
            return await task

    outcome = asyncio.run(go())
    ours = min(double.predictions.values(), key=lambda p: p.created)
    assert outcome.remote_id == ours.id and len(double.predictions) == 3
    assert double.count("GET", r"^/v1/predictions$") == 3
    assert double.count("POST", CREATE) == 3  # ours once (dropped), the two others


def test_an_ambiguous_match_stops_in_submit_unknown(double, photo, tmp_path):
    params = UpscaleParams(seed=7)
    image = prepare_input(photo).data_url()
    twin = {**clarity_input(params, "Replicate"), "image": image}
    httpx.post(
        f"{double.url}/v1/predictions",
        json={"version": f"{CLARITY}:{CLARITY_VERSION}", "input": twin},
        headers={"Authorization": f"Bearer {double.token}"},
    ).raise_for_status()
    double.inject("POST", CREATE, "drop_after")
    err = fails(double, photo, tmp_path, params=params)
    assert err.kind is ErrorKind.submit_unknown and "did not send it again" in err.message
    assert len(double.predictions) == 2 and double.count("POST", CREATE) == 2


def test_a_create_that_never_arrived_is_not_guessed(double, photo, tmp_path):
    double.inject("POST", CREATE, "drop_before")
    err = fails(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and not double.predictions
    assert err.details["remote"]["phase"] == "submitting"


def test_restart_mid_submit_adopts_only_an_upload(double, photo, big_photo, tmp_path):
    events: list = []
    run(double, big_photo, tmp_path, events=events)
    queued = next(e.remote for e in events if e.state is JobState.queued)
    (tmp_path / "out.png").unlink()
    crashed = {**queued, "phase": "submitting", "remote_id": None, "urls": {}}
    crashed["extra"] = {k: v for k, v in queued["extra"].items() if k != "sent_at"}
    outcome = run(double, big_photo, tmp_path, resume=crashed)
    assert outcome.remote_id == queued["remote_id"] and len(double.predictions) == 1
    inline = Ticket(phase="submitting", key="k", extra={"image": "", "image_sha256": "ab"})
    err = fails(double, photo, tmp_path, resume=inline.to_dict())
    assert err.kind is ErrorKind.submit_unknown and len(double.predictions) == 1


# --- the double, driven by the official client ------------------------------------------------
def test_contract_with_the_replicate_sdk(double, photo):
    replicate = pytest.importorskip("replicate")
    from replicate.exceptions import ModelError, ReplicateError

    client = replicate.Client(api_token=double.token, base_url=double.url)
    client.poll_interval = 0.01
    model = client.models.get(CLARITY)
    assert model.latest_version is not None and model.latest_version.id == CLARITY_VERSION
    assert (
        "scale_factor"
        in model.latest_version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    )
    uploaded = client.files.create(photo)
    assert uploaded.size == photo.stat().st_size and uploaded.urls["get"].startswith(double.url)
    version = f"{CLARITY}:{CLARITY_VERSION}"
    prediction = client.predictions.create(version=version, input={"image": photo, "seed": 3})
    assert prediction.status in ("starting", "processing")
    assert prediction.urls["get"].startswith(double.url)
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.metrics["predict_time"] > 0
    prediction.reload()
    assert prediction.input["seed"] == 3 and prediction.logs and prediction.completed_at
    data = httpx.get(prediction.output[0]).content
    assert Image.open(__import__("io").BytesIO(data)).size == (24, 20)
    assert double.count("POST", r"^/v1/files$") == 2  # the SDK uploaded the Path itself
    # replicate.run: a bare version id with Prefer: wait
    output = client.run(version, input={"image": uploaded.urls["get"]})
    assert isinstance(output, list) and len(output) == 1
    assert double.requests("POST", CREATE)[-1].headers["prefer"] == "wait"
    double.scenarios.append(Scenario(run_s=0.05, fail="CUDA error"))
    with pytest.raises(ModelError) as failed:
        client.run(version, input={"image": uploaded.urls["get"]})
    assert failed.value.prediction.error == "CUDA error"
    with pytest.raises(ReplicateError) as refused:
        client.predictions.create(version=f"{CLARITY}:{'1' * 64}", input={})
    assert refused.value.status == 422 and refused.value.title == "Invalid version or not permitted"
    with pytest.raises(ReplicateError) as invalid:
        client.predictions.create(version=version, input={"image": photo, "creativity": 5})
    assert invalid.value.status == 422 and "input.creativity" in (invalid.value.detail or "")
    double.default_scenario = Scenario(run_s=30)
    running = client.predictions.create(version=version, input={"image": uploaded.urls["get"]})
    assert client.predictions.cancel(running.id).status == "canceled"
    double.page_size = 2
    page = client.predictions.list()
    assert len(page.results) == 2 and page.next is not None
    rest = client.predictions.list(page.next)
    assert {p.id for p in page.results}.isdisjoint(p.id for p in rest.results)
    assert client.files.delete(uploaded.id) and double.files.keys() == {
        f.id for f in client.files.list()
    }


def test_contract_token_scheme_and_bad_token(double):
    replicate = pytest.importorskip("replicate")
    from replicate.exceptions import ReplicateError

    old_style = replicate.Client(
        headers={"Authorization": f"Token {double.token}"}, base_url=double.url
    )
    assert old_style.models.get(CLARITY).latest_version.id == CLARITY_VERSION
    with pytest.raises(ReplicateError) as err:
        replicate.Client(api_token="r8_nope", base_url=double.url).models.get(CLARITY)
    assert err.value.status == 401
