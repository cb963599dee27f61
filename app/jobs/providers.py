"""Building the backends a controller runs on: the local engine and the hosted providers.

:class:`ProviderPool` makes one backend per (provider, model) on first use, all of a provider's
models sharing one HTTP client, one request budget and one concurrency limit. Each provider's key
comes from the environment or the keyring (:mod:`app.store.secrets`, asked for the variables
:mod:`app.backends.registry` names), its base URL from ``CLARIFIER_<NAME>_BASE_URL``, the
settings, or the vendor's default, and its request budget from ``CLARIFIER_<NAME>_RPM`` or the
settings (Segmind's free tier allows 5 a minute; a Pro plan raises it). The provider classes are
imported on first use, so a CLI run loads only its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from app.backends import registry
from app.backends.base import Backend
from app.backends.remote import RequestBudget
from app.store.secrets import find_key
from app.store.settings import Settings
from pipeline.paths import data_dir

__all__ = ["ProviderPool", "make_client"]


def make_client() -> httpx.AsyncClient:
    # Long reads: Segmind's v1 sync call and Cog's synchronous predictions answer only when
    # the image is done. Redirects: Wireflow moves wireflow.ai to www.wireflow.ai.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=15.0, read=600.0, write=120.0, pool=60.0),
        follow_redirects=True,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        headers={"User-Agent": "Clarifier (+https://github.com/clarifier)"},
    )


class ProviderPool:
    """The backends of one controller. ``overrides`` are extra constructor arguments per
    provider (tests shorten cadences with them)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        env: Mapping[str, str] | None = None,
        local: Callable[[], Backend] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._client = client
        self._own_client = client is None
        self._env = os.environ if env is None else env
        self._local_factory = local
        self._overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self._backends: dict[tuple[str, str], Backend] = {}
        self._budgets: dict[str, RequestBudget] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = make_client()
        return self._client

    def names(self) -> list[str]:
        return list(registry.names())

    def concurrency(self, name: str) -> int:
        if name == "local":
            return self.get("local").concurrency
        if name in self.settings.provider_concurrency:
            return self.settings.provider_concurrency[name]
        return int(registry.backend_class(name).default_concurrency)

    def base_url(self, name: str) -> str:
        cls = registry.backend_class(name)
        return (
            self._env.get(f"CLARIFIER_{name.upper()}_BASE_URL")
            or self.settings.provider_urls.get(name)
            or cls.default_base_url
        ).rstrip("/")

    def budget(self, name: str) -> RequestBudget:
        if name not in self._budgets:
            cls = registry.backend_class(name)
            limit, window = cls.budget_limit
            rpm = self._env.get(f"CLARIFIER_{name.upper()}_RPM") or self.settings.provider_rpm.get(
                name
            )
            if rpm:
                limit, window = max(1, int(rpm)), 60.0
            self._budgets[name] = RequestBudget(limit, window)
        return self._budgets[name]

    def api_key(self, name: str) -> str | None:
        envs = registry.key_envs(name)
        if self._env is os.environ:
            return find_key(name, envs).key
        for var in envs:  # an explicit environment (tests): no keyring
            if self._env.get(var):
                return self._env[var]
        return None

    def _extra(self, name: str) -> dict[str, Any]:
        """Provider-specific constructor arguments from the environment and the data folder."""
        extra: dict[str, Any] = {}
        if name == "fal" and self._env.get("CLARIFIER_FAL_STORAGE_URL"):
            extra["storage_url"] = self._env["CLARIFIER_FAL_STORAGE_URL"]
        if name == "wireflow":
            extra["workflow_cache"] = data_dir() / "wireflow-workflows.json"
        return extra

    def get(self, name: str, model: str = "") -> Backend:
        if name == "local":
            if ("local", "") not in self._backends:
                if self._local_factory is not None:
                    backend = self._local_factory()
                else:
                    from app.backends.local import LocalBackend

                    backend = LocalBackend()
                self._backends[("local", "")] = backend
            return self._backends[("local", "")]
        cls = registry.backend_class(name)
        model = model or (cls.models[0] if cls.models else "")
        if (name, model) not in self._backends:
            kwargs: dict[str, Any] = {
                "model": model or None,
                "budget": self.budget(name),
                "concurrency": self.concurrency(name),
                **self._extra(name),
                **self._overrides.get(name, {}),
            }
            self._backends[(name, model)] = cls(
                self.client, self.base_url(name), self.api_key(name), **kwargs
            )
        return self._backends[(name, model)]

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()
        self._backends.clear()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
