"""Every backend Clarifier runs on, described once: the local engine and each hosted provider.

An entry (:class:`BackendInfo`) says what people call the backend, the models it runs and the
parameters each takes, where its API key may be set, its vendor's base URL, whether cancelling
stops the work at the provider, and which class runs it. Everything that lists backends is
derived from here: the CLI's ``--backend`` and ``keys`` choices, the provider pool of the job
controller (:mod:`app.jobs.providers`), the window's pickers and hidden fields
(:mod:`app.backends.capabilities`), the settings dialog's provider pages, and the key variables
the secrets module is asked about (:mod:`app.store.secrets` knows no provider). The backend
classes themselves do not restate it: a class names its entry (``class FalBackend(RemoteBackend,
backend="fal")``) and :class:`app.backends.base.Backend` sets its ``name``, ``label``,
``models``, ``default_base_url``, ``key_envs``, ``needs_key`` and ``can_cancel`` from the entry
(and refuses a class that states them itself). Adding a provider is one entry here plus its
module in :mod:`app.backends.providers`.

This module is plain data: it imports no provider module, no httpx and no Qt, so the CLI and
the window can list backends at start-up for nothing. The class is imported only when a backend
is built (:func:`backend_class`). ``tests/backends/test_capabilities.py`` keeps the fields each
model takes honest: it probes every parameter through each provider's own mapping.

Which fields a model takes (``ModelInfo.fields``); every other field is hidden by the window. A
hidden field is either *refused* by the backend's mapping (the job fails at once, naming it) or
has no effect on what is sent, so a knob the window shows always changes the request:

==================  ===========================  ==============================================
backend             model                        takes
==================  ===========================  ==============================================
local, ray          (Clarifier's engine)         every field except ``creative.*``, ``flux.*``
segmind             clarity-upscaler             the open Clarity inputs (below) without
                                                 ``pattern`` and ``multistep_factor``
segmind             clarityai-creative-upscaler  ``scale_factor`` (whole, 2–16), ``prompt``,
                                                 ``output_format``, ``creative.*``
segmind             clarityai-flux-upscaler      ``scale_factor`` (whole, 2–16), ``prompt``,
                                                 ``output_format``, ``flux.*``
apiframe            clarity-upscale              the page's nine: ``scale_factor`` (1, 2, 4, 8,
                                                 sent as a string), ``creativity`` and
                                                 ``resemblance`` (steps of 0.05), ``dynamic``
                                                 (whole), ``prompt``, ``num_inference_steps``,
                                                 ``seed``, ``output_format`` (and the image)
wireflow            Crystal upscaler node        ``scale_factor`` (whole, 1–16), ``creativity``
                                                 (0–1), ``output_format``; output ≤ 64 MP
replicate, cog      philz1337x/clarity-upscaler  the open Clarity inputs
fal                 fal-ai/clarity-upscaler      ``scale_factor`` (up to 4), ``creativity``,
                                                 ``resemblance``, ``dynamic``, ``prompt``,
                                                 ``negative_prompt``, ``num_inference_steps``,
                                                 ``seed``, ``output_format``
==================  ===========================  ==============================================

"The open Clarity inputs" are every field except Clarifier's engine choices (``mode``,
``upscaler``, ``upscaler_channel_order``, ``noise_source``) and the closed models' knobs
(``creative.*``, ``flux.*``): the hosted Clarity always runs the diffusion pass with its own
pre-upscaler. ``output_format`` counts everywhere because Clarifier itself saves every remote
result in the asked format (keeping the provider's bytes when they already are in it).
Wireflow's and Apiframe's pages list a closed set of fields: every other field is refused
unless at its default, so the window hides it.

A model's ``max_output_pixels`` is the output cap its provider documents (Wireflow: 64 MP);
the remote template refuses a job past it before anything is sent, naming the largest scale
that fits. A backend's ``options`` are its run-time switches (Segmind's ``sync``), set as
``Request.options["<backend>.<option>"]``; :func:`parse_option` reads one from text.

The ``creative.*`` knobs are hidden for the local engine: it reads only the open parameters.
:func:`pipeline.params.emulate_creative_upscaler` converts the knobs into open parameters
(``mode="creative"``, creativity, resemblance, CFG, tile size, checkpoint), but nothing applies
it implicitly; a caller that wants the emulation applies it before submitting. The ``flux.*``
knobs have no local counterpart at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.params import UpscaleParams

__all__ = [
    "BackendInfo",
    "ModelInfo",
    "OptionInfo",
    "ScaleLimits",
    "UnknownBackendError",
    "backend_class",
    "backends",
    "get",
    "key_envs",
    "names",
    "parse_option",
    "provider_names",
    "providers",
    "split_options",
]


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


@dataclass(frozen=True)
class ModelInfo:
    """One model a backend runs, and the :class:`UpscaleParams` fields (dotted names) it takes."""

    id: str  # the provider's model id; "" for the local engine, which has no model choice
    label: str  # a short human label: "ClarityAI flux upscaler"
    fields: frozenset[str]
    scales: ScaleLimits
    # The largest output the provider documents for this model (width × height), or None.
    max_output_pixels: int | None = None


@dataclass(frozen=True)
class OptionInfo:
    """A backend's run-time switch (not a parameter: it changes how a job is run, never what
    the result is), set per job as ``Request.options["<backend>.<name>"]``."""

    name: str  # "sync"
    choices: tuple[str, ...]  # the values it takes, as text; the first is the default
    help: str


@dataclass(frozen=True, kw_only=True)
class BackendInfo:
    """One backend, as everything that lists, shows or builds backends needs it."""

    name: str  # "local", "segmind", ...: the name the controller, the CLI and the history use
    label: str  # how people call it: "This computer", "Segmind", ...
    module: str  # where its class lives, imported only when it is built
    class_name: str
    catalog: tuple[ModelInfo, ...]  # what it runs, the default first; local: its one engine
    remote: bool = True  # runs over HTTP (hosted, or a self-hosted server)
    needs_key: bool = True
    can_cancel: bool = False  # whether cancelling stops the work (and the billing) there
    # The vendor's base URL, used when neither the environment nor the settings name one (the
    # settings dialog shows it as the placeholder); "" for local.
    default_url: str = ""
    # The vendor's own variables for the key (as its SDK reads them), checked before Clarifier's.
    vendor_key_envs: tuple[str, ...] = ()
    options: tuple[OptionInfo, ...] = ()  # run-time switches (Segmind's sync call)

    @property
    def models(self) -> tuple[str, ...]:
        """The provider's model ids, the default first; () for local."""
        return tuple(m.id for m in self.catalog if m.id)

    @property
    def key_envs(self) -> tuple[str, ...]:
        """The environment variables that hold the key, in the order they are read: the
        vendor's, then ``CLARIFIER_<NAME>_API_KEY``, which every provider answers to."""
        if not self.remote:
            return ()
        own = f"CLARIFIER_{self.name.upper()}_API_KEY"
        return tuple(dict.fromkeys((*self.vendor_key_envs, own)))

    def model(self, model_id: str) -> ModelInfo | None:
        """The catalog entry of ``model_id`` (exactly), or None."""
        return next((m for m in self.catalog if m.id == model_id), None)

    def load(self) -> type:
        """The backend's class; imports its module (and, for a provider, httpx) now."""
        return getattr(importlib.import_module(self.module), self.class_name)


class UnknownBackendError(KeyError, ValueError):
    """A backend or model name the registry does not know: a KeyError for lookups, a ValueError
    for what was asked of a backend, with a readable message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- the parameter groups ---------------------------------------------------------------------
_ALL = frozenset(name for name, _, _ in UpscaleParams.specs())
_CREATIVE = frozenset(n for n in _ALL if n.startswith("creative."))
_FLUX = frozenset(n for n in _ALL if n.startswith("flux."))
# Clarifier's local engine choices: a hosted Clarity always runs the diffusion pass (``mode``)
# with its own pre-upscaler.
_ENGINE = frozenset({"mode", "upscaler", "upscaler_channel_order", "noise_source"})
_OPEN_CLARITY = _ALL - _CREATIVE - _FLUX - _ENGINE
# The common core of the hosted "Clarity" APIs that expose only the main knobs.
_CORE = frozenset(
    {
        "scale_factor", "creativity", "resemblance", "dynamic", "prompt", "negative_prompt",
        "num_inference_steps", "seed", "output_format",
    }
)  # fmt: skip
# Apiframe's page (seed 003) lists nine clarityUpscaleParams: the image and these eight.
_APIFRAME = _CORE - {"negative_prompt"}
_WIREFLOW_CAP = 64_000_000  # "capped at 64 megapixels" (seed 004)

_FULL_RANGE = ScaleLimits(1.0, 16.0)
_CLARITY = "Clarity upscaler"
_CLARITY_MODEL = "philz1337x/clarity-upscaler"
_PROVIDERS = "app.backends.providers"


# --- the backends, local first, then the providers in the order the window lists them ---------
_BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo(
        name="local",
        label="This computer",
        module="app.backends.local",
        class_name="LocalBackend",
        catalog=(ModelInfo("", "Clarifier's engine", _ALL - _CREATIVE - _FLUX, _FULL_RANGE),),
        remote=False,
        needs_key=False,
        can_cancel=True,
    ),
    BackendInfo(
        name="segmind",
        label="Segmind",
        module=f"{_PROVIDERS}.segmind",
        class_name="SegmindBackend",
        catalog=(
            ModelInfo(
                "clarity-upscaler",
                _CLARITY,
                _OPEN_CLARITY - {"pattern", "multistep_factor"},
                _FULL_RANGE,
            ),
            ModelInfo(
                "clarityai-creative-upscaler",
                "ClarityAI creative upscaler",
                frozenset({"scale_factor", "prompt", "output_format"}) | _CREATIVE,
                ScaleLimits(2.0, 16.0, whole=True),
            ),
            ModelInfo(
                "clarityai-flux-upscaler",
                "ClarityAI flux upscaler",
                frozenset({"scale_factor", "prompt", "output_format"}) | _FLUX,
                ScaleLimits(2.0, 16.0, whole=True),
            ),
        ),
        default_url="https://api.segmind.com",
        vendor_key_envs=("SEGMIND_API_KEY",),
        options=(
            OptionInfo(
                "sync",
                ("false", "true", "auto"),
                "run the job with Segmind's v1 synchronous call (one blocking request that "
                "answers with the image); auto: for the models whose page gives a typical time "
                "under a minute, as the page advises",
            ),
        ),
    ),
    BackendInfo(
        name="apiframe",
        label="Apiframe",
        module=f"{_PROVIDERS}.apiframe",
        class_name="ApiframeBackend",
        catalog=(
            ModelInfo(
                "clarity-upscale",
                _CLARITY,
                _APIFRAME,
                ScaleLimits(1.0, 8.0, choices=(1.0, 2.0, 4.0, 8.0)),
            ),
        ),
        default_url="https://api.apiframe.ai",
    ),
    BackendInfo(
        name="wireflow",
        label="Wireflow",
        module=f"{_PROVIDERS}.wireflow",
        class_name="WireflowBackend",
        catalog=(
            ModelInfo(
                "process:clarityai_crystal_upscaler",
                "ClarityAI Crystal upscaler",
                frozenset({"scale_factor", "creativity", "output_format"}),
                ScaleLimits(1.0, 16.0, whole=True),
                max_output_pixels=_WIREFLOW_CAP,
            ),
        ),
        default_url="https://www.wireflow.ai",
    ),
    BackendInfo(
        name="replicate",
        label="Replicate",
        module=f"{_PROVIDERS}.replicate",
        class_name="ReplicateBackend",
        catalog=(ModelInfo(_CLARITY_MODEL, _CLARITY, _OPEN_CLARITY, _FULL_RANGE),),
        can_cancel=True,
        default_url="https://api.replicate.com",
        vendor_key_envs=("REPLICATE_API_TOKEN",),
    ),
    BackendInfo(
        name="cog",
        label="your Cog server",
        module=f"{_PROVIDERS}.cog",
        class_name="CogBackend",
        catalog=(ModelInfo(_CLARITY_MODEL, _CLARITY, _OPEN_CLARITY, _FULL_RANGE),),
        needs_key=False,
        can_cancel=True,
        # Self-hosted: where `docker run -p 5000:5000 …` serves it, and what the provider pool
        # uses when no URL is set.
        default_url="http://localhost:5000",
    ),
    BackendInfo(
        name="fal",
        label="fal",
        module=f"{_PROVIDERS}.fal",
        class_name="FalBackend",
        catalog=(ModelInfo("fal-ai/clarity-upscaler", _CLARITY, _CORE, ScaleLimits(1.0, 4.0)),),
        can_cancel=True,
        default_url="https://queue.fal.run",
        vendor_key_envs=("FAL_KEY",),
    ),
    BackendInfo(
        name="ray",
        label="Ray cluster",
        module="app.backends.ray",
        class_name="RayBackend",
        # The same engine as "local", one per GPU (or CPU slot) of a Ray cluster: the optional
        # [cluster] extra, so it comes last.
        catalog=(ModelInfo("", "Clarifier's engine", _ALL - _CREATIVE - _FLUX, _FULL_RANGE),),
        remote=False,
        needs_key=False,
        can_cancel=True,
    ),
)
_BY_NAME = {info.name: info for info in _BACKENDS}
_TRUTHY = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}


# --- lookups ----------------------------------------------------------------------------------
def backends() -> tuple[BackendInfo, ...]:
    """Every backend: local first, then the providers."""
    return _BACKENDS


def providers() -> tuple[BackendInfo, ...]:
    """The remote backends (hosted, or a self-hosted server), in order."""
    return tuple(info for info in _BACKENDS if info.remote)


def names() -> tuple[str, ...]:
    """Every backend's name, local first: the CLI's ``--backend`` choices."""
    return tuple(_BY_NAME)


def provider_names() -> tuple[str, ...]:
    """The remote backends' names, in order: the ones with a key, a URL and limits to set."""
    return tuple(info.name for info in providers())


def get(name: str) -> BackendInfo:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownBackendError(
            f"unknown backend {name!r}; available: {', '.join(_BY_NAME)}"
        ) from None


def backend_class(name: str) -> type:
    """The class that runs ``name``, imported now (the provider modules load httpx)."""
    return get(name).load()


def key_envs(name: str) -> tuple[str, ...]:
    """Where ``name``'s key may be set, in the order it is read (see ``BackendInfo.key_envs``)."""
    return get(name).key_envs


def parse_option(dotted: str, text: str) -> tuple[str, str]:
    """``("segmind.sync", "true")`` for ``parse_option("segmind.sync", "yes")``: a backend
    option's ``Request.options`` key and its value, checked against the entry's choices (``1``,
    ``yes`` and ``on`` read as ``true``; ``0``, ``no`` and ``off`` as ``false``). Raises
    :class:`UnknownBackendError` for a name no entry has, ValueError for a value it refuses."""
    backend, _, option = dotted.partition(".")
    info = get(backend)
    found = next((o for o in info.options if o.name == option), None)
    if found is None:
        known = ", ".join(f"{backend}.{o.name}" for o in info.options) or "none"
        raise UnknownBackendError(f"{info.label} has no option {option!r} (options: {known})")
    value = text.strip().lower()
    value = _TRUTHY.get(value, value)
    if value not in found.choices:
        raise ValueError(f"{dotted} takes {', '.join(found.choices)}, not {text!r}")
    return f"{backend}.{option}", value


def split_options(items: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """``NAME=VALUE`` settings (the CLI's ``--set``) split into the parameter ones, returned as
    they are, and the backend options (a backend's name before the dot: ``segmind.sync=true``),
    parsed into ``Request.options`` entries. Raises as :func:`parse_option` does."""
    params: list[str] = []
    options: dict[str, str] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if sep and name.strip().partition(".")[0] in _BY_NAME:
            key, value = parse_option(name.strip(), text)
            options[key] = value
        else:
            params.append(item)
    return params, options
