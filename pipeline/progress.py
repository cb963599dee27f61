"""What a run reports: one :class:`Progress` per step while it works (cancellation is polled
between steps), and its :class:`RunExtras`, warnings and timings, with the result.

Its own module, light (no torch, no numpy at run time), because every stage reports through it:
the engine's dispatch, the faithful and the creative run, the pre-upscaler, the diffusion passes
and the worker that forwards the reports to the app. Kept out of :mod:`pipeline.engine` so that
the stages need not import the dispatch that calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CancelFn", "Progress", "ProgressFn", "RunExtras"]


@dataclass(frozen=True)
class Progress:
    stage: str  # "load", "models", "pre-upscale", "encode", "diffusion", "decode", "alpha", ...
    done: int
    total: int
    message: str = ""
    preview: np.ndarray | None = None
    eta_s: float | None = None  # seconds left for the diffusion, once it can be estimated


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


@dataclass
class RunExtras:
    """What a mode's run returns beside the pixels: warnings for the person, seconds per stage."""

    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
