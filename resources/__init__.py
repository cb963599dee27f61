"""Clarifier's read-only resources, installed as the package ``clarifier_resources``: built-in
presets, the model manifest, the SD 1.5 configs and tokenizer, the desktop entry, AppStream
metadata and icons. Read them through :func:`pipeline.paths.resources_dir`."""
