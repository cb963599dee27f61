"""Getting, checking and removing the creative engine's model files, for the CLI and the window.

* :mod:`app.models.download` — a manifest entry (licence accepted) or a link, into Clarifier's
  models folder: resumed, sha256-checked, renamed into place only once it is right;
* :mod:`app.models.transfer` — the HTTP under it, on httpx: ``.part`` files and ``Range``
  resumes, redirects that never carry a token to another host, and the retry policy the
  providers use (:mod:`app.backends.remote.retry`).

Checking and removing files already on disk needs no network and lives with the engine's other
file facts (:mod:`pipeline.models.upkeep`); it is re-exported here, so that ``clarifier models``
and the model manager import everything from this package. Downloading is imported from
:mod:`app.models.download` itself, and only where a download starts: it loads httpx, which a
plain ``clarifier`` command (building its parser, listing backends) must not pay for. The engine
itself knows no transport.
"""

from __future__ import annotations

from pipeline.models.upkeep import Verification, entry_part, remove, verify

__all__ = ["Verification", "entry_part", "remove", "verify"]
