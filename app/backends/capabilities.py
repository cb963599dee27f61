"""What each backend can run, without importing it: models, key, cancel, and the knobs it takes.

The window needs this at start-up, before any job, to fill the backend and model pickers and to
hide the parameters a backend would not honour. Importing the provider modules for it would pull
in httpx and every protocol module (seconds of start-up for nothing), so these lookups read the
registry's plain data (:mod:`app.backends.registry`, where the table of what each model takes
lives) and never a provider class.

Which fields a backend takes (:func:`accepted_fields`); every other field is hidden by the window.
A hidden field is either *refused* by the backend's mapping (the job fails at once, naming it) or
has no effect on what is sent, so a knob the window shows always changes the request.
:func:`restrict` puts the hidden fields back to their defaults before a job is sent.
"""

from __future__ import annotations

from typing import Any

from app.backends import registry
from app.backends.registry import BackendInfo, ModelInfo, ScaleLimits, UnknownBackendError
from pipeline.params import UpscaleParams

__all__ = [
    "BackendInfo",
    "ScaleLimits",
    "UnknownBackendError",
    "accepted_fields",
    "backend_info",
    "backends",
    "model_label",
    "restrict",
    "scale_limits",
]


# --- lookups ----------------------------------------------------------------------------------
def backends() -> list[BackendInfo]:
    """Every backend: local first, then the providers in the registry's order."""
    return list(registry.backends())


def backend_info(name: str) -> BackendInfo:
    return registry.get(name)


def _model(backend: str, model: str) -> ModelInfo:
    info = backend_info(backend)
    if not info.remote:
        if model:
            raise UnknownBackendError(f"the local engine has no model choice (got {model!r})")
        return info.catalog[0]
    if not model:
        return info.catalog[0]
    found = info.model(model)
    if found is None and backend == "replicate":
        # A pinned version, ``owner/name:<version id>``: the same model's inputs.
        found = info.model(model.partition(":")[0])
    if found is None:
        raise UnknownBackendError(
            f"{info.label} has no model {model!r}; choose one of: {', '.join(info.models)}"
        )
    return found


def accepted_fields(backend: str, model: str = "") -> frozenset[str]:
    """The dotted :class:`UpscaleParams` field names ``backend`` (running ``model``, or its
    default model for ``""``) actually takes; the window hides the others."""
    return _model(backend, model).fields


def restrict(params: UpscaleParams, backend: str, model: str = "") -> UpscaleParams:
    """``params`` with every field ``backend``/``model`` does not take put back to its default.

    The window hides those fields but keeps their values (for switching back); what it sends
    must not carry them, because a provider refuses a setting it cannot express. ``mode`` is
    kept: it only says which local pass runs, and remote results record the pass they ran. A
    seed the provider cannot take becomes ``None``: the provider draws its own."""
    accepted = accepted_fields(backend, model)
    current = params.to_dict()
    changes: dict[str, Any] = {}
    for name, _spec, default in UpscaleParams.specs():
        if name in accepted or name == "mode":
            continue
        group, _, leaf = name.rpartition(".")
        if (current[group] if group else current)[leaf] != default:
            # A provider that takes no seed draws its own: "random" is what really happens.
            changes[name] = None if name == "seed" else default
    return params.replace(**changes) if changes else params


def model_label(backend: str, model: str) -> str:
    """A short human label for one of ``backend``'s model ids ("ClarityAI flux upscaler")."""
    found = _model(backend, model)
    if model and backend_info(backend).model(model) is None:  # a pinned Replicate version
        return f"{found.label} (version {model.partition(':')[2][:8]})"
    return found.label


def scale_limits(backend: str, model: str = "") -> ScaleLimits:
    """The scale factors ``backend``/``model`` accepts; others are refused when the job starts,
    so the window can limit its scale control instead."""
    return _model(backend, model).scales
