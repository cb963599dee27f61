"""The one retry policy (app.backends.remote.retry): its rules, and that a provider's request and
a model download retry exactly the same failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from app.backends.base import JobError
from app.backends.remote.retry import RetryPolicy, transient_error, transient_status
from app.models import transfer
from pipeline.errors import ModelError
from tests.backends.toy import ToyBackend

# What a server (or the network) may do on a first try, before it answers 200.
STATUSES = [429, 500, 502, 503, 504, 507, 501, 400, 401, 403, 404, 408, 410]
FAULTS = [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError]


def test_transient_statuses_and_faults() -> None:
    assert [c for c in STATUSES if transient_status(c)] == [429, 500, 502, 503, 504, 507]
    request = httpx.Request("GET", "http://x.test/")
    never_sent = httpx.ConnectError("refused", request=request)
    dropped = httpx.ReadError("reset", request=request)
    assert transient_error(never_sent, safe=False) and transient_error(never_sent, safe=True)
    # a dropped connection may have delivered a submit: only a safe request is sent again
    assert transient_error(dropped, safe=True) and not transient_error(dropped, safe=False)
    assert not transient_error(ValueError("not a transport fault"), safe=True)


def test_the_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    for failures, middle in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)):
        delays = [policy.delay(failures) for _ in range(50)]
        assert all(0.75 * middle <= d <= 1.25 * middle for d in delays), failures


def test_a_rate_limit_waits_as_long_as_the_server_asks() -> None:
    policy = RetryPolicy(base=1.0, retry_for=30.0, rate_limit_floor=60.0)
    asked = httpx.Response(429, headers={"Retry-After": "42"})
    assert policy.wait(asked, 1) == 42.0
    assert policy.wait(httpx.Response(429), 1, {"retry_after": 7}) == 7.0  # a hint in the body
    unavailable = policy.wait(httpx.Response(503, headers={"Retry-After": "42"}), 1)
    assert 0.75 <= unavailable <= 1.25  # only a 429's hint is followed, as the providers do
    now = time.monotonic()
    assert not policy.out_of_time(now, 29.0) and policy.out_of_time(now, 31.0)
    assert not policy.out_of_time(now, 59.0, rate_limited=True)  # the floor for rate limits
    assert policy.out_of_time(now, 61.0, rate_limited=True)


def _first(outcome: int | type[httpx.TransportError]):
    """A transport handler: ``outcome`` on the first request, then 200 with a small body."""
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) > 1:  # streamed, as from a real server (the downloader reads it raw)
            return httpx.Response(200, stream=httpx.ByteStream(b'{"ok": true}'))
        if isinstance(outcome, int):
            return httpx.Response(outcome, json={"error": "nope"})
        raise outcome("the network", request=request)

    return handle, calls


def _provider_tries(outcome: int | type[httpx.TransportError]) -> int:
    handle, calls = _first(outcome)

    async def go() -> None:
        async def no_wait(_seconds: float) -> None:
            return None

        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(transport=transport) as client:
            backend = ToyBackend(client, "http://toy.test", "secret", retry_base=0.001)
            backend._sleep = no_wait
            with contextlib.suppress(JobError):
                await backend.http("GET", "/jobs/1", during="poll")

    asyncio.run(go())
    return len(calls)


def _download_tries(
    outcome: int | type[httpx.TransportError], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    handle, calls = _first(outcome)
    monkeypatch.setattr(transfer, "_pause", lambda _seconds, _stop: None)
    client = transfer.new_client(transport=httpx.MockTransport(handle))
    with client, contextlib.suppress(ModelError):
        transfer.fetch("http://files.test/model.bin", tmp_path / "m.part", client=client)
    return len(calls)


@pytest.mark.parametrize(
    "outcome", STATUSES + FAULTS, ids=[str(o) for o in STATUSES] + [f.__name__ for f in FAULTS]
)
def test_the_downloader_retries_exactly_what_the_providers_retry(
    outcome: int | type[httpx.TransportError], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = 2 if not isinstance(outcome, int) or transient_status(outcome) else 1
    assert _provider_tries(outcome) == expected
    assert _download_tries(outcome, tmp_path, monkeypatch) == expected
