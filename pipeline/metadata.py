"""What an output image says about how it was made, in A1111's "infotext" form, both ways.

Outputs carry a ``parameters`` text in the form Clarity's A1111 writes (v1.7, with the Tiled
Diffusion and ControlNet extensions Clarity pins), so A1111's PNG Info, civitai-style readers and
ComfyUI importers read it field by field::

    masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>
    Negative prompt: (worst quality, low quality, normal quality:2) JuggernautNegative-neg
    Steps: 18, Sampler: DPM++ 3M SDE Karras, CFG scale: 6.0, Seed: 1337, Size: 2048x2048,
    Model hash: 338b85bc4f, Model: juggernaut_reborn, Denoising strength: 0.35,
    Tiled Diffusion upscaler: 4x-UltraSharp, Tiled Diffusion scale factor: 2,
    Tiled Diffusion: {"Method": "MultiDiffusion", "Tile tile width": 112, ...},
    ControlNet 0: "Module: tile_resample, Model: control_v11f1e_sd15_tile, Weight: 0.6, ...",
    Lora hashes: "more_details: 3b8aa1d351ef, SDXLrender_v2.0: 3925cf4759af",
    Scale: 2, Mode: creative, Engine: local/creative, Version: clarifier 0.1.0,
    Clarifier: "{...the exact RunInfo as JSON...}"

(everything from ``Steps`` on is one line). The format: the prompt (any number of lines), a
``Negative prompt:`` line when there is one, and a last line of ``Key: value`` pairs joined by
``", "``, where a value holding a comma, colon, quote or line break is written as a JSON string
and a group of settings (Tiled Diffusion's) as a JSON object. A reader takes the last line as the
parameters only when it holds at least three such pairs, as A1111 does, so a prompt line such as
``portrait, style: anime, mood: calm`` stays a prompt.

Hashes are written only when known for the file that ran: ``Model hash`` is the first 10 hex
digits of the checkpoint's sha256, ``Lora hashes`` the first 12 of each LoRA's "addnet" hash (the
sha256 of the tensor data after the safetensors header), both computed and cached by the engine
(:mod:`pipeline.models.files`); a hash that is not known is left out rather than guessed.

The ``Clarifier`` key carries the exact :class:`RunInfo`, so reading Clarifier's own output gives
the very same :class:`~pipeline.params.UpscaleParams`. Infotext without it, written by A1111 for a
Clarity run or by any other A1111, is mapped onto every parameter Clarifier has
(:func:`params_from_infotext`); what has no Clarifier meaning is reported, never silently dropped.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import FieldError, ParamsError
from pipeline.params import SCHEDULERS, SD_MODELS, UpscaleParams, scale_passes

__all__ = [
    "RunInfo",
    "format_infotext",
    "params_from_infotext",
    "parse_infotext",
    "parse_infotext_fields",
]

_KEY = "Clarifier"
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class RunInfo:
    """Everything needed to reproduce (or explain) one output image."""

    params: UpscaleParams
    engine: str  # "local/faithful", "local/creative", "segmind/clarity-upscaler", ...
    models: Mapping[str, str] = field(default_factory=dict)  # role → model name
    source_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    clarifier_version: str = ""

    @property
    def seed(self) -> int | None:
        return self.params.seed

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_dict(),
            "engine": self.engine,
            "models": dict(self.models),
            "source_size": list(self.source_size) if self.source_size else None,
            "output_size": list(self.output_size) if self.output_size else None,
            "clarifier_version": self.clarifier_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        def size(v: Any) -> tuple[int, int] | None:
            return (int(v[0]), int(v[1])) if v else None

        return cls(
            params=UpscaleParams.from_dict(data["params"]),
            engine=str(data.get("engine", "")),
            models=dict(data.get("models") or {}),
            source_size=size(data.get("source_size")),
            output_size=size(data.get("output_size")),
            clarifier_version=str(data.get("clarifier_version", "")),
        )


# --- what Clarity sends with every pass (predict.py), as its A1111 writes it --------------------
_TD_METHOD = "MultiDiffusion"
_TD_OVERLAP = 4
_TD_BATCH = 8
_CN_MODULE = "tile_resample"
_CN_MODEL = "control_v11f1e_sd15_tile"
# The rest of Clarity's ControlNet unit, in the order the extension lists a unit's fields. Clarity
# sends resize and control mode as the numbers 1 ("Crop and Resize", "My prompt is more
# important"), and the extension writes them as it got them.
_CN_REST: tuple[tuple[str, str], ...] = (
    ("Resize Mode", "1"),
    ("Low Vram", "False"),
    ("Processor Res", "512"),
    ("Threshold A", "1"),
    ("Threshold B", "1"),
    ("Guidance Start", "0.0"),
    ("Guidance End", "1.0"),
    ("Pixel Perfect", "True"),
    ("Control Mode", "1"),
    ("Hr Option", "HiResFixOption.BOTH"),
    ("Save Detected Map", "False"),
)


# --- writing ----------------------------------------------------------------------------------
def _quote(value: str) -> str:
    # A1111 quotes a value that would break the line (comma, colon, line break) as a JSON string;
    # a quote or edge whitespace is quoted too, so reading gives back exactly what was written.
    if any(c in value for c in ',:"\n') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def _float(x: float) -> str:
    """A1111 prints its float settings the Python way: ``6.0``, ``0.35``."""
    return repr(float(x))


def _num(x: float) -> str:
    """A number that Clarity passes as given: ``2`` for whole values, ``1.5`` otherwise."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _as_json_number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _stem(name: str) -> str:
    """A model's name as A1111 shows it: the file name without folders and model suffix."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for suffix in _MODEL_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _checkpoint_name(info: RunInfo) -> str:
    p = info.params
    name = info.models.get("checkpoint") or p.custom_sd_model or p.sd_model.split(" [")[0]
    return _stem(name.split(" [")[0])


def _model_hash(info: RunInfo) -> str | None:
    """The checkpoint's short hash when it is known for the file that ran."""
    known = str(info.models.get("checkpoint_hash", "")).lower()
    if len(known) >= 10 and _HEX.fullmatch(known):
        return known[:10]
    p = info.params
    if info.engine.startswith("local/") or p.custom_sd_model:
        return None  # a local file whose hash the engine did not report, or a custom one
    # A hosted Clarity runs the very checkpoint its own model list names with this hash.
    found = re.search(r"\[([0-9a-f]{10})\]$", p.sd_model)
    return found.group(1) if found else None


def _lora_hashes(models: Mapping[str, str]) -> str | None:
    """A1111's ``Lora hashes``: ``name: 12-hex addnet hash`` for each LoRA the engine applied."""
    items = []
    for role, value in models.items():
        if not role.startswith("lora:"):
            continue
        found = re.search(r"\[([0-9a-f]{12})\]\s*$", str(value))
        if found:  # A1111 drops ":" and "," from the name, as they would break the field
            name = role.removeprefix("lora:").replace(":", "").replace(",", "")
            items.append(f"{name}: {found.group(1)}")
    return ", ".join(items) or None


def _upscaler_name(info: RunInfo) -> str:
    return _stem(info.models.get("upscaler") or info.params.upscaler)


def _controlnet_unit(resemblance: float) -> str:
    fields = [("Module", _CN_MODULE), ("Model", _CN_MODEL), ("Weight", _float(resemblance))]
    return ", ".join(f"{k}: {v}" for k, v in (*fields, *_CN_REST))


def format_infotext(info: RunInfo) -> str:
    """The A1111-style ``parameters`` text for one output, in the order A1111 v1.7 writes its
    fields (its own, then the extensions', then the version), followed by Clarifier's keys."""
    p = info.params
    creative = p.mode == "creative"
    pairs: list[tuple[str, str | dict[str, Any]]] = []
    if creative:
        pairs += [
            ("Steps", str(p.num_inference_steps)),
            ("Sampler", p.scheduler),
            ("CFG scale", _float(p.dynamic)),
        ]
    if p.seed is not None:
        pairs.append(("Seed", str(p.seed)))
    if info.output_size:
        pairs.append(("Size", f"{info.output_size[0]}x{info.output_size[1]}"))
    upscaler = _upscaler_name(info)
    if creative:
        short = _model_hash(info)
        if short:
            pairs.append(("Model hash", short))
        pairs += [
            ("Model", _checkpoint_name(info)),
            ("Denoising strength", _float(p.creativity)),
        ]
        if p.noise_source != "gpu":  # A1111 names the source only when it is not the GPU
            pairs.append(("RNG", p.noise_source.upper()))
        first = scale_passes(p.scale_factor)[0]  # each Clarity pass is one A1111 img2img call
        tiled: dict[str, Any] = {
            "Method": _TD_METHOD,
            "Tile tile width": p.tiling_width,
            "Tile tile height": p.tiling_height,
            "Tile Overlap": _TD_OVERLAP,
            "Tile batch size": _TD_BATCH,
            "Upscaler": upscaler,
            "Upscale factor": _as_json_number(first),
            "Keep input size": True,
        }
        pairs += [
            ("Tiled Diffusion upscaler", upscaler),
            ("Tiled Diffusion scale factor", _num(first)),
            ("Tiled Diffusion", tiled),
            ("ControlNet 0", _controlnet_unit(p.resemblance)),
        ]
        loras = _lora_hashes(info.models)
        if loras:
            pairs.append(("Lora hashes", loras))
    else:  # A1111's extras tab writes these for a plain upscale
        pairs += [
            ("Postprocess upscale by", _num(p.scale_factor)),
            ("Postprocess upscaler", upscaler),
        ]
    pairs += [("Scale", _num(p.scale_factor)), ("Mode", p.mode), ("Engine", info.engine)]
    if info.clarifier_version:
        pairs.append(("Version", f"clarifier {info.clarifier_version}"))
    pairs.append((_KEY, json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))))

    def text(value: str | dict[str, Any]) -> str:
        # A group of settings is a JSON object, unquoted, as A1111 writes an extension's dict.
        return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else _quote(value)

    line = ", ".join(f"{k}: {text(v)}" for k, v in pairs if v != "")
    head = p.prompt if creative else ""
    if creative and p.negative_prompt:
        head += "\nNegative prompt: " + p.negative_prompt
    return f"{head}\n{line}".strip()


# --- splitting --------------------------------------------------------------------------------
# A pair as A1111 matches it: a key (a word character, then word characters, spaces, "-" or
# "/"), a colon, and a value: a JSON string right before a comma or the end, or else anything up
# to the next comma. The scanner below finds the same pairs as A1111's pattern does, in linear
# time (a long run of key characters with no colon after it is passed over once, not once per
# character), so a pasted wall of text cannot stall the window.
_WORD = re.compile(r"\w")
_KEY_TAIL = re.compile(r"[\w /-]*")
_SPACES = re.compile(r"\s*")
_NEGATIVE = "Negative prompt:"

# Keys that make even a line of one or two pairs parameters (A1111's extras tab writes two; an
# older Clarifier wrote its record alone). A prompt line is never made only of these.
_SHORT_LINE_KEYS = frozenset(
    {
        "Steps",
        "Sampler",
        "CFG scale",
        "Seed",
        "Denoising strength",
        "Postprocess upscale by",
        "Postprocess upscaler",
        "Postprocess upscaler 2",
        "Scale",
        "Mode",
        "Engine",
        _KEY,
    }
)


def _string_end(line: str, start: int) -> int:
    """The index after the JSON string opening at ``start``, or -1 when it does not close."""
    i = start + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            return i + 1
        i += 1
    return -1


def _bracket_end(line: str, start: int) -> int:
    """The index after the JSON-ish object or list opening at ``start``, or -1."""
    depth, i, quote = 0, start, ""
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _next_pair(line: str, end: int) -> int:
    """Where the next pair may start when a value ends at ``end``; -1 unless a comma or the end
    of the line follows at once."""
    if end == len(line):
        return end
    return end + 1 if 0 < end < len(line) and line[end] == "," else -1


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except ValueError:
            return raw  # A1111 keeps a string it cannot unquote as it is
        return value if isinstance(value, str) else raw
    return raw


def _value_at(line: str, start: int, objects: bool) -> tuple[str, int, bool]:
    """The value at ``start``, where the next pair may start, and whether reading objects
    still makes sense (after one that does not close, no later one can be read whole either
    way: so a line of unclosed braces costs one pass, not one per brace)."""
    if line.startswith('"', start):
        end = _string_end(line, start)
        nxt = _next_pair(line, end)
        if end > 0 and nxt >= 0:
            return _unquote(line[start:end]), nxt, objects
    elif objects and line[start : start + 1] in ("{", "["):
        end = _bracket_end(line, start)
        nxt = _next_pair(line, end)
        if end > 0 and nxt >= 0:
            return line[start:end], nxt, objects
        objects = end > 0
    comma = line.find(",", start)
    stop = len(line) if comma < 0 else comma
    return _unquote(line[start:stop].strip()), stop + 1, objects


def _scan(line: str, *, objects: bool) -> tuple[list[tuple[str, str]], bool]:
    """The pairs of a line, and whether the line is nothing but pairs. With ``objects``, a JSON
    object value (Tiled Diffusion's) is read whole, where A1111 cuts it at its first comma."""
    pairs: list[tuple[str, str]] = []
    only_pairs = True
    pos = 0
    while pos < len(line):
        word = _WORD.search(line, pos)
        if word is None:
            only_pairs = only_pairs and not line[pos:].strip()
            break
        start = word.start()
        tail = _KEY_TAIL.match(line, start + 1)
        end = tail.end() if tail else start + 1
        if end >= len(line) or line[end] != ":" or end - start < 2:
            only_pairs = False  # no key here, nor anywhere inside this run of key characters
            pos = end
            continue
        if line[pos:start].strip():
            only_pairs = False
        spaces = _SPACES.match(line, end + 1)
        value, pos, objects = _value_at(line, spaces.end() if spaces else end + 1, objects)
        pairs.append((line[start:end].strip(), value))
    return pairs, only_pairs


def _is_parameters_line(line: str) -> bool:
    pairs, only_pairs = _scan(line, objects=False)  # A1111 counts without reading objects
    if len(pairs) >= 3:
        return True
    return bool(pairs) and only_pairs and all(key in _SHORT_LINE_KEYS for key, _ in pairs)


def parse_infotext_fields(text: str) -> dict[str, str]:
    """Split infotext into ``{"Prompt", "Negative prompt", key: value, ...}`` as A1111 does.

    ``Prompt`` is there when the text has prompt lines, ``Negative prompt`` when it has that
    line; both keep their line breaks. Quoted values are unquoted; Tiled Diffusion's settings stay
    a JSON text."""
    lines = text.replace("\r\n", "\n").strip().split("\n")
    pairs: dict[str, str] = {}
    if _is_parameters_line(lines[-1]):
        pairs = dict(_scan(lines.pop(), objects=True)[0])
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        line = line.strip()
        if negative is None and line.startswith(_NEGATIVE):
            negative = [line.removeprefix(_NEGATIVE).strip()]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    result: dict[str, str] = {}
    if prompt and (pairs or any(prompt)):
        result["Prompt"] = "\n".join(prompt)
    if negative is not None:
        result["Negative prompt"] = "\n".join(negative)
    result.update(pairs)
    return result


# --- reading ----------------------------------------------------------------------------------
def _own_record(fields: Mapping[str, str]) -> RunInfo | None:
    if _KEY not in fields:
        return None
    try:
        return RunInfo.from_dict(json.loads(fields[_KEY]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, ParamsError):
        return None


def parse_infotext(text: str) -> RunInfo | None:
    """Read infotext back: exact for Clarifier's own, mapped for A1111's. None if neither."""
    fields = parse_infotext_fields(text)
    own = _own_record(fields)
    if own is not None:
        return own
    if not set(fields) - {"Prompt", "Negative prompt"}:
        return None  # a caption, not generation parameters
    reader = _Reader(fields)
    reader.read()
    if not reader.changes:
        return None
    params, _notes = reader.apply(UpscaleParams())
    models: dict[str, str] = {}
    if fields.get("Model"):
        models["checkpoint"] = fields["Model"]
    if fields.get("Model hash"):
        models["checkpoint_hash"] = fields["Model hash"]
    size = re.fullmatch(r"(\d+)x(\d+)", fields.get("Size", ""))
    return RunInfo(
        params=params,
        engine=fields.get("Engine") or "a1111",
        models=models,
        output_size=(int(size.group(1)), int(size.group(2))) if size else None,
    )


def params_from_infotext(
    text: str, base: UpscaleParams | None = None
) -> tuple[UpscaleParams, list[str]]:
    """The parameters an infotext describes, on top of ``base`` (the defaults when None), and
    notes on what it holds that could not be mapped.

    Clarifier's own infotext gives back its exact parameters. A1111's (a Clarity run's or any
    other) sets every parameter it has a field for: the prompts, steps, sampler (``Sampler``
    alone as A1111 v1.7 writes it, or with the ``Schedule type`` of later versions), CFG scale,
    seed, denoising strength, checkpoint (``Model`` and/or ``Model hash``), ControlNet weight,
    Tiled Diffusion's tile size, upscaler and scale, and the noise source (``RNG``); the rest of
    ``base`` is kept. A value out of range keeps ``base``'s and is noted. Raises
    :class:`~pipeline.errors.ParamsError` when the text holds nothing to take."""
    base = base if base is not None else UpscaleParams()
    fields = parse_infotext_fields(text) if text.strip() else {}
    own = _own_record(fields)
    if own is not None:
        return own.params, []
    if not fields or (set(fields) == {"Prompt"} and not fields["Prompt"]):
        raise ParamsError(FieldError("infotext", text[:80], "A1111-style generation parameters"))
    reader = _Reader(fields)
    reader.read()
    return reader.apply(base)


# Fields that describe a run without changing what Clarifier would do.
_INFORMATIONAL = frozenset(
    {
        "Size",
        "Version",
        "Engine",
        "Lora hashes",
        "TI hashes",
        "Hashes",
        "VAE hash",
        "Init image hash",
        "User",
        "Civitai resources",
        "Civitai metadata",
        "Tiled Diffusion batch size",
    }
)
_REASONS = {
    "Clip skip": "Clarity always uses CLIP skip 1",
    "VAE": "Clarity always uses vae-ft-mse-840000-ema-pruned",
    "Face restoration": "Clarity restores no faces",
    "Variation seed": "variation seeds are not supported",
    "Variation seed strength": "variation seeds are not supported",
    "Seed resize from": "variation seeds are not supported",
    "ENSD": "Clarity's samplers add no eta noise seed delta",
    "Eta": "Clarity's samplers use eta 1",
    "Tiling": "use the pattern switch for seamless textures",
    "Hires upscale": "hires fix is a txt2img step Clarity does not run",
    "Hires upscaler": "hires fix is a txt2img step Clarity does not run",
    "Hires steps": "hires fix is a txt2img step Clarity does not run",
    "Mask blur": "inpainting is not part of an upscale",
    "Inpaint area": "inpainting is not part of an upscale",
    "Masked area padding": "inpainting is not part of an upscale",
}
_A1111_UPSCALERS = {
    "R-ESRGAN 4x+": "realesrgan-x4plus",
    "R-ESRGAN 4x+ Anime6B": "realesrgan-x4plus-anime",
    "R-ESRGAN AnimeVideo": "realesr-animevideov3",
}
_NOT_ESRGAN = re.compile(r"(?i)none|lanczos|nearest|ldsr|scunet.*|swinir.*|latent.*")
# A1111 1.9+ "Automatic" schedule: each sampler's own default (its sd_samplers_kdiffusion list);
# samplers not listed use the model's own sigmas (what v1.7's plain labels run).
_AUTOMATIC_SCHEDULE = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 2S a": "Karras",
    "DPM++ 3M SDE": "Exponential",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "Restart": "Karras",
}
_SCHEDULES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
}
# Tiled Diffusion settings Clarity sends as constants (latent tile overlap and the rest).
_TD_EXPECTED: dict[str, object] = {
    "Method": _TD_METHOD,
    "Tile Overlap": _TD_OVERLAP,
    "Overlap": _TD_OVERLAP,
    "Latent tile overlap": _TD_OVERLAP,
    "Keep input size": True,
}
_RESIZE_CROP = {"1", "crop and resize", "resizemode.inner_fit"}
_CONTROL_PROMPT = {"1", "my prompt is more important", "controlmode.prompt"}


def _scheduler_label(sampler: str, schedule: str | None) -> str | None:
    """Clarity's sampler label (A1111 v1.7) for a sampler and, from A1111 1.9 on, its schedule."""
    sampler = sampler.strip()
    if schedule is None:
        return sampler if sampler in SCHEDULERS else None
    base, named = sampler, ""
    for suffix in ("Karras", "Exponential", "Polyexponential"):
        if base.endswith(" " + suffix):
            base, named = base[: -len(suffix) - 1], suffix
            break
    chosen = _SCHEDULES.get(schedule.strip().lower(), schedule.strip())
    if chosen == "Automatic":
        chosen = named or _AUTOMATIC_SCHEDULE.get(base, "Uniform")
    if chosen == "Uniform":
        label = None if base == "Restart" else base  # v1.7's Restart always runs Karras
    elif chosen == "Karras":
        label = base if base == "Restart" else f"{base} Karras"
    elif chosen == "Exponential":
        label = f"{base} Exponential"
    else:
        label = None
    return label if label in SCHEDULERS else None


def _sd_model_named(name: str) -> str | None:
    aliases = UpscaleParams.spec("sd_model").aliases
    name = name.split(" [")[0].strip()
    for candidate in (name, name + ".safetensors"):
        for known in (*SD_MODELS, *aliases):
            if candidate.lower() == known.lower():
                return known if known in SD_MODELS else aliases[known]
    return None


def _sd_model_hashed(short: str) -> str | None:
    for model in SD_MODELS:
        if model.endswith(f"[{short.lower()[:10]}]") and len(short) >= 10:
            return model
    return None


def _number(text: object) -> float | None:
    try:
        return float(str(text).strip())
    except ValueError:
        return None


def _split_unit(text: str) -> dict[str, str]:
    """A ControlNet unit's ``Key: value`` items (lower-case keys), commas in brackets kept."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth <= 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    unit: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if sep:
            unit[key.strip().lower()] = value.strip()
    return unit


def _settings_group(text: str) -> dict[str, Any] | None:
    """Tiled Diffusion's settings: a JSON object, or the Python dict older versions wrote."""
    if len(text) > 20_000:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return data if isinstance(data, dict) else None


class _Reader:
    """Maps A1111's fields onto parameter changes, noting what has no Clarifier meaning."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = fields
        self.changes: list[tuple[str, Any, str]] = []  # (parameter, value, the field it came from)
        self.notes: list[str] = []
        self.used: set[str] = {"Prompt", "Negative prompt"}
        self.grouped_upscaler: tuple[str, str] | None = None  # from Tiled Diffusion's settings
        self.grouped_scale: tuple[str, str] | None = None

    def take(self, key: str) -> str | None:
        self.used.add(key)
        return self.fields.get(key)

    def set(self, name: str, value: Any, source: str) -> None:
        self.changes = [c for c in self.changes if c[0] != name]
        self.changes.append((name, value, source))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # --- the whole text ---------------------------------------------------------------------
    def read(self) -> None:
        f = self.fields
        if _KEY in f:
            self.used.add(_KEY)
            self.note("Clarifier: the exact record is damaged; the A1111 fields were read instead")
        generation = any(k in f for k in ("Steps", "Sampler", "CFG scale", "Denoising strength"))
        if not set(f) - {"Prompt", "Negative prompt"}:
            self.note("no parameters line: only the prompt was taken")
        if "Prompt" in f or generation:
            self.set("prompt", f.get("Prompt", ""), "the prompt")
        if "Negative prompt" in f or generation:  # A1111 leaves the line out when it is empty
            self.set("negative_prompt", f.get("Negative prompt", ""), "the negative prompt")
        self._numbers()
        self._sampler()
        self._model()
        self._tiled_diffusion()
        self._controlnet()
        self._upscale(generation)
        self._noise(generation)
        self._rest()

    def apply(self, base: UpscaleParams) -> tuple[UpscaleParams, list[str]]:
        params = base
        for name, value, source in self.changes:  # one by one: a bad value does not lose the rest
            try:
                params = params.replace(**{name: value})
            except ParamsError as exc:
                allowed = "; ".join(e.allowed for e in exc.errors)
                self.note(f"{source} is not allowed ({allowed}); {name} left as is")
        return params, list(self.notes)

    def _numbers(self) -> None:
        kinds = (
            ("Steps", "num_inference_steps", int),
            ("CFG scale", "dynamic", float),
            ("Seed", "seed", int),
            ("Denoising strength", "creativity", float),
            ("ControlNet weight", "resemblance", float),  # older Clarifier outputs
        )
        for key, name, kind in kinds:
            text = self.take(key)
            if text is None:
                continue
            number = _number(text)
            if number is None or (kind is int and not number.is_integer()):
                self.note(f"{key}: {text} is not a number; {name} left as is")
                continue
            self.set(name, int(number) if kind is int else number, f"{key}: {text}")
        if "Denoising strength" in self.fields:
            self.set("mode", "creative", "Denoising strength")

    def _sampler(self) -> None:
        sampler, schedule = self.take("Sampler"), self.take("Schedule type")
        if sampler is None:
            return
        label = _scheduler_label(sampler, schedule)
        if label is None:
            shown = f"Sampler: {sampler}" + (f", Schedule type: {schedule}" if schedule else "")
            self.note(f"{shown} is not one of Clarity's samplers; scheduler left as is")
            return
        self.set("scheduler", label, f"Sampler: {sampler}")

    def _model(self) -> None:
        name, short = self.take("Model"), (self.take("Model hash") or "").strip().lower()
        if not name and not short:
            return
        by_hash = _sd_model_hashed(short) if short else None
        by_name = _sd_model_named(name) if name else None
        chosen = by_hash or by_name
        shown = f"Model: {name}" if name else f"Model hash: {short}"
        if chosen is None:
            what = "a custom checkpoint" if name and name.startswith("custom-") else "not one"
            self.note(
                f"{shown} is {what} of Clarity's checkpoints (set custom_sd_model to its file or "
                "link to use it); sd_model left as is"
            )
            return
        self.set("sd_model", chosen, shown)
        if by_hash and by_name and by_hash != by_name:
            self.note(f"Model: {name} has the hash of {by_hash}; that checkpoint was taken")
        elif by_name and short and len(short) >= 10 and not by_hash and "[" in by_name:
            self.note(
                f"Model hash: {short} is not the hash of {by_name}: the run used another file"
            )

    def _tiled_diffusion(self) -> None:
        text = self.take("Tiled Diffusion")
        for key, name in (
            ("Tiled Diffusion tile width", "tiling_width"),
            ("Tiled Diffusion tile height", "tiling_height"),
        ):  # written as separate fields by older versions of the extension
            value = self.take(key)
            number = _number(value) if value is not None else None
            if number is not None:
                self.set(name, number, f"{key}: {value}")
        method = self.take("Tiled Diffusion method")
        if method is not None and method != _TD_METHOD:
            self.note(f"Tiled Diffusion method: {method} (Clarity runs {_TD_METHOD}; not mapped)")
        if text is None:
            return
        group = _settings_group(text)
        if group is None:
            self.note(f"Tiled Diffusion: {text[:60]} could not be read")
            return
        for key, value in group.items():
            shown = f"Tiled Diffusion {key}: {value}"
            if key in ("Tile tile width", "Latent tile width"):
                self.set("tiling_width", value, shown)
            elif key in ("Tile tile height", "Latent tile height"):
                self.set("tiling_height", value, shown)
            elif key == "Upscaler":
                self.grouped_upscaler = (str(value), shown)
            elif key in ("Upscale factor", "Scale factor"):
                self.grouped_scale = (str(value), shown)
            elif key in ("Tile batch size", "Latent tile batch size"):
                continue  # how many tiles share a model call: speed only
            elif key in _TD_EXPECTED:
                want = _TD_EXPECTED[key]
                if value != want:
                    self.note(f"{shown} (Clarity runs {want}; not mapped)")
            else:
                self.note(f"{shown} (not mapped)")

    def _controlnet(self) -> None:
        key = "ControlNet 0" if "ControlNet 0" in self.fields else "ControlNet"
        text = self.take(key)
        for other in sorted(k for k in self.fields if re.fullmatch(r"ControlNet [1-9]\d*", k)):
            self.take(other)
            self.note(f"{other}: a second ControlNet unit (Clarity runs only the tile one)")
        if text is None:
            return
        unit = _split_unit(text)
        weight = unit.pop("weight", None)
        if weight is not None:
            number = _number(weight)
            if number is None:
                self.note(f"{key} Weight: {weight} is not a number; resemblance left as is")
            else:
                self.set("resemblance", number, f"{key} Weight: {weight}")
        module = unit.pop("module", unit.pop("preprocessor", _CN_MODULE))
        model = unit.pop("model", _CN_MODEL).split(" [")[0].strip()
        start_end = unit.pop("starting/ending", "")
        checks: list[tuple[str, str, bool, str]] = [
            ("Module", module, module == _CN_MODULE, _CN_MODULE),
            ("Model", model, model.startswith(_CN_MODEL), _CN_MODEL),
        ]
        for label, want, ok in (
            ("resize mode", "Crop and Resize", lambda v: v.lower() in _RESIZE_CROP),
            ("control mode", "My prompt is more important", lambda v: v.lower() in _CONTROL_PROMPT),
            ("pixel perfect", "True", lambda v: v.lower() == "true"),
            ("guidance start", "0", lambda v: _number(v) == 0),
            ("guidance end", "1", lambda v: _number(v) == 1),
            ("threshold a", "1", lambda v: _number(v) == 1),  # tile_resample's down sampling
        ):
            if label in unit:
                value = unit.pop(label)
                checks.append((label.title(), value, ok(value), want))
        if start_end and start_end.replace(" ", "") not in ("(0,1)", "(0.0,1.0)"):
            checks.append(("Starting/Ending", start_end, False, "(0, 1)"))
        for label, value, ok, want in checks:
            if not ok:
                self.note(f"{key} {label}: {value} (Clarity runs {want}; not mapped)")
        # What does not change a tile ControlNet's result with pixel perfect on.
        for quiet in ("low vram", "processor res", "threshold b", "hr option", "save detected map"):
            unit.pop(quiet, None)
        unit.pop("preprocessor params", None)
        for label, value in unit.items():
            self.note(f"{key} {label.title()}: {value} (not mapped)")

    def _upscale(self, generation: bool) -> None:
        # The most specific field wins: Tiled Diffusion's own settings, then its separate fields
        # (A1111 extras: the Postprocess ones), then Clarifier's keys of older outputs.
        upscaler = self.grouped_upscaler
        for key in ("Tiled Diffusion upscaler", "Postprocess upscaler", "Upscaler"):
            value = self.take(key)
            if value is not None and upscaler is None:
                upscaler = (value, f"{key}: {value}")
        if upscaler is not None:
            value, shown = upscaler
            name = _A1111_UPSCALERS.get(value.strip(), value.strip())
            if not name or _NOT_ESRGAN.fullmatch(name):
                self.note(f"{shown} is not an ESRGAN-family model; upscaler left as is")
            else:
                self.set("upscaler", name, shown)
        # Clarifier's Scale is the whole factor; Tiled Diffusion's is one pass of Clarity's.
        scale = None
        for key in ("Scale", "Tiled Diffusion scale factor", "Postprocess upscale by"):
            value = self.take(key)
            if value is not None and scale is None:
                scale = (value, f"{key}: {value}")
        if self.grouped_scale is not None and (scale is None or "Scale" not in self.fields):
            scale = self.grouped_scale
        if scale is not None:
            number = _number(scale[0])
            if number is None:
                self.note(f"{scale[1]} is not a number; scale_factor left as is")
            else:
                self.set("scale_factor", number, scale[1])
        mode = self.take("Mode")
        if mode is not None:
            self.set("mode", mode, f"Mode: {mode}")
        elif not generation and "Postprocess upscale by" in self.fields:
            self.set("mode", "faithful", "Postprocess upscale by")

    def _noise(self, generation: bool) -> None:
        rng = self.take("RNG")
        if rng is None:
            if generation:  # A1111 leaves the field out for its default, the GPU
                self.set("noise_source", "gpu", "RNG")
            return
        source = {"GPU": "gpu", "NV": "gpu", "CPU": "cpu"}.get(rng.strip().upper())
        if source is None:  # NV is A1111's CPU copy of CUDA's generator: the same numbers
            self.note(f"RNG: {rng} is not a noise source Clarifier has; noise_source left as is")
            return
        self.set("noise_source", source, f"RNG: {rng}")

    def _rest(self) -> None:
        for key, value in self.fields.items():
            if key in self.used or key in _INFORMATIONAL:
                continue
            if key == "Clip skip" and value.strip() == "1":
                continue
            if key == "VAE" and value.startswith("vae-ft-mse-840000"):
                continue
            reason = _REASONS.get(key, "not a Clarifier parameter")
            self.note(f"{key}: {value} ({reason})")
