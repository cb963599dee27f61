"""The Ray backend on a local cluster (``ray.init(num_cpus=2)``: two engines, one per CPU slot).

``clarifier upscale --backend ray`` in its own process starts its own cluster, runs the batch
and records it. Through the CLI's own runner, a batch writes one output per input, the very file
the engine writes when it runs in this process (the reference: the same pixels and metadata,
only the colour profile's creation time differs), and one succeeded history row per input. An
engine killed mid-batch (``ray.kill``) loses nothing and does nothing twice: Ray restarts it and
runs the lost image again, and still every input has exactly one output and one history row
that succeeded on its first attempt. Cancel stops a job on its engine, which then serves the
next; the engine's errors come back as the local backend's; a cluster with no free slot fails
the job and withdraws what it asked for; a creative job with the tiny models gives the
reference's file for the same seed. Skipped when Ray is not installed (the ``[cluster]`` extra).
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from app.backends import registry  # noqa: E402 - after the skip: the module needs Ray
from app.backends.base import ErrorKind, JobState  # noqa: E402
from app.backends.ray import RayBackend  # noqa: E402
from app.cli.upscale import Item, run_items  # noqa: E402
from app.jobs import JobController, JobEvent  # noqa: E402
from app.jobs.controller import StaticPool  # noqa: E402
from app.store.history import HistoryStore  # noqa: E402
from pipeline.io.load import read_run_info  # noqa: E402
from pipeline.params import UpscaleParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAST = UpscaleParams(upscaler="realesr-animevideov3", scale_factor=2)
RERUN = "Ray ran it again"


def _photo(path: Path, size: int, shift: int = 0) -> Path:
    from skimage import data

    picture = Image.fromarray(data.astronaut()).crop((shift, shift, 400 + shift, 400 + shift))
    picture.resize((size, size), Image.LANCZOS).save(path)
    return path


def _reference(source: Path, target: Path, params: UpscaleParams, **options: Any) -> bytes:
    """What the engine writes for ``source`` when it runs here, in this process, on one CPU
    thread as each engine of the cluster does (Ray gives each its one CPU slot): the creative
    pass's sums differ in the last bit with the thread count."""
    import torch

    from pipeline.engine import EngineOptions, upscale_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        written = upscale_file(source, target, params, options=EngineOptions("cpu", **options))
    finally:
        torch.set_num_threads(threads)
    return written.output.read_bytes()


def _assert_same_file(path: Path, expected: bytes) -> None:
    """``path`` is the file ``expected`` holds: the same pixels and metadata, and the same
    colour profile but for the time LittleCMS stamps into its header (and so its MD5 id)."""
    with Image.open(path) as got, Image.open(io.BytesIO(expected)) as want:
        assert (got.format, got.mode, got.size) == (want.format, want.mode, want.size)
        assert np.array_equal(np.asarray(got), np.asarray(want))
        assert set(got.info) == set(want.info)
        for key, value in want.info.items():
            if key == "icc_profile":
                assert _undated(got.info[key]) == _undated(value)
            else:
                assert got.info[key] == value, key


def _undated(icc: bytes) -> bytes:
    # ICC.1 header: bytes 24-35 are the creation date and time, 84-99 the profile id (MD5).
    return icc[:24] + icc[36:84] + icc[100:]


class _KeepOpen(StaticPool):
    """The module's backend for the CLI's runner, which closes its pool when the batch ends."""

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module: the backend's engines and queue live in it."""
    ray.init(address="local", num_cpus=2, log_to_driver=False)  # never a cluster found here
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def backend(loop: asyncio.AbstractEventLoop) -> Iterator[RayBackend]:
    engines = RayBackend(poll_wait=0.2, cancel_grace=5.0)
    yield engines
    loop.run_until_complete(engines.aclose())


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_clarifier_upscale_backend_ray_starts_its_own_cluster_and_records_the_batch(
    tmp_path: Path,
) -> None:
    # The command a person types, in its own process: it starts a local cluster (one engine
    # per CPU slot), runs the batch, records it and shuts the cluster down.
    sources = tmp_path / "in"
    sources.mkdir()
    inputs = [_photo(sources / f"s{i}.png", 24, shift=5 * i) for i in range(2)]
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "upscale", str(sources), "-o", str(out), "--json",
         "--backend", "ray", "--ray-address", "local", "--scale", "2",
         "--set", "upscaler=realesr-animevideov3", "--seed", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["input"] for r in records) == sorted(map(str, inputs))
    assert {r["status"] for r in records} == {"succeeded"}
    assert _outputs(out) == [p.name for p in inputs]
    store = HistoryStore()  # the same Clarifier home: the subprocess inherits it
    try:
        rows = [r for r in store.list(backend="ray") if r.input in map(str, inputs)]
    finally:
        store.close()
    assert sorted(r.input for r in rows) == sorted(map(str, inputs))
    assert all((r.state, r.attempts, r.seed) == ("succeeded", 1, 3) for r in rows)


def test_a_cli_batch_writes_the_engines_own_files_and_one_history_row_each(
    backend: RayBackend, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    sources = tmp_path / "in"
    sources.mkdir()
    inputs = [_photo(sources / f"p{i}.png", 40, shift=9 * i) for i in range(4)]
    out = tmp_path / "out"
    items = [Item(p, out / p.name) for p in inputs]
    printed = io.StringIO()
    params = FAST.replace(seed=7)
    code = loop.run_until_complete(
        run_items(
            items,
            params,
            backend="ray",
            options={"device": "auto", "tile": 32},
            json_out=True,
            progress=None,
            out=printed,
            pool=_KeepOpen({"ray": backend}),  # the runner takes any pool
        )
    )
    records = [json.loads(line) for line in printed.getvalue().splitlines()]
    assert code == 0, records
    assert sorted(r["input"] for r in records) == sorted(map(str, inputs))
    assert {r["status"] for r in records} == {"succeeded"}
    assert _outputs(out) == [p.name for p in inputs]  # one each, no temporary files left
    assert backend.engines == 2  # one per CPU slot of the cluster

    for source in inputs:  # the engine's own file, as it writes it in this process
        expected = _reference(source, tmp_path / f"ref-{source.name}", params, tile=32)
        _assert_same_file(out / source.name, expected)
        info = read_run_info(out / source.name)
        assert info is not None and info.params == params and info.engine == "local/faithful"

    store = HistoryStore()
    try:
        rows = {r.input: r for r in store.list(backend="ray") if r.input in map(str, inputs)}
    finally:
        store.close()
    assert sorted(rows) == sorted(map(str, inputs))
    for source in inputs:
        row = rows[str(source)]
        assert (row.state, row.attempts, row.output) == ("succeeded", 1, str(out / source.name))
        assert row.info is not None and row.info["params"]["seed"] == 7


def test_a_cluster_without_a_free_slot_fails_the_job_and_frees_what_it_asked_for(
    backend: RayBackend, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    # The module's backend holds both CPU slots: a second backend's engines cannot be placed.
    source = _photo(tmp_path / "x.png", 16)
    other = RayBackend(start_timeout=1.0, poll_wait=0.2)

    async def scenario() -> tuple[Any, float]:
        controller = JobController(_KeepOpen({"ray": other}))
        job = controller.submit(source, tmp_path / "x-out.png", FAST, backend="ray")
        await controller.join()
        free = ray.available_resources().get("CPU", 0.0)
        await other.aclose()
        return job, free

    assert backend.engines == 2  # the batch above started them
    job, free = loop.run_until_complete(scenario())
    assert job.state == JobState.failed and job.error is not None
    assert job.error.kind == ErrorKind.worker_died and "no free CPU slot" in job.message
    assert free == 0.0 and other.engines == 0  # its pending engines were withdrawn


def test_an_engine_killed_mid_batch_loses_nothing_and_does_nothing_twice(
    backend: RayBackend, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    # The first image has many tiles (36): its engine is killed inside its pre-upscale. The
    # others are small, and keep the other engine busy meanwhile.
    inputs = [_photo(tmp_path / f"k{i}.png", 96 if i == 0 else 24, shift=7 * i) for i in range(4)]
    out = tmp_path / "out"
    out.mkdir()
    history = HistoryStore(tmp_path / "history.db")
    killed: dict[str, Any] = {}
    first: list[str] = []

    def kill_mid_job(event: JobEvent) -> None:
        if killed or event.job.id not in first or event.stage != "pre-upscale":
            return
        handle = backend.engine_for(event.job.id)
        if handle is not None and 0 < event.done <= event.total // 3:
            killed["at"] = (event.done, event.total)
            ray.kill(handle, no_restart=False)

    async def scenario() -> list[Any]:
        controller = JobController(_KeepOpen({"ray": backend}), store=history)
        controller.add_listener(kill_mid_job)
        jobs = [
            controller.submit(p, out / p.name, FAST, backend="ray", options={"tile": 16})
            for p in inputs
        ]
        first.append(jobs[0].id)  # before the loop runs a job: no await since the submits
        await controller.join()
        return jobs

    jobs = loop.run_until_complete(scenario())
    assert killed, "the test never saw the slow image's engine inside its pre-upscale"
    assert all(j.state == JobState.succeeded for j in jobs), [j.message for j in jobs]
    assert _outputs(out) == sorted(p.name for p in inputs)  # one output per input, nothing more
    rows = history.list()
    history.close()
    assert len(rows) == len(inputs) and {r.id for r in rows} == {j.id for j in jobs}
    assert all((r.state, r.attempts) == ("succeeded", 1) for r in rows)  # each row once
    rerun = [j for j in jobs if j.outcome and any(RERUN in w for w in j.outcome.warnings)]
    assert [j.id for j in rerun] == [jobs[0].id]  # Ray ran the killed job again, only it
    expected = _reference(inputs[0], tmp_path / "ref.png", FAST, tile=16)
    _assert_same_file(out / inputs[0].name, expected)  # the rerun's output is whole and right
    assert backend.engines == 2


def test_cancel_stops_the_job_on_its_engine_and_the_engine_serves_the_next(
    backend: RayBackend, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    big = _photo(tmp_path / "big.png", 128)  # 64 tiles
    small = [_photo(tmp_path / f"small{i}.png", 24, shift=i) for i in range(2)]

    async def scenario() -> dict[str, Any]:
        controller = JobController(_KeepOpen({"ray": backend}))
        tile = asyncio.Event()
        at: list[tuple[int, int]] = []

        def on_event(event: JobEvent) -> None:
            if event.stage == "pre-upscale":
                at.append((event.done, event.total))
                tile.set()

        controller.add_listener(on_event)
        job = controller.submit(
            big, tmp_path / "big-out.png", FAST, backend="ray", options={"tile": 16}
        )
        await tile.wait()
        engine = backend.engine_for(job.id)
        assert engine is not None
        before = await engine.describe.remote()
        started, at_cancel = time.monotonic(), at[-1]
        controller.cancel(job.id)
        await controller.wait(job.id)
        took = time.monotonic() - started
        after = await engine.describe.remote()
        more = [
            controller.submit(p, tmp_path / f"{p.stem}-out.png", FAST, backend="ray") for p in small
        ]  # one on each engine, the one that stopped the job included
        await controller.join()
        return {"job": job, "took": took, "at": at_cancel, "same": before == after, "more": more}

    result = loop.run_until_complete(scenario())
    assert result["job"].state == JobState.canceled
    done, total = result["at"]
    assert done < total  # it was cancelled inside the pre-upscale, not after it
    assert result["took"] < 5  # between tiles, inside the grace period
    assert result["same"]  # the engine stopped the job itself: not killed, still warm
    assert not (tmp_path / "big-out.png").exists()
    assert all(j.state == JobState.succeeded for j in result["more"])
    assert all((tmp_path / f"{p.stem}-out.png").exists() for p in small)


def test_the_engines_errors_come_back_as_the_local_backends(
    backend: RayBackend, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = _photo(tmp_path / "good.png", 24)

    async def scenario() -> list[Any]:
        controller = JobController(_KeepOpen({"ray": backend}))
        jobs = [
            controller.submit(broken, tmp_path / "o1.png", FAST, backend="ray"),
            controller.submit(good, tmp_path / "o2.png", FAST.replace(upscaler="no-such-model"),
                              backend="ray"),
            controller.submit(tmp_path / "gone.png", tmp_path / "o3.png", FAST, backend="ray"),
            # This computer's device setting does not reach the engines: a CPU slot runs "cpu".
            controller.submit(good, tmp_path / "o4.png", FAST, backend="ray",
                              options={"device": "cuda:3"}),
        ]  # fmt: skip
        await controller.join()
        return jobs

    broken_job, model_job, gone_job, device_job = loop.run_until_complete(scenario())
    assert broken_job.error is not None and broken_job.error.kind == ErrorKind.invalid_request
    assert str(broken) in broken_job.message and "clarifier-ray" not in broken_job.message
    assert model_job.error is not None and model_job.error.kind == ErrorKind.model_failed
    assert "no-such-model" in model_job.message
    assert gone_job.error is not None and gone_job.error.kind == ErrorKind.invalid_request
    assert "gone.png" in gone_job.message
    assert not any((tmp_path / n).exists() for n in ("o1.png", "o2.png", "o3.png"))
    assert device_job.state == JobState.succeeded, device_job.message


def test_a_creative_job_runs_on_the_cluster_with_the_tiny_models(
    backend: RayBackend, loop: asyncio.AbstractEventLoop, tmp_path: Path, tiny_models_dir: Path
) -> None:
    source = _photo(tmp_path / "c.png", 32)
    creative = FAST.replace(mode="creative", num_inference_steps=4, seed=5)
    options = {"device": "cpu", "model_dirs": [str(tiny_models_dir)]}

    async def scenario() -> tuple[Any, list[JobEvent]]:
        controller = JobController(_KeepOpen({"ray": backend}))
        events: list[JobEvent] = []
        controller.add_listener(events.append)
        job = controller.submit(source, tmp_path / "c-out.png", creative, backend="ray",
                                options=options)  # fmt: skip
        await controller.join()
        return job, events

    job, events = loop.run_until_complete(scenario())
    assert job.state == JobState.succeeded, job.message
    assert {"pre-upscale", "diffusion", "decode"} <= {e.stage for e in events}
    expected = _reference(
        source, tmp_path / "ref.png", creative, model_dirs=(tiny_models_dir,)
    )  # the same seed gives the same file here and on the cluster
    _assert_same_file(tmp_path / "c-out.png", expected)


def test_the_cli_and_the_provider_pool_build_the_backend_with_its_address(tmp_path: Path) -> None:
    from app.cli.parser import build_parser
    from app.jobs.providers import ProviderPool

    assert "ray" in registry.names() and "ray" not in registry.provider_names()
    args = build_parser().parse_args(
        ["upscale", "x.png", "-o", "out", "--backend", "ray", "--ray-address", "ray://head:10001"]
    )
    assert (args.backend, args.ray_address) == ("ray", "ray://head:10001")
    pool = ProviderPool(env={}, overrides={"ray": {"address": args.ray_address}})
    built = pool.get("ray")
    assert isinstance(built, RayBackend) and built.address == "ray://head:10001"
    assert built.engines == 0  # nothing started until a job runs
    asyncio.run(pool.aclose())
    with pytest.raises(ValueError, match="no model"):
        RayBackend(model="x")

    source = _photo(tmp_path / "x.png", 16)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "upscale", str(source), "-o", str(tmp_path / "o"),
         "--ray-address", "auto"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "--ray-address" in result.stderr
    assert "--backend ray" in result.stderr


def test_the_backend_imports_without_ray_and_says_how_to_get_it(monkeypatch) -> None:
    code = "import sys, app.backends.ray; print('ray' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
    from app.backends import ray as ray_backend
    from app.backends.base import JobError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert not ray_backend.ray_installed()
    with pytest.raises(JobError, match=r"clarifier\[cluster\]"):
        RayBackend().check_ready()


def test_the_clusters_notices_go_to_the_log_not_to_the_json_on_stdout(monkeypatch, caplog) -> None:
    # Ray prints "Task ... failed ... will be retried" on the driver's stdout, where the CLI's
    # --json lines go: a connection the backend makes sends those notices to its log.
    from app.backends import ray as ray_backend

    worker = ray._private.worker
    printed: list[dict[str, Any]] = []
    monkeypatch.setattr(
        worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data)
    )
    ray_backend._notices_to_the_log(ray)
    ray_backend._notices_to_the_log(ray)  # once is enough: not wrapped twice
    notice = {"lines": ["Task EngineActor.run failed; it will be retried"], "pid": "raylet",
              "is_err": False}  # fmt: skip
    with caplog.at_level("WARNING", logger="app.backends.ray"):
        worker.print_to_stdstream(notice, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["engine says"], "pid": 7, "is_err": True}, False)
    assert [d["lines"] for d in printed] == [["engine says"]]  # the rest still prints
    assert "Ray: Task EngineActor.run failed; it will be retried" in caplog.text
