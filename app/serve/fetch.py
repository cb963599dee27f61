"""An image input's bytes, from the ``data:`` or http(s) URL a client sent.

Cog's inputs are URLs. This fetches them under the server's rules rather than Cog's own
downloader (which has no size limit):

* only ``data:``, ``http://`` and ``https://``; anything else (``file:``, ``ftp:``, a plain
  path on the server) is refused;
* at most :data:`MAX_INPUT_BYTES`, checked against the declared length before reading and
  while reading (after content decoding, so a compressed answer cannot grow past it), and for a
  data URL before decoding;
* redirects are followed by hand, at most :data:`MAX_REDIRECTS`, and only to http(s): a
  redirect to another scheme is refused, not followed.

The bytes are then checked as an image (:func:`pipeline.io.load.probe_image`) before anything
is written; the engine's own loading applies the output cap as for any local file.
"""

from __future__ import annotations

import urllib.parse

import httpx

from app.backends.remote import decode_data_url
from app.serve.inputs import InputRefused
from pipeline.errors import ImageError
from pipeline.io.load import probe_image

__all__ = ["MAX_INPUT_BYTES", "MAX_REDIRECTS", "fetch_image", "new_client"]

MAX_INPUT_BYTES = 64 * 2**20  # a 64 MP photo as JPEG, or a large PNG; Cog's own body cap is ~100 MB
MAX_REDIRECTS = 5
_SCHEMES = ("http", "https")


def new_client() -> httpx.AsyncClient:
    """The client inputs are fetched with: redirects off (followed by :func:`fetch_image`),
    bounded waits."""
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(30.0, read=60.0),
        headers={"User-Agent": "Clarifier-serve"},
    )


async def fetch_image(
    url: str, *, name: str, client: httpx.AsyncClient, limit: int = MAX_INPUT_BYTES
) -> bytes:
    """The bytes of the image input ``name`` at ``url``; raises :class:`InputRefused` with a
    message for the client when the URL, the answer or the bytes are not acceptable."""
    data = await _fetch(url.strip(), name=name, client=client, limit=limit)
    try:
        probe_image(data)
    except ImageError as exc:
        raise InputRefused(f"{name}: {exc}") from None
    return data


async def _fetch(url: str, *, name: str, client: httpx.AsyncClient, limit: int) -> bytes:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "data":
        return _data_url(url, name, limit)
    if scheme not in _SCHEMES:
        what = f"a {scheme}: URL" if scheme else "a path on the server"
        raise InputRefused(f"{name}: send a data: or http(s) URL, not {what}")
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with client.stream("GET", url, follow_redirects=False) as response:
                if response.is_redirect:
                    url = _redirect(url, response, name)
                    continue
                if response.status_code != 200:
                    raise InputRefused(
                        f"{name}: {_shown(url)} answered HTTP {response.status_code}"
                    )
                return await _read(response, name, limit)
        except httpx.HTTPError as exc:
            raise InputRefused(
                f"{name}: could not fetch {_shown(url)} ({type(exc).__name__})"
            ) from None
    raise InputRefused(f"{name}: more than {MAX_REDIRECTS} redirects from {_shown(url)}")


def _redirect(url: str, response: httpx.Response, name: str) -> str:
    location = response.headers.get("location", "")
    target = urllib.parse.urljoin(url, location.strip())
    scheme = urllib.parse.urlsplit(target).scheme.lower()
    if not location or scheme not in _SCHEMES:
        raise InputRefused(
            f"{name}: {_shown(url)} redirects to {scheme or 'nowhere'}:, which is not fetched"
        )
    return target


async def _read(response: httpx.Response, name: str, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InputRefused(_too_big(name, int(declared), limit))
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise InputRefused(_too_big(name, None, limit))
    return bytes(data)


def _data_url(url: str, name: str, limit: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise InputRefused(f"{name}: the data: URL has no data")
    # base64 carries 3 bytes in 4 characters; a percent-encoded payload is never smaller
    size = len(payload) * 3 // 4 if header.lower().endswith(";base64") else len(payload) // 3
    if size > limit:
        raise InputRefused(_too_big(name, size, limit))
    try:
        data = decode_data_url(url)
    except ValueError:  # binascii.Error is a ValueError
        raise InputRefused(f"{name}: the data: URL is not valid base64") from None
    if len(data) > limit:
        raise InputRefused(_too_big(name, len(data), limit))
    return data


def _too_big(name: str, size: int | None, limit: int) -> str:
    have = f" ({size / 2**20:.1f} MiB)" if size is not None else ""
    return f"{name} is larger than this server takes{have}; the limit is {limit / 2**20:.0f} MiB"


def _shown(url: str) -> str:
    """The URL without its query (which may carry a signature) for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""  # without any user:password@
    if parts.port is not None:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))[:200]
