"""Pacing requests to a provider: a shared request budget, poll cadences and retry hints.

Every job on one provider shares one :class:`RequestBudget`, so fifty jobs polling Segmind's free
tier still make at most five requests a minute between them. A 429 anywhere pauses the whole
budget until the provider's reset time, instead of letting every job discover it separately.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["PollCadence", "RequestBudget", "retry_hint"]


class RequestBudget:
    """At most ``limit`` requests in any ``window`` seconds, shared by every caller.

    A sliding-window log rather than a plain token bucket: a bucket refilled at ``limit/window``
    can still send ``2·limit`` in one window (a full bucket, then the refill), which a provider
    counting per minute would answer with 429. A request's place in the window is taken from
    the moment its answer arrived (it reached the provider at some point before that), and a
    request still in flight counts in full; so however long the network takes, the provider
    never sees more than ``limit`` in a window. Waiters are served in arrival order.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a request budget needs limit ≥ 1 and a positive window")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._done: collections.deque[float] = collections.deque()  # answer times
        self._in_flight = 0
        self._lock = asyncio.Lock()
        self._freed = asyncio.Event()
        self._paused_until = 0.0
        self.granted = 0  # requests let through, for benchmarks and tests

    def pause_until(self, when: float) -> None:
        """Hold every request until ``when`` (on this budget's clock), e.g. after a 429."""
        self._paused_until = max(self._paused_until, when)

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock() + max(0.0, seconds))

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def delay(self) -> float | None:
        """Seconds until the next request may go; None while only an answer can free a place."""
        now = self._clock()
        while self._done and self._done[0] <= now - self.window:
            self._done.popleft()
        wait = self._paused_until - now
        if len(self._done) + self._in_flight >= self.limit:
            if not self._done:
                return None
            wait = max(wait, self._done[0] + self.window - now)
        return max(0.0, wait)

    async def _acquire(self) -> None:
        async with self._lock:  # FIFO: asyncio.Lock wakes waiters in order
            while (wait := self.delay()) is None or wait > 0:
                self._freed.clear()
                if wait is None:
                    await self._freed.wait()
                else:
                    await asyncio.sleep(wait)
            self._in_flight += 1
            self.granted += 1

    def _release(self) -> None:
        self._in_flight -= 1
        self._done.append(self._clock())
        self._freed.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one place in the budget for the duration of one request."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()


@dataclass(frozen=True)
class PollCadence:
    """How often to ask a provider about one job: ``first``, growing by ``factor`` to ``cap``."""

    first: float
    factor: float = 1.0
    cap: float | None = None

    def intervals(self):
        interval = self.first
        while True:
            yield interval
            interval *= self.factor
            if self.cap is not None:
                interval = min(interval, self.cap)

    def scaled(self, k: float) -> PollCadence:
        return PollCadence(self.first * k, self.factor, None if self.cap is None else self.cap * k)


_SECONDS_IN_TEXT = re.compile(r"(?:in|after)\s*~?\s*(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.I)


def _parse_when(value: str, now_wall: float) -> float | None:
    """Seconds from now until ``value``: relative seconds, epoch seconds, an HTTP date or ISO
    8601 timestamp. None if it cannot be read."""
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        # Epoch timestamps are large; a relative delay is not (no provider asks for 30 years).
        return number - now_wall if number > 1e9 else number
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp() - now_wall


def retry_hint(
    headers: Mapping[str, str],
    body: Any = None,
    *,
    now_wall: float | None = None,
) -> float | None:
    """How long a provider asked us to wait, in seconds, from whichever hint it gave.

    Read from any of: ``Retry-After`` (seconds or HTTP date), Segmind's
    ``x-rate-limit-reset-at-utc``, ``X-RateLimit-Reset`` (epoch) when ``X-RateLimit-Remaining`` is
    0 or absent, a ``retryAfter`` epoch in a JSON body (Wireflow); else a "resets in ~30s"
    sentence (Replicate)."""
    now_wall = time.time() if now_wall is None else now_wall
    lowered = {k.lower(): v for k, v in headers.items()}
    candidates: list[str] = []
    for name in ("retry-after", "x-rate-limit-reset-at-utc"):
        if lowered.get(name):
            candidates.append(lowered[name])
    remaining = lowered.get("x-ratelimit-remaining")
    if lowered.get("x-ratelimit-reset") and (remaining is None or remaining.strip() == "0"):
        candidates.append(lowered["x-ratelimit-reset"])
    if isinstance(body, Mapping):
        for key in ("retryAfter", "retry_after"):
            if body.get(key) is not None:
                candidates.append(str(body[key]))
    # The longest wins: a 429 may carry both a request-window reset and a later
    # execution-window one (Wireflow), and going early only earns another 429.
    waits = [w for w in (_parse_when(c, now_wall) for c in candidates) if w is not None]
    if waits:
        return max(0.0, min(max(waits), 3600.0))
    text = ""
    if isinstance(body, Mapping):
        text = " ".join(str(body.get(k, "")) for k in ("detail", "error", "message"))
    elif isinstance(body, str):
        text = body
    match = _SECONDS_IN_TEXT.search(text)
    return float(match.group(1)) if match else None
