"""The controller with a remote backend and the history store: persistence, restart-resume,
submit-unknown, lost results, retries that never pay twice, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.backends.base import ErrorKind, JobState
from app.backends.remote import PollCadence, RequestBudget
from app.jobs import JobController
from app.store import history
from app.store.history import HistoryStore
from pipeline.params import UpscaleParams
from tests.backends.toy import ToyBackend, ToyDouble
from tests.doubles.http_double import Resp, Scenario, until


@pytest.fixture
def double():
    with ToyDouble() as d:
        yield d


def _backend(client, double, **kw) -> ToyBackend:
    kw.setdefault("cadence", PollCadence(0.01))
    kw.setdefault("retry_base", 0.01)
    kw.setdefault("budget", RequestBudget(10_000, 1.0))
    idempotent = kw.pop("idempotent", False)
    backend = ToyBackend(client, double.url, "secret", **kw)
    backend.idempotent_submit = idempotent
    return backend


def test_every_state_change_is_recorded_with_ids_seed_and_timings(double, photo, tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(
                photo, tmp_path / "out.png", UpscaleParams(seed=7), backend="toy"
            )
            await controller.join()
            return job

    job = asyncio.run(go())
    assert job.state is JobState.succeeded
    row = store.get(job.id)
    assert row is not None and row.state == "succeeded" and row.seed == 7
    assert row.remote_id == next(iter(double.jobs)) and row.info["engine"] == "toy/toy-1"
    assert {"remote", "download", "total"} <= set(row.timings)
    assert row.output == str(tmp_path / "out.png") and Path(row.output).exists()
    assert row.finished is not None and row.finished >= row.created


def test_restart_resumes_polling_without_submitting_again(double, photo, tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    double.default_scenario = Scenario(run_s=1.0)

    async def first_session():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await until(lambda: job.state is JobState.running)
            await controller.detach()  # the app quits with the job in flight
            return job.id

    job_id = asyncio.run(first_session())
    row = store.get(job_id)
    assert row.state == "running" and row.remote["phase"] == "submitted"
    assert double.count("POST", "^/jobs$") == 1 and double.count("POST", "/cancel$") == 0

    async def second_session():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            [job] = controller.resume()
            await controller.join()
            return job

    job = asyncio.run(second_session())
    assert job.id == job_id and job.state is JobState.succeeded and job.outcome.output.exists()
    assert double.count("POST", "^/jobs$") == 1  # resumed by polling, never re-submitted
    assert store.get(job_id).state == "succeeded"


def test_a_dropped_submit_parks_the_job_and_only_the_person_can_send_it_again(
    double, photo, tmp_path
):
    store = HistoryStore(tmp_path / "h.sqlite3")
    double.inject("POST", "^/jobs$", "drop_after")

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await controller.join()
            parked = (job.state, job.error.kind, job.message)
            assert double.count("POST", "^/jobs$") == 1  # not re-sent automatically
            controller.resolve(job.id, resubmit=True)
            await controller.join()
            return job, parked

    job, parked = asyncio.run(go())
    assert parked[0] is JobState.submit_unknown and parked[1] is ErrorKind.submit_unknown
    assert "may or may not have accepted" in parked[2]
    assert job.state is JobState.succeeded and double.count("POST", "^/jobs$") == 2


def test_a_crash_mid_submit_is_reconciled_not_resent(double, photo, tmp_path):
    """The checkpoint 'submitting' was persisted, then the app died before the answer."""
    store = HistoryStore(tmp_path / "h.sqlite3")
    double.inject("POST", "^/jobs$", "delay", delay=1.0)

    async def crash():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await until(lambda: job.state is JobState.submitting)
            await controller.detach()
            return job.id

    job_id = asyncio.run(crash())
    assert store.get(job_id).state == "submitting"
    deadline = time.monotonic() + 5
    while not double.jobs and time.monotonic() < deadline:  # the slow submit lands after all
        time.sleep(0.02)

    async def restart(idempotent):
        async with httpx.AsyncClient() as client:
            backend = _backend(client, double, idempotent=idempotent)
            controller = JobController({"toy": backend}, store=store)
            [job] = controller.resume()
            await controller.join()
            return job

    job = asyncio.run(restart(False))
    assert job.state is JobState.submit_unknown and store.get(job_id).state == "submit-unknown"
    # With an idempotency key the same submit is sent again and the provider dedupes it.
    double.honour_keys = True
    key = store.get(job_id).remote["key"]
    double.keys[key] = next(iter(double.jobs))  # the first, slow submit did arrive
    store.save(store.get(job_id).__class__(**{**vars(store.get(job_id)), "state": "submitting"}))
    job = asyncio.run(restart(True))
    assert job.state is JobState.succeeded and len(double.jobs) == 1


def test_an_expired_record_ends_lost(double, photo, tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    double.default_scenario = Scenario(run_s=60)

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await until(lambda: job.state is JobState.running)
            double.clock.advance(7200)
            await controller.join()
            return job

    job = asyncio.run(go())
    assert job.state is JobState.lost and "expired" in job.message
    assert store.get(job.id).state == "lost"


def test_a_long_outage_retries_from_the_checkpoint_never_paying_twice(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.2)
    double.inject("GET", "^/jobs/", "respond", times=12, response=Resp.json(503, {"error": "down"}))

    async def go():
        async with httpx.AsyncClient() as client:
            backend = _backend(client, double, retry_for=0.05)
            controller = JobController({"toy": backend}, backoff=0.01, max_attempts=20)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await controller.join()
            return job

    job = asyncio.run(go())
    assert job.state is JobState.succeeded and job.attempts > 1
    assert double.count("POST", "^/jobs$") == 1


def test_a_person_retry_after_a_failed_download_keeps_the_checkpoint(double, photo, tmp_path):
    double.default_scenario = Scenario(run_s=0.05)
    double.inject("GET", "^/cdn/", "respond", times=30, response=Resp.json(503, {"error": "cdn"}))

    async def go():
        async with httpx.AsyncClient() as client:
            backend = _backend(client, double, retry_for=0.05)
            controller = JobController({"toy": backend}, max_attempts=1)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await controller.join()
            failed = (job.state, job.remote["phase"])
            double.faults.clear()
            controller.retry(job.id)
            await controller.join()
            return job, failed

    job, failed = asyncio.run(go())
    assert failed == (JobState.failed, "done")
    assert job.state is JobState.succeeded and double.count("POST", "^/jobs$") == 1


def test_cancel_reaches_the_provider_and_is_recorded(double, photo, tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    double.default_scenario = Scenario(run_s=30)

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await until(lambda: job.state is JobState.running)
            controller.cancel(job.id)
            await controller.join()
            return job

    job = asyncio.run(go())
    assert job.state is JobState.canceled and job.message == "canceled at Toy"
    assert double.count("POST", "/cancel$") == 1 and store.get(job.id).state == "canceled"


# --- a history that cannot be written -----------------------------------------------------------
def _fill_up(store: HistoryStore) -> Callable[[], None]:
    """Make the history's database full, as a full disk does: SQLite then answers "database or
    disk is full" to any write that needs room. Returns what frees the room again."""
    path = store.path
    raw = sqlite3.connect(path, isolation_level=None)
    pages = raw.execute("PRAGMA page_count").fetchone()[0]
    raw.execute(f"PRAGMA max_page_count = {pages}")
    n = 0
    with contextlib.suppress(sqlite3.OperationalError):  # small rows until not even one fits
        while True:
            raw.execute(
                "INSERT INTO runs (id, created, updated, state, backend, input, output, params) "
                "VALUES (?, 0, 0, 'succeeded', 'toy', '', '', '{}')",
                (f"filler-{n}",),
            )
            n += 1
    raw.close()
    # The limit holds per connection: the store's own is the one a full disk would refuse.
    db = store._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    return lambda: db.execute("PRAGMA max_page_count = 1073741823")


def _pixels(source) -> np.ndarray:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return np.asarray(im.convert("RGB"))


def _served(double, job_id: str) -> bytes:
    data = double.cdn_lookup(double.jobs[job_id]["output"])
    assert data is not None
    return data


def test_a_full_disk_is_one_plain_warning_and_the_history_catches_up(
    double, photo, tmp_path, caplog
):
    store = HistoryStore(tmp_path / "h.sqlite3")
    free = _fill_up(store)

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            jobs = [
                controller.submit(photo, tmp_path / f"out{i}.png", UpscaleParams(), backend="toy")
                for i in range(3)
            ]
            await controller.join()
            waiting = (store.pending, controller.history_problem)
            free()  # the disk has room again: the next write catches up
            await controller.join()
            return jobs, waiting, controller.history_problem

    with caplog.at_level(logging.INFO):
        jobs, (waiting, problem), after = asyncio.run(go())
    # One plain warning for the whole outage: no traceback, the reason, what it means.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "database or disk is full" in warnings[0].getMessage()
    assert "outputs are saved" in warnings[0].getMessage() and problem is not None
    # The jobs went on: every output is the provider's result, each submitted once.
    assert [j.state for j in jobs] == [JobState.succeeded] * 3 and waiting == 3
    for job in jobs:
        assert np.array_equal(_pixels(job.outcome.output), _pixels(_served(double, job.remote_id)))
    assert double.count("POST", "^/jobs$") == 3 and len(double.jobs) == 3
    # The history caught up: another connection reads every row, succeeded, with its output.
    assert after is None and store.pending == 0
    fresh = HistoryStore(tmp_path / "h.sqlite3")
    for job in jobs:
        row = fresh.get(job.id)
        assert row is not None and row.state == "succeeded"
        assert row.output == str(job.outcome.output) and row.remote_id == job.remote_id


def test_a_locked_database_is_waited_for_briefly_and_caught_up(
    double, photo, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(history, "_BUSY_MS", 100)  # a test need not wait five seconds
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(path)
    other = sqlite3.connect(path, isolation_level=None)  # another program holds a write lock
    other.execute("BEGIN EXCLUSIVE")

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await controller.join()
            seen = store.get(job.id)  # the store answers with the row it keeps
            other.execute("ROLLBACK")
            await controller.join()
            return job, seen

    with caplog.at_level(logging.WARNING):
        job, seen = asyncio.run(go())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "database is locked" in warnings[0].getMessage()
    assert job.state is JobState.succeeded and seen is not None and seen.state == "succeeded"
    assert np.array_equal(_pixels(job.outcome.output), _pixels(_served(double, job.remote_id)))
    assert double.count("POST", "^/jobs$") == 1
    other.close()
    assert HistoryStore(path).get(job.id).state == "succeeded"


def test_polls_riding_out_5xx_bursts_leave_a_complete_history_row(double, photo, tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    double.default_scenario = Scenario(run_s=0.2)
    double.inject("GET", "^/jobs/", "respond", times=3, response=Resp.json(503, {"error": "x"}))
    double.inject("GET", "^/jobs/", "respond", response=Resp.html(502, "Bad Gateway"))

    async def go():
        async with httpx.AsyncClient() as client:
            controller = JobController({"toy": _backend(client, double)}, store=store)
            job = controller.submit(photo, tmp_path / "out.png", UpscaleParams(), backend="toy")
            await controller.join()
            return job

    job = asyncio.run(go())
    row = HistoryStore(tmp_path / "h.sqlite3").get(job.id)
    assert row is not None and row.state == "succeeded" and row.attempts == 1
    assert row.remote_id == job.remote_id and row.remote["phase"] == "done"
    assert row.output == str(tmp_path / "out.png") and row.error_kind is None
    assert np.array_equal(_pixels(tmp_path / "out.png"), _pixels(_served(double, job.remote_id)))
    assert double.count("POST", "^/jobs$") == 1
