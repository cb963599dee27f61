"""The shared remote-backend flow (submit, watch, download, save) against a toy protocol."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.remote import PollCadence, RequestBudget
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.backends.toy import ToyBackend, ToyDouble
from tests.doubles.http_double import Resp, Scenario, until


@pytest.fixture
def double():
    with ToyDouble() as d:
        yield d


def run(double, photo, tmp_path, *, resume=None, idempotent=False, events=None, **kw):
    async def go():
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(client, double.url, "secret", retry_base=0.01, **kw)
            backend.idempotent_submit = idempotent
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams(), resume=resume)
            return await backend.run(request, (events if events is not None else []).append)

    return asyncio.run(go())


def test_success_saves_output_with_metadata(double, photo, tmp_path):
    events = []
    outcome = run(double, photo, tmp_path, events=events)
    assert outcome.output == tmp_path / "out.png"
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == "toy/toy-1" and info.source_size == (12, 10)
    assert info.output_size == (24, 20)
    states = [e.state for e in events if e.state]
    assert states[:3] == [JobState.uploading, JobState.submitting, JobState.queued]
    assert states[-1] == JobState.downloading
    assert events[1].remote["phase"] == "submitting" and events[1].remote["remote_id"] is None
    assert not list(tmp_path.glob(".*.download"))  # the stash is gone once saved


def test_failure_and_content_rejection(double, photo, tmp_path):
    double.scenarios.append(Scenario(fail="CUDA error"))
    with pytest.raises(JobError) as err:
        run(double, photo, tmp_path)
    assert err.value.kind is ErrorKind.model_failed and "CUDA error" in err.value.message
    double.scenarios.append(Scenario(fail="NSFW content detected"))
    with pytest.raises(JobError) as err:
        run(double, photo, tmp_path)
    assert err.value.kind is ErrorKind.content_rejected


def test_dropped_submit_is_never_resent_without_idempotency(double, photo, tmp_path):
    double.inject("POST", r"^/jobs$", "drop_after")
    with pytest.raises(JobError) as err:
        run(double, photo, tmp_path)
    assert err.value.kind is ErrorKind.submit_unknown
    assert double.count("POST", r"^/jobs$") == 1 and len(double.jobs) == 1


def test_dropped_submit_is_resent_with_the_same_key_when_idempotent(double, photo, tmp_path):
    double.honour_keys = True
    double.inject("POST", r"^/jobs$", "drop_after")
    outcome = run(double, photo, tmp_path, idempotent=True)
    assert outcome.output.exists()
    assert double.count("POST", r"^/jobs$") == 2 and len(double.jobs) == 1


def test_polls_ride_out_5xx_bursts_and_429_storms(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.3)
    double.inject("GET", r"^/jobs/", "respond", times=3, response=Resp.json(503, {"error": "busy"}))
    double.inject(
        "GET",
        r"^/jobs/",
        "respond",
        times=2,
        response=Resp.json(429, {"error": "slow down"}, {"Retry-After": "0.05"}),
    )
    double.inject("GET", r"^/jobs/", "respond", times=1, response=Resp.html(502, "Bad Gateway"))
    outcome = run(double, photo, tmp_path)
    # What survived: the provider's result, pixel for pixel and byte for byte, from one submit.
    served = served_result(double)
    assert np.array_equal(pixels(outcome.output), pixels(served))
    assert idat(outcome.output.read_bytes()) == idat(served)
    assert double.count("POST", r"^/jobs$") == 1 and len(double.jobs) == 1
    statuses = [s.status for s in double.requests("GET", r"^/jobs/")]
    assert statuses[:6] == [503, 503, 503, 429, 429, 502] and statuses[-1] == 200


def served_result(double) -> bytes:
    (job,) = double.jobs.values()
    data = double.cdn_lookup(job["output"])
    assert data is not None
    return data


def pixels(source) -> np.ndarray:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return np.asarray(im.convert("RGB"))


def idat(data: bytes) -> bytes:
    pos, out = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            out += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return out


def _jpeg(size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 160, 90)).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def test_a_result_in_the_asked_format_is_kept_as_received(double, photo, tmp_path):
    double.scenarios.append(Scenario(output=_jpeg()))

    async def go():
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(client, double.url, "secret", retry_base=0.01)
            params = UpscaleParams(output_format="jpg")
            request = Request("j1", photo, tmp_path / "out.png", params)
            return await backend.run(request, lambda e: None)

    outcome = asyncio.run(go())
    assert outcome.output == tmp_path / "out.jpg"
    kept, served = outcome.output.read_bytes(), served_result(double)
    # The JPEG's image data is the provider's, byte for byte: no second lossy encode.
    assert kept[kept.index(b"\xff\xda") :] == served[served.index(b"\xff\xda") :]
    info = read_run_info(outcome.output)
    assert info is not None and info.output_size == (24, 20) and info.source_size == (12, 10)


def test_a_result_in_another_format_is_converted(double, photo, tmp_path):
    double.scenarios.append(Scenario(output=_jpeg()))
    outcome = run(double, photo, tmp_path)  # PNG asked for
    assert outcome.output.suffix == ".png" and outcome.output.read_bytes().startswith(b"\x89PNG")
    assert np.array_equal(pixels(outcome.output), pixels(served_result(double)))
    assert read_run_info(outcome.output).output_size == (24, 20)


def test_the_persons_output_cap_is_refused_before_submit(double, photo, tmp_path):
    async def go():
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(client, double.url, "secret", retry_base=0.01)
            params = UpscaleParams(scale_factor=8)  # 12×10 → 96×80
            options = {"max_output_pixels": 2000}
            request = Request("j1", photo, tmp_path / "out.png", params, options=options)
            return await backend.run(request, lambda e: None)

    with pytest.raises(JobError) as err:
        asyncio.run(go())

    # Clarity's own size rule (each ×2 pass floors to a multiple of 8) decides what fits.
    def area(scale: float) -> int:
        w, h = UpscaleParams(scale_factor=scale, mode="creative").output_size(12, 10)
        return w * h

    fits = max(k / 2 for k in range(2, 17) if area(k / 2) <= 2000)
    assert (
        err.value.kind is ErrorKind.invalid_request and err.value.details["largest_scale"] == fits
    )
    assert "Your output cap" in err.value.message and f"×{fits:g} (" in err.value.message
    assert area(8) > 2000 and double.log == []


def test_expired_record_is_lost(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=5)
    first = []

    async def go():
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(client, double.url, "secret")
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend.run(request, first.append))
            await until(lambda: any(e.state is JobState.queued for e in first))
            double.clock.advance(7200)
            await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.expired


def test_resume_polls_instead_of_submitting(double, photo, tmp_path):
    events = []
    double.default_scenario = Scenario(run_s=0.2)
    run(double, photo, tmp_path, events=events)
    ticket = next(e.remote for e in events if e.state is JobState.queued)
    (tmp_path / "out.png").unlink()
    outcome = run(double, photo, tmp_path, resume=ticket)
    assert outcome.output.exists() and double.count("POST", r"^/jobs$") == 1


def test_cancel_reaches_the_provider(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=30)
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(client, double.url, "secret")
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend.run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            task.cancel()
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and "canceled at Toy" in err.value.message
    assert double.count("POST", r"/cancel$") == 1


def test_missing_key_and_bad_key(double, photo, tmp_path):
    async def go(key):
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(client, double.url, key)
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            return await backend.run(request, lambda e: None)

    with pytest.raises(JobError) as err:
        asyncio.run(go(None))
    assert err.value.kind is ErrorKind.auth and "TOY_KEY" in err.value.message
    with pytest.raises(JobError) as err:
        asyncio.run(go("wrong-key"))
    assert err.value.kind is ErrorKind.auth and "wrong-key" not in err.value.message


def test_budget_is_shared_and_never_exceeded(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.3)
    budget = RequestBudget(10, 0.5)

    async def go():
        async with httpx.AsyncClient() as client:
            backend = ToyBackend(
                client, double.url, "secret", budget=budget, cadence=PollCadence(0.01)
            )
            reqs = [
                Request(f"j{i}", photo, tmp_path / f"out{i}.png", UpscaleParams()) for i in range(4)
            ]
            return await asyncio.gather(*(backend.run(r, lambda e: None) for r in reqs))

    outcomes = asyncio.run(go())
    assert all(o.output.exists() for o in outcomes)
    api = sorted(s.real for s in double.log if not s.path.startswith("/cdn/"))
    assert max(sum(1 for t in api if a <= t < a + 0.5) for a in api) <= 10
