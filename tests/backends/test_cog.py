"""The Cog backend against the real Cog server (coglet) running a tiny Clarity-shaped predictor.

The server is started once for the module, with no container, exactly as the reference's
appendix describes: ``COG_PREDICT_TYPE_STUB=predict.py:Predictor PORT=… python -m
cog.server.http --host 127.0.0.1`` from the predictor's folder, the venv's ``bin`` first on
``PATH`` (the worker is started with the ``python`` found there). ``cog build`` normally writes
the model's input schema to ``.cog/openapi_schema.json``; without the Go CLI the fixture writes
it from the predictor's signature, as ``cog build`` would, so the server validates inputs (422)
and serves ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.cog import CogBackend
from app.cli import main
from app.store.history import HistoryStore
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.doubles.http_double import until

pytest.importorskip("cog")

PREDICTOR = Path(__file__).resolve().parent.parent / "cog_predictor" / "predict.py"
FAST = UpscaleParams(num_inference_steps=2)
SLOW = UpscaleParams(num_inference_steps=100, seed=4242)  # 100 steps × 20 ms: 2 s
MID = SLOW.replace(num_inference_steps=60)


def cog_schema(predict_py: Path) -> dict:
    """The OpenAPI document ``cog build`` derives from ``Predictor.predict``'s signature."""
    from cog import Path as CogPath

    spec = importlib.util.spec_from_file_location("cog_test_predictor", predict_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predict = module.Predictor.predict
    hints = typing.get_type_hints(predict)
    types = {
        CogPath: {"type": "string", "format": "uri"},
        str: {"type": "string"},
        float: {"type": "number"},
        int: {"type": "integer"},
        bool: {"type": "boolean"},
    }
    props: dict[str, dict] = {}
    required = []
    for order, (name, param) in enumerate(list(inspect.signature(predict).parameters.items())[1:]):
        info = param.default
        prop = {"title": name.replace("_", " ").title(), "x-order": order, **types[hints[name]]}
        if info.description:
            prop["description"] = info.description
        if info.default is None:
            required.append(name)
        else:
            prop["default"] = info.default
        if info.ge is not None:
            prop["minimum"] = info.ge
        if info.le is not None:
            prop["maximum"] = info.le
        if info.choices:
            prop["enum"] = list(info.choices)
        props[name] = prop
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {
            "schemas": {
                "Input": {
                    "type": "object",
                    "title": "Input",
                    "required": required,
                    "properties": props,
                },
                "Output": {"type": "array", "items": {"type": "string", "format": "uri"}},
            }
        },
    }


@dataclass
class CogServer:
    url: str
    runs_file: Path
    process: subprocess.Popen
    log: Path

    def runs(self, what: str = "start") -> list[int]:
        """The seed of every prediction the predictor started (or, ``"done"``, finished)."""
        if not self.runs_file.exists():
            return []
        lines = self.runs_file.read_text().splitlines()
        return [int(line.split()[1]) for line in lines if line.startswith(what + " ")]

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health-check", timeout=5).json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    folder: Path, port: int | None = None, *, predictor: Path = PREDICTOR, **env: str
) -> CogServer:
    shutil.copy(predictor, folder / "predict.py")
    (folder / ".cog").mkdir(exist_ok=True)
    (folder / ".cog" / "openapi_schema.json").write_text(json.dumps(cog_schema(predictor)))
    port = port or _free_port()
    venv_bin = str(Path(sys.executable).parent)
    environ = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
        "PORT": str(port),
        "COG_TEST_RUNS": str(folder / "runs.txt"),
        **env,
    }
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
            cwd=folder,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the worker goes down with it
        )
    server = CogServer(f"http://127.0.0.1:{port}", folder / "runs.txt", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Cog server exited: {log.read_text()[-2000:]}")
        try:
            if server.health()["status"] not in ("STARTING",):
                return server
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    stop_server(server)
    pytest.fail(f"the Cog server did not start: {log.read_text()[-2000:]}")


def stop_server(server: CogServer, *, crash: bool = False) -> None:
    """Stop the server (``crash``: kill it and its worker at once, mid-prediction)."""
    if not crash:
        server.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cog = start_server(tmp_path_factory.mktemp("cog"), COG_TEST_STEP_S="0.02")
    assert cog.health()["status"] == "READY"
    yield cog
    stop_server(cog)


@pytest.fixture(autouse=True)
def idle(request):
    """Every test starts with the server's one slot free."""
    if "server" in request.fixturenames:
        cog = request.getfixturevalue("server")
        deadline = time.monotonic() + 15
        while cog.health()["status"] != "READY" and time.monotonic() < deadline:
            time.sleep(0.05)


def backend(client: httpx.AsyncClient, url: str, **kw) -> CogBackend:
    kw.setdefault("retry_base", 0.01)
    kw.setdefault("busy_poll", 0.05)
    kw.setdefault("heartbeat", 0.5)
    return CogBackend(client, url, **kw)


def run(url, photo, tmp_path, *, params=FAST, events=None, resume=None, options=None, **kw):
    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, url, **kw)
            try:
                request = Request(
                    "j1", photo, tmp_path / "out.png", params, options or {}, resume=resume
                )
                return await b.run(request, (events if events is not None else []).append)
            finally:
                await b.aclose()

    return asyncio.run(go())


def checkpoints(events) -> list[dict]:
    return [e.remote for e in events if e.remote]


# --- success ----------------------------------------------------------------------------------
def test_webhook_run_saves_output_with_metadata(server, photo, tmp_path):
    events: list = []
    before = len(server.runs())
    params = UpscaleParams(seed=None, num_inference_steps=40)  # 0.8 s: Cog sends logs every 0.5 s
    outcome = run(server.url, photo, tmp_path, params=params, events=events)
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == "cog/philz1337x/clarity-upscaler"
    assert info.output_size == (24, 20) and info.params.mode == "creative"
    assert server.runs()[before:] == [info.params.seed]  # one run, with the seed we drew
    states = [e.state for e in events if e.state]
    assert states[:3] == [JobState.uploading, JobState.submitting, JobState.queued]
    assert JobState.running in states and states[-1] is JobState.downloading
    assert any(e.total == 100 and e.done > 0 for e in events)  # from the predictor's bar
    # The result arrived as a data URL; no checkpoint carries it.
    outputs = [o for c in checkpoints(events) for o in c["outputs"]]
    assert outputs and not any(o.startswith("data:") for o in outputs)
    assert outcome.remote_id == checkpoints(events)[0]["key"]


def test_sync_run_needs_no_listener(server, photo, tmp_path):
    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, server.url, sync=True)
            request = Request("j1", photo, tmp_path / "out.png", FAST)
            outcome = await b.run(request, lambda e: None)
            assert b._listener.url == ""  # never started
            await b.aclose()
            return outcome

    outcome = asyncio.run(go())
    assert read_run_info(outcome.output).output_size == (24, 20)


def test_a_remote_server_is_driven_synchronously():
    async def go():
        async with httpx.AsyncClient() as client:
            return (
                CogBackend(client, "http://gpu-box.lan:5000").sync,
                CogBackend(client, "http://localhost:5000").sync,
                CogBackend(client).base_url,
            )

    assert asyncio.run(go()) == (True, False, "http://localhost:5000")


# --- refusals and failures --------------------------------------------------------------------
def test_server_validation_is_invalid_request_with_fields(server, photo, tmp_path):
    with pytest.raises(JobError) as err:
        run(server.url, photo, tmp_path, params=FAST.replace(scheduler="LMS"))
    assert err.value.kind is ErrorKind.invalid_request
    assert list(err.value.details["fields"]) == ["scheduler"]
    assert "your Cog server refused the request" in err.value.message


def test_settings_the_served_model_lacks_are_refused(server, photo, tmp_path):
    before = len(server.runs())
    with pytest.raises(JobError) as err:
        run(server.url, photo, tmp_path, params=FAST.replace(tiling_width=64, sharpen=1))
    assert err.value.kind is ErrorKind.invalid_request
    assert set(err.value.details["fields"]) == {"tiling_width", "sharpen"}
    assert len(server.runs()) == before


def test_a_failing_prediction_is_model_failed(server, photo, tmp_path):
    not_an_image = {"input_url": "data:image/png;base64,bm90IGFuIGltYWdl"}
    with pytest.raises(JobError) as err:
        run(server.url, photo, tmp_path, options=not_an_image)
    assert err.value.kind is ErrorKind.model_failed and "your Cog server" in err.value.message


def test_setup_failure_shows_the_setup_logs(tmp_path_factory, photo, tmp_path):
    broken = start_server(tmp_path_factory.mktemp("cog-broken"), COG_TEST_SETUP_FAIL="1")
    try:
        assert broken.health()["status"] == "SETUP_FAILED"
        with pytest.raises(JobError) as err:
            run(broken.url, photo, tmp_path)
    finally:
        stop_server(broken)
    assert err.value.kind is ErrorKind.model_failed and "weights file missing" in err.value.message


# --- busy, cancel, re-sent and resumed --------------------------------------------------------
@pytest.mark.parametrize("sync", [False, True])
def test_a_busy_server_queues_the_job_until_it_is_free(server, photo, tmp_path, sync):
    other = {"id": "someone-else", "input": {"image": _data_url(photo), "num_inference_steps": 25}}
    answer = httpx.put(
        f"{server.url}/predictions/someone-else",
        json=other,
        headers={"Prefer": "respond-async"},
    )
    assert answer.status_code == 202
    events: list = []
    outcome = run(server.url, photo, tmp_path, events=events, sync=sync)
    assert outcome.output.exists()
    assert any("is busy" in e.message for e in events if e.state is JobState.queued)


def _wait_idle(server: CogServer) -> None:
    started = time.monotonic()
    while server.health()["status"] != "READY":
        assert time.monotonic() - started < 10.0, "the server never became idle"
        time.sleep(0.02)


@pytest.mark.parametrize("sync", [False, True])
def test_cancel_stops_the_prediction(server, photo, tmp_path, sync):
    events: list = []
    _wait_idle(server)  # an earlier test's prediction finishing now would count as done below
    before = len(server.runs())

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, server.url, sync=sync)
            request = Request("j1", photo, tmp_path / "out.png", SLOW)
            task = asyncio.create_task(b.run(request, events.append))
            await until(lambda: len(server.runs()) > before)
            task.cancel()
            try:
                await task
            finally:
                await b.aclose()

    done = len(server.runs("done"))
    with pytest.raises(JobError) as err:
        asyncio.run(go())
    assert (
        err.value.kind is ErrorKind.canceled and "canceled at your Cog server" in err.value.message
    )
    _wait_idle(server)
    # Had the prediction gone on, it would have finished (2 s) and counted as done: it did not.
    assert len(server.runs()) == before + 1 and len(server.runs("done")) == done


def test_re_put_of_a_running_id_is_the_same_prediction(server, photo, tmp_path):
    events: list = []
    before = len(server.runs())

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, server.url)
            request = Request("j1", photo, tmp_path / "out.png", MID)
            task = asyncio.create_task(b.run(request, events.append))
            await until(lambda: any(e.state is JobState.running for e in events))
            key = checkpoints(events)[0]["key"]
            # What a submit re-sent after a dropped connection does: the same PUT again.
            again = await client.put(
                f"{server.url}/predictions/{key}",
                json={"id": key, "input": {"image": _data_url(photo)}},
                headers={"Prefer": "respond-async"},
            )
            outcome = await task
            await b.aclose()
            return again, outcome

    again, outcome = asyncio.run(go())
    assert again.status_code == 202 and again.json()["status"] == "processing"
    assert outcome.output.exists() and server.runs()[before:] == [4242]


def test_resume_after_a_restart_sends_the_same_id_again(server, photo, tmp_path):
    events: list = []
    before = len(server.runs())
    done = len(server.runs("done"))

    async def crash():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, server.url)
            request = Request("j1", photo, tmp_path / "out.png", MID)
            task = asyncio.create_task(b.run(request, events.append))
            await until(lambda: any(e.state is JobState.running for e in events))
            b.detached = True  # the app quits: stop watching, cancel nothing remote
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await b.aclose()

    asyncio.run(crash())
    assert server.health()["status"] == "BUSY"  # the orphan still runs; its webhooks go nowhere
    checkpoint = checkpoints(events)[-1]
    resumed: list = []
    outcome = run(server.url, photo, tmp_path, params=MID, resume=checkpoint, events=resumed)
    assert outcome.remote_id == checkpoint["key"] and outcome.output.exists()
    assert server.runs()[before:] == [4242, 4242]  # the orphan, then the re-run
    assert server.runs("done")[done:] == [4242]  # the orphan was cancelled, not waited for
    assert read_run_info(outcome.output).params.seed == 4242


def test_unreachable_webhooks_switch_to_synchronous_requests(server, photo, tmp_path):
    before = len(server.runs())
    done = len(server.runs("done"))

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, server.url, heartbeat=0.2, webhook_grace=0.4)

            async def nowhere() -> str:  # as if the server ran in Docker: 127.0.0.1 is not us
                return f"http://127.0.0.1:{_free_port()}/hook"

            b._listener.start = nowhere  # type: ignore[method-assign]
            request = Request("j1", photo, tmp_path / "out.png", MID)
            outcome = await b.run(request, lambda e: None)
            await b.aclose()
            return b.sync, outcome

    switched, outcome = asyncio.run(go())
    assert switched and outcome.output.exists()
    assert server.runs()[before:] == [4242, 4242]  # the unheard run, then the sync one
    assert server.runs("done")[done:] == [4242]  # the unheard run was cancelled


def _data_url(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("sync", [False, True])
def test_a_server_restart_mid_prediction_runs_it_again(
    tmp_path_factory, photo, tmp_path, sync, caplog
):
    folder = tmp_path_factory.mktemp("cog-restart")
    first = start_server(folder, COG_TEST_STEP_S="0.02")
    port = int(first.url.rsplit(":", 1)[1])
    events: list = []

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            b = backend(client, first.url, sync=sync, heartbeat=0.2)
            request = Request("j1", photo, tmp_path / "out.png", MID)
            task = asyncio.create_task(b.run(request, events.append))
            await until(lambda: len(first.runs()) == 1)
            stop_server(first, crash=True)  # the box goes down mid-prediction
            second = await asyncio.to_thread(start_server, folder, port, COG_TEST_STEP_S="0.02")
            try:
                return await task
            finally:
                await b.aclose()
                stop_server(second)

    outcome = asyncio.run(go())
    assert outcome.output.exists() and first.runs() == [4242, 4242]
    assert first.runs("done") == [4242]  # only the second server finished it
    # Webhooks: the heartbeat saw a new server (its setup time); sync: the request was re-sent.
    assert sync or "restarted and lost the prediction" in caplog.text


def test_the_cli_runs_through_a_cog_server_given_only_its_url(
    server, photo, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CLARIFIER_COG_BASE_URL", server.url)
    out = tmp_path / "out"
    code = main(["upscale", str(photo), "--backend", "cog", "-o", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    info = read_run_info(out / "in.png")
    assert info is not None and info.engine.startswith("cog/") and info.output_size == (24, 20)
    [run] = HistoryStore().list(backend="cog", limit=1)
    assert run.state == "succeeded" and run.remote_id
