"""Images in and out of remote providers: what is sent, and how a result is kept.

The input goes as the original file when a provider can read it as is (8-bit PNG, JPEG or WebP,
upright, sRGB); anything else (16-bit, TIFF, HEIF, a rotated phone photo, a wide-gamut profile)
is sent as an upright sRGB PNG, so the provider sees what the person sees.

A result is first written, as downloaded, to a hidden file next to the output (``stash``), so a
crash or an undecodable body never loses what was paid for. When it already is in the asked
format (and needs no colour conversion), its bytes become the output as they are, with the run's
parameters, the source's EXIF, XMP and colour profile inserted (:func:`pipeline.io.insert.
keep_encoded`): no second lossy encode. Otherwise it is decoded and saved through the engine's
saver with the same metadata.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline import __version__
from pipeline.errors import ImageError
from pipeline.io.atomic import atomic_write
from pipeline.io.icc import is_srgb
from pipeline.io.insert import describe_encoded, keep_encoded
from pipeline.io.load import SourceInfo, load_image, probe_image
from pipeline.io.save import save_image
from pipeline.metadata import RunInfo
from pipeline.params import UpscaleParams

__all__ = [
    "InputFile",
    "SavedOutput",
    "decode_data_url",
    "prepare_input",
    "save_output",
    "stash",
    "stash_path",
]

_PASS_THROUGH = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class InputFile:
    data: bytes
    mime: str
    name: str
    width: int
    height: int
    source: SourceInfo  # the original's description, for the output's metadata

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.base64()}"

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def _as_is(path: Path, info: SourceInfo) -> bool:
    if info.format not in _PASS_THROUGH or info.bit_depth != 8 or info.frames != 1:
        return False
    if info.icc_profile is not None and not is_srgb(info.icc_profile):
        return False
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(_ORIENTATION, 1) or 1) == 1
    except (OSError, ValueError):
        return False


def prepare_input(path: Path, *, max_pixels: int | None = None) -> InputFile:
    """Read ``path`` for sending; raises :class:`~pipeline.errors.ImageError` when it cannot."""
    info = probe_image(path)
    if _as_is(path, info):
        data = path.read_bytes()
        mime = _PASS_THROUGH[info.format]
        name = path.name
    else:
        loaded = load_image(path, max_pixels=max_pixels)
        rgb = loaded.rgb
        if rgb.dtype != "uint8":
            rgb = (rgb.astype("uint32") * 255 + 32767) // 65535
            rgb = rgb.astype("uint8")
        image = Image.fromarray(rgb, "RGB")
        if loaded.alpha is not None:
            alpha = loaded.alpha
            if alpha.dtype != "uint8":
                alpha = ((alpha.astype("uint32") * 255 + 32767) // 65535).astype("uint8")
            image.putalpha(Image.fromarray(alpha, "L"))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=4)
        data, mime, name = buffer.getvalue(), "image/png", path.stem + ".png"
    return InputFile(data, mime, name, info.width, info.height, info)


def stash_path(output: Path, job_id: str) -> Path:
    """Where a downloaded result waits, as received, until it is saved as the output."""
    return output.with_name(f".{output.name}.{job_id}.download")


def stash(output: Path, job_id: str, data: bytes) -> Path:
    path = stash_path(output, job_id)
    atomic_write(path, lambda fp: fp.write(data))
    return path


@dataclass(frozen=True)
class SavedOutput:
    path: Path
    info: RunInfo
    warnings: tuple[str, ...]
    kept: bool = False  # the provider's bytes are the output's, with the metadata inserted


def save_output(
    data: bytes,
    output: Path,
    params: UpscaleParams,
    *,
    engine: str,
    models: dict[str, str],
    source: SourceInfo | None,
) -> SavedOutput:
    """Save a provider's result as ``output`` with the run's metadata: its own bytes when they
    are in ``params.output_format`` already, else decoded and encoded in it."""
    encoded = describe_encoded(data)
    if encoded is not None and encoded.format == params.output_format:
        info = RunInfo(
            params=params,
            engine=engine,
            models=models,
            source_size=(source.width, source.height) if source else None,
            output_size=(encoded.width, encoded.height),
            clarifier_version=__version__,
        )
        path = keep_encoded(output, data, info=info, source=source, fmt=params.output_format)
        if path is not None:
            return SavedOutput(path, info, (), kept=True)
    try:
        loaded = load_image(data, max_pixels=None)
    except ImageError as exc:
        raise ImageError(f"the provider's result is not a readable image ({exc.reason})") from exc
    height, width = loaded.rgb.shape[:2]
    info = RunInfo(
        params=params,
        engine=engine,
        models=models,
        source_size=(source.width, source.height) if source else None,
        output_size=(width, height),
        clarifier_version=__version__,
    )
    path = save_image(
        output, loaded.rgb, loaded.alpha, info=info, source=source, fmt=params.output_format
    )
    return SavedOutput(path, info, tuple(loaded.warnings))


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:`` URL (Cog returns outputs this way)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise ValueError("not a data URL")
    if header.endswith(";base64"):
        return base64.b64decode(payload, validate=False)
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(payload)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
