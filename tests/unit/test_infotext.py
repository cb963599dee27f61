"""A1111 infotext both ways: what Clarifier writes is what Clarity's A1111 writes, field for
field, and what A1111 (for a Clarity run or any other) wrote maps back onto the parameters.

The references are independent of the product code: a real Clarity infotext (the one the Clarity
README gives to reproduce its runs in A1111 v1.7 with Tiled Diffusion fbb24736 and ControlNet
416c345, and the ``params.txt`` its A1111 left in the repository), and a field splitter written
here from A1111's documented reading rules (the last line holds the parameters when it has at
least three ``Key: value`` pairs; a value is a JSON string or the text up to the next comma;
everything before ``Negative prompt:`` is the prompt)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import struct
from pathlib import Path

import pytest

from pipeline.metadata import (
    RunInfo,
    format_infotext,
    params_from_infotext,
    parse_infotext,
    parse_infotext_fields,
)
from pipeline.models.files import hash_file
from pipeline.params import SD_MODELS, UpscaleParams

JUGGERNAUT, EPICREALISM, FLAT2D = SD_MODELS[1], SD_MODELS[0], SD_MODELS[2]

# Clarity's README ("Run with A1111 webUI: use these params"), with the line breaks its A1111
# writes after the prompt and the negative prompt.
CLARITY = (
    "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>\n"
    "Negative prompt: (worst quality, low quality, normal quality:2) JuggernautNegative-neg\n"
    "Steps: 18, Sampler: DPM++ 3M SDE Karras, CFG scale: 6.0, Seed: 1337, Size: 1024x1024, "
    "Model hash: 338b85bc4f, Model: juggernaut_reborn, Denoising strength: 0.35, "
    "Tiled Diffusion upscaler: 4x-UltraSharp, Tiled Diffusion scale factor: 2, "
    'Tiled Diffusion: {"Method": "MultiDiffusion", "Tile tile width": 112, "Tile tile height": '
    '144, "Tile Overlap": 4, "Tile batch size": 8, "Upscaler": "4x-UltraSharp", "Upscale '
    'factor": 2, "Keep input size": true}, ControlNet 0: "Module: tile_resample, Model: '
    "control_v11f1e_sd15_tile, Weight: 0.6, Resize Mode: 1, Low Vram: False, Processor Res: "
    "512, Threshold A: 1, Threshold B: 1, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: "
    'True, Control Mode: 1, Hr Option: HiResFixOption.BOTH, Save Detected Map: False", '
    'Lora hashes: "more_details: 3b8aa1d351ef, SDXLrender_v2.0: 3925cf4759af"'
)
# The params.txt Clarity's A1111 v1.7 wrote for its warm-up txt2img call.
PARAMS_TXT = (
    "cat <lora:more_details:5>\nSteps: 50, Sampler: Euler, CFG scale: 7.0, Seed: 803715625, "
    "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Lora hashes: "more_details: 3b8aa1d351ef", Version: v1.7.0'
)
# The engine's models for a default Clarity run (hashes as Clarity's own files have them).
CLARITY_MODELS = {
    "checkpoint": "juggernaut_reborn.safetensors",
    "checkpoint_hash": "338b85bc4f",
    "vae": "vae-ft-mse-840000-ema-pruned.safetensors",
    "controlnet": "control_v11f1e_sd15_tile.pth",
    "upscaler": "4x-UltraSharp",
    "lora:more_details": "0.5 [3b8aa1d351ef]",
    "lora:SDXLrender_v2.0": "1 [3925cf4759af]",
}
CLARIFIER_KEYS = {"Scale", "Mode", "Engine", "Version", "Clarifier"}


# --- an independent A1111 v1.7 reader, from the documented format ------------------------------
_A1111_PAIR = re.compile(
    r"""
    \s*
    ( [^\W] (?: \w | [ /-] )+ )   # key: a word character, then words, spaces, "/" or "-"
    : \s*
    ( " (?: \\. | [^"\\] )+ "     # value: a JSON string ...
    | [^,]* )                     # ... or the text up to the next comma
    (?: , | \Z )
    """,
    re.VERBOSE,
)


def a1111_split(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(_A1111_PAIR.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _A1111_PAIR.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        fields[key] = value
    return fields


def controlnet_unit(text: str) -> dict[str, str]:
    """The ControlNet extension's reading of a unit: items split at commas, then at ": "."""
    unit = {}
    for item in text.split(","):
        key, value = item.strip().split(": ")  # more or fewer parts: the extension gives up
        unit["_".join(word.lower() for word in key.split(" "))] = value
    return unit


def clarity_run(extra_models: dict[str, str] | None = None) -> RunInfo:
    return RunInfo(
        params=UpscaleParams(mode="creative", upscaler="4x-UltraSharp"),
        engine="local/creative",
        models={**CLARITY_MODELS, **(extra_models or {})},
        source_size=(512, 512),
        output_size=(1024, 1024),
        clarifier_version="0.1.0",
    )


def without_record(text: str, keys: tuple[str, ...] = ("Clarifier",)) -> str:
    """The text with Clarifier's own keys taken out of the last line."""
    head, _, last = text.rpartition("\n")
    kept = [f"{k}: {v}" for k, v in _raw_pairs(last) if k not in keys]
    return (head + "\n" if head else "") + ", ".join(kept)


def _raw_pairs(line: str) -> list[tuple[str, str]]:
    # Split our own line at the top-level commas: strings and the Tiled Diffusion object stay.
    pairs, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(line):
        c = line[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif c == "," and depth == 0:
            pairs.append(line[start:i])
            start = i + 1
        i += 1
    pairs.append(line[start:])
    split = [p.strip().partition(": ") for p in pairs]
    return [(key, value) for key, _, value in split]


# --- writing: what Clarity's A1111 writes --------------------------------------------------------
def test_a_clarity_run_is_written_as_clarity_writes_it() -> None:
    text = format_infotext(clarity_run())
    assert text.startswith(CLARITY + ", Scale: 2, Mode: creative, Engine: local/creative, ")
    ours, theirs = a1111_split(text), a1111_split(CLARITY)
    assert {k: v for k, v in ours.items() if k not in CLARIFIER_KEYS} == theirs
    assert list(ours)[: len(theirs)] == list(theirs)  # A1111's field order
    # A1111 v1.7 cuts Tiled Diffusion's object at its first comma, for Clarity's text as for ours.
    assert ours["Tiled Diffusion"] == '{"Method": "MultiDiffusion"'
    assert ours["Version"] == "clarifier 0.1.0"
    assert json.loads(ours["Clarifier"]) == clarity_run().to_dict()


def test_the_controlnet_unit_reads_as_the_extension_reads_it() -> None:
    unit = controlnet_unit(a1111_split(format_infotext(clarity_run()))["ControlNet 0"])
    assert unit == {
        "module": "tile_resample",
        "model": "control_v11f1e_sd15_tile",
        "weight": "0.6",
        "resize_mode": "1",  # Crop and Resize, as Clarity sends it
        "low_vram": "False",
        "processor_res": "512",
        "threshold_a": "1",
        "threshold_b": "1",
        "guidance_start": "0.0",
        "guidance_end": "1.0",
        "pixel_perfect": "True",
        "control_mode": "1",  # My prompt is more important
        "hr_option": "HiResFixOption.BOTH",
        "save_detected_map": "False",
    }


PROMPTS = [
    "plain words",
    "portrait, style: anime, mood: calm",
    'commas, colons: and "quotes", a \\ backslash',
    "ünïcode ✓ 日本語, (emphasis:1.2)",
    "first line\nsecond: line, with: colons, and: three",
    "",
]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("negative", ["", "ugly, blurry", "two\nlines: of, negative: text"])
def test_a1111_splits_what_clarifier_writes_field_for_field(prompt: str, negative: str) -> None:
    params = UpscaleParams(
        mode="creative",
        prompt=prompt,
        negative_prompt=negative,
        seed=4_294_967_295,
        scale_factor=3,
        creativity=0.45,
        resemblance=1.25,
        dynamic=7.5,
        num_inference_steps=30,
        scheduler="DPM++ 2M SDE Heun Exponential",
        tiling_width=64,
        tiling_height=96,
        sd_model=EPICREALISM,
        upscaler="/models/ESRGAN/4x-UltraSharp.pth",
        noise_source="cpu",
    )
    models = {**CLARITY_MODELS, "checkpoint": "epicrealism_naturalSinRC1VAE.safetensors"}
    info = RunInfo(params, "local/creative", models, (640, 480), (1920, 1440), "0.1.0")
    fields = a1111_split(format_infotext(info))
    assert (fields["Prompt"], fields["Negative prompt"]) == (prompt, negative)
    assert {k: fields[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size")} == {
        "Steps": "30",
        "Sampler": "DPM++ 2M SDE Heun Exponential",
        "CFG scale": "7.5",
        "Seed": "4294967295",
        "Size": "1920x1440",
    }
    assert fields["Model"] == "epicrealism_naturalSinRC1VAE"
    assert (fields["Denoising strength"], fields["RNG"]) == ("0.45", "CPU")
    assert fields["Tiled Diffusion upscaler"] == "4x-UltraSharp"
    assert fields["Tiled Diffusion scale factor"] == "2"  # the first of Clarity's passes (2, 1.5)
    assert controlnet_unit(fields["ControlNet 0"])["weight"] == "1.25"
    assert fields["Scale"] == "3" and fields["Mode"] == "creative"
    assert RunInfo.from_dict(json.loads(fields["Clarifier"])) == info
    # The Tiled Diffusion object, read whole, holds the tile size and the pass's factor.
    group = json.loads(parse_infotext_fields(format_infotext(info))["Tiled Diffusion"])
    assert (group["Tile tile width"], group["Tile tile height"], group["Upscale factor"]) == (
        64,
        96,
        2,
    )


def test_a_faithful_run_is_written_as_a1111_extras_writes_an_upscale() -> None:
    params = UpscaleParams(scale_factor=3.5, upscaler="realesrgan-x4plus-anime", seed=7)
    info = RunInfo(params, "local/faithful", {"upscaler": "realesrgan-x4plus-anime"}, None, None)
    fields = a1111_split(format_infotext(info))
    assert fields["Prompt"] == "" and "Steps" not in fields and "ControlNet 0" not in fields
    assert fields["Postprocess upscale by"] == "3.5"
    assert fields["Postprocess upscaler"] == "realesrgan-x4plus-anime"


# --- hashes: only when known, in A1111's forms ---------------------------------------------------
def test_hashes_are_written_only_when_known_for_the_file_that_ran() -> None:
    no_hash = {k: v for k, v in CLARITY_MODELS.items() if k != "checkpoint_hash"}
    local = RunInfo(UpscaleParams(mode="creative"), "local/creative", no_hash)
    assert "Model hash" not in parse_infotext_fields(format_infotext(local))

    def remote(params: UpscaleParams) -> dict[str, str]:
        info = RunInfo(params, "replicate/clarity-upscaler", {"remote": "clarity-upscaler"})
        return parse_infotext_fields(format_infotext(info))

    # A hosted Clarity runs the checkpoint its model list names with that hash.
    assert remote(UpscaleParams(mode="creative"))["Model hash"] == "338b85bc4f"
    assert "Model hash" not in remote(UpscaleParams(mode="creative", sd_model=FLAT2D))
    custom = remote(UpscaleParams(mode="creative", custom_sd_model="https://x/mine.safetensors"))
    assert "Model hash" not in custom and custom["Model"] == "mine"
    assert "Lora hashes" not in remote(UpscaleParams(mode="creative"))
    odd = clarity_run({"lora:odd:na,me": "1 [0123456789ab]", "lora:short": "1 [abc]"})
    hashes = parse_infotext_fields(format_infotext(odd))["Lora hashes"]
    assert (
        hashes == "more_details: 3b8aa1d351ef, SDXLrender_v2.0: 3925cf4759af, oddname: 0123456789ab"
    )


def _safetensors(path: Path, metadata: dict[str, str]) -> bytes:
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = {
        "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]},
        "__metadata__": metadata,
    }
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return data


def test_the_engine_hashes_are_a1111s(tmp_path: Path) -> None:
    """A1111's Model hash is the first 10 hex digits of the file's sha256; its Lora hash the first
    12 of the kohya "addnet" hash: the sha256 of what follows the safetensors header (Clarity's
    cache.json: more_details' addnet hash 3b8aa1d351efcbf8…, its README: 3b8aa1d351ef)."""
    from pipeline.diffusion.sd_files import addnet_hash

    lora = tmp_path / "more.safetensors"
    tensors = _safetensors(lora, {"ss_output_name": "more"})
    hashes = hash_file(lora)
    assert hashes.sha256 == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert hashes.short == hashes.sha256[:10]
    assert hashes.addnet is not None and hashes.addnet != hashes.sha256
    assert hashes.addnet == hashlib.sha256(tensors).hexdigest()
    assert addnet_hash(lora) == hashes.addnet[:12]
    _safetensors(lora, {"ss_output_name": "renamed", "note": "edited"})  # metadata only
    assert hash_file(lora).addnet == hashes.addnet and hash_file(lora).sha256 != hashes.sha256


# --- reading: every parameter back ----------------------------------------------------------------
ODD_BASE = UpscaleParams(
    mode="faithful",
    scale_factor=4,
    seed=1,
    tiling_width=64,
    tiling_height=64,
    resemblance=1.5,
    creativity=0.9,
    dynamic=3,
    prompt="x",
    negative_prompt="y",
    num_inference_steps=5,
    scheduler="Euler",
    sd_model=FLAT2D,
    upscaler="realesr-animevideov3",
    noise_source="cpu",
    sharpen=2.5,
)


def test_a_clarity_infotext_restores_that_runs_settings() -> None:
    params, notes = params_from_infotext(CLARITY, ODD_BASE)
    assert notes == []
    assert params == ODD_BASE.replace(
        mode="creative",
        prompt=UpscaleParams().prompt,  # Clarity's defaults are Clarifier's
        negative_prompt=UpscaleParams().negative_prompt,
        num_inference_steps=18,
        scheduler="DPM++ 3M SDE Karras",
        dynamic=6.0,
        seed=1337,
        sd_model=JUGGERNAUT,
        creativity=0.35,
        resemblance=0.6,
        tiling_width=112,
        tiling_height=144,
        upscaler="4x-UltraSharp",
        scale_factor=2,
        noise_source="gpu",  # no RNG field: A1111's default, the GPU
    )  # and sharpen, which the infotext does not name, stays as it was
    info = parse_infotext(CLARITY)
    assert info is not None and info.engine == "a1111" and info.output_size == (1024, 1024)
    assert info.models == {"checkpoint": "juggernaut_reborn", "checkpoint_hash": "338b85bc4f"}


ROUND_TRIPS = [
    UpscaleParams(mode="creative"),
    UpscaleParams(mode="creative", upscaler="4x-UltraSharp", negative_prompt=""),
    UpscaleParams(
        mode="creative",
        prompt="a: b, c\nsecond: line, x: y, z: w",
        negative_prompt="neg, one\nneg: two",
        seed=0,
        scale_factor=4,
        creativity=0.5,
        resemblance=1.25,
        dynamic=7.5,
        num_inference_steps=30,
        scheduler="DPM2 a Karras",
        tiling_width=256,
        tiling_height=16,
        sd_model=EPICREALISM,
        upscaler="4x-UltraSharp",
        noise_source="cpu",
    ),
    UpscaleParams(mode="creative", sd_model=FLAT2D, scale_factor=1.5, seed=42),
    UpscaleParams(scale_factor=3.5, upscaler="realesrgan-x4plus-anime", seed=7),
]


@pytest.mark.parametrize("params", ROUND_TRIPS)
def test_clarifier_writes_and_reads_back_identical_params(params: UpscaleParams) -> None:
    info = RunInfo(params, f"local/{params.mode}", {"upscaler": params.upscaler}, None, (64, 64))
    text = format_infotext(info)
    assert params_from_infotext(text, ODD_BASE) == (params, [])  # the exact record
    assert parse_infotext(text) == info
    # Without the record, the A1111 fields alone give the same parameters.
    assert params_from_infotext(without_record(text)) == (params, [])


def test_a_run_without_a_seed_round_trips_through_the_record() -> None:
    params = UpscaleParams(mode="creative", seed=None)  # a provider's model that takes none
    text = format_infotext(RunInfo(params, "segmind/clarity-upscaler"))
    assert "Seed" not in a1111_split(text) and params_from_infotext(text) == (params, [])


@pytest.mark.parametrize("params", [p for p in ROUND_TRIPS if p.mode == "creative"])
def test_the_a1111_fields_alone_restore_a_single_pass_run(params: UpscaleParams) -> None:
    if params.scale_factor > 2:  # A1111's fields describe one of Clarity's ×2 passes
        params = params.replace(scale_factor=2)
    info = RunInfo(params, "local/creative", {"upscaler": params.upscaler}, None, (64, 64))
    bare = without_record(format_infotext(info), tuple(CLARIFIER_KEYS))
    assert not set(a1111_split(bare)) & CLARIFIER_KEYS
    assert params_from_infotext(bare) == (params, [])


def test_a_multi_pass_run_read_from_a1111_fields_is_one_pass() -> None:
    params = UpscaleParams(mode="creative", scale_factor=4)
    bare = without_record(
        format_infotext(RunInfo(params, "local/creative")), ("Clarifier", "Scale")
    )
    assert params_from_infotext(bare)[0].scale_factor == 2


# --- prompts are never split into keys ------------------------------------------------------------
@pytest.mark.parametrize(
    "caption",
    ["portrait, style: anime, mood: calm", "a: b", "one, two", "style: anime\nmood: calm, a: b"],
)
def test_a_caption_stays_a_prompt(caption: str) -> None:
    assert parse_infotext_fields(caption) == {"Prompt": caption}
    assert a1111_split(caption)["Prompt"] == caption
    assert parse_infotext(caption) is None
    params, notes = params_from_infotext(caption, ODD_BASE)  # as A1111 pastes a bare prompt
    assert params == ODD_BASE.replace(prompt=caption)
    assert notes == ["no parameters line: only the prompt was taken"]


def test_a_prompt_line_with_colons_above_the_parameters_stays_prompt() -> None:
    text = (
        "portrait, style: anime, mood: calm\nx: 1, y: 2, z: 3\nSteps: 20, Sampler: Euler, Seed: 3"
    )
    fields = parse_infotext_fields(text)
    assert fields["Prompt"] == "portrait, style: anime, mood: calm\nx: 1, y: 2, z: 3"
    assert (fields["Steps"], fields["Seed"]) == ("20", "3") and "style" not in fields


def _random_line(rng: random.Random) -> str:
    keys = ["style", "mood", "Foo bar", "x-y/z", "Hires upscale", "Color"]
    values = ["anime", "calm, slow", 'say "hi"', "a: b", "日本", "1.5", "two\nlines", "back\\slash"]
    parts = []
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.2:
            parts.append(rng.choice(["just words", "(emphasis:1.1)", "<lora:x:0.5>"]))
            continue
        value = rng.choice(values)
        shown = (
            json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n\\') else value
        )
        parts.append(f"{rng.choice(keys)}: {shown}")
    return ", ".join(parts)


def test_prompt_and_parameters_are_told_apart_as_a1111_tells_them() -> None:
    rng = random.Random(1337)
    for _ in range(400):
        lines = [_random_line(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            lines.insert(1, "Negative prompt: " + _random_line(rng))
        text = "\n".join(lines).strip()
        if not text:
            continue
        ours, theirs = parse_infotext_fields(text), a1111_split(text)
        ours.setdefault("Prompt", "")
        ours.setdefault("Negative prompt", "")
        assert ours == theirs, text


@pytest.mark.parametrize(
    ("quoted", "value"),
    [
        ('"say \\"hi\\", then go"', 'say "hi", then go'),
        ('"a \\\\ backslash, and\\na new line"', "a \\ backslash, and\na new line"),
        ('"ünï: \\u65e5"', "ünï: 日"),
        ('"unbalanced \\"', '"unbalanced \\"'),  # not a JSON string: kept as written
    ],
)
def test_quoted_values_are_unquoted_with_their_escapes(quoted: str, value: str) -> None:
    text = f"p\nSteps: 20, Note: {quoted}, Seed: 5, Sampler: Euler"
    fields = parse_infotext_fields(text)
    assert fields["Note"] == value == a1111_split(text)["Note"]
    assert (fields["Seed"], fields["Sampler"]) == ("5", "Euler")


# --- reading A1111's variants ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sampler", "schedule", "label"),
    [
        ("DPM++ 3M SDE Karras", None, "DPM++ 3M SDE Karras"),  # v1.7: one label
        ("DPM++ 2M", None, "DPM++ 2M"),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),  # 1.9 on: sampler + schedule type
        ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),  # 1.9's default for DPM++ 2M
        ("DPM++ 2M", "Uniform", "DPM++ 2M"),  # the model's own sigmas: v1.7's plain label
        ("DPM++ 3M SDE", "Automatic", "DPM++ 3M SDE Exponential"),
        ("DPM++ 3M SDE", "Karras", "DPM++ 3M SDE Karras"),
        ("DPM++ 2M SDE", "exponential", "DPM++ 2M SDE Exponential"),  # v1.7's own setting
        ("DPM2 a", "Automatic", "DPM2 a Karras"),
        ("Euler a", "Automatic", "Euler a"),
        ("Restart", "Automatic", "Restart"),
        ("DPM++ 2M Karras", "Automatic", "DPM++ 2M Karras"),
        ("Euler", "Karras", None),
        ("Restart", "Uniform", None),
        ("DPM++ 2M", "Align Your Steps", None),
        ("DPM++ 2M", "SGM Uniform", None),
    ],
)
def test_sampler_and_schedule_type(sampler: str, schedule: str | None, label: str | None) -> None:
    text = f"p\nSteps: 20, Sampler: {sampler}, " + (
        f"Schedule type: {schedule}, " if schedule else ""
    )
    params, notes = params_from_infotext(text + "CFG scale: 7")
    if label is None:
        assert params.scheduler == UpscaleParams().scheduler
        assert len(notes) == 1 and sampler in notes[0]
    else:
        assert (params.scheduler, notes) == (label, [])


@pytest.mark.parametrize(
    ("field", "source", "noted"),
    [("", "gpu", False), ("RNG: CPU, ", "cpu", False), ("RNG: NV, ", "gpu", False)],
)
def test_the_noise_source_both_ways(field: str, source: str, noted: bool) -> None:
    params, notes = params_from_infotext(f"p\nSteps: 20, Seed: 1, {field}CFG scale: 7", ODD_BASE)
    assert params.noise_source == source and bool(notes) == noted
    written = format_infotext(RunInfo(params.replace(mode="creative"), "local/creative"))
    assert ("RNG: CPU" in written) == (source == "cpu")
    assert "RNG: GPU" not in written
    _params, notes = params_from_infotext("p\nSteps: 20, RNG: Quantum, Seed: 1")
    assert any("RNG: Quantum" in n for n in notes)


@pytest.mark.parametrize(
    ("fields", "model", "noted"),
    [
        ("Model: epicrealism_naturalSinRC1VAE", EPICREALISM, ""),
        ("Model hash: 84d76a0328", EPICREALISM, ""),
        ("Model: flat2DAnimerge_v45Sharp", FLAT2D, ""),
        ("Model: juggernaut_reborn.safetensors [338b85bc4f]", JUGGERNAUT, ""),
        ("Model hash: 84d76a0328, Model: juggernaut_reborn", EPICREALISM, "has the hash"),
        ("Model hash: 0123456789, Model: juggernaut_reborn", JUGGERNAUT, "another file"),
        ("Model hash: 6ce0161689, Model: v1-5-pruned-emaonly", FLAT2D, "not one"),
        ("Model: custom-7d0e0c4e-0b6a", FLAT2D, "custom checkpoint"),
    ],
)
def test_the_checkpoint_from_model_and_hash(fields: str, model: str, noted: str) -> None:
    params, notes = params_from_infotext(f"p\nSteps: 20, Seed: 1, {fields}", ODD_BASE)
    assert params.sd_model == model
    assert (noted in " ".join(notes)) if noted else notes == []


def test_clarity_warm_up_params_txt() -> None:
    params, notes = params_from_infotext(PARAMS_TXT, ODD_BASE)
    assert (params.prompt, params.num_inference_steps, params.scheduler) == (
        "cat <lora:more_details:5>",
        50,
        "Euler",
    )
    assert (params.dynamic, params.seed, params.negative_prompt) == (7.0, 803715625, "")
    assert params.mode == "faithful"  # txt2img: no denoising strength, the mode is left as is
    assert len(notes) == 1 and "v1-5-pruned-emaonly" in notes[0]


def test_what_cannot_be_mapped_is_kept_and_reported() -> None:
    text = (
        "a cat\nSteps: 500, Sampler: Euler a, CFG scale: 7, Seed: 9, Clip skip: 2, "
        "Hires upscale: 2, Face restoration: CodeFormer, Foo: bar, VAE: anything-v4.vae.pt, "
        'Version: v1.9.4, TI hashes: "neg: 0123456789ab", Lora hashes: "x: 0123456789ab"'
    )
    params, notes = params_from_infotext(text)
    assert (params.prompt, params.dynamic, params.seed) == ("a cat", 7.0, 9)
    assert params.num_inference_steps == 18  # out of range: kept, and said
    joined = "\n".join(notes)
    for part in ("Steps: 500", "Clip skip: 2", "Hires upscale: 2", "Face restoration: CodeFormer"):
        assert part in joined
    assert "Foo: bar" in joined and "VAE: anything-v4.vae.pt" in joined
    assert "Version" not in joined and "hashes" not in joined  # informational only
    assert params_from_infotext("a\nSteps: 20, Clip skip: 1, Seed: 2")[1] == []


def test_controlnet_and_tiled_diffusion_that_differ_from_claritys_are_reported() -> None:
    text = (
        'p\nSteps: 20, Denoising strength: 0.4, ControlNet 0: "Module: canny, Model: '
        "control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Just Resize, Control "
        'Mode: Balanced, Pixel Perfect: True, Guidance Start: 0.0, Guidance End: 0.8", '
        'ControlNet 1: "Module: depth, Model: x, Weight: 1", Tiled Diffusion: {"Method": '
        '"Mixture of Diffusers", "Tile tile width": 96, "Tile tile height": 80, "Tile Overlap": '
        '48, "NoiseInv": true}'
    )
    params, notes = params_from_infotext(text)
    assert (params.resemblance, params.tiling_width, params.tiling_height) == (1.0, 96, 80)
    assert (params.mode, params.creativity) == ("creative", 0.4)
    joined = "\n".join(notes)
    for part in (
        "Module: canny",
        "Model: control_v11p_sd15_canny",
        "Resize Mode: Just Resize",
        "Control Mode: Balanced",
        "Guidance End: 0.8",
        "ControlNet 1",
        "Method: Mixture of Diffusers",
        "Tile Overlap: 48",
        "NoiseInv: True",
    ):
        assert part in joined, part
    assert len(notes) == 9


def test_older_tiled_diffusion_and_a1111_upscaler_names() -> None:
    text = (
        "p\nSteps: 20, Denoising strength: 0.3, Tiled Diffusion: \"{'Method': 'MultiDiffusion', "
        "'Latent tile width': 96, 'Latent tile height': 64, 'Overlap': 4, 'Tile batch size': 4, "
        "'Upscaler': 'R-ESRGAN 4x+', 'Scale factor': 2.5, 'Keep input size': True}\""
    )
    params, notes = params_from_infotext(text)
    assert (params.tiling_width, params.tiling_height, params.scale_factor) == (96, 64, 2.5)
    assert params.upscaler == "realesrgan-x4plus" and notes == []
    cut = params_from_infotext('p\nSteps: 20, Seed: 1, Tiled Diffusion: {"Method": "Multi')[1]
    assert any("could not be read" in n for n in cut)
    lanczos = params_from_infotext("Postprocess upscale by: 2, Postprocess upscaler: Lanczos")
    assert lanczos[0].upscaler == UpscaleParams().upscaler and "Lanczos" in lanczos[1][0]
    extras = params_from_infotext("Postprocess upscale by: 4, Postprocess upscaler: 4x-UltraSharp")
    assert extras == (UpscaleParams(scale_factor=4, upscaler="4x-UltraSharp"), [])


def test_nothing_to_take_is_an_error() -> None:
    from pipeline.errors import ParamsError

    for text in ("", "   \n  "):
        with pytest.raises(ParamsError, match="infotext"):
            params_from_infotext(text)


def test_older_extension_forms_of_the_same_settings() -> None:
    # ControlNet before its units were serialised field by field; Tiled Diffusion's separate keys.
    legacy = (
        'p\nSteps: 20, Denoising strength: 0.3, ControlNet 0: "preprocessor: tile_resample, '
        "model: control_v11f1e_sd15_tile [a371b31b], weight: 0.8, starting/ending: (0, 1), "
        "resize mode: Crop and Resize, pixel perfect: True, control mode: My prompt is more "
        'important, preprocessor params: (512, 1, 64)", Tiled Diffusion method: MultiDiffusion, '
        "Tiled Diffusion tile width: 96, Tiled Diffusion tile height: 128"
    )
    params, notes = params_from_infotext(legacy)
    assert (params.resemblance, params.tiling_width, params.tiling_height) == (0.8, 96, 128)
    assert notes == []
    balanced = legacy.replace("pixel perfect: True", "pixel perfect: False").replace(
        "starting/ending: (0, 1)", "starting/ending: (0.2, 0.9)"
    )
    notes = params_from_infotext(balanced)[1]
    assert len(notes) == 2
    assert "Pixel Perfect: False" in notes[0] and "Starting/Ending: (0.2, 0.9)" in notes[1]
