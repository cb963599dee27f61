"""A loopback listener for prediction webhooks, as Cog's asynchronous API sends them.

Cog reports an asynchronous prediction's progress and result only by POSTing to a webhook, so
the Cog backend needs an HTTP server of its own. This one is deliberately tiny (asyncio streams,
HTTP/1.1, ``Content-Length`` bodies only, 127.0.0.1 on an ephemeral port) and knows nothing of
Cog's states: it hands each webhook's JSON object, with the job key and run number from its
path, to a callback. It lives apart from :mod:`app.backends.providers.cog` because serving HTTP is a
different concern from speaking Cog's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import urllib.parse
from collections.abc import Callable
from typing import Any

__all__ = ["WebhookListener"]

_BODY_LIMIT = 1 << 30  # a data-URL output of a 64 MP PNG is a few hundred MB at most


class WebhookListener:
    """A minimal HTTP/1.1 server for Cog's webhooks: ``POST /{token}/{key}/{run}``.

    The random token in the path keeps other local processes from posting fake results."""

    def __init__(self, deliver: Callable[[str, int, dict[str, Any]], None]) -> None:
        self._deliver = deliver
        self._token = secrets.token_urlsafe(16)
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> str:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 16)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}/{self._token}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass  # a broken request: drop the connection
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *rest = head.decode("latin-1").split("\r\n")
        method, target, _ = [*line.split(" ", 2), "", ""][:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
        length = int(headers.get("content-length") or 0)
        if length > _BODY_LIMIT or "chunked" in headers.get("transfer-encoding", "").lower():
            # Cog's clients send a length. Without one, the webhook is refused, and the run
            # goes unheard: the backend then falls back to synchronous requests.
            await _answer(writer, 413 if length else 411, close=True)
            return False
        body = await reader.readexactly(length)
        parts = urllib.parse.urlsplit(target).path.strip("/").split("/")
        code = 404
        if method == "POST" and len(parts) == 3 and parts[0] == self._token:
            try:
                payload = json.loads(body)
                run = int(parts[2])
            except ValueError:
                code = 400
            else:
                if isinstance(payload, dict):
                    self._deliver(urllib.parse.unquote(parts[1]), run, payload)
                    code = 200
        keep = headers.get("connection", "").lower() != "close"
        await _answer(writer, code, close=not keep)
        return keep


async def _answer(writer: asyncio.StreamWriter, code: int, *, close: bool) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}.get(
        code, "Payload Too Large"
    )
    connection = "close" if close else "keep-alive"
    head = f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: {connection}\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
