"""``clarifier serve`` for real: Cog's server hosting Clarifier's engine with the tiny models.

The server is started once for the module as a person starts it (``python -m app.cli serve
--port P --models TINY``), so this covers the command, the runner's set-up (models found, the
warm-up run), coglet's validation against the published schema, and the engine in its worker.
Against it run the clients the issue names: Clarifier's own ``cog`` backend (unchanged: the
job's pixels must equal the same job on this computer), a request body as a client of
Replicate's clarity-upscaler sends it, an asynchronous prediction with webhooks and a cancel,
and the token gate in front of it all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobError, Request
from app.backends.local import LocalBackend
from app.backends.providers.cog import CogBackend
from app.serve.gate import TokenGate
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.doubles.http_double import LoopbackDouble, Req, Resp, until

pytest.importorskip("cog")

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-long-enough-token-for-the-gate"
JOB = UpscaleParams(mode="creative", num_inference_steps=4, seed=123)


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health-check", timeout=5).json()

    def wait_idle(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while self.health()["status"] != "READY":
            assert time.monotonic() < deadline, "the server stayed busy"
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--models", str(tiny_models_dir)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: nothing of it outlives the module
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 240
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"clarifier serve exited: {log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if served.health()["status"] == "READY":
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"clarifier serve did not get ready: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield served
    finally:
        process.terminate()  # the command passes SIGTERM on to coglet
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert code == 0, log.read_text()[-3000:]


def _textured(path: Path, size: tuple[int, int] = (24, 20)) -> Path:
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _pixels(data: Path | bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image.convert("RGB"))


def _run(backend_of, request: Request) -> object:
    async def go():
        async with httpx.AsyncClient(timeout=60) as client:
            backend = backend_of(client)
            try:
                return await backend.run(request, lambda event: None)
            finally:
                await backend.aclose()

    return asyncio.run(go())


# --- Clarifier's own cog backend ------------------------------------------------------------
def _served(server: Served, source: Path, output: Path, params: UpscaleParams = JOB):
    return _run(
        lambda client: CogBackend(client, server.url, retry_base=0.01, busy_poll=0.05),
        Request(output.stem, source, output, params),
    )


def test_the_cog_backend_runs_a_job_through_clarifier_serve(server, tmp_path) -> None:
    outcome = _served(server, _textured(tmp_path / "in.png"), tmp_path / "served.png")
    assert _pixels(outcome.output).shape == (40, 48, 3)
    info = read_run_info(outcome.output)
    assert info is not None and info.engine.startswith("cog/")
    assert info.params.seed == 123 and info.params.num_inference_steps == 4


def test_clarifier_upscale_on_another_computer_runs_through_it(
    server, tmp_path, monkeypatch, capsys
) -> None:
    from app.cli import main

    monkeypatch.setenv("CLARIFIER_COG_BASE_URL", server.url)
    source = _textured(tmp_path / "photo.png")
    out = tmp_path / "out"
    job = ["--mode", "creative", "--seed", "123", "--set", "num_inference_steps=4"]
    code = main(["upscale", str(source), "--backend", "cog", "-o", str(out), "--no-progress", *job])
    assert code == 0, capsys.readouterr().err
    info = read_run_info(out / "photo.png")
    assert info is not None and info.engine.startswith("cog/") and info.output_size == (48, 40)


@pytest.mark.slow  # a second engine (the local worker) loads the models: ~10 s more
def test_the_served_job_has_the_pixels_of_the_same_job_on_this_computer(
    server, tiny_models_dir, tmp_path
) -> None:
    source = _textured(tmp_path / "in.png")
    served = _pixels(_served(server, source, tmp_path / "served.png").output)
    local = _run(
        lambda client: LocalBackend(),
        Request("j2", source, tmp_path / "local.png", JOB, {"model_dirs": [str(tiny_models_dir)]}),
    )
    other = _served(server, source, tmp_path / "other.png", JOB.replace(seed=124))
    assert np.array_equal(served, _pixels(local.output))  # the same job, the same pixels
    assert not np.array_equal(served, _pixels(other.output))  # and the seed matters


# --- a client written for Replicate's clarity-upscaler --------------------------------------
def test_a_replicate_clarity_request_body_works_unchanged(server, tmp_path) -> None:
    png = (_textured(tmp_path / "in.png")).read_bytes()
    with LoopbackDouble() as cdn:
        image_url = cdn.cdn_put(png, name="in.png")
        body = {  # the provider reference's §4.2 request, as sent to Replicate
            "version": "philz1337x/clarity-upscaler:" + "0" * 64,
            "input": {
                "image": image_url,
                "prompt": "masterpiece, best quality, highres, <lora:more_details:0.5> "
                "<lora:SDXLrender_v2.0:1>",
                "negative_prompt": "(worst quality, low quality, normal quality:2) "
                "JuggernautNegative-neg",
                "scale_factor": 2,
                "dynamic": 6,
                "creativity": 0.35,
                "resemblance": 0.6,
                "tiling_width": 112,
                "tiling_height": 144,
                "sd_model": "juggernaut_reborn.safetensors [338b85bc4f]",
                "scheduler": "DPM++ 3M SDE Karras",
                "num_inference_steps": 18,
                "seed": 1337,
                "downscaling": False,
                "downscaling_resolution": 768,
                "sharpen": 0,
                "handfix": "disabled",
                "output_format": "png",
            },
        }
        answer = httpx.post(f"{server.url}/predictions", json=body, timeout=120)
        fetched = cdn.requests("GET", "/cdn/")
    assert answer.status_code == 200, answer.text
    prediction = answer.json()
    assert prediction["status"] == "succeeded", prediction.get("error")
    (uri,) = prediction["output"]
    header, _, data = uri.partition(",")
    assert header == "data:image/png;base64"
    output = base64.b64decode(data)
    assert _pixels(output).shape == (40, 48, 3)
    info = read_run_info(output)
    assert info is not None and info.params.seed == 1337 and info.params.mode == "creative"
    assert info.params.scheduler == "DPM++ 3M SDE Karras" and len(fetched) == 1
    assert "diffusion 100%|##########| 7/7" in prediction["logs"]  # int(18 · 0.35) + 1 steps
    served_schema = httpx.get(f"{server.url}/openapi.json").json()
    from app.serve.schema import openapi_schema

    assert served_schema == json.loads(json.dumps(openapi_schema()))


# --- asynchronous predictions: webhooks, and cancel -----------------------------------------
class _Hooks(LoopbackDouble):
    name = "webhooks"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict] = []
        self.route("POST", r"/hook", self.hook)

    def hook(self, req: Req) -> Resp:
        self.received.append(req.json())
        return Resp(200)

    def statuses(self) -> list[str]:
        return [h.get("status", "") for h in list(self.received)]

    def logs(self) -> str:
        return "".join(h.get("logs") or "" for h in list(self.received[-1:]))


def test_an_async_prediction_reports_by_webhook_and_stops_on_cancel(server, tmp_path) -> None:
    server.wait_idle()
    image = (
        "data:image/png;base64,"
        + base64.b64encode(_textured(tmp_path / "in.png").read_bytes()).decode()
    )
    with _Hooks() as hooks:
        body = {
            "id": "long-one",
            "input": {"image": image, "num_inference_steps": 100, "creativity": 0.9},
            "webhook": f"{hooks.url}/hook",
            "webhook_events_filter": ["start", "logs", "completed"],
        }
        answer = httpx.put(
            f"{server.url}/predictions/long-one", json=body, headers={"Prefer": "respond-async"}
        )
        assert answer.status_code == 202 and answer.json()["status"] == "starting"
        asyncio.run(until(lambda: "diffusion   1%" in hooks.logs(), limit=60))
        cancel = httpx.post(f"{server.url}/predictions/long-one/cancel")
        assert cancel.status_code == 200
        asyncio.run(until(lambda: "canceled" in hooks.statuses(), limit=30))
        assert "succeeded" not in hooks.statuses()
        assert "100%|##########| 91/91" not in hooks.logs()  # it stopped part-way
    server.wait_idle(limit=15)  # the engine is free for the next one


# --- refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("inputs", "status", "message"),
    [
        ({"scheduler": "Karras-ish"}, 422, "scheduler"),
        ({"dynamic": 60}, 422, "dynamic"),
        ({"image": "file:///etc/passwd"}, 200, "not a file: URL"),
        ({"custom_sd_model": "/etc/passwd"}, 200, "not a path"),
        ({"image": "data:text/plain;base64,aGVsbG8gdGhlcmU="}, 200, "text file"),
        ({"scale_factor": 40}, 200, "scale_factor"),
    ],
)
def test_what_the_server_refuses(server, inputs, status, message) -> None:
    server.wait_idle()
    body = {"input": {"image": "data:image/png;base64," + base64.b64encode(_png()).decode()}}
    body["input"].update(inputs)
    answer = httpx.post(f"{server.url}/predictions", json=body, timeout=60)
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.json()["status"] == "failed" and message in answer.json()["error"]
    else:
        assert message in json.dumps(answer.json()["detail"])


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


# --- the token gate in front of the real server ---------------------------------------------
def test_through_the_token_gate_the_backend_needs_its_key(server, tmp_path) -> None:
    server.wait_idle()
    gate = TokenGate(("127.0.0.1", 0), server.url, TOKEN)
    thread = threading.Thread(target=gate.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    source = _textured(tmp_path / "in.png")
    try:
        outcome = _run(
            lambda client: CogBackend(client, gate.url, TOKEN, retry_base=0.01, busy_poll=0.05),
            Request("j1", source, tmp_path / "gated.png", JOB),
        )
        with pytest.raises(JobError) as refused:
            _run(
                lambda client: CogBackend(client, gate.url, retry_base=0.01, busy_poll=0.05),
                Request("j2", source, tmp_path / "refused.png", JOB),
            )
    finally:
        gate.shutdown()
        gate.server_close()
        thread.join()
    assert _pixels(outcome.output).shape == (40, 48, 3)
    assert refused.value.kind is ErrorKind.auth
    assert not (tmp_path / "refused.png").exists()


# --- the whole command with a token ---------------------------------------------------------
@pytest.mark.slow  # a second server: its own engine start and warm-up
def test_serve_with_a_token_checks_it_on_every_request(tiny_models_dir, tmp_path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "CLARIFIER_SERVE_TOKEN": TOKEN}
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--models", str(tiny_models_dir)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 240
        status = ""
        while status != "READY":
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                status = httpx.get(f"{url}/health-check", headers=auth, timeout=5).json()["status"]
            time.sleep(0.2)
        assert httpx.get(f"{url}/health-check").status_code == 401
        body = {"input": {"image": "data:image/png;base64," + base64.b64encode(_png()).decode()}}
        assert httpx.post(f"{url}/predictions", json=body).status_code == 401
        answer = httpx.post(f"{url}/predictions", json=body, headers=auth, timeout=120)
        assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert code == 0, log.read_text()[-3000:]
    assert "ready at http://127.0.0.1:" in log.read_text()
