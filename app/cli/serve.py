"""``clarifier serve``: the engine behind Cog's HTTP prediction API, for other computers.

Cog's own server (coglet, from the ``cog`` package) does the serving: ``GET /health-check``,
``POST /predictions`` (synchronous, or asynchronous with a webhook), ``PUT /predictions/{id}``
and ``POST /predictions/{id}/cancel``. It hosts :class:`app.serve.runner.Runner`, which takes
philz1337x/clarity-upscaler's inputs, so a client written for Replicate's Clarity, and
Clarifier's own ``cog`` backend, work against it unchanged.

It listens on 127.0.0.1 unless told otherwise. Any other address needs a token (``--token``,
or ``CLARIFIER_SERVE_TOKEN`` to keep it out of the process list): coglet then listens on a
loopback port and :class:`app.serve.gate.TokenGate` on the address, refusing every request
without ``Authorization: Bearer <token>``.

The command checks the models before starting (the set-up would fail the same way), writes the
runner's stub and its OpenAPI document into a temporary folder, runs
``python -m cog.server.http`` there, says when the engine is ready, and stops it on Ctrl-C.
Exit status: 0 after a clean stop, 1 when the server could not start or set up, 2 for a usage
error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from app.cli.models import model_dirs_from
from app.serve.config import MODELS_ENV, accepts_licences
from pipeline.models.store import find_models, missing_message
from pipeline.params import UpscaleParams

if TYPE_CHECKING:  # the gate loads httpx: only when it runs
    from app.serve.gate import TokenGate

__all__ = [
    "TOKEN_ENV",
    "Plan",
    "add_serve_parser",
    "cmd_serve",
    "is_loopback",
    "plan",
    "server_env",
    "write_folder",
]

TOKEN_ENV = "CLARIFIER_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16
_STUB = (
    '"""Clarifier\'s engine as a Cog runner (written by `clarifier serve`)."""\n\n'
    "from app.serve.runner import Runner\n\n"
    '__all__ = ["Runner"]\n'
)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the engine over Cog's HTTP prediction API (Clarity's inputs)",
        description="Run the engine behind Cog's HTTP prediction API, with Clarity's inputs: "
        "other computers and scripts send it images (`--backend cog` on another Clarifier, "
        "or any client written for Replicate's clarity-upscaler).",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this computer only; any other "
        "address needs --token)",
    )
    serve.add_argument("--port", type=int, default=5000, help="the port (default 5000)")
    serve.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR",
        help="also find model files in this folder (an A1111 or ComfyUI install, or a plain "
        "folder); repeatable",
    )
    serve.add_argument(
        "--token",
        metavar="T",
        help="the bearer token every request must carry (Authorization: Bearer T), at least "
        f"{MIN_TOKEN_LENGTH} characters; or set {TOKEN_ENV}. Required beyond loopback",
    )
    serve.add_argument(
        "--upload-url",
        metavar="URL",
        help="PUT each output to URL/<file name> and answer with its URL instead of a data URI",
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this computer only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@dataclass(frozen=True)
class Plan:
    """Who listens where: coglet, and the token gate in front of it when there is a token."""

    host: str  # what the person asked for
    port: int
    cog_host: str
    cog_port: int
    token: str | None  # None: no gate

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def cog_url(self) -> str:
        return _url(self.cog_host, self.cog_port)


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def plan(host: str, port: int, token: str | None, free_port: int | None = None) -> Plan:
    """Check the address and token rules and decide who listens where. Raises
    :class:`UsageError` for a non-loopback address without a token, a short token or a bad
    port. ``free_port`` is the loopback port for coglet behind the gate (default: any free)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: a port is a number from 1 to 65535")
    host = host.strip().strip("[]")
    token = token.strip() if token else None
    if not token and not is_loopback(host):
        raise UsageError(
            f"--host {host} makes the server reachable from other computers: give it a token "
            f"(--token, or {TOKEN_ENV}) that every request must carry, e.g. "
            "`--token $(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')`"
        )
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(f"the token is too short: use at least {MIN_TOKEN_LENGTH} characters")
    if not token:
        return Plan(host, port, host, port, None)
    return Plan(host, port, "127.0.0.1", free_port or _free_port(), token)


def _check_free(host: str, port: int) -> None:
    """Raise OSError when ``host:port`` cannot be listened on (taken, or not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _warn_network(p: Plan) -> None:
    print(
        f"clarifier: warning: serving on {p.url}, reachable from other computers. Every request "
        "must carry 'Authorization: Bearer <token>'; the connection is not encrypted, so use "
        "it on a network you trust, or put TLS or an SSH tunnel in front.",
        file=sys.stderr,
    )


def _cog_missing() -> str | None:
    if importlib.util.find_spec("cog") is None or importlib.util.find_spec("coglet") is None:
        return (
            "clarifier serve runs Cog's server, which is not installed: "
            "pip install 'clarifier[serve]' (Cog's runtime, in Clarifier's environment)"
        )
    return None


def write_folder(folder: Path) -> Path:
    """What coglet reads from its working folder: the runner stub and the OpenAPI document."""
    from app.serve.schema import write_schema

    (folder / "predict.py").write_text(_STUB, encoding="utf-8")
    write_schema(folder / ".cog" / "openapi_schema.json")
    return folder


def server_env(
    folder: Path, p: Plan, model_dirs: list[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """coglet's environment: the runner, the port, a ``python`` on PATH that is this
    interpreter (coglet starts its worker with the ``python`` it finds), Clarifier on the
    path, and the model folders for the runner's set-up."""
    env = dict(os.environ if base is None else base)
    here = Path(sys.executable).parent
    path = [str(here)]
    if shutil.which("python", path=str(here)) is None:  # e.g. only python3 beside it
        bin_dir = folder / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "python").symlink_to(sys.executable)
        path.append(str(bin_dir))
    import app

    root = str(Path(app.__file__).resolve().parent.parent)
    env.update(
        PATH=os.pathsep.join([*path, env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p),
        PORT=str(p.cog_port),
        COG_PREDICT_TYPE_STUB="predict.py:Runner",
    )
    env[MODELS_ENV] = os.pathsep.join(model_dirs)
    env.setdefault("COG_LOG_LEVEL", "warn")  # coglet's own chatter; the engine's lines still show
    env.pop(TOKEN_ENV, None)  # the engine has no use for it
    return env


def cmd_serve(args: argparse.Namespace) -> int:
    p = plan(args.host, args.port, args.token or os.environ.get(TOKEN_ENV))
    problem = _cog_missing()
    if problem:
        print(f"clarifier: {problem}", file=sys.stderr)
        return EXIT_FAILED
    dirs = model_dirs_from(args.models)
    check = find_models(UpscaleParams(mode="creative"), dirs)
    if check.missing and not accepts_licences():  # else the set-up downloads them
        print(f"clarifier: {missing_message(check.missing, check.searched)}", file=sys.stderr)
        return EXIT_FAILED
    if not is_loopback(p.host):
        _warn_network(p)
    gate = None
    try:
        if p.token:
            from app.serve.gate import TokenGate

            gate = TokenGate((p.host, p.port), p.cog_url, p.token)
        else:
            _check_free(p.host, p.port)  # a clear message, not coglet's traceback
    except OSError as exc:
        print(f"clarifier: cannot listen on {p.url}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    with tempfile.TemporaryDirectory(prefix="clarifier-serve-") as tmp:
        folder = write_folder(Path(tmp))
        command = [sys.executable, "-m", "cog.server.http", "--host", p.cog_host]
        if args.upload_url:
            command += ["--upload-url", args.upload_url]
        process = subprocess.Popen(command, cwd=folder, env=server_env(folder, p, dirs))
        print(f"clarifier: starting the engine for {p.url} (Cog's HTTP API) …", file=sys.stderr)
        return _supervise(process, p, gate)


def _supervise(process: subprocess.Popen[bytes], p: Plan, gate: TokenGate | None) -> int:
    """Run until coglet stops: the gate (if any) on a thread, a watcher that says when the
    set-up is done, SIGTERM passed on, Ctrl-C a clean stop."""
    failed = threading.Event()
    threads = [threading.Thread(target=_watch_setup, args=(process, p, failed), daemon=True)]
    if gate is not None:
        threads.append(threading.Thread(target=gate.serve_forever, daemon=True))
    for thread in threads:
        thread.start()

    def on_term(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()

    previous = signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    try:
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the terminal sent coglet the same SIGINT
            interrupted = True
            code = _stop(process)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if gate is not None:
            gate.shutdown()
            gate.server_close()
    if failed.is_set():
        return EXIT_FAILED
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if code in (0, -signal.SIGTERM, -signal.SIGINT) else EXIT_FAILED


def _stop(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(timeout=15)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.kill()
        return process.wait()


def _watch_setup(process: subprocess.Popen[bytes], p: Plan, failed: threading.Event) -> None:
    """Say once when the engine is ready; when its set-up fails, show why and stop."""
    import httpx

    while process.poll() is None:
        try:
            health = httpx.get(f"{p.cog_url}/health-check", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.5)
            continue
        status = health.get("status") if isinstance(health, dict) else None
        if status == "SETUP_FAILED":
            setup = health.get("setup") or {}
            logs = str(setup.get("logs") or "").strip().splitlines()
            tail = "\n".join(line for line in logs[-12:] if not line.startswith("[coglet"))
            print(f"clarifier: the engine could not start:\n{tail}", file=sys.stderr)
            failed.set()
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            return
        if status in ("READY", "BUSY"):
            print(f"clarifier: ready at {p.url}", file=sys.stderr)
            return
        time.sleep(0.5)
