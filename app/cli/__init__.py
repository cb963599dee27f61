"""``clarifier``: the headless entry point.

``clarifier upscale INPUT... -o OUT`` runs through the same job controller and backends as the
window; ``info``, ``params``, ``presets``, ``models``, ``keys``, ``jobs`` and ``desktop`` look
things up and manage models, keys, the history and the desktop launcher; ``serve`` runs the
engine behind Cog's HTTP API for other computers. One module per command
(:mod:`app.cli.upscale`, :mod:`app.cli.keys`, ...), each with its own subparser;
:mod:`app.cli.parser` puts them together. Exit status: 0 when every image succeeded, 1 when any
failed (the others still finish), 2 for a usage or parameter error, 130 when interrupted.

Importing this package stays light: listing the backends and providers reads
:mod:`app.backends.registry`; httpx and the provider modules load only when a command runs jobs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from app.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from app.cli.desktop import cmd_desktop
from app.cli.info import cmd_info, cmd_params, cmd_presets
from app.cli.jobs import cmd_jobs
from app.cli.keys import cmd_keys
from app.cli.models import cmd_models
from app.cli.parser import build_parser
from app.cli.serve import cmd_serve
from app.cli.upscale import cmd_upscale
from app.store.presets import PresetError
from pipeline.errors import ParamsError

__all__ = ["main"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "upscale": cmd_upscale,
    "info": cmd_info,
    "params": cmd_params,
    "presets": cmd_presets,
    "models": cmd_models,
    "keys": cmd_keys,
    "jobs": cmd_jobs,
    "serve": cmd_serve,
    "desktop": cmd_desktop,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        return _COMMANDS[args.command](args)
    except (UsageError, ParamsError, PresetError) as exc:
        print(f"clarifier: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
