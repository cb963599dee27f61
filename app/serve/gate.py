"""The bearer-token check in front of a Cog server that the network can reach.

Coglet, Cog's HTTP server, checks no tokens (its only token, ``WEBHOOK_AUTH_TOKEN``, is one it
*sends* with webhooks). So when ``clarifier serve`` listens beyond loopback, coglet listens on
127.0.0.1 only and this gate listens on the public address: every request must carry
``Authorization: Bearer <token>`` (or Replicate's older ``Token <token>``); one that does not is
answered 401 before its body is read, and one that does is forwarded to coglet unchanged and its
answer streamed back unchanged (a synchronous prediction may take minutes; an event stream is
passed on as it comes).

This is the smallest layer that can check a header: the standard library's HTTP server parses
the requests (it is not a home-made server), httpx forwards them, and nothing here knows Cog's
API. Each connection carries one request (HTTP/1.0-style close), so an answer of unknown length
needs no chunking of our own. Local users of the machine reach coglet's loopback port without a
token, as they do when ``clarifier serve`` binds to loopback; the gate guards the network. The
token travels in clear text: on a network you do not trust, put TLS in front (a reverse proxy)
or use an SSH tunnel.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

__all__ = ["MAX_BODY_BYTES", "TokenGate"]

log = logging.getLogger(__name__)

# A prediction's JSON: a data-URL image (64 MiB, a third more in base64) and its parameters.
MAX_BODY_BYTES = 128 * 2**20
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_ANSWER_OWN = frozenset({"date", "server"})  # send_response() writes the gate's own
_SCHEMES = (b"bearer", b"token")


class TokenGate(ThreadingHTTPServer):
    """Listens on ``address`` and forwards every request that carries ``token`` to
    ``upstream`` (coglet on loopback). :meth:`serve_forever` runs it; :meth:`shutdown` stops
    it from another thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: str, token: str) -> None:
        if not token:
            raise ValueError("the gate needs a token")
        host = address[0].strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address = (host, address[1])
        self.upstream = upstream.rstrip("/")
        self.token = token.encode()
        self.client = httpx.Client(
            timeout=httpx.Timeout(30.0, read=None),  # a synchronous prediction answers when done
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=8),
        )
        self._closed = threading.Event()
        super().__init__(address, _Forward)

    def allowed(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (compared in constant time)."""
        scheme, _, given = (header or "").strip().partition(" ")
        if scheme.lower().encode() not in _SCHEMES:
            return False
        return hmac.compare_digest(given.strip().encode(), self.token)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = host if isinstance(host, str) else host.decode()
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"

    def server_close(self) -> None:
        super().server_close()
        if not self._closed.is_set():
            self._closed.set()
            self.client.close()


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: the answer ends at the close
    server_version = "Clarifier-gate"
    timeout = 60  # seconds a client may take to send its request, or to read each chunk

    @property
    def gate(self) -> TokenGate:
        assert isinstance(self.server, TokenGate)
        return self.server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _length(self) -> int | None:
        """The declared body length, or None when it is missing or not a number."""
        text = self.headers.get("Content-Length", "0").strip() or "0"
        return int(text) if text.isdigit() else None

    def _discard_body(self, length: int | None) -> None:
        """Read what the client sends before an early answer: closing with unread data makes
        the kernel reset the connection, and the client would never see the answer."""
        left = min(length or 0, MAX_BODY_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _forward(self) -> None:
        self.close_connection = True
        length = self._length()
        if not self.gate.allowed(self.headers.get("Authorization")):
            who = self.client_address[0]
            log.info("refused %s %s from %s: no valid token", self.command, self.path, who)
            self._discard_body(length)
            self._answer(
                401,
                "this Clarifier server needs 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="clarifier"'},
            )
            return
        if not self.path.startswith("/"):  # a proxy-style absolute URL: not for coglet
            self._answer(400, "send the request for a path on this server")
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._answer(411, "send the request with a Content-Length")
            return
        if length is None:
            self._answer(400, "the Content-Length is not a number")
            return
        if length > MAX_BODY_BYTES:
            self._answer(413, f"the request is larger than {MAX_BODY_BYTES // 2**20} MiB")
            return
        body = self.rfile.read(length) if length else b""
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "authorization"
        ]
        headers.append(("X-Forwarded-For", self.client_address[0]))
        request = self.gate.client.build_request(
            self.command, self.gate.upstream + self.path, headers=headers, content=body
        )
        try:
            response = self.gate.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("the Cog server did not answer %s %s: %s", self.command, self.path, exc)
            self._answer(502, "the engine's server is not answering; is it still starting?")
            return
        try:
            self.send_response(response.status_code, response.reason_phrase)
            for name, value in response.headers.multi_items():
                if name.lower() not in _HOP_BY_HOP | _ANSWER_OWN:
                    self.send_header(name, value)
            if "content-length" in response.headers:
                self.send_header("Content-Length", response.headers["content-length"])
            self.end_headers()
            for chunk in response.iter_raw():
                self.wfile.write(chunk)
                self.wfile.flush()
        except (ConnectionError, TimeoutError, httpx.HTTPError) as exc:
            log.info("stopped forwarding %s %s: %s", self.command, self.path, exc)
        finally:
            response.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _forward
