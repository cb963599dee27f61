"""Clarifier's application: the window (``app.ui``), the command line, the job controller,
the backends and the stores. The engine it drives is ``pipeline``."""

# The reverse-DNS id of the desktop entry, the icon, the AppStream metadata and the window.
APP_ID = "io.github.clarifier.Clarifier"
