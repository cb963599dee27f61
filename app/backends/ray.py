"""The Ray backend: a batch spread over a Ray cluster, one engine per GPU (or per CPU slot).

:class:`RayBackend` is what the job controller drives, exactly as it drives the local engine:
one :meth:`~RayBackend.run` per image, with the same events, errors and outcome, so the history
rows, the retries and the outputs are a local batch's. What differs is where the engine runs:

* **Engines.** On first use the backend connects to the cluster (``address``: ``ray://HOST:10001``,
  ``HOST:6379``, ``auto``, or ``local`` for a new cluster on this computer; without one, Ray's
  own choice: ``RAY_ADDRESS``, else the cluster ``ray start`` last started here, else a new local
  one) and starts one :class:`EngineActor` per GPU in it, or one per CPU slot when it has none.
  A process already connected to Ray (its own ``ray.init``) runs on that cluster. Each actor
  keeps a :class:`~app.backends.local.LocalBackend`, so one engine worker process with its
  models loaded serves every image that actor runs, on its slot's device (the GPU Ray gives it,
  or the CPU) whatever this computer's device setting says. A job waits for a free engine;
  there is never more than one job on an engine.
* **Files.** The driver (this process) reads the input and sends its bytes; the engine runs it
  through the same worker as a local job (so the file it encodes is the one a local run writes,
  parameters, EXIF and colour profile included) and sends the encoded bytes back; the driver
  writes them atomically where the job's output goes. Worker nodes need no shared storage for
  inputs and outputs (model folders and file paths inside the parameters, such as a mask, must
  exist on the nodes).
* **Failures.** The actors are created with ``max_restarts=-1`` and their jobs sent with
  ``max_task_retries``: when an engine's process or node dies, Ray starts a fresh actor and runs
  the lost job again on it, and the result comes back to the same waiting job (the outcome then
  carries a note). Only when Ray gives up does the job fail (``worker_died``). An engine failure
  inside an actor (the worker process killed for memory, a bad input, a missing model) is the
  local backend's error, passed on unchanged.
* **Progress.** Each engine keeps the events of the job it runs; the driver long-polls them
  (``EngineActor.events``) while it waits for the result, so a restarted attempt's progress
  shows too. The result itself never travels in that stream: it is the return value of the
  retried call, so it cannot be lost or delivered twice.
* **Cancel.** ``ray.cancel`` of the running call stops the job between tiles (the local
  backend's cancel, inside the actor); an engine that does not stop within the grace period is
  killed and restarted by Ray.

Ray is an optional dependency (``pip install 'clarifier[cluster]'``), imported only when a
cluster is first used; this module imports without it. Nothing in :mod:`pipeline` knows Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

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
from app.backends.local import LocalBackend
from pipeline.errors import ImageError
from pipeline.io.atomic import atomic_write
from pipeline.params import UpscaleParams

__all__ = [
    "EngineActor",
    "RayBackend",
    "cluster_state",
    "ray_installed",
]

log = logging.getLogger(__name__)

_INSTALL_HINT = "install it with: pip install 'clarifier[cluster]'"
_RERUN_NOTE = "the cluster lost the engine running this image; Ray ran it again on a fresh one"
_MAX_EVENTS = 500  # a job's undelivered events an engine keeps (previews are the bulky ones)


def ray_installed() -> bool:
    """Whether Ray can be imported here (without importing it)."""
    return importlib.util.find_spec("ray") is not None


# Where `ray start` records the address of the cluster it started on this computer.
_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def cluster_state(address: str | None = None) -> tuple[str, str]:
    """``(state, words)`` for the window, without importing Ray or connecting: ``missing``
    (not installed), ``address`` (a configured cluster), ``running`` (one ``ray start`` started
    here) or ``local`` (a local cluster starts with the first job)."""
    if not ray_installed():
        return "missing", f"Ray is not installed; {_INSTALL_HINT}"
    given = address or os.environ.get("RAY_ADDRESS")
    if given:
        return "address", f"runs on the Ray cluster at {given}"
    try:
        started = _CURRENT_CLUSTER.read_text(encoding="utf-8").strip()
    except OSError:
        started = ""
    if started:
        return "running", f"runs on the Ray cluster started here ({started})"
    cpus = os.cpu_count() or 1
    return "local", (
        f"starts a Ray cluster on this computer with the first job (one engine per GPU, or per "
        f"CPU slot: {cpus} here)"
    )


def _ray() -> ModuleType:
    """Ray, imported now; a plain error when it is not installed. Imported by name, so that
    the type checker and the import contracts pass the same with and without the extra."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise JobError(
            ErrorKind.invalid_request, f"Running on a Ray cluster needs Ray; {_INSTALL_HINT}."
        ) from None


# --- the engine: what Ray runs on each GPU or CPU slot ----------------------------------------
@dataclass
class _JobLog:
    """The events of the job an engine runs, from ``offset`` on (what came before was read)."""

    offset: int = 0
    events: list[BackendEvent] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: BackendEvent) -> None:
        self.events.append(event)
        if len(self.events) > _MAX_EVENTS:  # nobody reads: keep the newest
            drop = len(self.events) - _MAX_EVENTS
            del self.events[:drop]
            self.offset += drop
        self.changed.set()

    def read(self, cursor: int) -> tuple[list[BackendEvent], int]:
        """The events from ``cursor`` on, and the next cursor; what is before it is let go."""
        read = min(max(0, cursor - self.offset), len(self.events))
        del self.events[:read]
        self.offset += read
        return list(self.events), self.offset + len(self.events)


def _scratch_folder() -> Path:
    """This engine's folder for the files of the job it runs; folders left by engines whose
    process is gone (killed mid-job) are removed."""
    root = Path(tempfile.gettempdir()) / "clarifier-ray"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


class EngineActor:
    """One engine on one GPU or CPU slot: the class Ray runs as an actor (an asyncio one).

    It holds a :class:`~app.backends.local.LocalBackend` for its whole life, so the engine
    worker it starts on the first job keeps its models loaded for the next. Ray restarts it
    (a fresh ``incarnation``) when its process dies. Plain Python: Ray wraps it, it imports
    nothing of Ray."""

    def __init__(self) -> None:
        self.incarnation = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._backend = LocalBackend()  # its environment is this actor's: Ray's GPU choice
        self._scratch = _scratch_folder()
        self._jobs: dict[str, _JobLog] = {}

    async def describe(self) -> dict[str, Any]:
        """Where this engine runs: its host, process and incarnation."""
        return {"incarnation": self.incarnation, "host": self.host, "pid": os.getpid()}

    async def run(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Run one job (see :meth:`RayBackend._spec`); answers the encoded output or the error.

        The engine's own errors are an answer, not an exception: Ray retries only when the
        actor itself is lost."""
        job_id = str(job["id"])
        log = _JobLog()
        self._jobs = {job_id: log}  # one job at a time: the previous job's events go
        folder = self._scratch / uuid.uuid4().hex
        source = folder / "in" / str(job["input_name"])
        target = folder / "out" / str(job["output_name"])
        paths = {str(source): str(job["input_path"]), str(target): str(job["output_path"])}

        def report(event: BackendEvent) -> None:
            if event.state == JobState.running:
                where = f"{self.host}: {event.message}" if event.message else self.host
                event = dataclasses.replace(event, message=where)
            log.add(event)

        try:
            source.parent.mkdir(parents=True)
            target.parent.mkdir()
            source.write_bytes(job["data"])
            request = Request(
                job_id,
                source,
                target,
                UpscaleParams.from_dict(job["params"]),
                dict(job["options"]),
            )
            outcome = await self._backend.run(request, report)
            data = outcome.output.read_bytes()
        except JobError as err:
            return self._error(err.kind, _rename(err.message, paths))
        except OSError as exc:  # the node's scratch folder: full, or not writable
            why = exc.strerror or str(exc)
            return self._error(
                ErrorKind.internal, f"{self.host} cannot hold the job's files: {why}"
            )
        finally:
            log.done = True
            log.changed.set()
            shutil.rmtree(folder, ignore_errors=True)
        return {
            "incarnation": self.incarnation,
            "name": outcome.output.name,
            "data": data,
            "info": dict(outcome.info),
            "timings": dict(outcome.timings),
            "warnings": [_rename(w, paths) for w in outcome.warnings],
        }

    def _error(self, kind: ErrorKind, message: str) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "error": {"kind": str(kind), "message": message}}

    async def events(
        self, job_id: str, cursor: int, incarnation: str, wait: float
    ) -> tuple[str, bool, list[BackendEvent], int, bool]:
        """The job's events from ``cursor`` on, waiting up to ``wait`` seconds for one (or for
        the job's end): this engine's incarnation, whether it runs (or ran) the job, the
        events, the next cursor, and whether the job has ended here. A cursor of another
        incarnation counts from the start."""
        if incarnation != self.incarnation:
            cursor = 0
        log = self._jobs.get(job_id)
        if log is None:
            await asyncio.sleep(wait)
            log = self._jobs.get(job_id)
            if log is None:
                return self.incarnation, False, [], cursor, False
        events, following = log.read(cursor)
        if not events and not log.done:
            log.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await log.changed.wait()
            events, following = log.read(cursor)
        return self.incarnation, True, events, following, log.done

    async def close(self) -> None:
        """Stop the engine worker (the actor is killed after)."""
        await self._backend.aclose()
        shutil.rmtree(self._scratch, ignore_errors=True)


def _rename(text: str, paths: Mapping[str, str]) -> str:
    """``text`` with the engine's scratch paths replaced by the job's own."""
    for scratch, own in paths.items():
        text = text.replace(scratch, own)
    return text


# --- the driver: the backend the controller runs ----------------------------------------------
@dataclass
class _Engine:
    handle: Any  # the actor handle
    index: int
    resource: str  # "GPU" or "CPU slot"
    host: str = ""


class RayBackend(Backend, backend="ray"):
    """Runs requests on the engines of a Ray cluster. Its name, label and cancel support come
    from its registry entry (``registry.get("ray")``).

    The provider pool builds every backend but the local one with a provider's arguments (an
    HTTP client, a base URL, a key, a request budget); the cluster needs none of them and takes
    its ``address`` as a keyword (the CLI's ``--ray-address``). ``engines`` caps the number of
    engines (default: one per GPU, else one per CPU slot); ``task_retries`` is how many times
    Ray runs a job again after losing its engine."""

    # Jobs past the engines' number wait inside the backend for a free engine.
    default_concurrency: ClassVar[int] = 256
    # The provider pool asks every non-local backend for a request budget; the cluster has none.
    budget_limit: ClassVar[tuple[int, float]] = (1_000_000, 1.0)

    def __init__(
        self,
        client: object = None,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        address: str | None = None,
        model: str | None = None,
        budget: object = None,
        concurrency: int | None = None,
        engines: int | None = None,
        task_retries: int = 3,
        cancel_grace: float = 5.0,
        poll_wait: float = 1.0,
        start_timeout: float = 300.0,
    ) -> None:
        del client, base_url, api_key, budget  # see the class docstring
        if model:
            raise ValueError(f"the Ray cluster runs Clarifier's engine; it has no model {model!r}")
        if engines is not None and engines < 1:
            raise ValueError(f"engines must be at least 1, not {engines}")
        self.address = address or None
        self.concurrency = concurrency or self.default_concurrency
        self._engines_wanted = engines
        self._task_retries = task_retries
        self._cancel_grace = cancel_grace
        self._poll_wait = poll_wait
        self._start_timeout = start_timeout
        # Starting the cluster's engines: one task, whichever job asks first; a job cancelled
        # while it waits does not cancel it, and a failure is every job's answer.
        self._started: asyncio.Task[asyncio.Queue[_Engine]] | None = None
        self._engines: list[_Engine] = []
        self._starting: list[asyncio.Task[BaseException | None]] = []
        self._running: dict[str, _Engine] = {}
        self._connected_here = False  # this backend called ray.init (and shuts it down)

    # --- what the CLI and the window ask ------------------------------------------------------
    def check_ready(self) -> None:
        """Raise the :class:`JobError` every job would fail with now (Ray not installed)."""
        if not ray_installed():
            raise JobError(
                ErrorKind.invalid_request, f"Running on a Ray cluster needs Ray; {_INSTALL_HINT}."
            )

    @property
    def engines(self) -> int:
        """How many engines the cluster runs for this backend (0 before the first job)."""
        return len(self._engines)

    @property
    def busy(self) -> int:
        """How many of them run a job now."""
        return len(self._running)

    def engine_for(self, job_id: str) -> Any | None:
        """The actor handle running ``job_id`` now, or None (for tools and tests)."""
        engine = self._running.get(job_id)
        return engine.handle if engine is not None else None

    # --- starting the engines -----------------------------------------------------------------
    async def _start(self) -> asyncio.Queue[_Engine]:
        """The queue of idle engines, once the cluster is reached and one engine is up."""
        task = self._started
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # A start that failed is tried again by the next job (the cluster may be up now);
            # the jobs that were waiting on it all fail with its error, once each.
            task = self._started = asyncio.create_task(self._start_once())
        return await asyncio.shield(task)

    async def _start_once(self) -> asyncio.Queue[_Engine]:
        ray = _ray()
        if not ray.is_initialized():
            await asyncio.to_thread(self._connect, ray)
            self._connected_here = True
        try:
            return await self._start_engines(ray)
        except JobError:
            engines, self._engines = self._engines, []
            for task in self._starting:
                task.cancel()
            for engine in engines:  # pending ones too: they must not take the cluster later
                with contextlib.suppress(Exception):
                    ray.kill(engine.handle, no_restart=True)
            raise

    def _connect(self, ray: ModuleType) -> None:
        where = self.address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        try:
            # Quiet: the engines' own output stays in their logs, Ray's notices out of the CLI's.
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds for one failed connection
            raise JobError(
                ErrorKind.worker_died, f"Cannot connect to the Ray cluster ({where}): {exc}"
            ) from None
        _notices_to_the_log(ray)

    async def _start_engines(self, ray: ModuleType) -> asyncio.Queue[_Engine]:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            count, resource, per = gpus, "GPU", {"num_gpus": 1}
        else:
            count, resource, per = max(1, int(resources.get("CPU", 1))), "CPU slot", {"num_cpus": 1}
        if self._engines_wanted is not None:
            count = min(count, self._engines_wanted)
        actor = ray.remote(EngineActor).options(max_restarts=-1, **per)
        idle: asyncio.Queue[_Engine] = asyncio.Queue()
        self._engines = [_Engine(actor.remote(), i, resource) for i in range(count)]
        self._starting = [
            asyncio.create_task(self._bring_up(engine, idle)) for engine in self._engines
        ]
        last: BaseException | None = None
        try:
            async with asyncio.timeout(self._start_timeout):
                for started in asyncio.as_completed(self._starting):
                    last = await started
                    if last is None:  # one engine is up: jobs start; the others join when ready
                        return idle
        except TimeoutError:
            raise JobError(
                ErrorKind.worker_died,
                f"No engine started on the Ray cluster within {self._start_timeout:.0f} s: it "
                f"has no free {resource} (each engine takes one)",
            ) from None
        raise JobError(
            ErrorKind.worker_died, f"No engine could start on the Ray cluster: {_describe(last)}"
        )

    async def _bring_up(
        self, engine: _Engine, idle: asyncio.Queue[_Engine]
    ) -> BaseException | None:
        try:
            facts = await engine.handle.describe.remote()
        except Exception as exc:  # noqa: BLE001 - an actor that cannot start: said once, above
            log.warning("a Ray engine could not start: %s", _describe(exc))
            return exc
        engine.host = str(facts.get("host", ""))
        idle.put_nowait(engine)
        return None

    # --- running a job ------------------------------------------------------------------------
    async def run(self, request: Request, report: Report) -> Outcome:
        idle = await self._start()
        if idle.empty():
            report(BackendEvent(message="waiting for a free engine on the cluster"))
        engine = await idle.get()
        self._running[request.job_id] = engine
        try:
            return await self._run_on(engine, request, report)
        finally:
            self._running.pop(request.job_id, None)
            idle.put_nowait(engine)

    def _spec(self, engine: _Engine, request: Request, data: bytes) -> dict[str, Any]:
        # The device is the engine's slot, not this computer's setting: Ray shows a GPU engine
        # its one GPU (as the first), and a CPU-slot engine runs on the CPU.
        options = {**request.options, "device": "cuda" if engine.resource == "GPU" else "cpu"}
        return {
            "id": request.job_id,
            "input_name": request.input.name,
            "input_path": str(request.input),
            "output_name": request.output.name,
            "output_path": str(request.output),
            "data": data,
            "params": request.params.to_dict(),
            "options": options,
        }

    async def _run_on(self, engine: _Engine, request: Request, report: Report) -> Outcome:
        ray = _ray()
        try:
            data = await asyncio.to_thread(request.input.read_bytes)
        except OSError as exc:
            raise JobError(
                ErrorKind.invalid_request,
                f"{request.input}: cannot be read ({exc.strerror or exc})",
            ) from None
        # Only the job itself is run again when its engine is lost; the other calls are cheap
        # questions, asked again by their callers.
        call = engine.handle.run.options(max_task_retries=self._task_retries)
        ref = call.remote(self._spec(engine, request, data))
        del data
        seen: set[str] = set()
        stop = asyncio.Event()
        watch = asyncio.create_task(self._watch(engine, request.job_id, report, seen, stop))
        try:
            reply: dict[str, Any] = await ref
        except asyncio.CancelledError:
            await self._cancel(ray, engine, ref)
            raise
        except ray.exceptions.TaskCancelledError:
            raise JobError(ErrorKind.canceled, "canceled") from None
        except ray.exceptions.RayActorError as exc:
            raise JobError(
                ErrorKind.worker_died,
                f"The Ray cluster lost the engine running this image and gave up after "
                f"{self._task_retries} more tries: {_describe(exc)}",
            ) from None
        except ray.exceptions.RayTaskError as exc:  # a fault of the engine's own code
            raise JobError(
                ErrorKind.internal, f"internal error on the Ray cluster: {_describe(exc)}"
            ) from None
        except ray.exceptions.RayError as exc:  # the result's object lost, the owner gone, ...
            raise JobError(
                ErrorKind.transient, f"The Ray cluster failed: {_describe(exc)}"
            ) from None
        finally:
            await self._stop_watching(watch, stop)
        return await self._finish(request, reply, seen)

    async def _finish(self, request: Request, reply: dict[str, Any], seen: set[str]) -> Outcome:
        error = reply.get("error")
        if error:
            try:
                kind = ErrorKind(error.get("kind"))
            except ValueError:  # a node on another version of Clarifier
                kind = ErrorKind.internal
            raise JobError(kind, str(error.get("message") or "the engine failed"))
        target = request.output.with_name(str(reply["name"]))
        data: bytes = reply["data"]
        try:
            await asyncio.to_thread(atomic_write, target, lambda fp: fp.write(data))
        except ImageError as exc:
            raise JobError(ErrorKind.invalid_request, str(exc)) from None
        warnings = [str(w) for w in reply.get("warnings") or ()]
        if len(seen | {str(reply.get("incarnation"))}) > 1:
            warnings.append(_RERUN_NOTE)
        return Outcome(
            output=target,
            info=reply.get("info") or {},
            timings=reply.get("timings") or {},
            warnings=tuple(warnings),
        )

    async def _watch(
        self, engine: _Engine, job_id: str, report: Report, seen: set[str], stop: asyncio.Event
    ) -> None:
        """Relay the engine's events for ``job_id`` until the job ends there or ``stop`` is
        set; note each incarnation that ran it (more than one: Ray ran it again after losing
        an engine)."""
        ray = _ray()
        cursor, current = 0, ""
        while not stop.is_set():
            try:
                current, known, events, cursor, done = await engine.handle.events.remote(
                    job_id, cursor, current, self._poll_wait
                )
            except ray.exceptions.RayError:  # the engine is restarting: ask again soon
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_wait):
                        await stop.wait()
                continue
            if known and current not in seen:
                seen.add(current)
                if len(seen) > 1:
                    report(BackendEvent(message=_RERUN_NOTE))
            for event in events:
                report(event)
            if done:
                return

    async def _stop_watching(self, watch: asyncio.Task[None], stop: asyncio.Event) -> None:
        """End the watcher; its question in flight is let finish (the job's end answers it at
        once): a call given up half-way upsets Ray's client (``ray://``) connection."""
        stop.set()
        try:
            async with asyncio.timeout(self._poll_wait + 2.0):
                await asyncio.shield(watch)
        except TimeoutError:
            watch.cancel()
        except asyncio.CancelledError:
            watch.cancel()
            raise
        except Exception:  # a listener's fault: the job's result still counts
            log.exception("watching a Ray engine's progress failed")

    async def _cancel(self, ray: ModuleType, engine: _Engine, ref: Any) -> None:
        """Stop the job on its engine; an engine that does not stop in time is restarted."""
        with contextlib.suppress(Exception):
            ray.cancel(ref)
        try:
            async with asyncio.timeout(self._cancel_grace + 2.0):
                await _settled(ref)
        except TimeoutError:
            log.info("a Ray engine did not stop within %.1f s; restarting it", self._cancel_grace)
            with contextlib.suppress(Exception):
                ray.kill(engine.handle, no_restart=False)

    async def aclose(self) -> None:
        engines, self._engines = self._engines, []
        starting, self._starting = self._starting, []
        started, self._started = self._started, None
        for task in (*starting, *([started] if started is not None else [])):
            task.cancel()
        if started is not None:
            with contextlib.suppress(BaseException):
                await started
        if not engines and not self._connected_here:
            return
        ray = _ray()
        if engines:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await asyncio.gather(
                        *(e.handle.close.remote() for e in engines), return_exceptions=True
                    )
            for engine in engines:
                with contextlib.suppress(Exception):
                    ray.kill(engine.handle, no_restart=True)
        if self._connected_here:
            self._connected_here = False
            await asyncio.to_thread(ray.shutdown)


def _notices_to_the_log(ray: ModuleType) -> None:
    """Send the cluster's notices (a job run again, an engine lost) to this module's log, which
    a person sees on standard error, instead of the driver's standard output: there Ray prints
    them unconditionally (``ray._private.worker.print_to_stdstream``, asked for by its error
    listener, whatever ``log_to_driver`` says), and there go the CLI's ``--json`` lines. Done
    only for a connection this backend made; a Ray without that function keeps printing."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if worker is None or original is None or getattr(original, "__module__", "") == __name__:
        return  # not there, or already ours

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("is_err") or data.get("pid") != "raylet":
            original(data, ignore_prefix)
            return
        for line in data.get("lines") or ():
            log.warning("Ray: %s", line)

    worker.print_to_stdstream = to_log


async def _settled(ref: Any) -> None:
    """Wait until ``ref`` has an answer, whatever it is."""
    with contextlib.suppress(Exception):
        await ref


def _describe(exc: BaseException | None) -> str:
    """A Ray error in one line: its first line, without Ray's traceback (for an error raised in
    an engine, the engine's own error)."""
    if exc is None:
        return "unknown error"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]
