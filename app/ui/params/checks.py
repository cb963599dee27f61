"""The checks only the window can make before a run, for the fields that matter now.

``UpscaleParams`` checks types and ranges; what it cannot know is the machine and the backend: a
mask or LoRA file that does not exist, a link a provider cannot fetch, a prompt tag that does not
parse, a scale factor the chosen model refuses. Each problem is reported against its field so the
panel can show it in place. Pure Python: cheap enough to run on every keystroke (a few ``stat``
calls at most).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.backends import capabilities as caps
from pipeline.diffusion.prompt_syntax import parse_prompt
from pipeline.errors import ParamsError
from pipeline.io.load import SUPPORTED_SUFFIXES
from pipeline.models.store import is_link
from pipeline.params import UpscaleParams

__all__ = ["FAITHFUL_FIELDS", "window_checks"]

# What the local engine's faithful mode reads (pipeline/engine.py: the pre-upscale, downscaling,
# sharpening, the seamless switch and the output format); everything else is diffusion only.
FAITHFUL_FIELDS = frozenset(
    {
        "scale_factor", "mode", "upscaler", "upscaler_channel_order", "output_format",
        "downscaling", "downscaling_resolution", "sharpen", "pattern",
    }
)  # fmt: skip
_LINK_FIELDS = ("lora_links", "custom_sd_model", "flux.lora_link")


def window_checks(
    p: UpscaleParams, backend: str, model: str, *, relevant: Callable[[str], bool]
) -> tuple[dict[str, str], dict[str, str]]:
    """``(errors, notes)`` by field name for ``p`` run on ``backend``/``model``. Only fields for
    which ``relevant`` is true are checked; notes are warnings that do not block a run."""
    info = caps.backend_info(backend)
    where = info.label if info.remote else "the local engine"
    errors: dict[str, str] = {}
    notes: dict[str, str] = {}

    def flag(name: str, message: str | None) -> None:
        if message and relevant(name):
            errors.setdefault(name, message)

    limits = getattr(caps, "scale_limits", None)
    if limits is not None and not limits(backend, model).allows(p.scale_factor):
        flag("scale_factor", _scale_message(limits(backend, model), where))
    for name in ("prompt", "negative_prompt"):
        if not relevant(name):
            continue
        try:
            parsed = parse_prompt(getattr(p, name), field=name)
        except ParamsError as exc:
            flag(name, exc.errors[0].allowed[:1].upper() + exc.errors[0].allowed[1:])
        else:
            if parsed.warnings:
                note = parsed.warnings[0].removeprefix(f"{name}: ")
                notes[name] = note[:1].upper() + note[1:]
    if p.mask is not None:
        flag("mask", _file_problem(p.mask, remote=info.remote, image=True))
    for name in _LINK_FIELDS:
        group, _, leaf = name.rpartition(".")
        text = getattr(getattr(p, group) if group else p, leaf)
        for link in filter(None, (s.strip() for s in text.split(","))):
            problem = _link_problem(link, remote=info.remote, where=where)
            if problem:
                flag(name, problem)
                break
    if not p.upscaler.strip():
        flag("upscaler", "Choose a pre-upscaler (a bundled one or a model file)")
    return errors, notes


def _scale_message(limits: Any, where: str) -> str:
    if limits.choices:
        listed = ", ".join(f"{c:g}" for c in limits.choices[:-1])
        return f"{where} takes a scale of {listed} or {limits.choices[-1]:g}"
    whole = "whole factors" if limits.whole else "a scale"
    return f"{where} takes {whole} from {limits.minimum:g} to {limits.maximum:g}"


def _file_problem(text: str, *, remote: bool, image: bool) -> str | None:
    if is_link(text):
        if remote:
            return None
        return "The local engine reads this from a file: download it and choose the file"
    path = Path(text).expanduser()
    if not _is_file(path):
        return f"No such file: {text}"
    if image and path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return f"Not an image file Clarifier reads ({path.suffix or 'no extension'})"
    return None


def _link_problem(link: str, *, remote: bool, where: str) -> str | None:
    if is_link(link):
        return None
    if remote:
        return f"{where} fetches models from links only (https://…), not {link!r}"
    if not _is_file(Path(link).expanduser()):
        return f"Not a link (https://…) or an existing file: {link!r}"
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return False
