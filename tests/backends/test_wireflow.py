"""Wireflow: the double's contract (raw requests from the reference) and the backend against it."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import pytest

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.wireflow import WireflowBackend
from app.backends.providers.wireflow_graph import fallback_spec, find_node, node_config
from app.backends.remote import PollCadence, RequestBudget
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.doubles.http_double import Resp, Scenario, tiny_png, until
from tests.doubles.wireflow import NODE_TYPE, WfKey, WireflowDouble

KEY = "sk-test"
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}


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
    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double, key, **kw)
            request = Request(
                "j1", photo, tmp_path / "out.png", params or UpscaleParams(), resume=resume
            )
            return await backend.run(request, (events if events is not None else []).append)

    return asyncio.run(go())


def failure(*args, **kw) -> JobError:
    with pytest.raises(JobError) as err:
        run(*args, **kw)
    return err.value


def executes(double):
    return double.requests("POST", r"/execute$")


# --- the double's contract: the reference's exact requests -------------------------------------
CREATE = {  # §3.3, verbatim but for the image URL, which must be fetchable from the double
    "name": "Desktop Clarity upscale",
    "nodes": [
        {
            "id": "img",
            "type": "basedNode",
            "position": {"x": 0, "y": 0},
            "data": {
                "label": "Image",
                "nodeType": "input:image",
                "category": "input",
                "inputType": "image",
                "config": {
                    "image": "https://cdn.wireflow.ai/uploads/in.png",
                    "imageUrl": "https://cdn.wireflow.ai/uploads/in.png",
                },
            },
        },
        {
            "id": "up",
            "type": "basedNode",
            "position": {"x": 400, "y": 0},
            "data": {
                "label": "Crystal Upscaler",
                "nodeType": "process:clarityai_crystal_upscaler",
                "category": "process",
                "config": {},
            },
        },
    ],
    "edges": [
        {
            "id": "e1",
            "source": "img",
            "target": "up",
            "sourceHandle": "out-image",
            "targetHandle": "in-image",
        }
    ],
    "isActive": True,
}
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_contract_catalog_create_execute_poll_download(double):
    double.default_scenario = Scenario(run_s=0.2)
    api = "/api/v1"
    with httpx.Client(base_url=double.url, headers=AUTH) as http:
        catalog = http.get(f"{api}/nodes").json()["nodes"]
        node = next(n for n in catalog if n["nodeType"] == NODE_TYPE)
        assert [i["key"] for i in node["inputs"] if i["isPort"]] == ["image"]
        made = http.post(f"{api}/workflows", json=CREATE)
        assert made.status_code == 201 and made.headers["X-RateLimit-Limit"]
        assert made.json()["meta"] == {"migrations": [], "warnings": []}
        workflow = made.json()["data"]["id"]
        graph = {"nodes": CREATE["nodes"], "edges": CREATE["edges"]}
        headers = {"Idempotency-Key": "4b1d3c52-0000-4000-8000-000000000001"}
        started = http.post(f"{api}/workflows/{workflow}/execute", json=graph, headers=headers)
        assert started.status_code == 201
        body = started.json()
        assert set(body) == {"workflowId", "batchId", "executionRuns"}
        run = body["executionRuns"][0]
        assert run["status"] == "RUNNING" and run["endTime"] is None
        assert started.headers["Location"].endswith(f"/api/v1/workflows/executions/{run['id']}")
        again = http.post(f"{api}/workflows/{workflow}/execute", json=graph, headers=headers)
        assert again.json()["executionRuns"][0]["id"] == run["id"]
        other = {**graph, "targetNodeId": "up"}
        conflict = http.post(f"{api}/workflows/{workflow}/execute", json=other, headers=headers)
        assert conflict.status_code == 409
        targeted = http.post(f"{api}/workflows/{workflow}/execute", json=other).json()
        assert set(targeted) == {"executionId", "status"}
        polled = http.get(f"{api}/workflows/executions/{run['id']}/poll").json()["data"]
        assert polled["status"] == "RUNNING"
        double.clock.advance(1)
        done = http.get(f"{api}/workflows/executions/{run['id']}/poll").json()["data"]
        assert done["status"] == "COMPLETED"
        url = done["finalOutput"]["url"]
        assert done["nodeStates"][1] == {
            "nodeId": "up",
            "label": "Crystal Upscaler",
            "status": "COMPLETED",
            "error": None,
            "outputUrl": url,
        }
        assert done["nodeResults"]["nodeRuns"][1]["output"]["images"][0]["url"] == url
        assert http.get(f"{api}/workflows/executions/{run['id']}").json()["data"] == done
        double.poll_envelope = "bare"
        assert http.get(f"{api}/workflows/executions/{run['id']}/poll").json() == done
        # The CDN turns away python's user agent; a browser's, or the proxy, gets the file.
        assert http.get(url).status_code == 403
        assert http.get(url, headers=BROWSER).content.startswith(b"\x89PNG")
        proxied = httpx.get(f"{double.url}/api/download", params={"url": url})
        assert proxied.status_code == 200 and proxied.content.startswith(b"\x89PNG")
    assert len(double.executions) == 2 and double.billed() == 8


def test_contract_run_inputs_and_media(double):
    with httpx.Client(base_url=f"{double.url}/api/v1", headers=AUTH) as http:
        uploaded = http.post("/media/upload", files={"file": ("in.png", tiny_png(), "image/png")})
        url = uploaded.json()["data"]["url"]
        rehosted = http.post("/media/upload", json={"url": url}).json()["data"]["url"]
        assert rehosted != url and http.get(rehosted, headers=BROWSER).status_code == 200
        workflow = http.post("/workflows", json=CREATE).json()["data"]["id"]
        inputs = http.get(f"/workflows/{workflow}/run").json()["data"]["inputs"]
        assert inputs[0]["nodeId"] == "img" and inputs[0]["type"] == "image"
        started = http.post(f"/workflows/{workflow}/run", json={"inputs": {"img": url}})
        assert started.status_code == 202
        assert started.json()["data"]["status"] == "RUNNING"
        execution = double.executions[started.json()["data"]["executionId"]]
        assert execution.nodes[0]["data"]["config"]["image"] == url


def test_contract_errors_limits_and_envelopes(double):
    api = f"{double.url}/api/v1"
    with httpx.Client(base_url=api) as http:
        assert http.get("/nodes").json() == {"error": "Missing Authorization header"}
        wrong = {"Authorization": "Token sk-test"}
        assert (
            http.get("/nodes", headers=wrong).json()["error"].startswith("Invalid API key format")
        )
        bad = {"Authorization": "Bearer sk-nope"}
        assert http.get("/nodes", headers=bad).json() == {"error": "Invalid API key"}
        double.keys["sk-old"] = WfKey(expired=True)
        old = {"Authorization": "Bearer sk-old"}
        assert http.get("/nodes", headers=old).json() == {"error": "API key has expired"}
        double.keys["sk-ro"] = WfKey(user="user-2", scopes=frozenset({"workflows:read"}))
        readonly = {"Authorization": "Bearer sk-ro"}
        assert http.post("/workflows", json=CREATE, headers=readonly).json() == {
            "error": "Forbidden"
        }
        http.headers.update(AUTH)
        assert http.post("/workflows", json={"name": "x"}).status_code == 400
        assert http.post("/workflows", json={**CREATE, "nodes": [], "edges": []}).status_code == 400
        broken = json.loads(json.dumps(CREATE))
        broken["edges"][0]["targetHandle"] = "in-picture"
        refused = http.post("/workflows", json=broken)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_graph"
        assert refused.json()["violations"][0]["rule"] == "bad-target-handle"
        assert refused.json()["violations"][0]["fix"] == 'Did you mean "in-image"?'
        workflow = http.post("/workflows", json=CREATE).json()["data"]["id"]
        double.keys[KEY].credits = 3
        poor = http.post(f"/workflows/{workflow}/execute", json={})
        assert poor.status_code == 402
        assert poor.json() == {
            "error": "Insufficient credits. Required: 4, Available: 3",
            "insufficientCredits": True,
            "requiredCredits": 4,
            "availableCredits": 3,
            "breakdown": [{"nodeId": "up", "nodeLabel": "Crystal Upscaler", "credits": 4}],
        }
        double.envelope = "stripe"
        stripe = http.post(f"/workflows/{workflow}/execute", json={}).json()
        assert stripe["error"]["type"] == "insufficient_credits_error"
        assert stripe["requiredCredits"] == 4
        double.keys[KEY].credits = 100
        double.workflows[workflow]["isActive"] = False
        inactive = http.post(f"/workflows/{workflow}/execute", json={}).json()
        assert inactive["error"]["message"] == "Workflow is not active"
        double.workflows[workflow]["isActive"] = True
        double.envelope = "flat"
        double.plan(requests=1000, executions=2, window=3600)
        for _ in range(2):
            assert http.post(f"/workflows/{workflow}/execute", json={}).status_code == 201
        limited = http.post(f"/workflows/{workflow}/execute", json={})
        assert limited.status_code == 429
        reset = int(limited.headers["X-RateLimit-Reset"])
        assert limited.headers["X-RateLimit-Remaining"] == "0" and reset > time.time()
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json() == {
            "error": "Too many workflow executions. Please try again later.",
            "retryAfter": reset,
        }
        plain = http.get("/nodes")  # other requests are still within their own window
        assert plain.status_code == 200 and int(plain.headers["X-RateLimit-Remaining"]) > 0
        assert plain.headers["X-Request-Id"]


# --- the backend --------------------------------------------------------------------------------
def test_success_runs_the_graph_and_downloads_past_the_cdn_block(double, photo, tmp_path):
    events = []
    outcome = run(double, photo, tmp_path, events=events, params=UpscaleParams(creativity=0.6))
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == f"wireflow/{NODE_TYPE}"
    assert info.output_size == (24, 20) and outcome.remote_id in double.executions
    execute = executes(double)[0]
    assert execute.headers["authorization"] == f"Bearer {KEY}"
    assert execute.headers["idempotency-key"] == events[1].remote["key"]
    nodes = json.loads(execute.body)["nodes"]
    assert nodes[0]["data"]["config"]["image"].startswith(f"{double.url}/cdn/")
    assert nodes[1]["data"]["config"] == {"scale_factor": 2.0, "creativity": 6}
    cdn = [s for s in double.requests("GET", r"^/cdn/") if s.status == 200]
    assert len(cdn) == 1 and "Mozilla/" in cdn[0].headers["user-agent"]
    assert "authorization" not in cdn[0].headers  # the key never goes to the CDN
    workflow = next(iter(double.workflows))
    assert [s.path for s in double.requests("POST")] == [
        "/api/v1/media/upload",
        "/api/v1/workflows",
        f"/api/v1/workflows/{workflow}/execute",
    ]


def test_workflow_is_created_once_and_cached_across_runs(double, photo, tmp_path):
    cache = tmp_path / "wireflow-workflows.json"
    run(double, photo, tmp_path, workflow_cache=cache)
    (tmp_path / "out.png").unlink()
    run(double, photo, tmp_path, workflow_cache=cache)  # a new backend: as after a restart
    assert double.count("POST", r"^/api/v1/workflows$") == 1 and len(executes(double)) == 2
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == list(double.workflows)
    assert KEY not in cache.read_text()


def test_concurrent_first_jobs_share_one_workflow(double, photo, tmp_path):
    async def go():
        async with httpx.AsyncClient() as client:
            backend = backend_for(client, double)
            jobs = [
                Request(f"j{i}", photo, tmp_path / f"out{i}.png", UpscaleParams()) for i in range(3)
            ]
            return await asyncio.gather(*(backend.run(j, lambda e: None) for j in jobs))

    assert all(o.output.exists() for o in asyncio.run(go()))
    assert len(double.workflows) == 1 and len(double.executions) == 3


def test_deleted_or_inactive_workflow_is_made_again(double, photo, tmp_path):
    cache: dict[str, str] = {}
    run(double, photo, tmp_path, workflow_cache=cache)
    first = next(iter(double.workflows.values()))
    first["isActive"] = False
    (tmp_path / "out.png").unlink()
    assert run(double, photo, tmp_path, workflow_cache=cache).output.exists()
    assert len(double.workflows) == 2 and list(cache.values()) != [first["id"]]


def test_proxy_serves_when_the_cdn_refuses_everyone(double, photo, tmp_path):
    double.cdn_block = "all"
    assert run(double, photo, tmp_path).output.exists()
    assert double.count("GET", r"^/api/download$") == 1


@pytest.mark.parametrize(
    ("envelope", "fields"),
    [
        ("data", {"finalOutput"}),
        ("bare", {"nodeStates"}),
        ("bare", {"nodeResults"}),
        ("data", {"nodeStates", "nodeResults"}),
    ],
)
def test_every_poll_shape_finds_the_result_not_the_input(double, photo, tmp_path, envelope, fields):
    double.poll_envelope, double.poll_fields = envelope, fields
    outcome = run(double, photo, tmp_path)
    assert read_run_info(outcome.output).output_size == (24, 20)  # not the 12×10 input


def test_poll_without_the_poll_suffix(double, photo, tmp_path):
    double.serve_poll_suffix = False
    assert run(double, photo, tmp_path).output.exists()
    assert double.count("GET", r"/executions/[^/]+$") >= 1


def test_catalog_shapes_the_node_config(double, photo, tmp_path):
    upscaler = double.catalog[2]
    upscaler["inputs"][1:] = [
        {"key": "scale", "type": "number", "isPort": False, "min": 1, "max": 8},
        {"key": "creativity", "type": "number", "isPort": False, "min": 0, "max": 1},
        {"key": "prompt", "type": "string", "isPort": False},
    ]
    params = UpscaleParams(scale_factor=4, creativity=0.5, prompt="crisp", resemblance=0.6)
    run(double, photo, tmp_path, params=params)
    config = json.loads(executes(double)[0].body)["nodes"][1]["data"]["config"]
    assert config == {"scale": 4.0, "creativity": 0.5, "prompt": "crisp"}
    err = failure(double, photo, tmp_path, params=UpscaleParams(scale_factor=16, dynamic=9))
    assert err.kind is ErrorKind.invalid_request
    assert set(err.details["fields"]) == {"scale_factor", "dynamic"}
    assert len(executes(double)) == 1  # refused before anything was run


def test_without_a_catalog_the_documented_guess_is_used(double, photo, tmp_path):
    double.serve_catalog = False
    assert run(double, photo, tmp_path).output.exists()
    config = json.loads(executes(double)[0].body)["nodes"][1]["data"]["config"]
    assert config == {"scale_factor": 2.0, "creativity": 4}  # 0.35 of the 0–10 range


def test_catalog_parsing_and_refusals_offline():
    spec = find_node(
        {
            "data": [
                {
                    "type": "process:clarityai_crystal_upscaler_v2",
                    "inputs": ["image"],
                    "config": {"properties": {"scale_factor": {"type": "number", "maximum": 16}}},
                }
            ]
        },
        NODE_TYPE,
    )
    assert spec is not None and spec.node_type.endswith("_v2") and spec.in_port == "image"
    assert find_node({"nodes": [{"nodeType": "input:image"}]}, NODE_TYPE) is None
    fields = {"scale_factor": 2.5, "creativity": 0.35, "seed": 7, "sharpen": 0.0}
    assert node_config(spec, fields, UpscaleParams(), "W") == {"scale_factor": 2.5}
    with pytest.raises(JobError) as err:
        node_config(fallback_spec(), {"sharpen": 2.0, "scale_factor": 17}, UpscaleParams(), "W")
    assert set(err.value.details["fields"]) == {"sharpen", "scale_factor"}
    client = httpx.AsyncClient()
    backend = WireflowBackend(client, "https://wireflow.ai/api/v1", "k")
    assert backend.base_url == "https://www.wireflow.ai"
    with pytest.raises(JobError) as err:
        backend.map_params(UpscaleParams(scheduler="Euler a", mask="m.png"))
    asyncio.run(client.aclose())
    assert set(err.value.details["fields"]) == {"scheduler", "mask"}


def test_missing_node_in_the_catalog_is_a_clear_error(double, photo, tmp_path):
    del double.catalog[2]
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.model_failed and NODE_TYPE in err.message
    assert executes(double) == []


def test_invalid_graph_lists_the_violations(double, photo, tmp_path):
    double.catalog[2]["inputs"][0]["key"] = "source"  # the port is renamed, the lint knows
    double.serve_catalog = False  # ...but the backend cannot see the catalog
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.invalid_request and "bad-target-handle" in err.message
    assert err.details["violations"][0]["fix"] == 'Did you mean "in-source"?'


def test_auth_errors_in_both_envelopes(double, photo, tmp_path):
    err = failure(double, photo, tmp_path, key=None)
    assert err.kind is ErrorKind.auth and "CLARIFIER_WIREFLOW_API_KEY" in err.message
    err = failure(double, photo, tmp_path, key="sk-wrong-secret")
    assert err.kind is ErrorKind.auth and "Invalid API key" in err.message
    assert "sk-wrong-secret" not in err.message
    double.envelope = "stripe"
    double.keys["sk-ro"] = WfKey(scopes=frozenset({"workflows:read", "executions:read"}))
    err = failure(double, photo, tmp_path, key="sk-ro")
    assert err.kind is ErrorKind.auth and "workflows:execute" in err.message


def test_insufficient_credits_names_the_amounts(double, photo, tmp_path):
    double.keys[KEY].credits = 3
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "needs 4, have 3" in err.message
    assert err.details["required"] == 4 and err.details["available"] == 3
    assert err.details["breakdown"][0]["nodeId"] == "up"
    double.envelope = "stripe"
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.insufficient_funds and "needs 4, have 3" in err.message


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("FAL: upstream model crashed (exit 137)", ErrorKind.model_failed),
        ("FAL moderation: content flagged as NSFW", ErrorKind.content_rejected),
    ],
)
def test_node_failures(double, photo, tmp_path, message, kind):
    double.scenarios.append(Scenario(run_s=0.05, fail=message))
    err = failure(double, photo, tmp_path)
    assert err.kind is kind and message in err.message


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


@pytest.mark.parametrize("hint", ["retry-after", "reset", "body"])
def test_execution_limit_hints_are_honoured(double, photo, tmp_path, hint):
    now = time.time()
    headers = {"Retry-After": "1"} if hint == "retry-after" else {}
    if hint == "reset":
        headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(math.ceil(now + 0.9))}
    body = {"error": "Too many workflow executions. Please try again later."}
    if hint == "body":
        body["retryAfter"] = math.ceil(now + 0.9)
        headers = {"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": str(math.ceil(now))}
    double.inject("POST", r"/execute$", "respond", response=Resp.json(429, body, headers))
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


def test_polls_ride_out_5xx_bursts_and_html(double, photo, tmp_path):
    poll = r"/executions/.+/poll$"
    double.inject("GET", poll, "respond", times=3, response=Resp.json(500, {"error": "boom"}))
    double.inject("GET", poll, "respond", response=Resp.html(502, "Bad Gateway"))
    double.inject("GET", poll, "drop_before")
    assert run(double, photo, tmp_path).output.exists()


def test_protocol_errors(double, photo, tmp_path):
    double.inject(
        "GET", r"/poll$", "respond", response=Resp.html(200, "Vercel Security Checkpoint")
    )
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "HTML" in err.message
    double.inject(
        "GET", r"/poll$", "respond", response=Resp.json(200, {"data": {"status": "ZOMBIE"}})
    )
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "ZOMBIE" in err.message
    double.inject("POST", r"/execute$", "respond", response=Resp.json(201, {"executionRuns": []}))
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.protocol and "execution id" in err.message


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
    outcome = run(double, photo, tmp_path, resume=ticket, workflow_cache={})
    assert outcome.remote_id == ticket["remote_id"] and len(executes(double)) == 1
    assert double.count("GET", r"^/api/v1/nodes$") == 1  # resuming needs no catalog


def test_dropped_execute_is_never_resent_by_default(double, photo, tmp_path):
    double.inject("POST", r"/execute$", "drop_after")
    err = failure(double, photo, tmp_path)
    assert err.kind is ErrorKind.submit_unknown and "did not send it again" in err.message
    assert len(executes(double)) == 1 and len(double.executions) == 1 and double.billed() == 4


def test_dropped_execute_is_resent_with_its_key_when_trusted(double, photo, tmp_path):
    double.inject("POST", r"/execute$", "drop_after")
    outcome = run(double, photo, tmp_path, idempotent_submit=True)
    assert outcome.output.exists()
    keys = {s.headers["idempotency-key"] for s in executes(double)}
    assert len(executes(double)) == 2 and len(keys) == 1
    assert len(double.executions) == 1 and double.billed() == 4


def test_trusting_a_key_wireflow_ignores_would_bill_twice(double, photo, tmp_path):
    """Why ``idempotent_submit`` defaults to False while the key's support is unverified."""
    double.honour_idempotency = False
    double.inject("POST", r"/execute$", "drop_after")
    run(double, photo, tmp_path, idempotent_submit=True)
    assert len(double.executions) == 2 and double.billed() == 8


def test_empty_output_never_passes_off_the_input_as_the_result(double, photo, tmp_path):
    double.scenarios.append(Scenario(run_s=0.05, empty_output=True))
    err = failure(double, photo, tmp_path)  # the input node still reports the input's URL
    assert err.kind is ErrorKind.model_failed and "returned no image" in err.message
    assert not (tmp_path / "out.png").exists()


def test_a_catalog_in_an_unknown_shape_falls_back_to_the_guess(double, photo, tmp_path):
    double.inject(
        "GET", r"/nodes$", "respond", response=Resp.json(200, {"catalog": "v3", "count": 812})
    )
    assert run(double, photo, tmp_path).output.exists()
    assert json.loads(executes(double)[0].body)["nodes"][1]["data"]["config"]["creativity"] == 4
