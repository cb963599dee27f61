"""The harness every provider double is built on: a real HTTP server on 127.0.0.1.

A double is a :class:`LoopbackDouble` subclass that registers routes. The harness gives it

* a **virtual clock** (:class:`VirtualClock`): real time, optionally sped up, plus jumps
  (``clock.advance(3600)``) to carry a job past a retention window;
* a **fake CDN** on the same server: ``cdn_put(data)`` returns an absolute URL that serves the
  bytes until they expire (404 after; a double may add its own refusal rules);
* **scenarios**: how the next jobs behave (time queued, time running, failure, empty output);
* a **request log** (:attr:`LoopbackDouble.log`) tests assert against;
* **fault injection** (:meth:`LoopbackDouble.inject`): drop the connection after a request was
  handled (the submit was accepted, the client never hears), drop before handling, answer with
  a status and body instead (5xx bursts, 429 storms, HTML pages), or answer slowly;
* :class:`WindowLimiter`, a per-key requests-per-window counter for rate limits.

Absolute URLs in bodies point back at the server (``self.url``), as the providers' do.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Fault",
    "LoopbackDouble",
    "Req",
    "Resp",
    "Scenario",
    "Seen",
    "VirtualClock",
    "WindowLimiter",
    "parse_multipart",
    "tiny_png",
    "until",
]


class VirtualClock:
    """Epoch seconds that run at ``speed`` × real time and can jump forward."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self._real0 = time.monotonic()
        self._wall0 = time.time()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._wall0 + (time.monotonic() - self._real0) * self.speed + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


@dataclass
class Req:
    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    match: dict[str, str] = field(default_factory=dict)  # the route's named groups

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The JSON body; raises ValueError when it is not JSON."""
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Resp:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> Resp:
        return cls(
            status,
            json.dumps(obj).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    @classmethod
    def text(
        cls,
        status: int,
        text: str,
        headers: dict[str, str] | None = None,
        ctype: str = "text/plain",
    ) -> Resp:
        return cls(
            status, text.encode(), {"Content-Type": f"{ctype}; charset=utf-8", **(headers or {})}
        )

    @classmethod
    def html(cls, status: int, title: str = "Error") -> Resp:
        page = (
            f"<!DOCTYPE html><html><head><title>{title}</title></head>"
            f"<body><h1>{title}</h1></body></html>"
        )
        return cls.text(status, page, ctype="text/html")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float  # virtual clock
    real: float  # time.monotonic() when the request arrived
    status: int | None  # None when the connection was dropped without an answer


@dataclass
class Fault:
    """One injected misbehaviour, matched by method and a path regex, ``times`` times."""

    method: str
    path: str  # regex, searched in the path
    kind: str  # "drop_after" | "drop_before" | "respond" | "delay"
    times: int = 1
    response: Resp | None = None
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and re.search(self.path, path) is not None


@dataclass
class Scenario:
    """How one job behaves at the provider, in virtual seconds."""

    queue_s: float = 0.0
    run_s: float = 0.5
    fail: str | None = None  # the provider's error message; None succeeds
    empty_output: bool = False  # succeed without an output (Replicate's handfix quirk)
    output: bytes | None = None  # the result bytes; None: the double makes a PNG

    def phase(self, elapsed: float) -> str:
        if elapsed < self.queue_s:
            return "queued"
        if elapsed < self.queue_s + self.run_s:
            return "running"
        return "failed" if self.fail else "done"

    def progress(self, elapsed: float) -> float:
        if self.run_s <= 0:
            return 1.0
        return min(1.0, max(0.0, (elapsed - self.queue_s) / self.run_s))


class WindowLimiter:
    """At most ``limit`` requests per key in fixed windows of ``window`` virtual seconds."""

    def __init__(self, limit: int, window: float, clock: VirtualClock) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> tuple[bool, float, int]:
        """Count a request; returns (allowed, window reset epoch, remaining)."""
        now = self.clock.now()
        slot = int(now // self.window)
        reset = (slot + 1) * self.window
        with self._lock:
            used = self._counts.get((key, slot), 0)
            if used >= self.limit:
                return False, reset, 0
            self._counts[(key, slot)] = used + 1
            return True, reset, self.limit - used - 1


def parse_multipart(req: Req) -> dict[str, tuple[str | None, str, bytes]]:
    """A multipart/form-data body as ``{field: (filename, content_type, data)}``."""
    ctype = req.header("content-type", "")
    if "multipart/form-data" not in ctype:
        raise ValueError("not multipart/form-data")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body
    )
    parts: dict[str, tuple[str | None, str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        parts[str(name)] = (
            part.get_filename(),
            part.get_content_type(),
            part.get_payload(decode=True) or b"",
        )
    return parts


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait (in a test's event loop) until ``predicate()`` holds; fail after ``limit`` seconds."""
    import asyncio

    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def tiny_png(width: int = 16, height: int = 16, seed: int = 0) -> bytes:
    """A small valid PNG, different for each seed (outputs the doubles hand out)."""
    import io

    from PIL import Image

    image = Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


Handler = Callable[[Req], Resp | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the load test opens many connections at once


class LoopbackDouble:
    """A provider double: subclasses call :meth:`route` in ``__init__``."""

    name = "double"

    def __init__(self, *, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.lock = threading.RLock()
        self.log: list[Seen] = []
        self.faults: list[Fault] = []
        self.scenarios: deque[Scenario] = deque()
        self.default_scenario = Scenario()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._cdn: dict[str, tuple[bytes, str, float | None]] = {}
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.route("GET", r"/cdn/(?P<token>[^/]+)(?:/[^/]*)?", self._cdn_get)

    # --- set-up -------------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    def next_scenario(self) -> Scenario:
        with self.lock:
            return self.scenarios.popleft() if self.scenarios else self.default_scenario

    def inject(
        self,
        method: str,
        path: str,
        kind: str,
        *,
        times: int = 1,
        response: Resp | None = None,
        delay: float = 0.0,
    ) -> Fault:
        fault = Fault(method, path, kind, times, response, delay)
        with self.lock:
            self.faults.append(fault)
        return fault

    # --- the fake CDN -------------------------------------------------------------------------
    def cdn_put(
        self,
        data: bytes,
        content_type: str = "image/png",
        ttl: float | None = None,
        name: str = "out.png",
    ) -> str:
        token = secrets.token_hex(8)
        expires = None if ttl is None else self.clock.now() + ttl
        with self.lock:
            self._cdn[token] = (data, content_type, expires)
        return f"{self.url}/cdn/{token}/{name}"

    def cdn_expire(self, url: str) -> None:
        token = urllib.parse.urlsplit(url).path.split("/")[2]
        with self.lock:
            self._cdn.pop(token, None)

    def cdn_lookup(self, url: str) -> bytes | None:
        """The bytes behind one of this double's CDN URLs, if it still serves them."""
        parts = urllib.parse.urlsplit(url).path.split("/")
        if len(parts) < 3 or parts[1] != "cdn":
            return None
        with self.lock:
            found = self._cdn.get(parts[2])
        if found is None or (found[2] is not None and self.clock.now() > found[2]):
            return None
        return found[0]

    def cdn_refuse(self, req: Req) -> Resp | None:
        """A double's own CDN rule (Wireflow's user-agent block); None serves the file."""
        return None

    def _cdn_get(self, req: Req) -> Resp:
        refused = self.cdn_refuse(req)
        if refused is not None:
            return refused
        with self.lock:
            found = self._cdn.get(req.match["token"])
        if found is None or (found[2] is not None and self.clock.now() > found[2]):
            return Resp.text(404, "Not Found")
        data, ctype, _ = found
        return Resp(200, data, {"Content-Type": ctype})

    # --- queries for tests --------------------------------------------------------------------
    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                s
                for s in self.log
                if (method is None or s.method == method)
                and (path is None or re.search(path, s.path))
            ]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.requests(method, path))

    # --- serving ------------------------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def dispatch(self, req: Req) -> Resp:
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(req.path)
            if match is None:
                continue
            if method != req.method:
                continue
            req.match = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items() if v}
            result = handler(req)
            return result if result is not None else Resp(204)
        allowed = [m for m, p, _ in self._routes if p.fullmatch(req.path)]
        if allowed:
            return self.method_not_allowed(req)
        return self.not_found(req)

    def not_found(self, req: Req) -> Resp:
        return Resp.json(404, {"error": "Not Found"})

    def method_not_allowed(self, req: Req) -> Resp:
        return Resp.json(405, {"error": "Method Not Allowed"})

    def start(self) -> LoopbackDouble:
        double = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = f"{double.name}-double/1"

            def log_message(self, *args: object) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _handle(self) -> None:
                arrived = time.monotonic()
                split = urllib.parse.urlsplit(self.path)
                body = self._read_body()
                req = Req(
                    method=self.command,
                    path=split.path,
                    query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                fault = double._take_fault(req.method, req.path)

                def record(status: int | None) -> None:
                    # Logged before the client can see an answer (or a dropped connection), so
                    # a test that asserts right after its request finds it in the log.
                    seen = Seen(
                        req.method,
                        req.path,
                        req.query,
                        req.headers,
                        body,
                        double.clock.now(),
                        arrived,
                        status,
                    )
                    with double.lock:
                        double.log.append(seen)

                if fault is not None and fault.kind == "drop_before":
                    record(None)
                    self._drop()
                    return
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.delay)
                if fault is not None and fault.kind == "respond" and fault.response:
                    resp = fault.response
                else:
                    try:
                        resp = double.dispatch(req)
                    except Exception as exc:  # noqa: BLE001 - a double bug shows as a 500
                        resp = Resp.json(500, {"error": f"double crashed: {exc!r}"})
                if fault is not None and fault.kind == "drop_after":
                    record(None)
                    self._drop()
                    return
                record(resp.status)
                self.send_response(resp.status)
                for key, value in resp.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        server = _Server(("127.0.0.1", 0), _Handler)
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # a quick shutdown keeps test teardown short
            daemon=True,
            name=f"{self.name}-double",
        ).start()
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LoopbackDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
