"""The registry's capability table against the real backends: their classes, and their mappings.

:mod:`app.backends.registry` (which :mod:`app.backends.capabilities` reads) describes each
backend once, so that the window need not import the provider modules; the classes read their
label, models, URL and key variables from it. Which fields each model takes is stated there
too, and only the mappings can confirm it: these tests do. The central one probes every leaf
parameter through every remote backend's own mapping (``map_params``): a field the table lists
must be taken and change the request for some valid value; a field it leaves out must be
refused or have no effect, so the window never offers a knob that a provider drops.

What reaches a provider, as modelled here: the mapped fields; the mask, which the remote
template hands to ``submit`` (Segmind puts it in the body through ``request_body``; Replicate and
Cog add it to the inputs, see test_replicate's mask test); and the output format, which every
remote result is saved in by Clarifier itself (``RemoteBackend.finish``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.backends import capabilities as caps
from app.backends import registry
from app.backends.base import ErrorKind, JobError
from app.backends.remote import RemoteBackend
from pipeline.errors import ParamsError
from pipeline.params import Spec, UpscaleParams, emulate_creative_upscaler

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = UpscaleParams()
ALL_FIELDS = [name for name, _, _ in UpscaleParams.specs()]
PROVIDERS = registry.provider_names()
REMOTE = [(name, model) for name in PROVIDERS for model in caps.backend_info(name).models]

# Plausible values for free-text fields; the URL-shaped ones are what a provider can fetch.
TEXT = {
    "prompt": "a red fox in the snow, detailed fur",
    "negative_prompt": "blurry, jpeg artifacts",
    "upscaler": "realesrgan-x4plus-anime",
    "mask": "https://x.test/mask.png",
    "lora_links": "https://x.test/detail.safetensors",
    "custom_sd_model": "https://x.test/model.safetensors",
    "flux.lora_link": "https://x.test/flux-lora.safetensors",
}

# Fields a backend neither refuses nor sends: changing them has no effect there. They are
# hidden like refused ones; listed so that a change in a mapper shows up here.
_ENGINE_AND_KNOBS = {"mode", "upscaler", "upscaler_channel_order", "noise_source"}
_CREATIVE = {n for n in ALL_FIELDS if n.startswith("creative.")}
_FLUX = {n for n in ALL_FIELDS if n.startswith("flux.")}
IGNORED: dict[tuple[str, str], set[str]] = {
    # Segmind refuses every setting a model cannot express; only the local mode is moot there.
    ("segmind", "clarity-upscaler"): {"mode"},
    ("segmind", "clarityai-creative-upscaler"): {"mode"},
    ("segmind", "clarityai-flux-upscaler"): {"mode"},
    # Apiframe and Wireflow refuse every setting their pages do not list, engine ones too.
    ("apiframe", "clarity-upscale"): {"mode"},
    ("wireflow", "process:clarityai_crystal_upscaler"): {"mode"},
    ("replicate", "philz1337x/clarity-upscaler"): {"mode"},
    ("cog", "philz1337x/clarity-upscaler"): {"mode"},
    # multistep_factor: refused above ×2, where fal would need it; at ×2 there is one pass.
    ("fal", "fal-ai/clarity-upscaler"): {
        *_ENGINE_AND_KNOBS, "downscaling_resolution", "multistep_factor"
    },
}  # fmt: skip
# Backends whose submit puts params.mask into the request (the others refuse a mask).
MASK_SENT = {"segmind", "replicate", "cog"}


# --- probe values -----------------------------------------------------------------------------
def candidates(name: str, spec: Spec, default: Any) -> list[Any]:
    """Valid values other than the default: every other choice, the flipped bool, numbers on
    the step grid through the range (a provider may take only some, e.g. scale 1, 2, 4, 8)."""
    if spec.choices is not None:
        values = [c for c in spec.choices if c != default]
    elif spec.kind is bool:
        values = [not default]
    elif spec.kind in (int, float):
        values = _numbers(spec, default)
    else:
        values = [TEXT.get(name, f"https://x.test/{name}")]
    if spec.nullable and default is not None:
        values.append(None)
    valid = []
    for value in values:
        try:
            DEFAULTS.replace(**{name: value})
        except ParamsError:
            continue
        valid.append(value)
    assert valid, f"no valid probe value for {name}"
    return valid


def _numbers(spec: Spec, default: float | None) -> list[float]:
    low, high = spec.minimum, spec.maximum
    assert low is not None and high is not None, "numeric fields have a range"
    step = spec.step or 1
    base = low if default is None else default
    targets = [base + k * step for k in (-2, -1, 1, 2)]
    targets += [low + f * (high - low) for f in (0, 0.1, 0.25, 0.5, 0.75, 1)]
    out: list[float] = []
    for t in targets:
        v = base + round((t - base) / step) * step
        v = min(high, max(low, v))
        v = round(v) if spec.kind is int else round(v, 6)
        if v != default and v not in out:
            out.append(v)
    return out


# --- what a backend sends ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> Iterator[httpx.AsyncClient]:
    client = httpx.AsyncClient()
    yield client
    asyncio.run(client.aclose())


def make(client: httpx.AsyncClient, name: str, model: str) -> RemoteBackend:
    extra: dict[str, Any] = {"workflow_cache": {}} if name == "wireflow" else {}
    return registry.backend_class(name)(client, None, "key", model=model or None, **extra)


def sent(backend: RemoteBackend, params: UpscaleParams) -> dict[str, Any]:
    """What the provider receives for ``params`` (and the format the result is saved in);
    raises the mapper's JobError when it refuses."""
    fields = backend.map_params(params)
    if backend.name == "segmind":
        fields = backend.request_body(fields, "IMAGE", params.mask)  # type: ignore[attr-defined]
    elif backend.name in MASK_SENT and params.mask:
        fields = {**fields, "mask": params.mask}
    return {"request": fields, "saved as": params.output_format}


def outcome(backend: RemoteBackend, name: str, value: Any, baseline: dict[str, Any]) -> str:
    """One of refused, ignored or changed; a refusal must name the field (or its group)."""
    try:
        mapped = sent(backend, DEFAULTS.replace(**{name: value}))
    except JobError as err:
        refusal = err
    else:
        return "ignored" if mapped == baseline else "changed"
    assert refusal.kind is ErrorKind.invalid_request, refusal
    named = set(refusal.details.get("fields", {}))
    assert named & {name, name.partition(".")[0]}, f"{name}={value!r} refused as {named}"
    return "refused"


@pytest.mark.parametrize(("name", "model"), REMOTE)
def test_every_field_is_taken_exactly_when_the_table_says(client, name, model):
    backend = make(client, name, model)
    baseline = sent(backend, DEFAULTS)
    accepted = caps.accepted_fields(name, model)
    ignored: set[str] = set()
    for field, spec, default in UpscaleParams.specs():
        results = {
            repr(v): outcome(backend, field, v, baseline) for v in candidates(field, spec, default)
        }
        if field in accepted:
            assert "changed" in results.values(), f"{name}/{model} drops {field}: {results}"
        else:
            assert "changed" not in results.values(), (
                f"{name}/{model} takes {field}, which the window would hide: {results}"
            )
            if set(results.values()) == {"ignored"}:
                ignored.add(field)
    assert ignored == IGNORED[(name, model)], "a mapper now refuses or ignores other fields"


@pytest.mark.parametrize(("name", "model"), REMOTE)
def test_scale_limits_match_what_the_mapper_refuses(client, name, model):
    backend = make(client, name, model)
    limits = caps.scale_limits(name, model)
    for k in range(2, 33):
        scale = k / 2
        refused: list[str] = []
        try:
            sent(backend, DEFAULTS.replace(scale_factor=scale))
        except JobError as err:
            refused = list(err.details["fields"])
        assert refused in ([], ["scale_factor"])
        assert (not refused) == limits.allows(scale), f"{name}/{model} at ×{scale:g}"


def test_the_local_engine_takes_the_open_parameters_and_scales():
    fields = caps.accepted_fields("local")
    closed = {n for n in ALL_FIELDS if n.startswith(("creative.", "flux."))}
    assert fields == set(ALL_FIELDS) - closed
    assert all(caps.scale_limits("local").allows(k / 2) for k in range(2, 33))
    # The engine reads no closed-model knob (the creative ones only through the emulation).
    sources = [*(ROOT / "pipeline").glob("*.py"), ROOT / "app" / "backends" / "local.py"]
    for path in sources:
        if path.name != "params.py":
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"\b(params|p)\.(creative|flux)\b", text), path


def test_the_creative_emulation_moves_only_what_the_local_engine_takes():
    params = DEFAULTS.replace(
        **{"creative.creativity": 6, "creative.fractality": 4, "creative.style": "anime"}
    )
    emulated = emulate_creative_upscaler(params).to_dict()
    before = params.to_dict()
    changed = {k for k, v in emulated.items() if before[k] != v}
    assert changed and changed <= caps.accepted_fields("local")
    assert emulated["mode"] == "creative"


# --- the registry's own facts, and the classes it names -------------------------------------
def test_backends_are_local_then_the_providers_in_order():
    assert [b.name for b in caps.backends()] == ["local", *PROVIDERS, "ray"]
    local = caps.backend_info("local")
    assert (local.label, local.models, local.remote, local.needs_key) == (
        "This computer", (), False, False
    )  # fmt: skip
    assert local.can_cancel and local.default_url == ""
    assert all(caps.backend_info(name).remote for name in PROVIDERS)
    ray = caps.backend_info("ray")  # the engine, on a Ray cluster
    assert (ray.remote, ray.needs_key, ray.can_cancel) == (False, False, True)


@pytest.mark.parametrize("name", list(registry.names()))
def test_each_entry_names_its_class_and_the_class_reads_that_entry(name):
    # The class's label, models, URL, key variables, needs_key and can_cancel are the entry's
    # (Backend.__init_subclass__; test_registry checks the mechanism), never restated.
    cls = registry.backend_class(name)
    info = registry.get(name)
    assert cls.__module__ == info.module and cls.__name__ == info.class_name
    assert cls.info is info and cls.name == name


def test_every_model_has_fields_and_a_label_and_the_default_is_the_first(client):
    names = set(ALL_FIELDS)
    for info in caps.backends():
        for model in info.models or ("",):
            assert caps.accepted_fields(info.name, model) <= names
            assert "output_format" in caps.accepted_fields(info.name, model)
            assert caps.model_label(info.name, model)
        first = info.models[0] if info.models else ""
        assert caps.accepted_fields(info.name) == caps.accepted_fields(info.name, first)
        if info.models:  # what the backend runs when no model is named
            assert make(client, info.name, "").model == first


def test_model_labels():
    assert caps.model_label("segmind", "clarity-upscaler") == "Clarity upscaler"
    assert caps.model_label("segmind", "clarityai-creative-upscaler") == (
        "ClarityAI creative upscaler"
    )
    assert caps.model_label("segmind", "clarityai-flux-upscaler") == "ClarityAI flux upscaler"
    assert caps.model_label("wireflow", "process:clarityai_crystal_upscaler") == (
        "ClarityAI Crystal upscaler"
    )
    assert caps.model_label("replicate", "philz1337x/clarity-upscaler") == "Clarity upscaler"
    pinned = "philz1337x/clarity-upscaler:dfad41707589d68ecdccd1dfa600d55a208f9310748e44bfe35"
    assert caps.model_label("replicate", pinned) == "Clarity upscaler (version dfad4170)"
    assert caps.accepted_fields("replicate", pinned) == caps.accepted_fields("replicate")
    with pytest.raises(ValueError, match="no model"):  # only Replicate pins versions
        caps.accepted_fields("segmind", "clarity-upscaler:dfad4170")
    labels = [caps.model_label("segmind", m) for m in caps.backend_info("segmind").models]
    assert len(set(labels)) == len(labels)


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError) as err:
        caps.backend_info("midjourney")
    assert str(err.value) == (
        "unknown backend 'midjourney'; available: local, segmind, apiframe, wireflow, "
        "replicate, cog, fal, ray"
    )
    with pytest.raises(ValueError, match="Segmind has no model 'sdxl'; choose one of: clarity"):
        caps.accepted_fields("segmind", "sdxl")
    with pytest.raises(LookupError, match="no model choice"):
        caps.model_label("local", "clarity-upscaler")


def test_scale_limits_describe_themselves():
    apiframe = caps.scale_limits("apiframe")
    assert apiframe.choices == (1, 2, 4, 8) and not apiframe.allows(3)
    creative = caps.scale_limits("segmind", "clarityai-creative-upscaler")
    assert creative.whole and creative.allows(16) and not creative.allows(2.5)
    assert not creative.allows(1) and caps.scale_limits("fal").maximum == 4
    assert math.isclose(caps.scale_limits("cog").maximum, 16)


# --- cheap to import --------------------------------------------------------------------------
def test_importing_it_loads_no_http_client_provider_or_qt():
    code = (
        "import json, sys, app.backends.capabilities, app.backends.registry; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    forbidden = {"httpx", "PySide6", "torch", "app.jobs.providers", "app.backends.remote"}
    forbidden |= {registry.get(name).module for name in PROVIDERS} | {"app.backends.local"}
    assert not loaded & forbidden


def test_restrict_resets_what_a_backend_cannot_take_so_its_mapper_accepts_it() -> None:
    from app.backends.capabilities import restrict
    from app.backends.providers import segmind_params

    params = UpscaleParams(
        negative_prompt="blurry", seed=77, num_inference_steps=30, sharpen=2, scale_factor=4
    ).replace(**{"creative.fractality": 5, "flux.creativity": 7})
    with pytest.raises(JobError, match="negative prompt"):
        segmind_params.map_params(segmind_params.CREATIVE, params)
    sent = restrict(params, "segmind", segmind_params.CREATIVE)
    assert sent.negative_prompt == UpscaleParams().negative_prompt and sent.seed is None
    assert sent.num_inference_steps == 18 and sent.sharpen == 0 and sent.flux.creativity == 3
    assert sent.creative.fractality == 5 and sent.scale_factor == 4  # what it takes is kept
    assert segmind_params.map_params(segmind_params.CREATIVE, sent)["fractality"] == 5
    assert restrict(params, "local") == params.replace(  # local reads all but the closed knobs
        **{"creative.fractality": 1, "flux.creativity": 3}
    )
