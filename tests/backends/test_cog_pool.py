"""Several Cog servers as one pool: jobs spread by free capacity, moved off a server that dies,
and a clear error (with nothing lost) when every server is down.

The pool is driven as the app drives it, through the job controller and the provider pool, with
the servers listed in ``CLARIFIER_COG_BASE_URL``. The servers are the real Cog server (coglet)
with the tiny predictors in ``tests/cog_predictor/`` (see ``test_cog.py``); one runs the
``async`` twin with two slots. The pool's bookkeeping (ranking, order, when to give up) and its
reading of Cog's health check are tested on their own, the latter against
:class:`tests.doubles.cog.CogHealthDouble` for the ``concurrency`` that Cog's Python server
reports and coglet does not.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.backends import registry
from app.backends.base import ErrorKind, JobError, JobState, Request
from app.backends.providers.cog import CogBackend
from app.backends.providers.cog_pool import (
    CogServer,
    ServerPool,
    ServerState,
    check_servers,
    read_health,
)
from app.jobs.controller import JobController
from app.jobs.providers import ProviderPool
from app.store.history import HistoryStore
from app.store.settings import MULTI_URL_PROVIDERS, Settings, load_settings, split_urls
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.backends.test_cog import CogServer as RunningCog
from tests.backends.test_cog import _free_port, start_server, stop_server
from tests.doubles.cog import CogHealthDouble
from tests.doubles.http_double import until

CONCURRENT = Path(__file__).resolve().parent.parent / "cog_predictor" / "predict_concurrent.py"
STEP = "0.02"  # seconds per step: 60 steps run 1.2 s
MID = UpscaleParams(num_inference_steps=60, seed=4242)
QUICK = {  # the backend's waits, shortened for the tests
    "retry_base": 0.01,
    "busy_poll": 0.05,
    "heartbeat": 0.3,
    "failover_after": 0.5,
    "probe_timeout": 2.0,
}


# --- settings and construction ----------------------------------------------------------------
def test_the_url_setting_lists_servers_in_either_form(tmp_path):
    assert split_urls("http://a:5000, http://b:5000/ http://a:5000;http://c:1") == (
        "http://a:5000",
        "http://b:5000",
        "http://c:1",
    )
    assert split_urls(["http://a:5000", "http://b:5000 http://c:1"]) == split_urls(
        "http://a:5000,http://b:5000,http://c:1"
    )
    assert Settings(provider_urls={"cog": "http://a:5000, http://b:5000"}).validate()
    with pytest.raises(ValueError, match="segmind URL must be one address, not 2"):
        Settings(provider_urls={"segmind": "https://a.example https://b.example"}).validate()
    with pytest.raises(ValueError, match="must start with http:// or https://, not 'b:5000'"):
        Settings(provider_urls={"cog": "http://a:5000, b:5000"}).validate()
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"provider_urls": {"cog": ["http://a:5000", "http://b:5000"]}}))
    assert load_settings(path).provider_urls == {"cog": "http://a:5000, http://b:5000"}


def test_only_the_backends_that_drive_a_pool_may_list_several_urls():
    """The settings' list of pooled providers is the backends that keep a list of servers."""

    async def pooled() -> set[str]:
        async with httpx.AsyncClient() as client:
            return {
                name
                for name in registry.provider_names()
                if hasattr(registry.backend_class(name)(client, None, "k"), "servers")
            }

    assert asyncio.run(pooled()) == MULTI_URL_PROVIDERS == {"cog"}


def test_the_environment_variable_lists_the_servers():
    async def go():
        async with httpx.AsyncClient() as client:
            env = {"CLARIFIER_COG_BASE_URL": "http://127.0.0.1:5000, http://gpu-box.lan:5000/"}
            backend = ProviderPool(Settings(), client=client, env=env).get("cog")
            assert isinstance(backend, CogBackend)
            return backend

    backend = asyncio.run(go())
    assert [(s.url, s.sync) for s in backend.servers] == [
        ("http://127.0.0.1:5000", False),  # webhooks reach this machine's loopback
        ("http://gpu-box.lan:5000", True),  # elsewhere: synchronous requests
    ]
    assert backend.base_url == "http://127.0.0.1:5000" and not backend.sync


# --- reading the health check and handing out slots -------------------------------------------
def _health(status: str, concurrency: tuple[int, int] | None = None) -> dict:
    body: dict = {"status": status, "setup": {"started_at": "t0", "logs": "boom\nweights lost"}}
    if concurrency:
        body["concurrency"] = {"max": concurrency[0], "current": concurrency[1]}
    return body


def test_free_capacity_as_cog_and_coglet_report_it():
    cases = {
        ("READY", None): (ServerState.ready, 1),  # coglet: a free slot, how many unknown
        ("BUSY", None): (ServerState.busy, 0),
        ("READY", (3, 1)): (ServerState.ready, 2),  # Cog's Python server with concurrency.max
        ("BUSY", (2, 2)): (ServerState.busy, 0),
        ("STARTING", None): (ServerState.starting, 0),
        ("SETUP_FAILED", None): (ServerState.failed, 0),
        ("DEFUNCT", None): (ServerState.failed, 0),
    }
    for (status, concurrency), (state, free) in cases.items():
        server = CogServer("http://x")
        read_health(server, _health(status, concurrency))
        assert (server.state, server.free) == (state, free), (status, concurrency)
    failed = CogServer("http://x")
    read_health(failed, _health("SETUP_FAILED"))
    assert failed.error is not None and failed.error.kind is ErrorKind.model_failed
    assert "weights lost" in failed.error.message
    read_health(failed, {"detail": "Not Found"})  # something else answers there
    assert failed.state is ServerState.failed and "not answer like a Cog server" in failed.problem


def _pool(bodies: dict[str, dict], **kw) -> ServerPool:
    servers = [CogServer(url) for url in bodies]

    async def ask(server: CogServer) -> None:
        body = bodies[server.url]
        if body:
            read_health(server, body)
        else:
            server.state, server.problem = ServerState.unreachable, "connection refused"

    return ServerPool(servers, ask, poll=0.02, **kw)


def test_slots_go_by_free_capacity_then_fewest_jobs_in_arrival_order():
    async def go():
        pool = _pool(
            {
                "http://a": _health("READY", (3, 1)),  # two free
                "http://b": _health("READY", (1, 0)),  # one free
                "http://c": _health("BUSY", (2, 2)),  # none
            }
        )
        claims = [pool.enqueue() for _ in range(4)]
        granted = [await pool.wait(claim, within=0.1) for claim in claims]
        late = pool.enqueue(urgent=True)  # a moved job goes before the one still waiting
        pool.release(claims[0])  # a's first job is done: a has a slot again
        return [s.url if s else None for s in granted], await pool.wait(late, within=0.1)

    granted, late = asyncio.run(go())
    # a (2 free), then b (1 free, fewer of our jobs than a), then a's second slot; c is full.
    assert granted == ["http://a", "http://b", "http://a", None]
    assert late is not None and late.url == "http://a"


def test_a_job_waits_while_a_server_may_free_up_and_fails_when_none_can():
    async def go():
        waiting = _pool({"http://a": _health("BUSY"), "http://b": {}}, reach_for=lambda: 0.05)
        claim = waiting.enqueue()
        busy = await waiting.wait(claim, within=0.2)  # b is down, but a is only busy: waits
        message = waiting.waiting_message()
        down = _pool({"http://a": {}, "http://b": {}}, reach_for=lambda: 0.1)
        started = time.monotonic()
        with pytest.raises(JobError) as none:
            await down.wait(down.enqueue())
        waited = time.monotonic() - started
        broken = _pool({"http://a": _health("SETUP_FAILED"), "http://b": _health("DEFUNCT")})
        with pytest.raises(JobError) as failed:
            await broken.wait(broken.enqueue())
        return busy, message, none.value, waited, failed.value

    busy, message, none, waited, failed = asyncio.run(go())
    assert (
        busy is None
        and message == "Waiting for a free slot on your Cog servers (1 busy, 1 unreachable)"
    )
    assert none.kind is ErrorKind.transient and 0.1 <= waited < 1.0
    assert "None of your 2 Cog servers answers" in none.message
    assert "http://a: connection refused" in none.message and "retry the job" in none.message
    assert failed.kind is ErrorKind.model_failed and "None of your 2 Cog servers can run" in (
        failed.message
    )


def test_the_window_check_reads_each_server_over_http():
    ready = CogHealthDouble("READY", (2, 1)).start()
    busy = CogHealthDouble("BUSY").start()
    starting = CogHealthDouble("STARTING").start()
    broken = CogHealthDouble("SETUP_FAILED").start()
    gone = f"http://127.0.0.1:{_free_port()}"
    try:
        urls = [ready.url, busy.url, starting.url, broken.url, gone]
        servers = asyncio.run(check_servers(urls, api_key="secret"))
    finally:
        for double in (ready, busy, starting, broken):
            double.stop()
    assert [s.state for s in servers] == ["ready", "busy", "starting", "failed", "unreachable"]
    assert servers[0].describe() == "ready (1 of 2 slots free)"
    assert servers[3].describe() == "failed: its model could not be set up"
    assert servers[4].describe() == "unreachable: connection refused"
    assert ready.requests("GET", "/health-check")[0].headers["authorization"] == "Bearer secret"


# --- the real servers, through the controller -------------------------------------------------
def _controller(urls: list[str], tmp_path: Path, client: httpx.AsyncClient, **kw):
    env = {"CLARIFIER_COG_BASE_URL": ", ".join(urls)}
    pool = ProviderPool(Settings(), client=client, env=env, overrides={"cog": {**QUICK, **kw}})
    (tmp_path / "db").mkdir()
    store = HistoryStore(tmp_path / "db" / "history.sqlite3")
    return JobController(pool, store=store, max_attempts=1), store


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_jobs_spread_over_the_servers_by_free_capacity(tmp_path_factory, photo, tmp_path):
    servers = [
        start_server(
            tmp_path_factory.mktemp("cog-two"),
            predictor=CONCURRENT,
            COG_MAX_CONCURRENCY="2",
            COG_TEST_STEP_S=STEP,
        ),
        start_server(tmp_path_factory.mktemp("cog-one"), COG_TEST_STEP_S=STEP),
        start_server(tmp_path_factory.mktemp("cog-other"), COG_TEST_STEP_S=STEP),
    ]
    seeds = [101, 102, 103, 104]
    every_slot_taken = threading.Event()

    def watch(stop: threading.Event) -> None:  # were all four slots in use at one moment?
        while not stop.is_set():
            if all(s.health()["status"] == "BUSY" for s in servers):
                every_slot_taken.set()
            time.sleep(0.03)

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            controller, store = _controller([s.url for s in servers], tmp_path, client)
            jobs = [
                controller.submit(photo, tmp_path / "out" / f"{seed}.png", MID.replace(seed=seed),
                                  backend="cog")
                for seed in seeds
            ]  # fmt: skip
            await controller.join()
            await controller.aclose()
            return jobs, store

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
    watcher.start()
    try:
        jobs, store = asyncio.run(go())
    finally:
        stop.set()
        watcher.join()
        for server in servers:
            stop_server(server)
    assert [job.state for job in jobs] == [JobState.succeeded] * 4, [j.message for j in jobs]
    two, one, other = (sorted(s.runs()) for s in servers)
    # Two slots on the first server, one on each of the others, all in use at the same time.
    assert (len(two), len(one), len(other)) == (2, 1, 1)
    assert sorted(two + one + other) == seeds  # each job ran once
    assert every_slot_taken.is_set()
    assert _outputs(tmp_path / "out") == [f"{seed}.png" for seed in seeds]
    rows = {job.params.seed: store.get(job.id) for job in jobs}
    assert {row.state for row in rows.values() if row} == {"succeeded"} and all(rows.values())
    for server, ran in zip(servers, (two, one, other), strict=True):
        for seed in ran:  # each checkpoint names the server that ran it
            row = rows[seed]
            assert row is not None and (row.remote or {})["extra"]["server"] == server.url
            info = read_run_info(tmp_path / "out" / f"{seed}.png")
            assert info is not None and info.params.seed == seed


@pytest.mark.parametrize("sync", [False, True])
def test_a_job_whose_server_dies_finishes_on_another(tmp_path_factory, photo, tmp_path, sync):
    first = start_server(tmp_path_factory.mktemp("cog-first"), COG_TEST_STEP_S=STEP)
    second = start_server(tmp_path_factory.mktemp("cog-second"), COG_TEST_STEP_S=STEP)
    out = tmp_path / "out" / "out.png"
    events: list = []

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            controller, store = _controller([first.url, second.url], tmp_path, client, sync=sync)
            controller.add_listener(events.append)
            job = controller.submit(photo, out, MID, backend="cog")
            await until(lambda: first.runs() == [4242])  # it runs on the first server...
            await asyncio.to_thread(stop_server, first, crash=True)  # ...which goes down
            await controller.join()
            await controller.aclose()
            return job, store

    try:
        job, store = asyncio.run(go())
    finally:
        stop_server(first)
        stop_server(second)
    assert job.state is JobState.succeeded, job.message
    assert first.runs() == [4242] and first.runs("done") == []
    assert second.runs() == [4242] and second.runs("done") == [4242]
    assert _outputs(out.parent) == ["out.png"]  # exactly one output, no stash left behind
    info = read_run_info(out)
    assert info is not None and info.params.seed == 4242 and info.output_size == (24, 20)
    row = store.get(job.id)
    assert row is not None and row.state == "succeeded" and row.attempts == 1
    assert row.remote_id == (row.remote or {})["key"]  # the same prediction id throughout
    assert (row.remote or {})["extra"]["server"] == second.url
    moved = [
        e.message for e in events if e.state is JobState.queued and "another server" in (e.message)
    ]
    assert moved, [e.message for e in events]


def test_all_servers_down_is_a_clear_error_and_a_retry_finishes_the_job(
    tmp_path_factory, photo, tmp_path
):
    folders = [tmp_path_factory.mktemp("cog-a"), tmp_path_factory.mktemp("cog-b")]
    first, second = (start_server(f, COG_TEST_STEP_S=STEP) for f in folders)
    out = tmp_path / "out" / "out.png"
    back: list[RunningCog] = []

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            controller, store = _controller(
                [first.url, second.url], tmp_path, client, retry_for=1.0
            )
            job = controller.submit(photo, out, MID, backend="cog")
            await until(lambda: first.runs() == [4242])
            await asyncio.to_thread(stop_server, second, crash=True)  # the idle one first,
            await asyncio.to_thread(stop_server, first, crash=True)  # so the job cannot move
            await controller.join()
            failed = (job.state, job.error, store.get(job.id), out.exists())
            # The first box comes back: Retry sends the same prediction there.
            port = int(first.url.rsplit(":", 1)[1])
            back.append(
                await asyncio.to_thread(start_server, folders[0], port, COG_TEST_STEP_S=STEP)
            )
            controller.retry(job.id)
            await controller.join()
            await controller.aclose()
            return job, failed, store

    try:
        job, (state, error, row, saved), store = asyncio.run(go())
    finally:
        for server in (first, second, *back):
            stop_server(server)
    assert state is JobState.failed and error is not None and error.kind is ErrorKind.transient
    assert error.message.startswith("None of your 2 Cog servers answers (")
    assert first.url in error.message and second.url in error.message
    assert row is not None and row.state == "failed" and row.message == error.message
    assert (row.remote or {}).get("phase") == "submitted"  # the checkpoint is kept
    key = (row.remote or {})["key"]
    assert not saved
    assert job.state is JobState.succeeded, job.message
    assert first.runs() == [4242, 4242] and first.runs("done") == [4242]  # lost, then re-run
    assert second.runs() == []
    done = store.get(job.id)
    assert done is not None and done.state == "succeeded" and done.remote_id == key
    assert _outputs(out.parent) == ["out.png"]


@pytest.mark.parametrize("slots", [1, 2])
def test_a_server_with_room_is_asked_again_about_a_silent_prediction(
    tmp_path_factory, photo, tmp_path, slots, caplog
):
    """A server with a free slot while our prediction has not said it ended. With one slot,
    the prediction finished unheard (its completed webhook is lost here) and runs again under
    the same id; with two, the same PUT finds it still running (it is silent here after its
    start), and nothing runs twice."""
    extra = {"predictor": CONCURRENT, "COG_MAX_CONCURRENCY": "2"} if slots == 2 else {}
    server = start_server(tmp_path_factory.mktemp("cog-silent"), COG_TEST_STEP_S=STEP, **extra)
    dropped: list[str] = []

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            backend = CogBackend(client, server.url, **QUICK, webhook_grace=0.4)
            backend.heartbeat = 0.2
            hear = backend._on_webhook
            heard: list[str] = []

            def filtered(key: str, number: int, payload: dict) -> None:
                status = str(payload.get("status"))
                if slots == 1 and status == "succeeded" and not dropped:
                    dropped.append(status)
                    return
                if slots == 2 and status == "processing" and heard:
                    dropped.append(status)
                    return
                heard.append(status)
                hear(key, number, payload)

            backend._listener._deliver = filtered
            request = Request("j1", photo, tmp_path / "out.png", MID)
            try:
                return await backend.run(request, lambda e: None)
            finally:
                await backend.aclose()

    try:
        outcome = asyncio.run(go())
    finally:
        stop_server(server)
    assert outcome.output.exists() and dropped
    assert "asking again" in caplog.text
    if slots == 1:
        assert server.runs() == [4242, 4242] and server.runs("done") == [4242, 4242]
    else:
        assert server.runs() == [4242] and server.runs("done") == [4242]
