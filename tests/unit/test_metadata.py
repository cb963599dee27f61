"""A1111-style infotext: exact round trips of Clarifier's own, best effort for A1111's."""

from __future__ import annotations

import pytest

from pipeline.metadata import (
    RunInfo,
    format_infotext,
    params_from_infotext,
    parse_infotext,
    parse_infotext_fields,
)
from pipeline.params import UpscaleParams

PROMPTS = [
    "plain",
    'commas, colons: and "quotes"',
    "portrait, style: anime, mood: calm",
    "ünïcode ✓ 日本語",
    "two\nlines",
    "  edge spaces ",
    "",
]


@pytest.mark.parametrize("mode", ["faithful", "creative"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_clarifier_infotext_round_trips_exactly(mode: str, prompt: str) -> None:
    info = RunInfo(
        params=UpscaleParams(
            mode=mode, prompt=prompt, seed=123456789, scale_factor=3.5, noise_source="cpu"
        ),
        engine=f"local/{mode}",
        models={"upscaler": "realesrgan-x4plus", "upscaler_sha256": "ab" * 32},
        source_size=(640, 480),
        output_size=(2240, 1680),
        clarifier_version="0.1.0",
    )
    text = format_infotext(info)
    assert parse_infotext(text) == info
    assert params_from_infotext(text) == (info.params, [])
    fields = parse_infotext_fields(text)
    assert fields["Seed"] == "123456789" and fields["Size"] == "2240x1680"
    if mode == "creative":
        assert fields["Sampler"] == "DPM++ 3M SDE Karras" and fields["Denoising strength"] == "0.35"
        assert fields["RNG"] == "CPU" and fields.get("Prompt", "") == prompt.strip()


def test_a1111_infotext_maps_onto_the_shared_parameters() -> None:
    text = (
        "a cat, masterpiece\nNegative prompt: ugly, blurry\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, "
        'Model hash: abc, Denoising strength: 0.5, Lora hashes: "x: 1, y: 2", Version: v1.7.0'
    )
    info = parse_infotext(text)
    assert info is not None and info.engine == "a1111"
    p = info.params
    assert (p.prompt, p.negative_prompt) == ("a cat, masterpiece", "ugly, blurry")
    assert (p.num_inference_steps, p.scheduler, p.dynamic, p.seed, p.creativity, p.mode) == (
        20,
        "DPM++ 2M Karras",
        7.0,
        42,
        0.5,
        "creative",
    )


def test_out_of_range_or_damaged_values_do_not_lose_the_rest() -> None:
    info = parse_infotext("a dog\nSteps: 500, CFG scale: 7, Seed: 9")
    assert info is not None
    assert info.params.num_inference_steps == 18  # 500 is out of range: default kept
    assert (info.params.dynamic, info.params.seed) == (7.0, 9)
    damaged = 'Seed: 5, Mode: faithful, Clarifier: "{not json"'
    fallback = parse_infotext(damaged)
    assert fallback is not None and fallback.params.seed == 5


def test_text_without_parameters_gives_none() -> None:
    assert parse_infotext("") is None
    assert parse_infotext("just a caption, nothing else") is None
