"""The ``clarifier`` command: the window when run bare or as ``clarifier gui``, the headless CLI
otherwise. Kept apart from both so that the CLI never loads Qt and the window never loads the
CLI's argument tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] == "gui":
        from app.ui.app import main as gui_main

        return gui_main(args[1:])
    from app.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
