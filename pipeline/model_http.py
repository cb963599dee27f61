"""Resumable HTTP downloads of model files, on the standard library alone.

Model files are gigabytes. Bytes go to a ``.part`` file; a dropped connection is retried with a
``Range`` request for the rest, and a later call (after Ctrl-C, a crash, a closed laptop) picks
the same ``.part`` up again. Redirects are followed by hand so that an access token never leaves
the host it was given for (Hugging Face serves large files from a CDN on another host).
Downloads happen only when a person asks for one; nothing here runs on its own.
"""

from __future__ import annotations

import email.message
import http.client
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline import __version__
from pipeline.errors import Cancelled, ModelError

__all__ = ["Fetched", "ProgressFn", "fetch", "filename_from_disposition", "head"]

ProgressFn = Callable[[int, "int | None"], None]  # (bytes done, bytes in all or None)
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_MAX_REDIRECTS = 10
_ATTEMPTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT = (408, 429, 500, 502, 503, 504)
_TRANSFER_ERRORS = (OSError, http.client.HTTPException)  # URLError and timeouts are OSErrors


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # we follow redirects ourselves (see _open)


def _ssl_context() -> ssl.SSLContext:
    try:  # certifi's roots work where the system has none (python.org builds on macOS)
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


_OPENER = urllib.request.build_opener(
    _NoRedirect, urllib.request.HTTPSHandler(context=_ssl_context())
)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


@dataclass(frozen=True)
class Fetched:
    url: str  # where the bytes came from, after redirects
    headers: email.message.Message  # of the response that carried the body
    size: int  # bytes in the .part file now


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc) or type(exc).__name__


def _http_error(url: str, code: int) -> ModelError:
    if code in (401, 403):
        return ModelError(
            f"{url} refused the download (HTTP {code}): it needs a login or an access token "
            "(Civitai: add ?token=YOUR_API_KEY to the link; Hugging Face: set HF_TOKEN)"
        )
    if code == 404:
        return ModelError(f"{url} does not exist (HTTP 404): check the link")
    return ModelError(f"{url} failed with HTTP {code}; try again later")


def _open(
    url: str, method: str, headers: Mapping[str, str], *, follow: bool
) -> tuple[str, http.client.HTTPResponse | urllib.error.HTTPError]:
    """Send one request, following redirects when ``follow``; a token is dropped at the first
    hop to another host. Returns the final URL and the response (an HTTPError for 3xx/4xx/5xx
    the caller has to look at)."""
    sent = {"User-Agent": f"clarifier/{__version__}", **headers}
    for _ in range(_MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, method=method, headers=sent)
        try:
            return url, _OPENER.open(request, timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            location = err.headers.get("Location")
            if not (follow and err.code in _REDIRECTS and location):
                return url, err
            err.close()
            target = urllib.parse.urljoin(url, location)
            if _origin(target) != _origin(url):
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = target
    raise ModelError(f"{url}: too many redirects")


def head(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, email.message.Message]:
    """HEAD without leaving the host: redirects to the same host are followed, a redirect to
    another host (a CDN) is returned as is, since Hugging Face puts the file's metadata
    (X-Linked-Etag = its sha256, X-Linked-Size) on that redirect."""
    sent = dict(headers or {})
    sent["Accept-Encoding"] = "identity"
    for _ in range(_MAX_REDIRECTS + 1):
        try:
            _url, response = _open(url, "HEAD", sent, follow=False)
        except _TRANSFER_ERRORS as exc:
            raise ModelError(f"cannot reach {url}: {_describe(exc)}") from exc
        with response:
            status, answer = response.status, response.headers
        location = answer.get("Location")
        if status in _REDIRECTS and location:
            target = urllib.parse.urljoin(url, location)
            if _origin(target) == _origin(url):
                url = target
                continue
        if status >= 400:
            raise _http_error(url, status)
        return status, answer
    raise ModelError(f"{url}: too many redirects")


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _declared_total(headers: email.message.Message, resumed_from: int) -> int | None:
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
    cancel: Callable[[], bool] | None = None,
) -> Fetched:
    """Download ``url`` into ``part``, continuing from the bytes ``part`` already holds.

    Transfer errors are retried (from where they stopped) a few times; a cancel raises
    :class:`Cancelled` and keeps ``part`` for the next call. HTTP errors raise ModelError."""
    report = progress or (lambda _done, _total: None)
    stop = cancel or (lambda: False)
    last_error: BaseException | None = None
    for attempt in range(_ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None and have > expected_size:
            part.unlink()  # not the file we expect: start over
            have = 0
        sent = dict(headers or {})
        if have:
            sent["Range"] = f"bytes={have}-"
        try:
            final_url, response = _open(url, "GET", sent, follow=True)
        except _TRANSFER_ERRORS as exc:
            last_error = exc
            time.sleep(min(2**attempt, 8))
            continue
        with response:
            status = response.status
            if status == 416 and have:  # nothing left to send: the part is complete
                return Fetched(final_url, response.headers, have)
            if status in _TRANSIENT:
                last_error = _http_error(final_url, status)
                time.sleep(min(2**attempt, 8))
                continue
            if status >= 400:
                raise _http_error(final_url, status)
            if status == 206 and _content_range_start(response.headers["Content-Range"]) != have:
                status = 0  # a range we did not ask for: start over
            resumed = have if status == 206 else 0
            total = expected_size or _declared_total(response.headers, resumed)
            done = resumed
            try:
                with open(part, "ab" if resumed else "wb") as out:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        report(done, total)
                        if stop():
                            raise Cancelled("download cancelled; run it again to resume")
            except _TRANSFER_ERRORS as exc:
                last_error = exc
                if done == have:  # no progress: wait before the next try
                    time.sleep(min(2**attempt, 8))
                continue
            declared = _declared_total(response.headers, resumed)
        if declared is not None and done < declared:
            last_error = ModelError(f"the connection closed after {done} of {declared} bytes")
            continue
        return Fetched(final_url, response.headers, done)
    raise ModelError(
        f"downloading {url} failed ({_describe(last_error) if last_error else 'no answer'}); "
        "run the same command again to resume where it stopped"
    )


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
