"""``clarifier upscale --backend X`` end to end: the real CLI, provider pool, controller and
history, against each provider's loopback double, configured only through the environment
(an API key and a base URL), as a person would."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import pytest
from PIL import Image

from app.cli import main
from app.jobs import JobController, JobState
from app.jobs.providers import ProviderPool
from app.store.history import HistoryStore
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.doubles.http_double import Scenario, until
from tests.doubles.segmind import SegmindDouble

# backend → (double module, class, key variable, key, model)
CASES = {
    "segmind": (
        "segmind",
        "SegmindDouble",
        "SEGMIND_API_KEY",
        "SG_0123456789abcdef",
        "clarity-upscaler",
    ),
    "apiframe": ("apiframe", "ApiframeDouble", "CLARIFIER_APIFRAME_API_KEY", "afk_test", ""),
    "wireflow": ("wireflow", "WireflowDouble", "CLARIFIER_WIREFLOW_API_KEY", "sk-test", ""),
    "replicate": ("replicate", "ReplicateDouble", "REPLICATE_API_TOKEN", "r8_test_token", ""),
    "fal": ("fal", "FalDouble", "FAL_KEY", "fal-test-id:fal-test-secret", ""),
}


def _photo(path: Path) -> Path:
    Image.new("RGB", (40, 32), (90, 140, 60)).save(path)
    return path


@pytest.fixture
def provider(request, monkeypatch):
    name = request.param
    module, cls, env, key, model = CASES[name]
    double = getattr(importlib.import_module(f"tests.doubles.{module}"), cls)()
    double.default_scenario = Scenario(queue_s=0.0, run_s=0.2)
    with double:
        monkeypatch.setenv(env, key)
        monkeypatch.setenv(f"CLARIFIER_{name.upper()}_BASE_URL", double.url)
        monkeypatch.setenv(f"CLARIFIER_{name.upper()}_RPM", "6000")  # the doubles' plans allow it
        if name == "fal":
            monkeypatch.setenv("CLARIFIER_FAL_STORAGE_URL", double.url)
        yield name, model, double


@pytest.mark.parametrize("provider", sorted(CASES), indirect=True)
def test_upscale_through_a_provider_with_only_a_key(provider, tmp_path: Path, capsys) -> None:
    name, model, _double = provider
    photo = _photo(tmp_path / "photo.jpg")
    # Wireflow's node takes no seed (a job asking for one is refused): it draws its own.
    seed = None if name == "wireflow" else 42
    args = ["upscale", str(photo), "--backend", name, "-o", str(tmp_path / "out")]
    args += [] if seed is None else ["--seed", str(seed)]
    if model:
        args += ["--model", model]
    assert main([*args, "--no-progress"]) == 0, capsys.readouterr().err
    output = tmp_path / "out" / "photo.png"
    info = read_run_info(output)
    assert info is not None and info.engine.startswith(f"{name}/") and info.params.seed == seed
    assert info.source_size == (40, 32)
    runs = HistoryStore().list(backend=name, limit=5)
    assert runs and runs[0].state == "succeeded" and runs[0].remote_id
    assert runs[0].output == str(output)
    # The key is nowhere: not in the output, the history database, or anything printed.
    key = CASES[name][3].encode()
    history = HistoryStore().path
    stored = b"".join(p.read_bytes() for p in history.parent.glob(history.name + "*"))
    printed = capsys.readouterr()
    assert key not in output.read_bytes() and key not in stored
    assert CASES[name][3] not in printed.out + printed.err


def test_a_missing_key_is_said_once_before_anything_runs(tmp_path, capsys, monkeypatch) -> None:
    for name in ("SEGMIND_API_KEY", "CLARIFIER_SEGMIND_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    photos = [str(_photo(tmp_path / f"p{i}.png")) for i in range(3)]
    code = main(["upscale", *photos, "--backend", "segmind", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("No API key for Segmind") == 1
    assert "SEGMIND_API_KEY" in err and "clarifier keys set segmind" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_jobs_resume_finishes_what_an_interrupted_session_left(tmp_path, capsys, monkeypatch):
    """A session quits while Segmind runs the job; `clarifier jobs resume` downloads it later,
    without a second submit; `jobs list` shows it with its request id."""
    with SegmindDouble() as double:
        double.default_scenario = Scenario(queue_s=0.0, run_s=1.5)
        env = {
            "SEGMIND_API_KEY": CASES["segmind"][3],
            "CLARIFIER_SEGMIND_BASE_URL": double.url,
            "CLARIFIER_SEGMIND_RPM": "6000",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        photo = _photo(tmp_path / "photo.png")

        async def first_session():
            controller = JobController(ProviderPool(), store=HistoryStore())
            job = controller.submit(
                photo, tmp_path / "out.png", UpscaleParams(seed=5), backend="segmind"
            )
            await until(lambda: job.state in (JobState.queued, JobState.running) and job.remote_id)
            await controller.detach()
            return job.id

        job_id = asyncio.run(first_session())
        assert HistoryStore().get(job_id).state in ("queued", "running")
        assert main(["jobs", "resume"]) == 0
        out = capsys.readouterr().out
        assert "ok" in out and (tmp_path / "out.png").exists()
        assert double.count("POST", "^/v2/clarity-upscaler$") == 1
        assert main(["jobs", "list"]) == 0
        listed = capsys.readouterr().out
        assert job_id[:10] in listed and HistoryStore().get(job_id).remote_id in listed


@pytest.mark.parametrize("provider", ["segmind"], indirect=True)
def test_set_chooses_segmind_v1_sync_call(provider, tmp_path: Path, capsys) -> None:
    """``--set segmind.sync=true`` is a backend option, not a parameter: the job goes to the
    page's v1 synchronous endpoint; a bad option value is a usage error that runs nothing."""
    name, model, double = provider
    photo = _photo(tmp_path / "photo.jpg")
    args = ["upscale", str(photo), "--backend", name, "--model", model, "--seed", "3"]
    args += ["-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--set", "segmind.sync=true"]) == 0, capsys.readouterr().err
    assert [job.sync for job in double.jobs.values()] == [True]
    assert read_run_info(tmp_path / "out" / "photo.png") is not None
    assert main([*args, "--set", "segmind.sync=sometimes", "--if-exists", "overwrite"]) == 2
    assert "segmind.sync takes" in capsys.readouterr().err
    assert len(double.jobs) == 1
