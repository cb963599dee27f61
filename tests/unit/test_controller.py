"""The job controller against scripted backends: states, concurrency, retries, cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.backends.base import Backend, BackendEvent, ErrorKind, JobError, JobState, Outcome
from app.jobs import JobController, JobEvent
from pipeline.params import UpscaleParams


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, script=None, concurrency: int = 1, delay: float = 0.01) -> None:
        self.concurrency = concurrency
        self.script = list(script or [])  # errors to raise on successive calls
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.cancelled = 0
        self.delay = delay
        self.closed = False

    async def run(self, request, report):
        self.calls += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            report(BackendEvent(state=JobState.running))
            for i in range(3):
                await asyncio.sleep(self.delay)
                report(BackendEvent(stage="work", done=i + 1, total=3))
            if self.script:
                error = self.script.pop(0)
                if error is not None:
                    raise error
            return Outcome(output=request.output, info={}, timings={"work": 0.03})
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def aclose(self):
        self.closed = True


def _run(coro):
    return asyncio.run(coro)


def _submit(controller: JobController, n: int = 1, backend: str = "scripted"):
    return [
        controller.submit(Path(f"in{i}.png"), Path(f"out{i}.png"), UpscaleParams(), backend=backend)
        for i in range(n)
    ]


def test_a_job_goes_through_the_normalized_states() -> None:
    async def scenario():
        backend = ScriptedBackend()
        controller = JobController({"scripted": backend})
        events: list[JobEvent] = []
        controller.add_listener(events.append)
        [job] = _submit(controller)
        await controller.join()
        await controller.aclose()
        return job, events, backend

    job, events, backend = _run(scenario())
    states = [e.state for e in events]
    assert states[0] == JobState.queued and states[-1] == JobState.succeeded
    assert JobState.running in states
    assert [e.done for e in events if e.stage == "work"] == [1, 2, 3]
    assert job.outcome is not None and job.outcome.output == Path("out0.png")
    assert job.elapsed is not None and job.elapsed > 0 and backend.closed


def test_concurrency_limit_is_respected() -> None:
    async def scenario():
        backend = ScriptedBackend(concurrency=2)
        controller = JobController({"scripted": backend})
        jobs = _submit(controller, 6)
        await controller.join()
        return backend, jobs

    backend, jobs = _run(scenario())
    assert backend.max_running == 2
    assert all(j.state == JobState.succeeded for j in jobs)


def test_retryable_errors_are_retried_with_the_providers_delay() -> None:
    async def scenario():
        backend = ScriptedBackend(
            [JobError(ErrorKind.rate_limited, "slow down", retry_after=0.05), None]
        )
        controller = JobController({"scripted": backend}, backoff=10)
        events: list[JobEvent] = []
        controller.add_listener(events.append)
        [job] = _submit(controller)
        await controller.join()
        return job, backend, events

    job, backend, events = _run(scenario())
    assert job.state == JobState.succeeded and job.attempts == 2 and backend.calls == 2
    assert any("retrying in" in e.message for e in events)


def test_retries_stop_after_max_attempts() -> None:
    async def scenario():
        errors = [JobError(ErrorKind.transient, "502 from provider", retry_after=0.01)] * 5
        backend = ScriptedBackend(errors)
        controller = JobController({"scripted": backend}, max_attempts=3)
        [job] = _submit(controller)
        await controller.join()
        return job, backend

    job, backend = _run(scenario())
    assert job.state == JobState.failed and backend.calls == 3
    assert job.error is not None and job.error.kind == ErrorKind.transient


def test_permanent_errors_fail_at_once_with_their_message() -> None:
    async def scenario():
        backend = ScriptedBackend([JobError(ErrorKind.invalid_request, "scale too large")])
        controller = JobController({"scripted": backend})
        [job] = _submit(controller)
        await controller.join()
        return job, backend

    job, backend = _run(scenario())
    assert job.state == JobState.failed and backend.calls == 1
    assert job.message == "scale too large" and not job.error.retryable


def test_cancel_a_queued_job_never_runs_it() -> None:
    async def scenario():
        backend = ScriptedBackend(delay=0.05)
        controller = JobController({"scripted": backend})
        first, second = _submit(controller, 2)
        await asyncio.sleep(0.02)
        assert controller.cancel(second.id)
        await controller.join()
        return first, second, backend

    first, second, backend = _run(scenario())
    assert first.state == JobState.succeeded and second.state == JobState.canceled
    assert backend.calls == 1


def test_cancel_a_running_job_stops_the_backend() -> None:
    async def scenario():
        backend = ScriptedBackend(delay=0.2)
        controller = JobController({"scripted": backend})
        [job] = _submit(controller)
        await asyncio.sleep(0.05)
        controller.cancel(job.id)
        await controller.join()
        assert not controller.cancel(job.id)  # already ended
        return job, backend

    job, backend = _run(scenario())
    assert job.state == JobState.canceled and backend.cancelled == 1
    assert job.error is not None and job.error.kind == ErrorKind.canceled


def test_a_broken_listener_or_backend_fails_one_job_only() -> None:
    class Exploding(ScriptedBackend):
        async def run(self, request, report):
            if request.input.name == "in0.png":
                raise RuntimeError("bug")
            return await super().run(request, report)

    async def scenario():
        controller = JobController({"scripted": Exploding()})
        controller.add_listener(lambda e: 1 / 0)
        jobs = _submit(controller, 2)
        await controller.join()
        return jobs

    bad, good = _run(scenario())
    assert bad.state == JobState.failed and "RuntimeError: bug" in bad.message
    assert bad.error.kind == ErrorKind.internal
    assert good.state == JobState.succeeded


def test_unknown_backend_is_refused() -> None:
    async def scenario():
        controller = JobController({"scripted": ScriptedBackend()})
        with pytest.raises(ValueError, match="unknown backend 'remote'"):
            _submit(controller, backend="remote")

    _run(scenario())
