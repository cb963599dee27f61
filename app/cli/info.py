"""``clarifier info``, ``params`` and ``presets``: look-ups that print and change nothing.

``info IMAGE`` shows the parameters embedded in an output image (as A1111-style text, or the
run info as JSON); for infotext another program wrote, it also lists on stderr what Clarifier
could not map; ``params`` lists every parameter with its default and range; ``presets`` the
built-in and the person's presets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli.common import EXIT_FAILED, EXIT_OK
from app.store.presets import PresetStore
from pipeline.errors import ImageError
from pipeline.io.load import read_parameters_text
from pipeline.metadata import params_from_infotext, parse_infotext
from pipeline.params import UpscaleParams

__all__ = ["add_info_parsers", "cmd_info", "cmd_params", "cmd_presets"]


def add_info_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``info``, ``params`` and ``presets`` commands."""
    info = sub.add_parser("info", help="show the parameters embedded in an output image")
    info.add_argument("image", type=Path)
    info.add_argument("--json", action="store_true", help="print the run info as JSON")

    sub.add_parser("params", help="list every parameter with its default and range")
    sub.add_parser("presets", help="list the presets")


def cmd_info(args: argparse.Namespace) -> int:
    try:
        text = read_parameters_text(args.image)
    except ImageError as exc:
        print(f"clarifier: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not text or (info := parse_infotext(text)) is None:
        print(f"{args.image}: no upscaling parameters found", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(text)
    for note in params_from_infotext(text)[1]:  # none for Clarifier's own record
        print(f"{args.image}: not mapped: {note}", file=sys.stderr)
    return EXIT_OK


def cmd_params(_args: argparse.Namespace) -> int:
    for name, spec, default in UpscaleParams.specs():
        shown = default if not isinstance(default, str) or len(default) < 40 else default[:37] + "…"
        print(f"{name:24} {spec.kind.__name__:5} default {shown!r:30} {spec.allowed()}")
        print(f"{'':24} {spec.help}")
    return EXIT_OK


def cmd_presets(_args: argparse.Namespace) -> int:
    for preset in PresetStore().list():
        kind = "built-in" if preset.builtin else "user"
        print(f"{preset.name:18} ({kind}) {preset.description}")
    return EXIT_OK
