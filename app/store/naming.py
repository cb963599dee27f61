"""Output file names from a template, such as ``{stem}-{mode}-x{scale}``.

The window names each output from the person's template (Settings ▸ Output); the extension
always follows the output format. A template is checked when it is saved, so a typo is reported
in the settings dialog and never at the end of a long run.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.params import UpscaleParams

__all__ = ["FIELDS", "check_template", "output_path", "render_name"]

# Each field and what it becomes; shown as the settings dialog's help.
FIELDS: Mapping[str, str] = {
    "stem": "the input's name without extension",
    "mode": "faithful or creative",
    "scale": "the scale factor (2, 4, 2.5)",
    "seed": "the seed",
    "backend": "local, segmind, replicate, ...",
    "model": "the provider's model, or the checkpoint for local runs",
    "creativity": "the creativity value",
    "resemblance": "the resemblance value",
    "date": "the day of the run, 2026-11-21",
    "time": "the time of the run, 14-05-09",
}

_SUFFIX = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
# Characters no common file system accepts in a name.
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]+')


def check_template(template: str) -> str:
    """Return ``template`` if it can name files; raise ValueError saying what is wrong."""
    if not template.strip():
        raise ValueError("the file-name template is empty")
    try:
        names = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"the file-name template {template!r} is malformed: {exc}") from None
    unknown = sorted({n for n in names if n not in FIELDS})
    if unknown:
        raise ValueError(
            f"the file-name template uses unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(FIELDS)}"
        )
    if "/" in template or "\\" in template:
        raise ValueError("the file-name template names a file, not a folder: no / or \\")
    return template


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def render_name(
    template: str,
    source: Path,
    params: UpscaleParams,
    *,
    backend: str = "local",
    model: str = "",
    when: float | None = None,
) -> str:
    """The file name (with extension) for ``source`` upscaled with ``params``."""
    moment = time.localtime(when if when is not None else time.time())
    values: dict[str, Any] = {
        "stem": source.stem,
        "mode": params.mode,
        "scale": _number(params.scale_factor),
        "seed": "random" if params.seed is None else params.seed,
        "backend": backend,
        "model": model
        or (
            params.sd_model.split(" [")[0].rsplit(".", 1)[0]
            if params.mode == "creative"
            else params.upscaler
        ),
        "creativity": _number(params.creativity),
        "resemblance": _number(params.resemblance),
        "date": time.strftime("%Y-%m-%d", moment),
        "time": time.strftime("%H-%M-%S", moment),
    }
    name = check_template(template).format(**values)
    name = _UNSAFE.sub("_", name).strip(" .") or source.stem
    return name + _SUFFIX[params.output_format]


def output_path(
    template: str,
    source: Path,
    params: UpscaleParams,
    folder: Path | None,
    *,
    backend: str = "local",
    model: str = "",
    taken: set[Path] | None = None,
) -> Path:
    """A free output path: in ``folder`` (or beside the input), never an existing file and never
    one in ``taken`` (outputs already promised to queued jobs); ``-1``, ``-2``, ... otherwise."""
    name = render_name(template, source, params, backend=backend, model=model)
    base = (folder or source.parent) / name
    taken = taken if taken is not None else set()
    candidate, n = base, 0
    while candidate.exists() or candidate in taken or candidate == source:
        n += 1
        candidate = base.with_name(f"{base.stem}-{n}{base.suffix}")
    return candidate
