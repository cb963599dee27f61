"""The parameters panel: one editor per field, grouped in sections, with the checks the window
makes before a run, and the presets bar above it."""
