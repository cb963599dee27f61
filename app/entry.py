"""The ``clarifier`` command: the window when run bare, as ``clarifier gui``, or with images
(``clarifier photo.png``, which is what "Open with Clarifier" runs); the headless CLI otherwise.
Kept apart from both so that the CLI never loads Qt and the window never loads the CLI's
argument tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["COMMANDS", "main", "wants_window"]

# The CLI's subcommands (tests/unit/test_packaging.py checks this against app.cli.parser).
COMMANDS = frozenset(
    {"upscale", "info", "params", "presets", "models", "keys", "jobs", "serve", "desktop"}
)
_LINK_SCHEMES = ("http://", "https://", "file://")


def wants_window(args: Sequence[str]) -> bool:
    """True when ``args`` ask for the window: nothing, ``gui``, or images to open in it.

    Images are told from a mistyped command by looking: the first argument must be an existing
    file or folder or a link, so ``clarifier upscal x.png`` still gets the CLI's "invalid
    choice" in a terminal instead of a window complaining about a file named "upscal". The
    window reports any later argument that is not an image."""
    if not args or args[0] == "gui":
        return True
    first = args[0]
    if first in COMMANDS or first.startswith("-"):
        return False
    return first.startswith(_LINK_SCHEMES) or Path(first).exists()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_window(args):
        from app.ui.app import main as gui_main

        return gui_main(args[1:] if args and args[0] == "gui" else args)
    from app.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
