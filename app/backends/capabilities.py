"""What each backend can run, without importing it: models, key, cancel, and the knobs it takes.

The window needs this at start-up, before any job, to fill the backend and model pickers and to
hide the parameters a backend would not honour. Importing the provider modules for it would pull
in httpx and every protocol module (seconds of start-up for nothing), so the facts are restated
here as plain data. ``tests/backends/test_capabilities.py`` keeps them honest: it compares every
entry with the provider classes and probes every parameter through each provider's own mapping.

Which fields a backend takes (:func:`accepted_fields`); every other field is hidden by the window.
A hidden field is either *refused* by the backend's mapping (the job fails at once, naming it) or
has no effect on what is sent, so a knob the window shows always changes the request:

==================  ===========================  ==============================================
backend             model                        takes
==================  ===========================  ==============================================
local               (Clarifier's engine)         every field except ``creative.*``, ``flux.*``
segmind             clarity-upscaler             the open Clarity inputs (below) without
                                                 ``pattern`` and ``multistep_factor``
segmind             clarityai-creative-upscaler  ``scale_factor`` (whole, 2–16), ``prompt``,
                                                 ``output_format``, ``creative.*``
segmind             clarityai-flux-upscaler      ``scale_factor`` (whole, 2–16), ``prompt``,
                                                 ``output_format``, ``flux.*``
apiframe            clarity-upscale              ``scale_factor`` (1, 2, 4, 8), ``creativity``,
                                                 ``resemblance``, ``dynamic``, ``prompt``,
                                                 ``negative_prompt``, ``num_inference_steps``,
                                                 ``sharpen``, ``seed``, ``output_format``
wireflow            Crystal upscaler node        ``scale_factor``, ``creativity`` (sent as a
                                                 whole 0–10), ``output_format``
replicate, cog      philz1337x/clarity-upscaler  the open Clarity inputs
fal                 fal-ai/clarity-upscaler      as apiframe without ``sharpen``; ``scale_factor``
                                                 up to 4
==================  ===========================  ==============================================

"The open Clarity inputs" are every field except Clarifier's engine choices (``mode``,
``upscaler``, ``upscaler_channel_order``) and the closed models' knobs (``creative.*``,
``flux.*``): the hosted Clarity always runs the diffusion pass with its own pre-upscaler.
``output_format`` counts everywhere because Clarifier itself saves every remote result in the
asked format. Wireflow's node is described by its catalog at run time; the table holds the
documented guess the backend falls back to (scale and creativity only), so the window never
offers more than certainly works.

The ``creative.*`` knobs are hidden for the local engine: it reads only the open parameters.
:func:`pipeline.params.emulate_creative_upscaler` converts the knobs into open parameters
(``mode="creative"``, creativity, resemblance, CFG, tile size, checkpoint), but nothing applies
it implicitly; a caller that wants the emulation applies it before submitting. The ``flux.*``
knobs have no local counterpart at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class BackendInfo:
    """One backend as the window presents it."""

    name: str  # "local", "segmind", ...: the name the controller and the CLI use
    label: str  # how people call it: "This computer", "Segmind", ...
    models: tuple[str, ...]  # the provider's model ids, the default first; () for local
    needs_key: bool
    can_cancel: bool  # whether cancelling stops the work (and the billing) at the provider
    remote: bool
    # The vendor's base URL, used when neither the environment nor the settings name one (the
    # settings dialog shows it as the placeholder); "" for local.
    default_url: str = ""


@dataclass(frozen=True)
class ScaleLimits:
    """The scale factors a backend/model runs, within :class:`UpscaleParams`' own 1–16."""

    minimum: float
    maximum: float
    whole: bool = False  # only whole factors
    choices: tuple[float, ...] | None = None  # only these factors

    def allows(self, scale: float) -> bool:
        if self.choices is not None:
            return scale in self.choices
        if self.whole and not float(scale).is_integer():
            return False
        return self.minimum <= scale <= self.maximum


class UnknownBackendError(KeyError, ValueError):
    """A backend or model name this module does not know (a KeyError for lookups, a ValueError
    like :func:`app.jobs.providers.provider_class` raises), with a readable message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class _Model:
    label: str
    fields: frozenset[str]
    scales: ScaleLimits


# --- the parameter groups ---------------------------------------------------------------------
_ALL = frozenset(name for name, _, _ in UpscaleParams.specs())
_CREATIVE = frozenset(n for n in _ALL if n.startswith("creative."))
_FLUX = frozenset(n for n in _ALL if n.startswith("flux."))
# Clarifier's local engine choices: a hosted Clarity always runs the diffusion pass (``mode``)
# with its own pre-upscaler.
_ENGINE = frozenset({"mode", "upscaler", "upscaler_channel_order"})
_OPEN_CLARITY = _ALL - _CREATIVE - _FLUX - _ENGINE
# The common core of the hosted "Clarity" APIs that expose only the main knobs.
_CORE = frozenset(
    {
        "scale_factor", "creativity", "resemblance", "dynamic", "prompt", "negative_prompt",
        "num_inference_steps", "seed", "output_format",
    }
)  # fmt: skip

_FULL_RANGE = ScaleLimits(1.0, 16.0)
_CLARITY = "Clarity upscaler"
_CLARITY_MODEL = "philz1337x/clarity-upscaler"

_LOCAL = _Model("Clarifier's engine", _ALL - _CREATIVE - _FLUX, _FULL_RANGE)
_MODELS: dict[str, dict[str, _Model]] = {
    "segmind": {
        "clarity-upscaler": _Model(
            _CLARITY, _OPEN_CLARITY - {"pattern", "multistep_factor"}, _FULL_RANGE
        ),
        "clarityai-creative-upscaler": _Model(
            "ClarityAI creative upscaler",
            frozenset({"scale_factor", "prompt", "output_format"}) | _CREATIVE,
            ScaleLimits(2.0, 16.0, whole=True),
        ),
        "clarityai-flux-upscaler": _Model(
            "ClarityAI flux upscaler",
            frozenset({"scale_factor", "prompt", "output_format"}) | _FLUX,
            ScaleLimits(2.0, 16.0, whole=True),
        ),
    },
    "apiframe": {
        "clarity-upscale": _Model(
            _CLARITY, _CORE | {"sharpen"}, ScaleLimits(1.0, 8.0, choices=(1.0, 2.0, 4.0, 8.0))
        ),
    },
    "wireflow": {
        "process:clarityai_crystal_upscaler": _Model(
            "ClarityAI Crystal upscaler",
            frozenset({"scale_factor", "creativity", "output_format"}),
            _FULL_RANGE,
        ),
    },
    "replicate": {_CLARITY_MODEL: _Model(_CLARITY, _OPEN_CLARITY, _FULL_RANGE)},
    "cog": {_CLARITY_MODEL: _Model(_CLARITY, _OPEN_CLARITY, _FULL_RANGE)},
    "fal": {"fal-ai/clarity-upscaler": _Model(_CLARITY, _CORE, ScaleLimits(1.0, 4.0))},
}


def _remote(
    name: str, label: str, url: str, *, can_cancel: bool, needs_key: bool = True
) -> BackendInfo:
    return BackendInfo(name, label, (*_MODELS[name],), needs_key, can_cancel, True, url)


# In the order of app.jobs.providers.PROVIDERS (checked by the tests), local first.
_INFO: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo("local", "This computer", (), needs_key=False, can_cancel=True, remote=False),
        _remote("segmind", "Segmind", "https://api.segmind.com", can_cancel=False),
        _remote("apiframe", "Apiframe", "https://api.apiframe.ai", can_cancel=False),
        _remote("wireflow", "Wireflow", "https://www.wireflow.ai", can_cancel=False),
        _remote("replicate", "Replicate", "https://api.replicate.com", can_cancel=True),
        # Self-hosted: where `docker run -p 5000:5000 …` serves it, and what the provider pool
        # uses when no URL is set.
        _remote(
            "cog", "your Cog server", "http://localhost:5000", can_cancel=True, needs_key=False
        ),
        _remote("fal", "fal", "https://queue.fal.run", can_cancel=True),
    )
}


# --- lookups ----------------------------------------------------------------------------------
def backends() -> list[BackendInfo]:
    """Every backend: local first, then the providers in the controller's order."""
    return list(_INFO.values())


def backend_info(name: str) -> BackendInfo:
    try:
        return _INFO[name]
    except KeyError:
        raise UnknownBackendError(
            f"unknown backend {name!r}; available: {', '.join(_INFO)}"
        ) from None


def _model(backend: str, model: str) -> _Model:
    info = backend_info(backend)
    if not info.remote:
        if model:
            raise UnknownBackendError(f"the local engine has no model choice (got {model!r})")
        return _LOCAL
    models = _MODELS[backend]
    if not model:
        return models[info.models[0]]
    found = models.get(model)
    if found is None and backend == "replicate":
        # A pinned version, ``owner/name:<version id>``: the same model's inputs.
        found = models.get(model.partition(":")[0])
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
    if model and model not in _MODELS.get(backend, {}):  # a pinned Replicate version
        return f"{found.label} (version {model.partition(':')[2][:8]})"
    return found.label


def scale_limits(backend: str, model: str = "") -> ScaleLimits:
    """The scale factors ``backend``/``model`` accepts; others are refused when the job starts,
    so the window can limit its scale control instead."""
    return _model(backend, model).scales
