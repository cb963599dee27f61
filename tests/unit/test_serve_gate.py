"""``clarifier serve``'s security rules: loopback by default, a token beyond it, and the token
gate that checks it on every request before anything reaches Cog's server.

The gate is tested against a loopback double standing in for coglet, which records every
request that got through; the command's wiring (who listens where, the warning, what coglet is
started with) against a stand-in for the coglet process.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from app.cli import main
from app.cli.common import UsageError
from app.cli.serve import MIN_TOKEN_LENGTH, TOKEN_ENV, is_loopback, plan
from app.serve.gate import TokenGate
from tests.doubles.http_double import LoopbackDouble, Req, Resp

TOKEN = "s3cret-token-for-tests-0123456789"


# --- the address and token rules ------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10", "[::1]"])
def test_loopback_needs_no_token_and_gets_no_gate(host) -> None:
    assert is_loopback(host)
    p = plan(host, 5000, None)
    assert (p.cog_host, p.cog_port, p.token) == (host.strip("[]"), 5000, None)
    assert p.cog_url == ("http://[::1]:5000" if ":" in host else f"http://{host}:5000")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gpu-box.lan", "10.0.0.1"])
def test_any_other_address_needs_a_token(host) -> None:
    assert not is_loopback(host)
    with pytest.raises(UsageError, match="give it a token"):
        plan(host, 5000, None)
    with pytest.raises(UsageError, match="too short"):
        plan(host, 5000, "x" * (MIN_TOKEN_LENGTH - 1))
    p = plan(host, 5000, TOKEN, free_port=5123)
    assert (p.host, p.port, p.token) == (host, 5000, TOKEN)  # the gate, on the address asked
    assert (p.cog_host, p.cog_port) == ("127.0.0.1", 5123)  # coglet, on loopback only


def test_the_command_refuses_an_open_address_without_a_token(capsys, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "give it a token" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2


class _FakeCoglet:
    """Stands in for `python -m cog.server.http`: records how it was started, exits at once."""

    started: ClassVar[list[_FakeCoglet]] = []

    def __init__(self, command, cwd, env) -> None:
        self.command, self.cwd, self.env = command, Path(cwd), env
        self.files = {p.name: p.read_text() for p in self.cwd.rglob("*") if p.is_file()}
        _FakeCoglet.started.append(self)

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


def test_an_open_address_warns_and_puts_coglet_behind_the_gate(
    monkeypatch, capsys, tiny_models_dir
) -> None:
    import app.cli.serve as serve

    monkeypatch.setattr(serve.subprocess, "Popen", _FakeCoglet)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the token from the environment, not the command line
    port = _free_port()
    args = ["--host", "0.0.0.0", "--port", str(port), "--models", str(tiny_models_dir)]
    assert main(["serve", *args]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on http://0.0.0.0:" in err and "not encrypted" in err
    (coglet,) = _FakeCoglet.started[-1:]
    assert coglet.command[-2:] == ["--host", "127.0.0.1"]
    assert coglet.env["PORT"] != str(port) and TOKEN_ENV not in coglet.env
    assert coglet.env["COG_PREDICT_TYPE_STUB"] == "predict.py:Runner"
    assert str(tiny_models_dir) in coglet.env["CLARIFIER_SERVE_MODELS"]
    assert "from app.serve.runner import Runner" in coglet.files["predict.py"]
    schema = json.loads(coglet.files["openapi_schema.json"])
    assert "image" in schema["components"]["schemas"]["Input"]["properties"]


def test_missing_models_stop_the_command_before_anything_listens(
    monkeypatch, capsys, tmp_path
) -> None:
    import app.cli.serve as serve

    monkeypatch.setattr(serve.subprocess, "Popen", _FakeCoglet)
    before = len(_FakeCoglet.started)
    assert main(["serve", "--models", str(tmp_path)]) == 1
    assert "juggernaut_reborn" in capsys.readouterr().err
    assert len(_FakeCoglet.started) == before


# --- the gate ---------------------------------------------------------------------------------
class _Coglet(LoopbackDouble):
    """What reaches the Cog server behind the gate."""

    name = "coglet"

    def __init__(self) -> None:
        super().__init__()
        self.route("GET", r"/health-check", lambda r: Resp.json(200, {"status": "READY"}))
        self.route("PUT", r"/predictions/(?P<id>[^/]+)", self.put)
        self.route("POST", r"/predictions", self.put)

    def put(self, req: Req) -> Resp:
        body = req.json()
        return Resp.json(202, {"id": body.get("id"), "status": "starting", "got": len(req.body)},
                         {"X-Upstream": "coglet"})  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gated():
    with _Coglet() as coglet:
        gate = TokenGate(("127.0.0.1", 0), coglet.url, TOKEN)
        thread = threading.Thread(target=gate.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield gate, coglet
        finally:
            gate.shutdown()
            gate.server_close()
            thread.join()


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x"],
)
def test_a_request_without_the_token_never_reaches_the_server(gated, header) -> None:
    gate, coglet = gated
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [("GET", "/health-check"), ("POST", "/predictions/x/cancel"),
                         ("POST", "/shutdown"), ("GET", "/openapi.json")]:  # fmt: skip
        answer = httpx.request(method, gate.url + path, headers=headers)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in answer.json()["detail"]
    assert coglet.log == []


def test_a_refused_large_body_still_gets_its_answer(gated) -> None:
    gate, coglet = gated
    body = {"input": {"image": "data:image/png;base64," + "A" * (4 << 20)}}
    answer = httpx.post(gate.url + "/predictions", json=body, timeout=30)
    assert answer.status_code == 401 and coglet.log == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Token"])
def test_the_token_lets_requests_through_unchanged(gated, scheme) -> None:
    gate, coglet = gated
    body = {"id": "p1", "input": {"image": "data:,x"}, "webhook": "http://127.0.0.1:9/h"}
    answer = httpx.put(
        gate.url + "/predictions/p1?x=1",
        json=body,
        headers={"Authorization": f"{scheme} {TOKEN}", "Prefer": "respond-async"},
    )
    assert answer.status_code == 202 and answer.headers["X-Upstream"] == "coglet"
    assert answer.json() == {"id": "p1", "status": "starting", "got": len(answer.request.content)}
    (seen,) = coglet.requests("PUT")
    assert seen.path == "/predictions/p1" and seen.query == {"x": "1"}
    assert json.loads(seen.body) == body and seen.headers["prefer"] == "respond-async"
    assert "authorization" not in seen.headers  # the token stops at the gate
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"


def test_a_server_that_is_not_up_is_a_502(monkeypatch) -> None:
    gate = TokenGate(("127.0.0.1", 0), f"http://127.0.0.1:{_free_port()}", TOKEN)
    thread = threading.Thread(target=gate.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        answer = httpx.get(gate.url + "/health-check", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        gate.shutdown()
        gate.server_close()
        thread.join()
    assert answer.status_code == 502 and "not answering" in answer.json()["detail"]


def test_the_gate_needs_a_token() -> None:
    with pytest.raises(ValueError, match="token"):
        TokenGate(("127.0.0.1", 0), "http://127.0.0.1:1", "")


def test_a_proxy_style_request_is_refused_not_forwarded(gated) -> None:
    import socket

    gate, coglet = gated
    host, port = gate.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(
            b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.0 400") and coglet.log == []


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_taken_port_is_said_plainly(monkeypatch, capsys, tiny_models_dir, token) -> None:
    import socket

    import app.cli.serve as serve

    monkeypatch.setattr(serve.subprocess, "Popen", _FakeCoglet)
    before = len(_FakeCoglet.started)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--port", str(port), "--models", str(tiny_models_dir)]
        assert main(args + (["--token", token] if token else [])) == 1
    assert "cannot listen on http://127.0.0.1:" in capsys.readouterr().err
    assert len(_FakeCoglet.started) == before
