"""A loopback stand-in for the Hugging Face file endpoints, and for plain download links.

Two real HTTP servers on 127.0.0.1 share one state: the *hub* answers
``/{repo}/resolve/{revision}/{path}`` the way huggingface.co does — an LFS file gets a 302 to the
*CDN* (another origin, so clients must not forward tokens) carrying ``X-Repo-Commit``,
``X-Linked-Etag`` (the file's sha256) and ``X-Linked-Size``; a small file is served directly with
a git ``ETag`` — and plain links (``add_link``) with an optional ``Content-Disposition``. Bodies
honour ``Range`` (206/416). A resource can be made to drop the connection once after N bytes
(to test resume) or to send corrupted bytes (to test hash checks). Every request is recorded.

    with HubDouble() as hub:
        sha = hub.add_file("org/repo", "model.safetensors", data)
        hf_hub_download("org/repo", "model.safetensors", endpoint=hub.endpoint, ...)
"""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HubDouble", "Seen"]


@dataclass
class _Body:
    data: bytes
    name: str
    disposition: str | None = None


@dataclass(frozen=True)
class Seen:
    server: str  # "hub" | "cdn"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _State:
    files: dict[tuple[str, str, str], tuple[_Body, bool]] = field(default_factory=dict)
    blobs: dict[str, _Body] = field(default_factory=dict)  # CDN, by sha256
    links: dict[str, _Body] = field(default_factory=dict)  # plain links, by path
    fail_after: dict[str, int] = field(default_factory=dict)  # key -> bytes sent before a drop
    corrupt: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_version = "HubDouble/1"
    state: _State
    role: str
    cdn_origin: str

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # --- routing ------------------------------------------------------------------------------
    def _route(self, *, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        with self.state.lock:
            self.state.seen.append(Seen(self.role, self.command, path, dict(self.headers)))
        if self.role == "cdn":
            blob = self.state.blobs.get(path.lstrip("/"))
            if blob is None:
                self._plain(404, {})
            else:
                self._send(blob, path.lstrip("/"), {"ETag": f'"{path.lstrip("/")}"'}, body)
            return
        if path in self.state.links:
            link = self.state.links[path]
            extra = {"Content-Disposition": link.disposition} if link.disposition else {}
            self._send(link, path, extra, body)
            return
        match = re.fullmatch(r"/(.+?/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not match:
            self._plain(404, {"X-Error-Code": "RepoNotFound"})
            return
        repo, revision, file = (urllib.parse.unquote(g) for g in match.groups())
        if revision == commit_of(repo):
            revision = "main"
        found = self.state.files.get((repo, revision, file))
        if found is None:
            code = (
                "EntryNotFound" if any(k[0] == repo for k in self.state.files) else "RepoNotFound"
            )
            self._plain(404, {"X-Error-Code": code, "X-Repo-Commit": commit_of(repo)})
            return
        blob, lfs = found
        sha = hashlib.sha256(blob.data).hexdigest()
        common = {"X-Repo-Commit": commit_of(repo)}
        if lfs:
            self._plain(
                302,
                {
                    **common,
                    "Location": f"{self.cdn_origin}/{sha}?expires=never",
                    "ETag": f'"{hashlib.sha1(sha.encode()).hexdigest()}"',
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(blob.data)),
                },
            )
        else:
            git_etag = hashlib.sha1(b"blob %d\0" % len(blob.data) + blob.data).hexdigest()
            self._send(blob, sha, {**common, "ETag": f'"{git_etag}"'}, body)

    # --- responses ----------------------------------------------------------------------------
    def _plain(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, blob: _Body, key: str, headers: dict[str, str], body: bool) -> None:
        data = blob.data
        if key in self.state.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        start, status = 0, 200
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if asked:
            start = int(asked.group(1))
            if start >= len(data):
                self._plain(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            end = int(asked.group(2)) + 1 if asked.group(2) else len(data)
            data, status = data[start:end], 206
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data)))
        if status == 206:
            self.send_header(
                "Content-Range", f"bytes {start}-{start + len(data) - 1}/{len(blob.data)}"
            )
        self.end_headers()
        if not body:
            return
        with self.state.lock:
            cut = self.state.fail_after.pop(key, None)
        if cut is not None and cut < len(data):
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # an abrupt end in the middle of the body
            return
        self.wfile.write(data)


class HubDouble:
    """The two loopback servers; use as a context manager (or start()/stop())."""

    def __init__(self) -> None:
        self.state = _State()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    def _serve(self, role: str, cdn_origin: str) -> ThreadingHTTPServer:
        handler = type(
            f"{role}Handler",
            (_Handler,),
            {"state": self.state, "role": role, "cdn_origin": cdn_origin},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return server

    def start(self) -> HubDouble:
        cdn = self._serve("cdn", "")
        self.cdn_origin = f"http://127.0.0.1:{cdn.server_address[1]}"
        hub = self._serve("hub", self.cdn_origin)
        self.endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content ------------------------------------------------------------------------------
    def add_file(
        self, repo: str, path: str, data: bytes, *, revision: str = "main", lfs: bool = True
    ) -> str:
        """Serve ``data`` as ``repo``'s ``path``; returns its sha256 (the CDN key)."""
        sha = hashlib.sha256(data).hexdigest()
        body = _Body(data, path.rsplit("/", 1)[-1], f'attachment; filename="{path}"')
        self.state.files[(repo, revision, path)] = (body, lfs)
        self.state.blobs[sha] = body
        return sha

    def add_link(self, path: str, data: bytes, *, disposition: str | None = None) -> str:
        """Serve ``data`` at a plain link on the hub server; returns the full URL."""
        self.state.links[path] = _Body(data, path.rsplit("/", 1)[-1], disposition)
        return f"{self.endpoint}{path}"

    def fail_once(self, key: str, after: int) -> None:
        """Drop the connection after ``after`` bytes the next time ``key`` (a sha256 for hub
        files, a link's path) is sent."""
        self.state.fail_after[key] = after

    def corrupt(self, key: str) -> None:
        """Send ``key`` with one byte flipped (same length) from now on."""
        self.state.corrupt.add(key)

    @property
    def seen(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.seen)

    def requests_for(self, server: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.seen if s.server == server and s.method == method]
