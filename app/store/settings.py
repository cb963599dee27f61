"""Application settings: one small JSON file in the user's config folder.

Settings change how Clarifier runs, never what a result means (that is the parameters' job).
A damaged settings file is set aside (``settings.json.bad``) and defaults are used, so a bad
edit can never stop the app from starting.

A provider's URL is one address, except for the providers in :data:`MULTI_URL_PROVIDERS` (your
Cog servers, which Clarifier drives as one pool): their entry lists several, separated by commas
or spaces (``"http://gpu-a:5000, http://gpu-b:5000"``), or, in ``settings.json``, as a JSON list.
:func:`split_urls` reads either form, here and in the backend.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.store.files import read_json_or_default, write_json_atomic
from pipeline.paths import config_dir

__all__ = [
    "MULTI_URL_PROVIDERS",
    "PRECISIONS",
    "Settings",
    "load_settings",
    "save_settings",
    "settings_path",
    "split_urls",
]

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
# The providers whose backend spreads jobs over several servers of the person's own
# (app.backends.providers.cog): only their URL setting may list more than one address.
# tests/backends/test_cog_pool.py checks this against the backends.
MULTI_URL_PROVIDERS = frozenset({"cog"})
_URL_SEPARATORS = re.compile(r"[\s,;]+")


def split_urls(value: str | Iterable[str]) -> tuple[str, ...]:
    """The addresses in a URL setting, in order, each once and without a trailing slash: text
    separated by commas, semicolons or whitespace, or a list of such texts."""
    texts = [value] if isinstance(value, str) else list(value)
    urls = (url.rstrip("/") for text in texts for url in _URL_SEPARATORS.split(str(text)))
    return tuple(dict.fromkeys(url for url in urls if url))


@dataclass(frozen=True)
class Settings:
    max_output_megapixels: float = 64.0  # the output cap; raise it as memory allows
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 elsewhere) | fp16 | bf16 | fp32
    tile: int | None = None  # pre-upscaler tile size in pixels; None = chosen for the device
    model_dirs: tuple[str, ...] = field(default_factory=tuple)  # extra folders to find models in
    output_dir: str = ""  # the window's default output folder; empty = next to the input
    # How the window names its outputs (see app/store/naming.py for the fields); the extension
    # always follows the output format.
    filename_template: str = "{stem}-{mode}-x{scale}"
    # Per remote provider (by backend name): base URL (scheme and host, as the vendor documents
    # it; CLARIFIER_<NAME>_BASE_URL overrides), requests per minute allowed by the person's plan,
    # and how many jobs may run there at once. Missing entries use the provider's defaults. The
    # Cog entry may list several servers (see MULTI_URL_PROVIDERS).
    provider_urls: dict[str, str] = field(default_factory=dict)
    provider_rpm: dict[str, int] = field(default_factory=dict)
    provider_concurrency: dict[str, int] = field(default_factory=dict)

    @property
    def max_output_pixels(self) -> int:
        return int(self.max_output_megapixels * 1_000_000)

    def engine_options(self) -> dict[str, Any]:
        """What the local backend passes to the engine."""
        return {
            "device": self.device,
            "precision": self.precision,
            "tile": self.tile,
            "max_output_pixels": self.max_output_pixels,
            "model_dirs": list(self.model_dirs),
        }

    def validate(self) -> Settings:
        if not (self.max_output_megapixels > 0):
            raise ValueError(
                f"max_output_megapixels must be positive, not {self.max_output_megapixels}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        from app.store.naming import check_template

        check_template(self.filename_template)
        if self.tile is not None and not (32 <= self.tile <= 4096):
            raise ValueError(f"tile must be between 32 and 4096 pixels, not {self.tile}")
        for name, value in self.provider_urls.items():
            urls = split_urls(value) or (str(value),)
            if len(urls) > 1 and name not in MULTI_URL_PROVIDERS:
                raise ValueError(f"the {name} URL must be one address, not {len(urls)}")
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(
                        f"the {name} URL must start with http:// or https://, not {url!r}"
                    )
        for table in ("provider_rpm", "provider_concurrency"):
            for name, value in getattr(self, table).items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{table}[{name!r}] must be a positive whole number")
        return self


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings(path: Path | None = None) -> Settings:
    def build(data: dict[str, Any]) -> Settings:
        known = {f.name for f in dataclasses.fields(Settings)}
        values = {k: v for k, v in data.items() if k in known}
        if "model_dirs" in values:
            values["model_dirs"] = tuple(values["model_dirs"])
        urls = values.get("provider_urls")
        if isinstance(urls, dict):  # a pool's servers may be written as a JSON list
            values["provider_urls"] = {
                name: ", ".join(split_urls(url)) if isinstance(url, list) else url
                for name, url in urls.items()
            }
        return Settings(**values).validate()

    return read_json_or_default(path or settings_path(), build, Settings, "settings file")


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    return write_json_atomic(path or settings_path(), dataclasses.asdict(settings.validate()))
