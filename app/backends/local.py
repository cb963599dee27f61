"""The local backend: drives the engine in a worker process (``python -m pipeline.worker``).

The worker is started on first use and kept for the next job, so models stay loaded. When it dies
(out-of-memory kill, crash, ``kill -9``) the running job fails with a message that says what
happened, and the next job starts a fresh worker. A cancel asks the worker to stop between
tiles and kills it if it has not stopped within a short grace period.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pipeline
from app.backends.base import (
    Backend,
    BackendEvent,
    ErrorKind,
    JobError,
    JobState,
    Outcome,
    Report,
    Request,
)
from pipeline import protocol

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)

_KINDS = {
    "invalid_request": ErrorKind.invalid_request,
    "model": ErrorKind.model_failed,
    "out_of_memory": ErrorKind.out_of_memory,
    "cancelled": ErrorKind.canceled,
    "internal": ErrorKind.internal,
}


class _Worker:
    """One running worker process: its pipes, an event queue and the tail of its stderr."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.device = ""
        self._pumps = [
            asyncio.create_task(self._pump_stdout()),
            asyncio.create_task(self._pump_stderr()),
        ]

    @classmethod
    async def start(cls, env: Mapping[str, str], ready_timeout: float) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
        )
        worker = cls(process)
        try:
            async with asyncio.timeout(ready_timeout):
                ready = await worker.events.get()
        except TimeoutError:
            await worker.kill()
            raise JobError(
                ErrorKind.worker_died,
                f"The local engine did not start within {ready_timeout:.0f} s.",
            ) from None
        if ready is None or ready.get("ev") != "ready":
            await worker.wait()
            raise JobError(
                ErrorKind.worker_died, "The local engine could not start. " + worker.describe_exit()
            )
        worker.device = str(ready.get("device", ""))
        return worker

    async def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                self.events.put_nowait(protocol.decode(line))
            except ValueError:
                log.warning("local engine wrote a malformed line: %r", line[:200])
        self.events.put_nowait(None)  # end of stream: the process is gone

    async def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            log.debug("engine: %s", text)

    async def send(self, **message: Any) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise ConnectionResetError("the worker's input is closed")
        stdin.write(protocol.encode(message))
        await stdin.drain()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def wait(self) -> int:
        code = await self.process.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        return code

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.wait()

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is None:
            what = "stopped answering"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = f"was killed by {name}"
            if -code == signal.SIGKILL:
                what += " (on Linux this is usually the system running out of memory)"
        else:
            what = f"exited with status {code}"
        tail = [line for line in self.stderr_tail if line.strip()][-4:]
        last = (" Last output: " + " | ".join(tail))[:600] if tail else ""
        return f"The engine process {what}.{last}"


class LocalBackend(Backend, backend="local"):
    """Runs requests on this computer, one at a time, in a reusable worker process. Its name,
    label and cancel support come from its registry entry (``registry.get("local")``)."""

    concurrency = 1

    def __init__(
        self,
        *,
        cancel_grace: float = 3.0,
        ready_timeout: float = 180.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._cancel_grace = cancel_grace
        self._ready_timeout = ready_timeout
        self._env = dict(os.environ if env is None else env)
        # The worker imports ``pipeline``; make sure it can even when Clarifier is not installed.
        root = str(Path(pipeline.__file__).resolve().parent.parent)
        self._env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, self._env.get("PYTHONPATH", "")) if p
        )
        self._worker: _Worker | None = None
        self._lock = asyncio.Lock()

    @property
    def device(self) -> str:
        """The engine's device, as the worker described it ("" before the first job)."""
        return self._worker.device if self._worker else ""

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return worker.process.pid if worker is not None and worker.alive else None

    async def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive:
            self._worker = await _Worker.start(self._env, self._ready_timeout)
        return self._worker

    async def run(self, request: Request, report: Report) -> Outcome:
        async with self._lock:
            worker = await self._ensure_worker()
            job = request.job_id
            try:
                await worker.send(
                    op="run",
                    job=job,
                    input=str(request.input),
                    output=str(request.output),
                    params=request.params.to_dict(),
                    options=dict(request.options),
                )
            except (ConnectionResetError, BrokenPipeError):
                raise await self._lost_worker(worker) from None
            report(BackendEvent(state=JobState.running, message=worker.device))
            try:
                return await self._follow(worker, job, report)
            except asyncio.CancelledError:
                await self._stop(worker, job)
                raise

    async def _follow(self, worker: _Worker, job: str, report: Report) -> Outcome:
        while (event := await worker.events.get()) is not None:
            if event.get("job") != job:
                continue
            kind = event.get("ev")
            if kind == "progress":
                report(
                    BackendEvent(
                        stage=str(event.get("stage", "")),
                        done=int(event.get("done", 0)),
                        total=int(event.get("total", 0)),
                        message=str(event.get("message", "")),
                        eta_s=_float_or_none(event.get("eta")),
                    )
                )
            elif kind == "preview":
                with contextlib.suppress(ValueError, TypeError):
                    report(BackendEvent(preview_png=base64.b64decode(event["png"])))
            elif kind == "result":
                return Outcome(
                    output=Path(event["output"]),
                    info=event.get("info") or {},
                    timings=event.get("timings") or {},
                    warnings=tuple(event.get("warnings") or ()),
                )
            elif kind == "error":
                raise JobError(
                    _KINDS.get(str(event.get("kind")), ErrorKind.internal),
                    str(event.get("message", "the engine failed")),
                )
        raise await self._lost_worker(worker)

    async def _lost_worker(self, worker: _Worker) -> JobError:
        await worker.wait()
        self._worker = None
        return JobError(
            ErrorKind.worker_died, worker.describe_exit() + " The next job starts a fresh engine."
        )

    async def _stop(self, worker: _Worker, job: str) -> None:
        """Ask the worker to stop this job; kill it if it does not within the grace period."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await worker.send(op="cancel", job=job)
        try:
            async with asyncio.timeout(self._cancel_grace):
                while (event := await worker.events.get()) is not None:
                    if event.get("job") == job and event.get("ev") in ("error", "result"):
                        return
        except TimeoutError:
            log.info("engine did not stop within %.1f s; killing it", self._cancel_grace)
        await worker.kill()
        self._worker = None

    async def aclose(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None or not worker.alive:
            return
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await worker.send(op="shutdown")
        try:
            async with asyncio.timeout(5):
                await worker.wait()
        except TimeoutError:
            await worker.kill()


def _float_or_none(value: object) -> float | None:
    if not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None
