"""Resumable HTTP downloads of model files, on httpx, retried as the providers' requests are.

Model files are gigabytes. Bytes go to a ``.part`` file; a dropped connection is retried with a
``Range`` request for the rest, and a later call (after Ctrl-C, a crash, a closed laptop) picks
the same ``.part`` up again. Redirects are followed by hand so that an access token never leaves
the origin it was given for (Hugging Face serves large files from a CDN on another host).
What is retried and how long to wait is :mod:`app.backends.remote.retry`, the policy the
providers use; a download's retry window restarts whenever bytes arrive. Every failure ends in a
:class:`~pipeline.errors.ModelError` that says what happened (an HTTP status, a connection that
kept dropping, a full disk), and a cancel in :class:`~pipeline.errors.Cancelled`, keeping the
``.part`` for the next call. Downloads happen only when a person asks; nothing here runs alone.
"""

from __future__ import annotations

import contextlib
import errno
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.backends.remote.pacing import retry_hint
from app.backends.remote.retry import RetryPolicy, transient_error, transient_status
from pipeline import __version__
from pipeline.errors import Cancelled, ModelError
from pipeline.models.manifest import human_size

__all__ = [
    "RETRY",
    "Fetched",
    "ProgressFn",
    "disk_error",
    "fetch",
    "filename_from_disposition",
    "head",
    "new_client",
]

ProgressFn = Callable[[int, "int | None"], None]  # (bytes done, bytes in all or None)
CancelFn = Callable[[], bool]

# The providers' rules with shorter waits: a person is watching a progress bar that does not
# move while we wait, so a download gives up after a minute without a byte (it resumes later).
RETRY = RetryPolicy(base=1.0, cap=15.0, retry_for=60.0)

_TIMEOUT = httpx.Timeout(60.0, connect=20.0)
_MAX_REDIRECTS = 10
_RESUME_HINT = "run the same command again to resume where it stopped"


def new_client(**kwargs: object) -> httpx.Client:
    """A client for model downloads (``kwargs`` go to :class:`httpx.Client`, e.g. a test's
    ``transport``). Redirects are left to :func:`_send`; bodies are asked for and kept as sent
    (``identity``), since byte offsets for ``Range`` and sizes count the bytes on the wire."""
    options: dict = {
        "timeout": _TIMEOUT,
        "follow_redirects": False,
        "headers": {"User-Agent": f"clarifier/{__version__}", "Accept-Encoding": "identity"},
    }
    options.update(kwargs)
    return httpx.Client(**options)


@contextlib.contextmanager
def _session(client: httpx.Client | None) -> Iterator[httpx.Client]:
    if client is not None:
        yield client
        return
    with new_client() as own:
        yield own


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


@dataclass(frozen=True)
class Fetched:
    url: str  # where the bytes came from, after redirects
    headers: httpx.Headers  # of the response that carried the body
    size: int  # bytes in the .part file now


# --- errors -----------------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _http_error(url: str, response: httpx.Response, *, retried: float | None = None) -> ModelError:
    code = response.status_code
    if code in (401, 403):
        return ModelError(
            f"{url} refused the download (HTTP {code}): it needs a login or an access token "
            "(Civitai: add ?token=YOUR_API_KEY to the link; Hugging Face: set HF_TOKEN)"
        )
    if code == 404:
        return ModelError(f"{url} does not exist (HTTP 404): check the link")
    if code == 429:
        hint = retry_hint(response.headers)
        when = "later"
        if hint is not None:
            when = f"in {round(hint / 60)} min" if hint >= 120 else f"in {max(1, round(hint))} s"
        return ModelError(f"{url} is limiting downloads (HTTP 429); try again {when}")
    after = f" (still, after retrying for {retried:.0f} s)" if retried is not None else ""
    return ModelError(f"{url} failed with HTTP {code}{after}; try again later")


def disk_error(exc: OSError, where: Path, *, missing: int | None = None) -> ModelError:
    """A local file error as a sentence: a full disk says how much more is needed."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        need = f"; {human_size(missing)} more are needed" if missing else ""
        return ModelError(
            f"the disk holding {where} is full{need}: free some space, then {_RESUME_HINT}"
        )
    return ModelError(f"cannot write {exc.filename or where}: {exc.strerror or exc}")


# --- retries ----------------------------------------------------------------------------------
def _pause(seconds: float, stop: CancelFn) -> None:
    """Sleep between tries, in short steps so a cancel does not wait for the end."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if stop():
            raise Cancelled("download cancelled; run it again to resume")
        time.sleep(min(left, 0.1))


class _Tries:
    """The retry window of one transfer: failures in a row since the last byte arrived."""

    def __init__(self, url: str, stop: CancelFn) -> None:
        self.url, self.stop = url, stop
        self.failures = 0
        self.started = time.monotonic()

    def fault(self, exc: httpx.TransportError, *, progressed: bool = False) -> None:
        """Wait before the next try after a transport fault, or raise once it is time to stop.
        Bytes arrived before the fault: the connection worked a moment ago, so go again at once
        with a fresh window."""
        if progressed:
            self.failures, self.started = 0, time.monotonic()
            return
        self.failures += 1
        wait = RETRY.delay(self.failures)
        if not transient_error(exc, safe=True) or RETRY.out_of_time(self.started, wait):
            raise _transport_error(self.url, exc) from None
        _pause(wait, self.stop)

    def answer(self, url: str, response: httpx.Response) -> None:
        """Wait before asking again after a transient status (429, 5xx), or raise."""
        self.failures += 1
        wait = RETRY.wait(response, self.failures)
        limited = response.status_code == 429
        if RETRY.out_of_time(self.started, wait, rate_limited=limited):
            raise _http_error(url, response, retried=time.monotonic() - self.started)
        _pause(wait, self.stop)


def _transport_error(url: str, exc: httpx.TransportError) -> ModelError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ModelError(f"cannot reach {url}: {_describe(exc)}")
    return ModelError(f"downloading {url} failed ({_describe(exc)}); {_RESUME_HINT}")


# --- requests ---------------------------------------------------------------------------------
def _request(
    http: httpx.Client, method: str, url: str, headers: Mapping[str, str]
) -> httpx.Response:
    try:
        request = http.build_request(method, url, headers=headers)
    except httpx.InvalidURL as exc:
        raise ModelError(f"{url} is not a link Clarifier can download ({exc})") from None
    try:
        return http.send(request, stream=True)
    except httpx.UnsupportedProtocol:  # ftp:// and the like: no retry makes it work
        raise ModelError(f"{url} is not an http(s) link") from None


def _send(
    http: httpx.Client, url: str, method: str, headers: Mapping[str, str], *, follow: bool
) -> tuple[str, httpx.Response]:
    """Send one request, following redirects when ``follow``; a token is dropped at the first
    hop to another origin and stays dropped. Returns the final URL and the open (streamed)
    response, which the caller closes."""
    sent = dict(headers)
    for _ in range(_MAX_REDIRECTS + 1):
        response = _request(http, method, url, sent)
        location = response.headers.get("Location")
        if not (follow and response.is_redirect and location):
            return url, response
        response.close()
        target = urllib.parse.urljoin(url, location)
        if _origin(target) != _origin(url):
            sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
        url = target
    raise ModelError(f"{url}: too many redirects")


def _head_once(
    http: httpx.Client, url: str, headers: Mapping[str, str]
) -> tuple[str, httpx.Response]:
    for _ in range(_MAX_REDIRECTS + 1):
        _url, response = _send(http, url, "HEAD", headers, follow=False)
        response.close()
        location = response.headers.get("Location")
        if response.is_redirect and location:
            target = urllib.parse.urljoin(url, location)
            if _origin(target) == _origin(url):
                url = target
                continue
        return url, response
    raise ModelError(f"{url}: too many redirects")


def head(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    client: httpx.Client | None = None,
    cancel: CancelFn | None = None,
) -> tuple[int, httpx.Headers]:
    """HEAD without leaving the host: redirects to the same origin are followed, a redirect to
    another (a CDN) is returned as is, since Hugging Face puts the file's metadata
    (X-Linked-Etag = its sha256, X-Linked-Size) on that redirect. Retried like a download."""
    sent = dict(headers or {})
    tries = _Tries(url, cancel or (lambda: False))
    with _session(client) as http:
        while True:
            try:
                final, response = _head_once(http, url, sent)
            except httpx.TransportError as exc:
                tries.fault(exc)
                continue
            status = response.status_code
            if transient_status(status):
                tries.answer(final, response)
                continue
            if status >= 400:
                raise _http_error(final, response)
            return status, response.headers


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _declared_total(headers: httpx.Headers, resumed_from: int) -> int | None:
    match = re.search(r"/(\d+)\s*$", headers.get("Content-Range") or "")
    if match:
        return int(match.group(1))
    length = headers.get("Content-Length")
    return resumed_from + int(length) if length and length.isdigit() else None


def fetch(
    url: str,
    part: Path,
    *,
    headers: Mapping[str, str] | None = None,
    expected_size: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    client: httpx.Client | None = None,
) -> Fetched:
    """Download ``url`` into ``part``, continuing from the bytes ``part`` already holds.

    Transport faults and transient statuses are retried (from where they stopped) under
    :data:`RETRY`; a cancel raises :class:`Cancelled` and keeps ``part`` for the next call.
    Everything else raises :class:`ModelError`."""
    report = progress or (lambda _done, _total: None)
    stop = cancel or (lambda: False)
    tries = _Tries(url, stop)
    with _session(client) as http:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if expected_size is not None and have > expected_size:
                part.unlink()  # not the file we expect: start over
                have = 0
            sent = dict(headers or {})
            if have:
                sent["Range"] = f"bytes={have}-"
            try:
                final_url, response = _send(http, url, "GET", sent, follow=True)
            except httpx.TransportError as exc:
                tries.fault(exc)
                continue
            try:
                got = _receive(final_url, response, part, have, expected_size, report, stop)
            except httpx.TransportError as exc:
                tries.fault(exc, progressed=part.exists() and part.stat().st_size > have)
                continue
            finally:
                response.close()
            if got is None:  # a transient status: ask again
                tries.answer(final_url, response)
                continue
            done, declared = got
            if declared is not None and done < declared:
                # The server ended the body early without an error: as a dropped connection.
                dropped = httpx.RemoteProtocolError(
                    f"the connection closed after {done} of {declared} bytes"
                )
                tries.fault(dropped, progressed=done > have)
                continue
            return Fetched(final_url, response.headers, done)


def _receive(
    url: str,
    response: httpx.Response,
    part: Path,
    have: int,
    expected_size: int | None,
    report: ProgressFn,
    stop: CancelFn,
) -> tuple[int, int | None] | None:
    """Write one response's body to ``part``; returns (bytes in ``part``, bytes the server
    declared), or None for a transient status to retry. Transport faults propagate."""
    status = response.status_code
    if status == 416 and have:  # nothing left to send: the part is complete
        return have, None
    if transient_status(status):
        return None
    if status >= 300:  # a 4xx, or a redirect without a Location
        raise _http_error(url, response)
    if status == 206 and _content_range_start(response.headers.get("Content-Range")) != have:
        status = 0  # a range we did not ask for: start over
    resumed = have if status == 206 else 0
    declared = _declared_total(response.headers, resumed)
    total = expected_size or declared
    done = resumed
    try:
        with open(part, "ab" if resumed else "wb") as out:
            # As the network hands them over, not in fixed chunks: bytes held back in a buffer
            # would be lost when the connection drops, and the resume would start earlier.
            for chunk in response.iter_raw():
                out.write(chunk)
                done += len(chunk)
                report(done, total)
                if stop():
                    raise Cancelled("download cancelled; run it again to resume")
    except OSError as exc:  # httpx's faults are not OSErrors: this is the local disk
        raise disk_error(exc, part.parent, missing=(total - done) if total else None) from None
    return done, declared


def filename_from_disposition(value: str | None) -> str | None:
    """The file name a Content-Disposition header suggests (RFC 6266, ``filename*`` first)."""
    if not value:
        return None
    match = re.search(r"filename\*\s*=\s*([\w-]*)'[^']*'([^;]+)", value, re.IGNORECASE)
    if match:
        return urllib.parse.unquote(match.group(2).strip(), encoding=match.group(1) or "utf-8")
    match = re.search(r'filename\s*=\s*"((?:[^"\\]|\\.)*)"', value, re.IGNORECASE)
    if match:
        return match.group(1).replace('\\"', '"')
    match = re.search(r"filename\s*=\s*([^;]+)", value, re.IGNORECASE)
    return match.group(1).strip() if match else None
