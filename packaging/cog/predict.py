"""Clarifier's engine as a Cog model: the runner ``cog build`` and ``cog push`` serve.

The runner is :class:`app.serve.runner.Runner` (philz1337x/clarity-upscaler's inputs, Clarifier's
engine); Clarifier's source sits beside this file in the folder ``stage.py`` makes.
"""

from app.serve.runner import Runner

__all__ = ["Runner"]
