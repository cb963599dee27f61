"""Talking to a provider: paced requests, retries that never re-send a submit, error rules.

:class:`ProviderHttp` is the HTTP half of :class:`~app.backends.remote.RemoteBackend` (which
adds the job flow): every request goes through the provider's shared request budget; reads are
retried through network faults and 5xx; a 429 is honoured for any method (the provider refused,
so nothing was made) and pauses the whole budget; a submit that got no answer raises
:class:`SubmitNoAnswer` instead of being sent again. What counts as transient and how long to
wait come from :mod:`app.backends.remote.retry`, the policy model downloads share. The error
rules turn any answer into a :class:`~app.backends.base.JobError` that names the provider and
never the key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import httpx

from app.backends.base import ErrorKind, JobError
from app.backends.remote.errors import body_of, field_errors, is_content_rejection, message_of
from app.backends.remote.pacing import RequestBudget, retry_hint
from app.backends.remote.retry import NOT_SENT, RetryPolicy, transient_error, transient_status

__all__ = ["ProviderHttp", "SubmitNoAnswer"]

log = logging.getLogger(__name__)


class SubmitNoAnswer(Exception):
    """A submit may have reached the provider, but no answer says whether it was accepted."""


class ProviderHttp:
    """Requests and error rules for one provider; the attributes are set by the backend (the
    label and the key variables from its registry entry, see :class:`app.backends.base.Backend`)."""

    label: ClassVar[str] = ""  # how people call the provider: "Segmind"
    key_envs: ClassVar[tuple[str, ...]] = ()  # environment variables that hold the key
    submit_5xx_safe: ClassVar[bool] = False  # a 5xx answer to a submit proves nothing was made

    client: httpx.AsyncClient
    base_url: str
    api_key: str | None
    budget: RequestBudget
    retry_base: float
    retry_for: float
    _sleep: Callable[[float], Awaitable[None]]

    def auth_headers(self) -> dict[str, str]:
        """The provider's authentication headers (a provider module overrides this)."""
        return {}

    def observe(self, response: httpx.Response, *, during: str) -> None:
        """Called with every answer the provider gives, before it is handled (rate-limit
        headers, request ids); a provider module overrides this."""

    def classify(self, response: httpx.Response, *, during: str) -> JobError:
        """Turn an error response into a JobError; ``during`` is submit, poll, result, upload,
        cancel or download. Providers refine the general rules."""
        return self.general_error(response, during=during)

    # --- shared error rules -----------------------------------------------------------------
    def general_error(self, response: httpx.Response, *, during: str) -> JobError:
        code = response.status_code
        body = body_of(response)
        text = self.scrub(message_of(body, code)) or f"HTTP {code}"
        who = self.label
        details: dict[str, Any] = {"http_status": code}
        if code in (401, 403):
            return JobError(
                ErrorKind.auth,
                f"{who} refused the API key ({text}). Check the key in the settings, or set "
                f"{self.key_envs[0] if self.key_envs else 'it'} in the environment.",
                details=details,
            )
        if code == 402:
            return JobError(
                ErrorKind.insufficient_funds,
                f"{who} says your credits are insufficient ({text}).",
                details=details,
            )
        if code == 404 and during in ("poll", "result", "download"):
            return JobError(
                ErrorKind.expired,
                f"{who} no longer has this job ({text}); its record expired before the result "
                "was downloaded.",
                details=details,
            )
        if code in (400, 404, 405, 409, 413, 422):
            fields = field_errors(body)
            if fields:
                details["fields"] = fields
            return JobError(
                ErrorKind.invalid_request, f"{who} refused the request: {text}", details=details
            )
        if code == 410:
            return JobError(
                ErrorKind.model_failed,
                f"{who} has retired this model ({text}).",
                details=details,
            )
        if code == 429:
            return JobError(
                ErrorKind.rate_limited,
                f"{who} is rate-limiting requests ({text}).",
                retry_after=retry_hint(response.headers, body),
                details=details,
            )
        if code >= 500:
            return JobError(
                ErrorKind.transient,
                f"{who} had a server error (HTTP {code}: {text}).",
                details=details,
            )
        return JobError(
            ErrorKind.protocol,
            f"{who} answered unexpectedly (HTTP {code}: {text}).",
            details=details,
        )

    def failed(self, message: str, **details: Any) -> JobError:
        """A job the provider ran and failed: model_failed, or content_rejected by its rules."""
        message = self.scrub(message) or "no reason given"
        kind = (
            ErrorKind.content_rejected if is_content_rejection(message) else ErrorKind.model_failed
        )
        prefix = "rejected the content" if kind is ErrorKind.content_rejected else "failed the job"
        return JobError(kind, f"{self.label} {prefix}: {message}", details=details)

    def protocol_error(self, what: str, body: Any = None) -> JobError:
        shown = json.dumps(body)[:200] if isinstance(body, dict | list) else str(body or "")[:200]
        return JobError(
            ErrorKind.protocol,
            f"{self.label} answered in an unexpected way: {what}",
            details={"body": self.scrub(shown)},
        )

    def scrub(self, text: str) -> str:
        """Never let the key into a message, a log or the history."""
        if self.api_key and text:
            text = text.replace(self.api_key, "***")
        return text

    # --- HTTP with pacing and retries -------------------------------------------------------
    @property
    def retry(self) -> RetryPolicy:
        """The shared retry policy with this backend's ``retry_base`` and ``retry_for`` (read
        each time: a test or a caller may change them on a live backend)."""
        return RetryPolicy(base=self.retry_base, retry_for=self.retry_for)

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url + "/" + path_or_url.lstrip("/")

    async def http(
        self,
        method: str,
        url: str,
        *,
        during: str,
        safe: bool | None = None,
        auth: bool = True,
        paced: bool = True,
        ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """One request to the provider, paced and retried as its rules allow.

        ``safe``: whether re-sending cannot create a second job (default: everything but POST;
        a submit passes ``safe=self.idempotent_submit``). Network faults and 5xx on safe requests
        are retried with backoff for ``retry_for`` seconds; on an unsafe request a fault after
        the request was sent raises :class:`SubmitNoAnswer`. 429 is honoured everywhere (the
        provider refused, so nothing was made) and pauses the whole budget. Any status in
        ``ok`` or below 400 is returned; other errors raise via :meth:`classify`."""
        safe = method.upper() != "POST" if safe is None else safe
        headers = {**(self.auth_headers() if auth else {}), **kwargs.pop("headers", {})}
        target = self.url(url)
        started = time.monotonic()
        failures = 0
        while True:
            try:
                async with self.budget.slot() if paced else contextlib.nullcontext():
                    response = await self.client.request(method, target, headers=headers, **kwargs)
            except NOT_SENT as exc:
                # Nothing reached the provider: always safe to try again.
                failures += 1
                if self.retry.out_of_time(started):
                    raise JobError(
                        ErrorKind.transient,
                        f"cannot reach {self.label} ({type(exc).__name__}); check the network",
                    ) from None
                await self._backoff(failures)
                continue
            except httpx.TransportError as exc:
                if not transient_error(exc, safe=safe):
                    raise SubmitNoAnswer(f"{type(exc).__name__}: {exc}") from exc
                failures += 1
                if self.retry.out_of_time(started):
                    raise JobError(
                        ErrorKind.transient,
                        f"{self.label} keeps dropping the connection ({type(exc).__name__})",
                    ) from None
                await self._backoff(failures)
                continue
            self.observe(response, during=during)
            code = response.status_code
            if code < 400 or code in ok:
                if response.headers.get("x-ratelimit-remaining", "").strip() == "0":
                    # The window is used up: hold everyone until it resets, not just until the
                    # next request earns a 429.
                    hint = retry_hint(response.headers)
                    if hint:
                        self.budget.pause_for(hint)
                return response
            if code == 429:
                failures += 1
                wait = self.retry.wait(response, failures, body_of(response))
                self.budget.pause_for(wait)
                if self.retry.out_of_time(started, wait, rate_limited=True):
                    raise self.classify(response, during=during)
                log.info("%s: rate limited, waiting %.1f s", self.label, wait)
                continue  # the budget holds the next request until the pause ends
            if transient_status(code):  # a 5xx but 501 (429 was handled above)
                if safe or self.submit_5xx_safe:
                    failures += 1
                    # A submit the provider says made nothing is re-sent twice at most.
                    if (safe and not self.retry.out_of_time(started)) or (
                        not safe and failures < 3
                    ):
                        await self._backoff(failures)
                        continue
                    raise self.classify(response, during=during)
                raise SubmitNoAnswer(f"HTTP {code}: {message_of(body_of(response))[:120]}")
            raise self.classify(response, during=during)

    def _backoff_delay(self, failures: int) -> float:
        return self.retry.delay(failures)

    async def _backoff(self, failures: int) -> None:
        await self._sleep(self._backoff_delay(failures))

    async def json_of(self, response: httpx.Response) -> Any:
        body = body_of(response)
        if not isinstance(body, dict | list):
            raise self.protocol_error(f"expected JSON, got {message_of(body) or 'an empty body'}")
        return body
