"""How the served engine runs, from its environment: engine options and model fetching.

``clarifier serve`` passes its ``--models`` folders to the runner in :data:`MODELS_ENV`; a Cog
image names its mounted models folder there. The rest comes from Clarifier's settings, as for
the CLI: device, precision, pre-upscaler tile, the output cap and the settings' model folders.
:data:`ACCEPT_LICENCES_ENV` set to 1 lets the set-up download the models it is missing, which
accepts their licences (the operator's decision, stated where the image or the service is
configured). Light: no HTTP client, no engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.store.settings import load_settings

__all__ = ["ACCEPT_LICENCES_ENV", "MODELS_ENV", "ServeConfig", "accepts_licences"]

MODELS_ENV = "CLARIFIER_SERVE_MODELS"  # extra model folders, os.pathsep-separated
ACCEPT_LICENCES_ENV = "CLARIFIER_ACCEPT_MODEL_LICENCES"  # "1": fetch missing models at set-up


def accepts_licences(env: Mapping[str, str] | None = None) -> bool:
    """Whether the operator accepted the models' licences (set-up may download them)."""
    value = (os.environ if env is None else env).get(ACCEPT_LICENCES_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ServeConfig:
    """How the served engine runs: the engine options and whether set-up may fetch models."""

    options: Mapping[str, Any]
    accept_licences: bool = False

    @property
    def model_dirs(self) -> list[str]:
        return list(self.options.get("model_dirs") or [])

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        env = os.environ if env is None else env
        settings = load_settings()
        extra = [d for d in env.get(MODELS_ENV, "").split(os.pathsep) if d.strip()]
        dirs = extra + [d for d in settings.model_dirs if d not in extra]
        options = {**settings.engine_options(), "model_dirs": dirs}
        return cls(options=options, accept_licences=accepts_licences(env))
