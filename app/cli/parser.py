"""The ``clarifier`` command line's grammar: one subcommand per module of :mod:`app.cli`.

Each command module adds its own subparser (``add_*_parser``), next to the code that reads its
arguments; this module only puts them together, in the order ``clarifier --help`` lists them.
:data:`app.entry.COMMANDS` must name the same subcommands (``tests/unit/test_packaging.py``).
"""

from __future__ import annotations

import argparse

from app.cli.desktop import add_desktop_parser
from app.cli.info import add_info_parsers
from app.cli.jobs import add_jobs_parser
from app.cli.keys import add_keys_parser
from app.cli.models import add_models_parser
from app.cli.serve import add_serve_parser
from app.cli.upscale import add_upscale_parser
from pipeline import __version__

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarifier",
        description="Generative (Clarity-style) and faithful image upscaling.",
        epilog="Run `clarifier` alone, `clarifier IMAGES...` or `clarifier gui [IMAGES...]` to "
        "open the window.",
    )
    parser.add_argument("--version", action="version", version=f"clarifier {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_upscale_parser(sub)
    add_info_parsers(sub)
    add_models_parser(sub)
    add_keys_parser(sub)
    add_jobs_parser(sub)
    add_serve_parser(sub)
    add_desktop_parser(sub)
    return parser
