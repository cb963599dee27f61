"""The parameter type: defaults from the seeds, one validation test per field, conversions."""

from __future__ import annotations

import json
import math
import random

import pytest

from pipeline.errors import ParamsError
from pipeline.params import (
    HANDFIX_MODES,
    PARAMS_VERSION,
    SCHEDULERS,
    SD_MODELS,
    TILE_SIZES,
    CreativeKnobs,
    FluxKnobs,
    UpscaleParams,
    emulate_creative_upscaler,
    scale_passes,
)

ALL_FIELDS = [name for name, _, _ in UpscaleParams.specs()]


def test_clarity_inputs_and_defaults_follow_the_seed() -> None:
    # Seed 002 (Segmind clarity-upscaler): the 20 inputs other than the image itself.
    p = UpscaleParams()
    expected = {
        "creativity": 0.35,
        "custom_sd_model": "",
        "downscaling": False,
        "downscaling_resolution": 768,
        "dynamic": 6.0,
        "handfix": "disabled",
        "lora_links": "",
        "mask": None,
        "negative_prompt": "(worst quality, low quality, normal quality:2) JuggernautNegative-neg",
        "num_inference_steps": 18,
        "output_format": "png",
        "prompt": "masterpiece, best quality, highres, <lora:more_details:0.5> "
        "<lora:SDXLrender_v2.0:1>",
        "resemblance": 0.6,
        # Segmind's page shows 1; the open model's predict.py default (and a useful upscale) is 2.
        "scale_factor": 2.0,
        "scheduler": "DPM++ 3M SDE Karras",
        "sd_model": "juggernaut_reborn.safetensors [338b85bc4f]",
        "seed": 1337,
        "sharpen": 0.0,
        "tiling_height": 144,
        "tiling_width": 112,
    }
    assert len(expected) == 20
    assert {k: getattr(p, k) for k in expected} == expected
    # Clarity's hidden switches.
    assert (p.multistep_factor, p.pattern) == (0.8, False)


def test_seed_choices_match_the_seed_pages() -> None:
    assert len(SCHEDULERS) == 30 and len(set(SCHEDULERS)) == 30
    assert TILE_SIZES == (16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256)
    assert len(SD_MODELS) == 3 and HANDFIX_MODES == ("disabled", "hands_only", "image_and_hands")
    assert UpscaleParams.spec("output_format").choices == ("png", "jpg", "webp")


def test_creative_and_flux_knobs_follow_their_seeds() -> None:
    assert CreativeKnobs() == CreativeKnobs(
        creativity=2, resemblance=3, dynamic=0, fractality=1, style="portrait"
    )
    assert FluxKnobs() == FluxKnobs(creativity=3, lora_link="")
    for name in ("creativity", "resemblance", "dynamic", "fractality"):
        spec = UpscaleParams.spec(f"creative.{name}")
        assert (spec.kind, spec.minimum, spec.maximum) == (int, -10, 10)
    assert UpscaleParams.spec("creative.style").choices == ("default", "portrait", "anime")


# --- one validation test per field -----------------------------------------------------------
def _bad_values(name: str) -> list[object]:
    spec = UpscaleParams.spec(name)
    bad: list[object] = [[1]] if spec.kind is not str else [7, ["x"]]
    if not spec.nullable:
        bad.append(None)
    if spec.kind is bool:
        bad += [1, "yes"]
    elif spec.kind in (int, float):
        bad += ["3", True]
        if spec.kind is float:
            bad += [math.nan, math.inf]
        if spec.kind is int and spec.choices is None:
            bad.append(2.5)
        if spec.minimum is not None:
            bad.append(spec.minimum - (1 if spec.kind is int else 0.01))
        if spec.maximum is not None:
            bad.append(spec.maximum + (1 if spec.kind is int else 0.01))
    if spec.choices is not None:
        bad.append("not-a-choice" if spec.kind is str else 17)
    return bad


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_field_rejects_bad_values_naming_field_value_and_range(name: str) -> None:
    spec = UpscaleParams.spec(name)
    for value in _bad_values(name):
        with pytest.raises(ParamsError) as caught:
            UpscaleParams().replace(**{name: value})
        error = caught.value.errors[0]
        assert error.field == name
        assert error.value == value or (isinstance(value, float) and math.isnan(value))
        message = str(caught.value)
        assert name in message and repr(value) in message and spec.allowed() in message


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_field_accepts_its_whole_range(name: str) -> None:
    spec = UpscaleParams.spec(name)
    good: list[object] = []
    if spec.choices is not None:
        good += list(spec.choices)
    elif spec.kind is bool:
        good += [True, False]
    elif spec.kind is str:
        good += ["", "a longer value, with commas: and colons"]
    else:
        good += [spec.minimum, spec.maximum]
    if spec.nullable:
        good.append(None)
    for value in good:
        changed = UpscaleParams().replace(**{name: value})
        group, _, leaf = name.rpartition(".")
        got = getattr(getattr(changed, group), leaf) if group else getattr(changed, name)
        assert got == value
        assert type(got) is type(value) or (spec.kind is float and isinstance(got, float))


def test_nothing_is_clamped() -> None:
    with pytest.raises(ParamsError, match=r"creativity = 1\.01"):
        UpscaleParams(creativity=1.01)
    assert UpscaleParams(creativity=1).creativity == 1.0  # an int is converted, not clamped


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(ParamsError) as caught:
        UpscaleParams(creativity=2.0, tiling_width=100, seed=-1, output_format="gif")
    assert set(caught.value.fields) == {"creativity", "tiling_width", "seed", "output_format"}


def test_aliases_normalise_to_the_canonical_value() -> None:
    assert UpscaleParams(output_format="jpeg").output_format == "jpg"
    assert UpscaleParams(sd_model="flat2DAnimerge_v45Sharp").sd_model == SD_MODELS[2]
    assert UpscaleParams(sd_model="juggernaut_reborn.safetensors").sd_model == SD_MODELS[1]


# --- conversions ----------------------------------------------------------------------------
def _random_params(rng: random.Random) -> UpscaleParams:
    changes: dict[str, object] = {}
    for name, spec, _ in UpscaleParams.specs():
        if spec.choices is not None:
            changes[name] = rng.choice(spec.choices)
        elif spec.kind is bool:
            changes[name] = rng.random() < 0.5
        elif spec.kind is int:
            changes[name] = rng.randint(int(spec.minimum), int(spec.maximum))
        elif spec.kind is float:
            changes[name] = rng.uniform(spec.minimum, spec.maximum)
        else:
            changes[name] = rng.choice(["", "ünïcode ✓, «quoted»", 'a "b": c\nd'])
    return UpscaleParams().replace(**changes)


def test_dict_and_json_round_trips_are_exact() -> None:
    rng = random.Random(7)
    for params in [UpscaleParams()] + [_random_params(rng) for _ in range(50)]:
        data = params.to_dict()
        assert data["version"] == PARAMS_VERSION
        assert json.loads(json.dumps(data)) == data  # plain JSON-safe types only
        assert UpscaleParams.from_dict(data) == params
        assert UpscaleParams.from_json(params.to_json()) == params


def test_from_dict_fills_missing_fields_and_refuses_unknown_ones() -> None:
    assert UpscaleParams.from_dict({"creativity": 0.5}) == UpscaleParams(creativity=0.5)
    with pytest.raises(ParamsError, match="did you mean 'creativity'"):
        UpscaleParams.from_dict({"creativty": 0.5})
    with pytest.raises(ParamsError, match="did you mean 'fractality'"):
        UpscaleParams.from_dict({"creative": {"fractalty": 2}})


def test_from_dict_checks_the_version() -> None:
    with pytest.raises(ParamsError, match="newer Clarifier"):
        UpscaleParams.from_dict({"version": PARAMS_VERSION + 1})
    with pytest.raises(ParamsError, match="version"):
        UpscaleParams.from_dict({"version": "one"})
    with pytest.raises(ParamsError, match="mapping"):
        UpscaleParams.from_dict(["creativity", 0.3])  # type: ignore[arg-type]
    with pytest.raises(ParamsError, match="valid JSON"):
        UpscaleParams.from_json("{creativity: 0.3")


def test_replace_accepts_dotted_knobs_and_whole_groups() -> None:
    p = UpscaleParams().replace(**{"creative.fractality": 5, "flux.lora_link": "https://x/y"})
    assert p.creative.fractality == 5 and p.flux.lora_link == "https://x/y"
    q = p.replace(creative=CreativeKnobs(style="anime"))
    assert q.creative == CreativeKnobs(style="anime")
    with pytest.raises(ParamsError, match=r"creative\.fractality"):
        p.replace(**{"creative.fractality": 11})
    with pytest.raises(ParamsError, match="unknown parameter"):
        p.replace(**{"nope.x": 1})


def test_parse_value_reads_command_line_text() -> None:
    assert UpscaleParams.parse_value("creativity", "0.5") == 0.5
    assert UpscaleParams.parse_value("num_inference_steps", "20") == 20
    assert UpscaleParams.parse_value("num_inference_steps", "20.0") == 20
    assert UpscaleParams.parse_value("downscaling", "on") is True
    assert UpscaleParams.parse_value("pattern", "False") is False
    assert UpscaleParams.parse_value("seed", "random") is None
    assert UpscaleParams.parse_value("creative.style", "anime") == "anime"
    for name, text in [("creativity", "lots"), ("downscaling", "maybe"), ("seed", "1.5")]:
        with pytest.raises(ParamsError, match=name):
            UpscaleParams.parse_value(name, text)
    with pytest.raises(ParamsError, match="did you mean 'sharpen'"):
        UpscaleParams.parse_value("sharpn", "1")


# --- what the parameters mean ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("scale", "passes"),
    [
        (1, [1]),
        (1.5, [1.5]),
        (2, [2]),
        (2.5, [2, 1.25]),
        (3, [2, 1.5]),
        (4, [2, 2]),
        (6, [2, 2, 1.5]),
        (16, [2, 2, 2, 2]),
    ],
)
def test_scale_passes_follow_clarity(scale: float, passes: list[float]) -> None:
    assert scale_passes(scale) == pytest.approx(passes)


def test_later_passes_scale_creativity_and_bump_the_seed() -> None:
    passes = UpscaleParams(scale_factor=4).passes()
    assert [(s, round(c, 4), seed) for s, c, seed in passes] == [(2, 0.35, 1337), (2, 0.28, 1338)]
    assert UpscaleParams(scale_factor=3, seed=None).passes()[1][2] is None


def test_output_size_floors_every_pass_to_eight() -> None:
    assert UpscaleParams(scale_factor=4).output_size(1001, 777) == (4000, 3104)
    creative = UpscaleParams(scale_factor=3, mode="creative")
    assert creative.output_size(1001, 777) == (3000, 2328)  # 2000×1552, then ×1.5
    down = UpscaleParams(scale_factor=2, downscaling=True, downscaling_resolution=768)
    assert down.output_size(3000, 1500) == (1536, 768)
    with pytest.raises(ParamsError, match="at least 8"):
        UpscaleParams(scale_factor=1).output_size(5, 5)


def test_random_seed_is_resolved_once() -> None:
    p = UpscaleParams(seed=None).with_resolved_seed()
    assert isinstance(p.seed, int) and 0 <= p.seed < 2**32
    assert p.with_resolved_seed() is p


def test_creative_upscaler_mapping_is_anchored_on_the_open_defaults() -> None:
    neutral = UpscaleParams(creative=CreativeKnobs(0, 0, 0, 0, "default"))
    mapped = emulate_creative_upscaler(neutral)
    base = UpscaleParams()
    assert mapped.mode == "creative"
    assert (mapped.creativity, mapped.resemblance, mapped.dynamic) == (
        base.creativity,
        base.resemblance,
        base.dynamic,
    )
    assert (mapped.tiling_width, mapped.tiling_height, mapped.sd_model) == (
        base.tiling_width,
        base.tiling_height,
        base.sd_model,
    )
    for k in (-10, 10):
        extreme = emulate_creative_upscaler(
            UpscaleParams(creative=CreativeKnobs(k, k, k, k, "anime"))
        )
        assert 0.05 <= extreme.creativity <= 0.65 and 0.2 <= extreme.resemblance <= 1.6
        assert 1 <= extreme.dynamic <= 11 and extreme.sd_model == SD_MODELS[2]
    more_fractal = emulate_creative_upscaler(UpscaleParams(creative=CreativeKnobs(fractality=5)))
    assert more_fractal.tiling_width < base.tiling_width


def test_specs_describe_every_field_for_the_panels() -> None:
    groups = {spec.group for _, spec, _ in UpscaleParams.specs()}
    assert groups == {"essentials", "style", "advanced"}
    essentials = [n for n, s, _ in UpscaleParams.specs() if s.group == "essentials"]
    assert essentials[:6] == [
        "scale_factor",
        "creativity",
        "resemblance",
        "dynamic",
        "prompt",
        "seed",
    ]
    assert all(spec.help for _, spec, _ in UpscaleParams.specs())
