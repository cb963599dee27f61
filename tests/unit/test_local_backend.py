"""The local backend's worker process: real jobs, a killed worker, cancel, a fresh worker after."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from PIL import Image

from app.backends.local import LocalBackend
from app.jobs import ErrorKind, JobController, JobEvent, JobState
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams

FAST = UpscaleParams(upscaler="realesr-animevideov3", scale_factor=2)
SLOW = UpscaleParams(scale_factor=2)  # the full Real-ESRGAN x4plus: many seconds on a CPU


def _photo(path: Path, size: int) -> Path:
    from skimage import data

    Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS).save(path)
    return path


def test_a_job_runs_in_the_worker_and_writes_a_tagged_output(tmp_path: Path) -> None:
    source = _photo(tmp_path / "in.png", 40)

    async def scenario():
        backend = LocalBackend()
        controller = JobController({"local": backend})
        events: list[JobEvent] = []
        controller.add_listener(events.append)
        job = controller.submit(source, tmp_path / "out.png", FAST, options={"tile": 32})
        await controller.join()
        device = backend.device
        await controller.aclose()
        return job, events, device

    job, events, device = asyncio.run(scenario())
    assert job.state == JobState.succeeded, job.message
    assert "CPU" in device
    stages = [e for e in events if e.stage == "pre-upscale"]
    assert stages and stages[-1].done == stages[-1].total > 1
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (80, 80)
    info = read_run_info(tmp_path / "out.png")
    assert info is not None and info.params == FAST and info.engine == "local/faithful"
    assert job.outcome is not None and job.outcome.timings["pre-upscale"] > 0


def test_a_killed_worker_fails_its_job_and_the_next_job_gets_a_fresh_one(tmp_path: Path) -> None:
    big = _photo(tmp_path / "big.png", 128)
    small = _photo(tmp_path / "small.png", 32)

    async def scenario():
        backend = LocalBackend()
        controller = JobController({"local": backend})
        killed: list[int] = []

        def kill_on_first_tile(event: JobEvent) -> None:
            if event.stage == "pre-upscale" and not killed and backend.worker_pid:
                killed.append(backend.worker_pid)
                os.kill(backend.worker_pid, signal.SIGKILL)

        controller.add_listener(kill_on_first_tile)
        first = controller.submit(big, tmp_path / "big-out.png", SLOW, options={"tile": 32})
        await controller.wait(first.id)
        second = controller.submit(small, tmp_path / "small-out.png", FAST)
        await controller.wait(second.id)
        fresh_pid = backend.worker_pid
        await controller.aclose()
        return first, second, killed, fresh_pid

    first, second, killed, fresh_pid = asyncio.run(scenario())
    assert killed, "the test never saw the worker start a tile"
    assert first.state == JobState.failed and first.error.kind == ErrorKind.worker_died
    assert "SIGKILL" in first.message and "out of memory" in first.message
    assert not (tmp_path / "big-out.png").exists()  # nothing half-written
    assert second.state == JobState.succeeded, second.message
    assert fresh_pid is None or fresh_pid != killed[0]
    assert (tmp_path / "small-out.png").exists()


def test_cancel_stops_a_running_job_between_tiles(tmp_path: Path) -> None:
    big = _photo(tmp_path / "big.png", 256)

    async def scenario():
        backend = LocalBackend(cancel_grace=10)
        controller = JobController({"local": backend})
        seen = asyncio.Event()
        controller.add_listener(lambda e: seen.set() if e.stage == "pre-upscale" else None)
        job = controller.submit(big, tmp_path / "out.png", SLOW, options={"tile": 32})
        await seen.wait()
        started = time.monotonic()
        controller.cancel(job.id)
        await controller.wait(job.id)
        took = time.monotonic() - started
        pid_after = backend.worker_pid
        await controller.aclose()
        return job, took, pid_after

    job, took, pid_after = asyncio.run(scenario())
    assert job.state == JobState.canceled
    assert took < 5  # stopped between tiles, well inside the grace period
    assert pid_after is not None  # the worker stopped the job itself and stays warm
    assert not (tmp_path / "out.png").exists()


def test_bad_inputs_fail_with_clear_messages_and_the_queue_goes_on(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = _photo(tmp_path / "good.png", 24)
    too_big = UpscaleParams(upscaler="realesr-animevideov3", scale_factor=16)

    async def scenario():
        controller = JobController({"local": LocalBackend()})
        jobs = [
            controller.submit(broken, tmp_path / "o1.png", FAST),
            controller.submit(
                good, tmp_path / "o2.png", too_big, options={"max_output_pixels": 100_000}
            ),
            controller.submit(good, tmp_path / "o3.png", FAST.replace(upscaler="no-such-model")),
            controller.submit(good, tmp_path / "o4.png", FAST),
        ]
        await controller.join()
        await controller.aclose()
        return jobs

    broken_job, big_job, model_job, good_job = asyncio.run(scenario())
    assert broken_job.state == JobState.failed
    assert broken_job.error.kind == ErrorKind.invalid_request and "broken.png" in broken_job.message
    assert big_job.error.kind == ErrorKind.invalid_request and "cap" in big_job.message.lower()
    assert model_job.error.kind == ErrorKind.model_failed and "no-such-model" in model_job.message
    assert good_job.state == JobState.succeeded


def test_creative_jobs_run_in_the_worker_and_missing_models_fail_clearly(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    good = _photo(tmp_path / "good.png", 32)
    creative = FAST.replace(mode="creative", num_inference_steps=4, seed=5)

    async def scenario():
        controller = JobController({"local": LocalBackend()})
        events = []
        controller.add_listener(events.append)
        ok = controller.submit(
            good, tmp_path / "c.png", creative,
            options={"device": "cpu", "model_dirs": [str(tiny_models_dir)]},
        )  # fmt: skip
        missing = controller.submit(
            good, tmp_path / "m.png", creative,
            options={"device": "cpu", "model_dirs": [str(tmp_path / "empty")]},
        )  # fmt: skip
        await controller.join()
        await controller.aclose()
        return ok, missing, events

    ok, missing, events = asyncio.run(scenario())
    assert ok.state == JobState.succeeded, ok.message
    assert Image.open(tmp_path / "c.png").size == (64, 64)
    stages = {e.stage for e in events if e.job is ok}
    assert {"pre-upscale", "encode", "diffusion", "decode"} <= stages
    assert any(e.preview_png for e in events if e.job is ok)
    assert missing.state == JobState.failed and missing.error.kind == ErrorKind.model_failed
    assert "juggernaut_reborn" in missing.message and "clarifier models" in missing.message
    assert not (tmp_path / "m.png").exists()
