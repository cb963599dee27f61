"""The engine's worker process: ``python -m pipeline.worker``.

The job controller starts it and talks to it with the line protocol of :mod:`pipeline.protocol`.
Running the engine in its own process keeps torch out of the window and the CLI, turns a crash
or an out-of-memory kill into one failed job instead of a dead app, and makes a hard cancel
possible (the controller may kill the process; the next job gets a fresh one).

Jobs run one at a time on the main thread; a reader thread takes commands from stdin so that a
cancel can arrive while a job runs. Only the main thread writes events.
"""

from __future__ import annotations

import base64
import io
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

from pipeline import protocol

_PREVIEW_INTERVAL_S = 0.5
_PREVIEW_MAX_SIDE = 384


class _Channel:
    """The protocol's output: the real stdout, kept apart from anything libraries print."""

    def __init__(self) -> None:
        # Move fd 1 aside and point it at stderr, so stray prints (ours, torch's, C code's)
        # can never corrupt the protocol stream.
        self._out: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, **message: Any) -> None:
        self._out.write(protocol.encode(message))


class _Commands:
    """Reads stdin on a thread: queues runs, flags cancels, ends on EOF or shutdown."""

    def __init__(self) -> None:
        self.runs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._read, name="commands", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin.buffer:
            try:
                message = protocol.decode(line)
            except ValueError:
                print(f"worker: ignoring a malformed command: {line[:200]!r}", file=sys.stderr)  # noqa: T201
                continue
            op = message.get("op")
            if op == "run":
                self.runs.put(message)
            elif op == "cancel":
                with self._lock:
                    self._cancelled.add(str(message.get("job")))
            elif op == "shutdown":
                break
        # The controller went away or asked us to stop: cancel whatever runs and leave.
        with self._lock:
            self._closed = True
        self.runs.put(None)

    def is_cancelled(self, job: str) -> bool:
        with self._lock:
            return self._closed or job in self._cancelled


def _preview_png(array: Any) -> str:
    from PIL import Image

    image = Image.fromarray(array)
    image.thumbnail((_PREVIEW_MAX_SIDE, _PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _run(channel: _Channel, commands: _Commands, message: dict[str, Any]) -> None:
    from pipeline.engine import EngineOptions, upscale_file
    from pipeline.errors import (
        Cancelled,
        ImageError,
        ModelError,
        OutOfMemory,
        ParamsError,
        PipelineError,
    )
    from pipeline.params import UpscaleParams
    from pipeline.progress import Progress

    job = str(message.get("job"))
    last_preview = 0.0

    def progress(p: Progress) -> None:
        nonlocal last_preview
        eta = None if p.eta_s is None else round(p.eta_s, 1)
        channel.send(
            ev="progress",
            job=job,
            stage=p.stage,
            done=p.done,
            total=p.total,
            message=p.message,
            eta=eta,
        )
        now = time.monotonic()
        if p.preview is not None and now - last_preview >= _PREVIEW_INTERVAL_S:
            last_preview = now
            channel.send(ev="preview", job=job, png=_preview_png(p.preview))

    try:
        params = UpscaleParams.from_dict(message["params"])
        opts = message.get("options") or {}
        options = EngineOptions(
            device=opts.get("device", "auto"),
            precision=opts.get("precision", "auto"),
            tile=opts.get("tile"),
            max_output_pixels=int(opts.get("max_output_pixels", EngineOptions.max_output_pixels)),
            model_dirs=tuple(opts.get("model_dirs", ())),
        )
        result = upscale_file(
            message["input"],
            message["output"],
            params,
            options=options,
            progress=progress,
            cancel=lambda: commands.is_cancelled(job),
        )
    except Cancelled:
        channel.send(ev="error", job=job, kind="cancelled", message="cancelled")
    except (ParamsError, ImageError) as exc:
        channel.send(ev="error", job=job, kind="invalid_request", message=str(exc))
    except ModelError as exc:
        channel.send(ev="error", job=job, kind="model", message=str(exc))
    except (OutOfMemory, MemoryError) as exc:
        text = str(exc) or "the computer ran out of memory; try a smaller scale or tile size"
        channel.send(ev="error", job=job, kind="out_of_memory", message=text)
    except PipelineError as exc:  # any other refusal the engine explains itself
        channel.send(ev="error", job=job, kind="invalid_request", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - the boundary: any other failure is one failed job
        traceback.print_exc(file=sys.stderr)
        channel.send(
            ev="error",
            job=job,
            kind="internal",
            message=f"internal error: {type(exc).__name__}: {exc}",
        )
    else:
        channel.send(
            ev="result",
            job=job,
            output=str(result.output),
            info=result.info.to_dict(),
            timings=result.timings,
            warnings=result.warnings,
        )


def main() -> int:
    channel = _Channel()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local files only
    commands = _Commands()
    from pipeline.device import describe_device, pick_device

    try:
        device = describe_device(pick_device(os.environ.get("CLARIFIER_DEVICE", "auto")))
    except Exception as exc:  # noqa: BLE001 - report instead of dying silently
        device = f"unavailable ({exc})"
    channel.send(ev="ready", pid=os.getpid(), device=device, protocol=protocol.PROTOCOL_VERSION)
    while (message := commands.runs.get()) is not None:
        _run(channel, commands, message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
