"""One retry policy for every HTTP request Clarifier makes: to providers and for model downloads.

Which failures are worth another try, how long to wait before it and when to stop live here, so
that a provider's request (:class:`~app.backends.remote.http.ProviderHttp`) and a model download
(:mod:`app.models.transfer`) agree on them:

* a connection that never reached the server (refused, DNS, connect or pool timeout) is always
  retried: nothing was sent, so nothing can have happened twice;
* any other transport fault (a dropped connection, a read timeout) is retried only when the
  request is safe to send again (everything but a submit);
* HTTP 429 and 5xx (but 501, "not implemented", which no retry changes) are transient; any
  other status is an answer, and asking again gets the same one (a 404 stays a 404);
* the wait doubles from ``base`` up to ``cap``, with ±25 % jitter so that clients that failed
  together do not come back together; a 429 waits as long as the server asked (``Retry-After``
  and the providers' own hints, see :func:`~app.backends.remote.pacing.retry_hint`);
* retrying stops once ``retry_for`` seconds have gone by; a rate limit is waited out for at least
  ``rate_limit_floor`` seconds even when ``retry_for`` is shorter, since the server said when.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from app.backends.remote.pacing import retry_hint

__all__ = ["NOT_SENT", "RetryPolicy", "transient_error", "transient_status"]

# The request never left: retrying cannot make a second job (or a second anything).
NOT_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


def transient_error(exc: BaseException, *, safe: bool) -> bool:
    """Whether a transport fault is worth another try: always when nothing was sent, otherwise
    only for a request that may be sent twice (``safe``)."""
    if isinstance(exc, NOT_SENT):
        return True
    return safe and isinstance(exc, httpx.TransportError)


def transient_status(code: int) -> bool:
    """Whether an HTTP status may go away on its own: 429 and 5xx, but 501."""
    return code == 429 or (code >= 500 and code != 501)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between tries and when to give up (see the module's notes)."""

    base: float = 0.5  # the first wait, in seconds
    cap: float = 60.0  # the longest wait between two tries
    retry_for: float = 15 * 60.0  # give up once this long has gone by
    rate_limit_floor: float = 60.0  # a rate limit is waited out for at least this long

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        # The exponent stops growing long before a float overflows (the cap is reached anyway).
        delay = min(self.cap, self.base * 2 ** min(failures - 1, 30))
        return delay * (0.75 + random.random() / 2)

    def wait(self, response: httpx.Response, failures: int, body: Any = None) -> float:
        """The wait before trying ``response``'s request again: what the server asked for on a
        429 (``body`` is the parsed answer, for hints in JSON), else the backoff delay."""
        hint = retry_hint(response.headers, body) if response.status_code == 429 else None
        return hint if hint is not None else self.delay(failures)

    def out_of_time(self, started: float, wait: float = 0.0, *, rate_limited: bool = False) -> bool:
        """Whether waiting ``wait`` more seconds would go past the retry window that began at
        ``started`` (a :func:`time.monotonic` reading)."""
        window = max(self.retry_for, self.rate_limit_floor) if rate_limited else self.retry_for
        return time.monotonic() - started + wait > window
