"""Wireflow: the double against the guide's own requests (seed 004), and the backend against it."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import math
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.wireflow import WireflowBackend
from app.backends.providers.wireflow_graph import node_params, result_urls
from app.backends.remote import PollCadence, RequestBudget
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.backends.seeds import fixture
from tests.doubles.http_double import Resp, Scenario, until
from tests.doubles.wireflow import NODE_TYPE, WfKey, WireflowDouble

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}
PAGE = fixture("004_7bd4188ca1c954d1")
CREATE = PAGE["create"]["body"]
EXECUTE = PAGE["execute"]["body"]
EXECUTE_RE = r"/execute$"
WORKFLOWS_RE = r"^/api/v1/workflows$"


@pytest.fixture
def double():
    with WireflowDouble() as d:
        d.plan(requests=100_000, executions=100_000)
        d.default_scenario = Scenario(run_s=0.1)
        yield d


def backend_for(client, double, key=KEY, **kw):
    kw.setdefault("cadence", PollCadence(0.01))
    kw.setdefault("budget", RequestBudget(100_000, 1.0))
    kw.setdefault("execute_budget", RequestBudget(100_000, 1.0))
    kw.setdefault("workflow_cache", {})
    return WireflowBackend(client, double.url, key, retry_base=0.01, **kw)


def run(double, photo, tmp_path, *, params=None, resume=None, events=None, key=KEY, **kw):
    options = kw.pop("options", {})
    out = kw.pop("out", tmp_path / "out.png")

    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double, key, **kw)
            request = Request(
                "j1", photo, out, params or UpscaleParams(), options=options, resume=resume
            )
            return await backend.run(request, (events if events is not None else []).append)

    return asyncio.run(go())


def failure(*args, **kw) -> JobError:
    with pytest.raises(JobError) as err:
        run(*args, **kw)
    return err.value


def executes(double):
    return double.requests("POST", EXECUTE_RE)


def result_of(double, execution_id: str | None) -> bytes:
    """The bytes the double served as an execution's result."""
    assert execution_id is not None
    data = double.cdn_lookup(double.executions[execution_id].result)
    assert data is not None
    return data


def pixels(data_or_path) -> np.ndarray:
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB"))


def idat(data: bytes) -> bytes:
    """A PNG's compressed image data, which keeping the provider's bytes must not touch."""
    pos, out = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            out += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return out


# --- the double against the guide ---------------------------------------------------------------
def test_contract_the_guides_own_requests_create_execute_and_poll(double):
    double.default_scenario = Scenario(run_s=10.0)  # finished by the clock's jump below
    headers = {**AUTH, "Idempotency-Key": PAGE["execute"]["headers"]["Idempotency-Key"]}
    with httpx.Client(base_url=double.url, headers=AUTH) as http:
        made = http.post(PAGE["create"]["path"], json=CREATE)
        assert made.status_code == 201 and made.headers["X-RateLimit-Remaining"]
        workflow = made.json()["data"]["id"]
        path = PAGE["execute"]["path"].format(id=workflow)
        started = http.post(path, json=EXECUTE, headers=headers)
        assert started.status_code == PAGE["execute"]["status"]
        run_id = started.json()[PAGE["execute"]["reads"][0]]
        again = http.post(path, json=EXECUTE, headers=headers)  # a retry: the same run
        assert again.json()["executionId"] == run_id
        other = copy.deepcopy(EXECUTE)
        other["nodes"][0]["data"]["params"]["prompt"] = "https://example.com/other.jpg"
        assert http.post(path, json=other, headers=headers).status_code == 409
        poll = PAGE["poll"]["path"].format(id=run_id)
        assert http.get(poll).json()["status"] == PAGE["poll"]["states"][0]  # RUNNING
        double.clock.advance(11)
        done = http.get(poll).json()
        assert done["status"] == "COMPLETED" and done["error"] is None
        urls = result_urls(done)  # outputs.images of the upscaler node
        upscaler = next(n for n in done["nodes"] if n["id"] == "upscale-1")
        assert urls == tuple(upscaler["outputs"]["images"]) and len(urls) == 1
        source = EXECUTE["nodes"][0]["data"]["params"]["prompt"]
        assert done["nodes"][0]["outputs"] == {"prompt": source} and source not in urls
        image = http.get(urls[0], headers=BROWSER)
        assert Image.open(io.BytesIO(image.content)).size == (24, 20)
        assert http.get(urls[0]).status_code == 403  # the CDN turns python's user agent away
    assert len(double.executions) == 1 and double.billed() == 4


def _mutated(edit) -> dict:
    body = copy.deepcopy(CREATE)
    edit(body)
    return body


def _upscaler(body: dict) -> dict:
    return body["nodes"][1]["data"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (_mutated(lambda b: _upscaler(b)["params"].update(scale_factor=2.5)), 400),
        (_mutated(lambda b: _upscaler(b)["params"].update(scale_factor=17)), 400),
        (_mutated(lambda b: _upscaler(b)["params"].update(creativity=4)), 400),  # the 0–10 guess
        (_mutated(lambda b: _upscaler(b)["params"].update(resemblance=0.6)), 400),
        (_mutated(lambda b: _upscaler(b)["params"].update(output_format="tiff")), 400),
        (_mutated(lambda b: _upscaler(b).update(config={"scale_factor": 2})), 400),
        (_mutated(lambda b: b.update(isActive=True)), 400),
        (_mutated(lambda b: b["nodes"][0]["data"].update(nodeType="input:image")), 422),
        (_mutated(lambda b: b["edges"][0].update(sourceHandle="out-image")), 422),
        (_mutated(lambda b: b["edges"][0].update(targetHandle="in-image")), 422),
        (_mutated(lambda b: _upscaler(b).update(inputs=[{"id": "image", "type": "IMAGE"}])), 422),
    ],
)
def test_contract_workflows_of_any_other_shape_are_refused(double, body, status):
    with httpx.Client(base_url=double.url, headers=AUTH) as http:
        answer = http.post("/api/v1/workflows", json=body)
        assert answer.status_code == status, answer.text
        workflow = http.post("/api/v1/workflows", json=CREATE).json()["data"]["id"]
        assert http.put(f"/api/v1/workflows/{workflow}", json=body).status_code == status
    assert len(double.workflows) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"nodes": CREATE["nodes"], "edges": CREATE["edges"]},  # the whole graph again
        {**EXECUTE, "edges": CREATE["edges"]},
        {"nodes": [{"id": "upscale-1", "data": {"params": {"scale_factor": 4}}}], "edges": []},
        {"nodes": [{"id": "input-1", "data": {"config": {"image": "https://x.test/a.png"}}}]},
        {"inputs": {"input-1": "https://x.test/a.png"}},
        {"nodes": [{"id": "input-1", "data": {"params": {"prompt": "a cat"}}}], "edges": []},
    ],
)
def test_contract_executions_of_any_other_shape_are_refused(double, body):
    with httpx.Client(base_url=double.url, headers=AUTH) as http:
        workflow = http.post("/api/v1/workflows", json=CREATE).json()["data"]["id"]
        answer = http.post(f"/api/v1/workflows/{workflow}/execute", json=body)
        assert answer.status_code == 400, answer.text
    assert double.executions == {} and double.billed() == 0


def test_contract_put_changes_the_params_an_execution_runs_with(double):
    with httpx.Client(base_url=double.url, headers=AUTH) as http:
        workflow = http.post("/api/v1/workflows", json=CREATE).json()["data"]["id"]
        changed = _mutated(lambda b: _upscaler(b)["params"].update(scale_factor=3, creativity=0.5))
        assert http.put(f"/api/v1/workflows/{workflow}", json=changed).status_code == 200
        assert double.upscaler_params(workflow) == {"scale_factor": 3, "creativity": 0.5}
        assert http.put("/api/v1/workflows/cm-missing", json=changed).status_code == 404


def test_contract_errors_limits_and_request_ids(double):
    with httpx.Client(base_url=f"{double.url}/api/v1") as http:
        assert http.post("/workflows", json=CREATE).json() == {
            "error": "Missing Authorization header"
        }
        bad = {"Authorization": "Bearer sk-nope"}
        assert http.post("/workflows", json=CREATE, headers=bad).json() == {
            "error": "Invalid API key"
        }
        http.headers.update(AUTH)
        workflow = http.post("/workflows", json=CREATE).json()["data"]["id"]
        double.keys[KEY].credits = 3
        poor = http.post(f"/workflows/{workflow}/execute", json=EXECUTE)
        assert poor.status_code == 402
        assert set(PAGE["errors"]["402"]) <= set(poor.json())
        assert poor.json()["breakdown"] == [
            {"nodeId": "upscale-1", "nodeLabel": "ClarityAI Upscaler", "credits": 4}
        ]
        double.keys[KEY].credits = 100
        double.plan(requests=3, executions=100, window=3600)
        answers = [http.get("/workflows/executions/nope/poll") for _ in range(4)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert int(answers[-1].headers[PAGE["errors"]["429"][0]]) >= 1  # Retry-After
        assert all(a.headers[PAGE["errors"]["500"][0]] for a in answers)  # X-Request-Id


# --- the backend sends the guide's requests -----------------------------------------------------
def test_the_guides_example_is_what_clarifier_sends(double, photo, tmp_path):
    """The guide's settings (scale 2, creativity 0, png) and its image URL: the create and
    execute bodies are the guide's, field for field; so are the headers and the paths."""
    url = EXECUTE["nodes"][0]["data"]["params"]["prompt"]
    params = UpscaleParams(scale_factor=2, creativity=0.0, output_format="png")
    outcome = run(double, photo, tmp_path, params=params, options={"input_url": url})
    (create,) = double.requests("POST", WORKFLOWS_RE)
    assert json.loads(create.body) == CREATE
    (execute,) = executes(double)
    assert json.loads(execute.body) == EXECUTE
    workflow = next(iter(double.workflows))
    assert execute.path == PAGE["execute"]["path"].format(id=workflow)
    for name in ("Authorization", "Content-Type"):
        assert (
            execute.headers[name.lower()].split(" ")[0]
            == PAGE["execute"]["headers"][name].split(" ")[0]
        )
    assert execute.headers["idempotency-key"]
    polls = double.requests("GET", r"/poll$")
    assert polls and {p.path for p in polls} == {PAGE["poll"]["path"].format(id=outcome.remote_id)}
    assert double.requests("POST", r"/media/upload") == []  # the person's URL went as is
    assert {s.path for s in double.log} <= {
        "/api/v1/workflows",
        execute.path,
        *(p.path for p in polls),
        *(s.path for s in double.requests("GET", r"^/cdn/")),
    }


def test_the_mapping_follows_the_guides_parameter_table():
    table = PAGE["params"]
    assert node_params(UpscaleParams(), "Wireflow") == {"scale_factor": 2, "creativity": 0.35}
    assert table["scale_factor"] == {"type": "integer", "default": 2}
    sent = node_params(UpscaleParams(scale_factor=16, creativity=1.0, output_format="webp"), "W")
    assert sent == {"scale_factor": 16, "creativity": 1.0, "output_format": "webp"}
    assert isinstance(sent["scale_factor"], int) and isinstance(sent["creativity"], float)
    default = node_params(UpscaleParams(creativity=table["creativity"]["default"]), "W")
    assert default == {"scale_factor": 2}  # the node's own defaults are not restated
    with pytest.raises(JobError) as err:
        node_params(
            UpscaleParams(scale_factor=2.5, resemblance=1.0, seed=7, mask="m.png", sharpen=2),
            "Wireflow",
        )
    assert err.value.kind is ErrorKind.invalid_request
    assert set(err.value.details["fields"]) == {
        "scale_factor",
        "resemblance",
        "seed",
        "mask",
        "sharpen",
    }
    assert "whole scale factor from 1 to 16" in err.value.message
    assert node_params(UpscaleParams(seed=None, mode="faithful"), "W") == {
        "scale_factor": 2,
        "creativity": 0.35,
    }


def test_success_keeps_the_result_and_its_pixels(double, photo, tmp_path):
    events = []
    outcome = run(double, photo, tmp_path, events=events, params=UpscaleParams(creativity=0.6))
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == f"wireflow/{NODE_TYPE}"
    assert info.params.seed is None and info.params.mode == "creative"  # what ran there
    served = result_of(double, outcome.remote_id)
    assert np.array_equal(pixels(outcome.output), pixels(served))
    assert idat(outcome.output.read_bytes()) == idat(served)  # the bytes, not a re-encode
    assert info.output_size == (24, 20) and info.source_size == (12, 10)
    (execute,) = executes(double)
    assert execute.headers["authorization"] == f"Bearer {KEY}"
    assert execute.headers["idempotency-key"] == events[1].remote["key"]
    sent = json.loads(execute.body)["nodes"][0]["data"]["params"]["prompt"]
    assert sent.startswith(f"{double.url}/cdn/")  # uploaded to Wireflow's media first
    workflow = next(iter(double.workflows))
    assert double.upscaler_params(workflow) == {"scale_factor": 2, "creativity": 0.6}
    cdn = [s for s in double.requests("GET", r"^/cdn/") if s.status == 200]
    assert len(cdn) == 1 and "Mozilla/" in cdn[0].headers["user-agent"]
    assert "authorization" not in cdn[0].headers  # the key never goes to the CDN
    assert [s.path for s in double.requests("POST")] == [
        "/api/v1/media/upload",
        "/api/v1/workflows",
        f"/api/v1/workflows/{workflow}/execute",
    ]


def test_output_format_is_sent_and_the_jpeg_kept(double, photo, tmp_path):
    outcome = run(double, photo, tmp_path, params=UpscaleParams(output_format="jpg"))
    assert outcome.output.suffix == ".jpg"
    workflow = next(iter(double.workflows))
    assert double.upscaler_params(workflow)["output_format"] == "jpg"
    served = result_of(double, outcome.remote_id)
    kept = outcome.output.read_bytes()
    assert kept[kept.index(b"\xff\xda") :] == served[served.index(b"\xff\xda") :]
    assert read_run_info(outcome.output).params.output_format == "jpg"


def test_params_are_put_when_they_change_and_cached_across_runs(double, photo, tmp_path):
    cache = tmp_path / "wireflow-workflows.json"
    run(double, photo, tmp_path, workflow_cache=cache, out=tmp_path / "a.png")
    run(double, photo, tmp_path, workflow_cache=cache, out=tmp_path / "b.png")
    assert double.count("POST", WORKFLOWS_RE) == 1 and double.count("PUT") == 0
    four = UpscaleParams(scale_factor=4, creativity=0.0)
    outcome = run(double, photo, tmp_path, workflow_cache=cache, params=four, out=tmp_path / "c")
    (put,) = double.requests("PUT")
    workflow = next(iter(double.workflows))
    assert put.path == f"/api/v1/workflows/{workflow}"
    assert json.loads(put.body) == _mutated(lambda b: _upscaler(b)["params"].update(scale_factor=4))
    assert read_run_info(outcome.output).output_size == (48, 40)  # ran with the new params
    run(double, photo, tmp_path, workflow_cache=cache, params=four, out=tmp_path / "d")
    assert double.count("PUT") == 1 and len(executes(double)) == 4
    stored = json.loads(cache.read_text())
    assert [e["id"] for e in stored.values()] == [workflow] and KEY not in cache.read_text()


def test_jobs_with_other_params_wait_for_the_running_ones(double, photo, tmp_path):
    """Wireflow does not say when an execution reads its params (this double: when it ends),
    so a PUT never lands while one of ours runs with other params."""
    double.default_scenario = Scenario(run_s=0.4)
    jobs = [
        (UpscaleParams(scale_factor=2), "a"),
        (UpscaleParams(scale_factor=2), "b"),
        (UpscaleParams(scale_factor=3), "c"),
    ]

    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double)
            requests = [Request(n, photo, tmp_path / f"{n}.png", p) for p, n in jobs]
            return await asyncio.gather(*(backend.run(r, lambda e: None) for r in requests))

    outcomes = asyncio.run(go())
    ran = [double.executions[o.remote_id].ran_with["scale_factor"] for o in outcomes]
    assert ran == [2, 2, 3]
    assert [read_run_info(o.output).output_size for o in outcomes] == [(24, 20)] * 2 + [(36, 30)]
    # Whichever params got the workflow first, the other ones started after those runs ended;
    # the two with the same params ran side by side.
    first, second, third = (double.executions[o.remote_id].at for o in outcomes)
    assert abs(first - second) < 0.3
    assert third >= max(first, second) + 0.4 or min(first, second) >= third + 0.4


def test_a_refused_setting_sends_nothing(double, photo, tmp_path):
    err = failure(double, photo, tmp_path, params=UpscaleParams(scale_factor=2.5, dynamic=9))
    assert err.kind is ErrorKind.invalid_request
    assert set(err.details["fields"]) == {"scale_factor", "dynamic"}
    err = failure(double, photo, tmp_path, params=UpscaleParams(seed=42))
    assert set(err.details["fields"]) == {"seed"} and "takes no seed" in err.message
    assert double.log == []


def test_the_64_megapixel_cap_is_refused_before_submit_naming_the_scale_that_fits(double, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(big)
    err = failure(double, big, tmp_path, params=UpscaleParams(scale_factor=3))
    assert err.kind is ErrorKind.invalid_request and err.details["largest_scale"] == 2
    assert "64 MP" in err.message and "×2 (8000×6000, 48.0 MP)" in err.message
    assert "12000×9000" in err.message and set(err.details["fields"]) == {"scale_factor"}
    assert double.log == []
    # The person's own cap, when it is lower, is the one named.
    err = failure(
        double,
        big,
        tmp_path,
        params=UpscaleParams(scale_factor=2),
        options={"max_output_pixels": 20_000_000},
    )
    assert "Your output cap" in err.message and err.details["largest_scale"] == 1
    assert double.log == []


def test_insufficient_credits_shows_the_breakdown(double, photo, tmp_path):
    double.keys[KEY].credits = 3
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "needs 4, have 3" in err.message
    assert "per node: ClarityAI Upscaler: 4" in err.message
    assert err.details["breakdown"][0]["nodeId"] == "upscale-1"
    double.envelope = "stripe"
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "ClarityAI Upscaler: 4" in err.message


def test_a_server_error_names_its_request_id(double, photo, tmp_path, caplog):
    broken = Resp.json(500, {"error": "Internal error"}, {"X-Request-Id": "req-7f3a"})
    double.inject("GET", r"/poll$", "respond", times=1000, response=broken)
    with caplog.at_level(logging.WARNING, logger="app.backends.providers.wireflow"):
        err = failure(double, photo, tmp_path, retry_for=0.3)
    assert err.kind is ErrorKind.transient and "req-7f3a" in err.message
    assert err.details["request_id"] == "req-7f3a"
    assert any("req-7f3a" in r.getMessage() for r in caplog.records)


def test_remaining_requests_are_spread_before_wireflow_refuses(double, photo, tmp_path):
    """X-RateLimit-Remaining alone (no reset time): once a quarter of the plan is left, the
    requests spread out over the window, and none is refused."""
    double.reset_headers = False
    double.plan(requests=8, executions=100, window=1.0)
    double.default_scenario = Scenario(run_s=1.2)
    outcome = run(double, photo, tmp_path, budget=RequestBudget(100_000, 1.0))
    assert outcome.output.exists()
    assert [s.status for s in double.log if s.status == 429] == []
    assert double.count("GET", r"/poll$") >= 2


def test_without_the_header_the_plan_would_be_exceeded(double, photo, tmp_path, monkeypatch):
    """The same run with the header ignored earns 429s: the pacing above is what avoids them."""
    monkeypatch.setattr(WireflowBackend, "observe", lambda self, response, *, during: None)
    double.reset_headers = False
    double.hints = {"retry-after"}
    double.plan(requests=8, executions=100, window=1.0)
    double.default_scenario = Scenario(run_s=1.2)
    run(double, photo, tmp_path, budget=RequestBudget(100_000, 1.0))
    assert any(s.status == 429 for s in double.log)


@pytest.mark.parametrize("hint", ["retry-after", "reset", "body"])
def test_execution_limit_hints_are_honoured(double, photo, tmp_path, hint):
    now = time.time()
    headers = {"Retry-After": "1"} if hint == "retry-after" else {}
    if hint == "reset":
        headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(math.ceil(now + 0.9))}
    body = {"error": "Too many workflow executions. Please try again later."}
    if hint == "body":
        body["retryAfter"] = math.ceil(now + 0.9)
    double.inject("POST", EXECUTE_RE, "respond", response=Resp.json(429, body, headers))
    assert run(double, photo, tmp_path).output.exists()
    first, second = executes(double)
    assert first.status == 429 and second.status == 201
    assert second.real - first.real >= 0.5
    assert len(double.executions) == 1


def test_executions_per_minute_are_paced_before_wireflow_refuses(double, photo, tmp_path):
    double.plan(requests=100_000, executions=2, window=1.0)

    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double, execute_budget=RequestBudget(2, 1.0))
            jobs = [
                Request(f"j{i}", photo, tmp_path / f"out{i}.png", UpscaleParams()) for i in range(5)
            ]
            return await asyncio.gather(*(backend.run(j, lambda e: None) for j in jobs))

    assert all(o.output.exists() for o in asyncio.run(go()))
    assert [s.status for s in executes(double)] == [201] * 5


# --- answers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("envelope", "layout", "images"),
    [
        ("bare", "nodes", "list"),
        ("bare", "nodes", "string"),
        ("data", "nodes", "objects"),
        ("bare", "nodeRuns", "list"),
        ("bare", "outputs", "list"),
    ],
)
def test_every_poll_layout_finds_the_result_not_the_input(
    double, photo, tmp_path, envelope, layout, images
):
    double.poll_envelope, double.poll_layout, double.images_shape = envelope, layout, images
    outcome = run(double, photo, tmp_path)
    assert np.array_equal(pixels(outcome.output), pixels(result_of(double, outcome.remote_id)))


def test_polls_ride_out_5xx_bursts_and_html(double, photo, tmp_path):
    poll = r"/executions/.+/poll$"
    double.inject("GET", poll, "respond", times=3, response=Resp.json(500, {"error": "boom"}))
    double.inject("GET", poll, "respond", response=Resp.html(502, "Bad Gateway"))
    double.inject("GET", poll, "drop_before")
    outcome = run(double, photo, tmp_path)
    # What survived: the result's very pixels, from the one execution, billed once.
    assert np.array_equal(pixels(outcome.output), pixels(result_of(double, outcome.remote_id)))
    assert len(executes(double)) == 1 and len(double.executions) == 1 and double.billed() == 4
    assert [s.status for s in double.requests("GET", poll)][:5] == [500, 500, 500, 502, None]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("FAL: upstream model crashed (exit 137)", ErrorKind.model_failed),
        ("FAL moderation: content flagged as NSFW", ErrorKind.content_rejected),
    ],
)
def test_failed_executions_say_why(double, photo, tmp_path, message, kind):
    double.scenarios.append(Scenario(run_s=0.05, fail=message))
    err = failure(double, photo, tmp_path)
    assert err.kind is kind and message in err.message
    assert not (tmp_path / "out.png").exists()


def test_empty_output_never_passes_off_the_input_as_the_result(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.05, empty_output=True))
    err = failure(double, photo, tmp_path)  # the input node still reports the input's URL
    assert err.kind is ErrorKind.model_failed and "returned no image" in err.message
    assert not (tmp_path / "out.png").exists()


def test_protocol_errors(double, photo, tmp_path):
    double.inject("GET", r"/poll$", "respond", response=Resp.html(200, "Security Checkpoint"))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "HTML" in err.message
    double.inject("GET", r"/poll$", "respond", response=Resp.json(200, {"status": "ZOMBIE"}))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "ZOMBIE" in err.message
    double.inject(
        "POST", EXECUTE_RE, "respond", response=Resp.json(201, {"executionRuns": [{"id": "x"}]})
    )
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "executionId" in err.message


def test_auth_errors(double, photo, tmp_path):
    err = failure(double, photo, tmp_path, key=None)
    assert err.kind is ErrorKind.auth and "CLARIFIER_WIREFLOW_API_KEY" in err.message
    err = failure(double, photo, tmp_path, key="sk-wrong-secret")
    assert err.kind is ErrorKind.auth and "Invalid API key" in err.message
    assert "sk-wrong-secret" not in err.message
    double.envelope = "stripe"
    double.keys["sk-ro"] = WfKey(scopes=frozenset({"workflows:read", "executions:read"}))
    err = failure(double, photo, tmp_path, key="sk-ro")
    assert err.kind is ErrorKind.auth and "workflows:write" in err.message


# --- the workflow's life ------------------------------------------------------------------------
def test_deleted_or_inactive_workflow_is_made_again(double, photo, tmp_path):
    cache: dict = {}
    run(double, photo, tmp_path, workflow_cache=cache, out=tmp_path / "a.png")
    first = next(iter(double.workflows.values()))
    first["isActive"] = False
    assert run(double, photo, tmp_path, workflow_cache=cache, out=tmp_path / "b.png").output
    assert len(double.workflows) == 2 and next(iter(cache.values()))["id"] != first["id"]
    del double.workflows[next(iter(cache.values()))["id"]]  # deleted in Wireflow's editor
    changed = UpscaleParams(scale_factor=3)  # the PUT finds it gone
    outcome = run(double, photo, tmp_path, workflow_cache=cache, params=changed)
    assert read_run_info(outcome.output).output_size == (36, 30)
    assert double.count("PUT") == 1 and double.requests("PUT")[0].status == 404


def test_proxy_serves_when_the_cdn_refuses_everyone(double, photo, tmp_path):
    double.cdn_block = "all"
    outcome = run(double, photo, tmp_path)
    assert np.array_equal(pixels(outcome.output), pixels(result_of(double, outcome.remote_id)))
    assert double.count("GET", r"^/api/download$") == 1


def test_concurrent_first_jobs_share_one_workflow(double, photo, tmp_path):
    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double)
            jobs = [
                Request(f"j{i}", photo, tmp_path / f"out{i}.png", UpscaleParams()) for i in range(3)
            ]
            return await asyncio.gather(*(backend.run(j, lambda e: None) for j in jobs))

    outcomes = asyncio.run(go())
    assert len({o.remote_id for o in outcomes}) == 3
    assert len(double.workflows) == 1 and len(double.executions) == 3


# --- submit, resume, cancel ---------------------------------------------------------------------
def test_a_dropped_execute_is_resent_with_its_key_and_billed_once(double, photo, tmp_path):
    double.inject("POST", EXECUTE_RE, "drop_after")
    outcome = run(double, photo, tmp_path)
    keys = {s.headers["idempotency-key"] for s in executes(double)}
    assert len(executes(double)) == 2 and len(keys) == 1
    assert len(double.executions) == 1 and double.billed() == 4
    assert np.array_equal(pixels(outcome.output), pixels(result_of(double, outcome.remote_id)))


def test_trusting_a_key_wireflow_ignored_would_bill_twice(double, photo, tmp_path):
    """Why the guide's promise matters: without it the re-send is a second run."""
    double.honour_idempotency = False
    double.inject("POST", EXECUTE_RE, "drop_after")
    run(double, photo, tmp_path)
    assert len(double.executions) == 2 and double.billed() == 8
    double.executions.clear()
    double.inject("POST", EXECUTE_RE, "drop_after")
    err = failure(double, photo, tmp_path, idempotent_submit=False)
    assert err.kind is ErrorKind.submit_unknown and "did not send it again" in err.message
    assert len(double.executions) == 1


def test_past_the_keys_24_hours_a_submit_is_not_resent(double, photo, tmp_path):
    double.inject("POST", EXECUTE_RE, "drop_after", times=20)
    events = []
    with pytest.raises(JobError):
        run(double, photo, tmp_path, events=events, retry_for=0.2)
    checkpoint = dict(next(e.remote for e in events if e.state is JobState.submitting))
    checkpoint["extra"] = {**checkpoint["extra"], "created_at": time.time() - 25 * 3600}
    double.faults.clear()
    sent = len(executes(double))
    err = failure(double, photo, tmp_path, resume=checkpoint)
    assert err.kind is ErrorKind.submit_unknown and "more than a day ago" in err.message
    assert len(executes(double)) == sent


def test_resume_polls_without_executing_again(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.3)
    events = []

    async def first():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend_for(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            task.cancel()
            with pytest.raises(JobError):
                await task

    asyncio.run(first())
    ticket = next(e.remote for e in events if e.state is JobState.queued)
    assert ticket["extra"]["params"] == {"scale_factor": 2, "creativity": 0.35}
    outcome = run(double, photo, tmp_path, resume=ticket, workflow_cache={})
    assert outcome.remote_id == ticket["remote_id"] and len(executes(double)) == 1
    assert double.count("POST", WORKFLOWS_RE) == 1  # resuming makes no workflow


def test_cancelled_at_wireflow(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=30)
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend_for(client, double).run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.cancel_execution(next(iter(double.executions)))
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.canceled and "cancelled the execution" in err.value.message


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


def test_expired_execution_is_lost(double, photo, tmp_path):
    double.retention = 3600
    double.default_scenario = Scenario(run_s=0.3)
    events = []

    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double, cadence=PollCadence(0.5))
            request = Request("j1", photo, tmp_path / "out.png", UpscaleParams())
            task = asyncio.create_task(backend.run(request, events.append))
            await until(lambda: any(e.state is JobState.queued for e in events))
            double.clock.advance(2 * 3600)
            return await task

    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert err.value.kind is ErrorKind.expired


def test_base_url_is_scheme_and_host():
    client = httpx.AsyncClient()
    backend = WireflowBackend(client, "https://wireflow.ai/api/v1", "k")
    assert backend.base_url == "https://www.wireflow.ai"
    assert backend.poll_cadence == PollCadence(*PAGE["poll"]["backoff"])
    asyncio.run(client.aclose())
