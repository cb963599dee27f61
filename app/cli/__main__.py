"""``python -m app.cli``: the headless command line without the window's entry point."""

from __future__ import annotations

import sys

from app.cli import main

sys.exit(main())
