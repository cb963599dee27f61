"""What an output image says about how it was made, in A1111's "infotext" form.

Outputs carry a ``parameters`` text that A1111, ComfyUI importers and civitai-style readers
understand::

    masterpiece, best quality, highres, <lora:more_details:0.5>
    Negative prompt: (worst quality, low quality, normal quality:2) JuggernautNegative-neg
    Steps: 18, Sampler: DPM++ 3M SDE Karras, CFG scale: 6, Seed: 1337, Size: 2048x2048, ...,
    Clarifier: "{...the exact RunInfo as JSON...}"

The last key carries the exact :class:`RunInfo`, so reading an output back gives the very same
:class:`~pipeline.params.UpscaleParams`. Infotext written by A1111 itself (no ``Clarifier`` key)
is mapped onto the parameters it shares with Clarity, so such an image can seed a new run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ParamsError
from pipeline.params import SCHEDULERS, UpscaleParams

__all__ = ["RunInfo", "format_infotext", "parse_infotext", "parse_infotext_fields"]

_KEY = "Clarifier"


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


def _quote(value: str) -> str:
    # A1111 quotes a value when it would break the comma-separated line.
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def format_infotext(info: RunInfo) -> str:
    """The A1111-style ``parameters`` text for one output."""
    p = info.params
    pairs: list[tuple[str, str]] = []
    lines: list[str] = []
    if p.mode == "creative":
        lines += [
            p.prompt.replace("\n", " "),
            "Negative prompt: " + p.negative_prompt.replace("\n", " "),
        ]
        pairs += [
            ("Steps", str(p.num_inference_steps)),
            ("Sampler", p.scheduler),
            ("CFG scale", _num(p.dynamic)),
        ]
    if p.seed is not None:
        pairs.append(("Seed", str(p.seed)))
    if info.output_size:
        pairs.append(("Size", f"{info.output_size[0]}x{info.output_size[1]}"))
    if p.mode == "creative":
        model = info.models.get("checkpoint") or p.sd_model.split(" [")[0]
        pairs += [
            ("Model", model.removesuffix(".safetensors")),
            ("Denoising strength", _num(p.creativity)),
            ("ControlNet weight", _num(p.resemblance)),
        ]
    pairs += [
        ("Upscaler", info.models.get("upscaler", p.upscaler)),
        ("Scale", _num(p.scale_factor)),
        ("Mode", p.mode),
        ("Engine", info.engine),
    ]
    if info.clarifier_version:
        pairs.append(("Version", f"clarifier {info.clarifier_version}"))
    pairs.append((_KEY, json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([\w][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext_fields(text: str) -> dict[str, str]:
    """Split infotext into ``{"Prompt", "Negative prompt", key: value, ...}`` like A1111 does."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = _PAIR.findall(last)
    result: dict[str, str] = {}
    if len(pairs) >= 2 or (pairs and pairs[0][0] == _KEY):
        lines = lines[:-1]
        for key, value in pairs:
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value[1:-1]
            result[key.strip()] = value
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            negative.append(line.removeprefix("Negative prompt:").strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    if prompt:
        result["Prompt"] = "\n".join(prompt)
    if negative:
        result["Negative prompt"] = "\n".join(negative)
    return result


def parse_infotext(text: str) -> RunInfo | None:
    """Read infotext back: exact for Clarifier's own, best effort for A1111's. None if neither."""
    fields = parse_infotext_fields(text)
    if not set(fields) - {"Prompt", "Negative prompt"}:
        return None  # a caption, not generation parameters
    if _KEY in fields:
        try:
            return RunInfo.from_dict(json.loads(fields[_KEY]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, ParamsError):
            pass  # damaged: fall back to the A1111 keys below
    changes: dict[str, Any] = {}
    if "Prompt" in fields:
        changes["prompt"] = fields["Prompt"]
    if "Negative prompt" in fields:
        changes["negative_prompt"] = fields["Negative prompt"]
    conversions = {
        "Steps": ("num_inference_steps", int),
        "CFG scale": ("dynamic", float),
        "Seed": ("seed", int),
        "Denoising strength": ("creativity", float),
        "ControlNet weight": ("resemblance", float),
        "Scale": ("scale_factor", float),
    }
    for key, (name, kind) in conversions.items():
        if key in fields:
            try:
                changes[name] = kind(fields[key])
            except ValueError:
                continue
    if fields.get("Sampler") in SCHEDULERS:
        changes["scheduler"] = fields["Sampler"]
    if fields.get("Mode") in ("faithful", "creative"):
        changes["mode"] = fields["Mode"]
    elif "Denoising strength" in fields:
        changes["mode"] = "creative"
    if not changes:
        return None
    params = UpscaleParams()
    for name, value in changes.items():  # one by one, so one bad value does not lose the rest
        try:
            params = params.replace(**{name: value})
        except ParamsError:
            continue
    return RunInfo(params=params, engine=fields.get("Engine", "a1111"))
