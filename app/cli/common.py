"""What every ``clarifier`` command shares: the exit statuses and the usage error.

Exit status: 0 when everything succeeded, 1 when anything failed (the rest still finishes), 2 for
a usage or parameter error, 130 when interrupted.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line itself: exit status 2."""
