"""The CLI's one-line progress display on a terminal (stderr), with result lines above it."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from app.jobs import JobEvent, JobState

__all__ = ["ProgressLine"]

_REDRAW_S = 0.1


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class ProgressLine:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._total = 0
        self._ended = 0
        self._current: JobEvent | None = None
        self._last_draw = 0.0
        self._shown = False

    def start(self, total_jobs: int) -> None:
        self._total = total_jobs

    def update(self, event: JobEvent) -> None:
        if event.state.terminal:
            self._ended += 1
            if self._current is not None and self._current.job is event.job:
                self._current = None
        elif event.state != JobState.queued or self._current is None:
            self._current = event
        now = time.monotonic()
        if event.state.terminal or now - self._last_draw >= _REDRAW_S:
            self._draw()

    def _line(self) -> str:
        width = shutil.get_terminal_size((80, 20)).columns
        head = f"[{min(self._ended + 1, self._total)}/{self._total}]"
        event = self._current
        if event is None:
            return head[: width - 1]
        job = event.job
        name = job.input.name
        fraction = job.fraction
        tail: list[str] = []
        if fraction is not None:
            # The engine's message says what the count is ("step 3/7 · tiles 2/6"); without
            # one the count is tiles.
            tail.append(f"{fraction:4.0%}  {job.message or f'tile {job.done}/{job.total}'}")
            elapsed = job.elapsed or 0.0
            if job.eta_s is not None:
                tail.append(f"{_clock(job.eta_s)} left")
            elif 0 < fraction < 1 and elapsed > 1:
                tail.append(f"{_clock(elapsed * (1 - fraction) / fraction)} left")
        fixed = [head, job.stage or str(job.state), *tail]
        room = width - 1 - sum(len(p) + 2 for p in fixed)
        if len(name) > room:  # shorten the file name before anything informative
            name = name[: max(4, room - 1)] + "…"
        parts = [head, name, job.stage or str(job.state)]
        bar_width = min(30, room - len(name) - 2)
        if fraction is not None and bar_width >= 8:
            filled = int(bar_width * fraction)
            parts.append("█" * filled + "░" * (bar_width - filled))
        return "  ".join(parts + tail)[: width - 1]

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self._stream.write("\r\x1b[2K" + self._line())
        self._stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._shown = False

    def print_above(self, line: str, out: TextIO) -> None:
        self._clear()
        print(line, file=out, flush=True)
        if self._ended < self._total:
            self._draw()

    def finish(self) -> None:
        self._clear()
