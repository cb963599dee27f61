"""The served engine apart from Cog: set-up (models found, missing, or fetched once the operator
accepted their licences), one prediction's files, its progress lines, and its failures.

The local backend is replaced by a stand-in that records the requests it gets and writes an
image, so these run in milliseconds; the real worker is exercised by tests/backends/test_serve.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from app.backends.base import BackendEvent, ErrorKind, JobError, JobState, Outcome
from app.serve.config import ACCEPT_LICENCES_ENV, MODELS_ENV, ServeConfig
from app.serve.engine import PredictionFailed, ServedEngine


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 80, 120)).save(buffer, "PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


class _Backend:
    """Stands in for the local backend: records each request, reports, writes an image."""

    def __init__(self, fail: JobError | None = None) -> None:
        self.requests: list = []
        self.fail = fail

    async def run(self, request, report) -> Outcome:
        self.requests.append(request)
        report(BackendEvent(state=JobState.running, message="CPU (2 threads)"))
        report(BackendEvent(stage="pre-upscale", done=0, total=1))
        for step in range(5):
            report(BackendEvent(stage="diffusion", done=step, total=4))
        if self.fail is not None:
            raise self.fail
        request.output.write_bytes(_png())
        return Outcome(output=request.output, info={}, warnings=("a note",))

    async def aclose(self) -> None:
        pass


def _engine(dirs, backend=None, accept=False) -> tuple[ServedEngine, list[str]]:
    lines: list[str] = []
    config = ServeConfig(options={"model_dirs": [str(d) for d in dirs]}, accept_licences=accept)
    return ServedEngine(config, log=lines.append, backend=backend or _Backend()), lines


def test_the_config_comes_from_the_environment_and_the_settings(tmp_path) -> None:
    env = {MODELS_ENV: f"{tmp_path / 'a'}:{tmp_path / 'b'}", ACCEPT_LICENCES_ENV: "1"}
    config = ServeConfig.from_environment(env)
    assert config.model_dirs[:2] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert config.accept_licences and config.options["max_output_pixels"] == 64_000_000
    assert not ServeConfig.from_environment({}).accept_licences


def test_set_up_warms_the_engine_with_the_models_it_found(tiny_models_dir) -> None:
    engine, lines = _engine([tiny_models_dir])
    asyncio.run(engine.start())
    (warm_up,) = engine.backend.requests
    assert warm_up.params.mode == "creative" and warm_up.params.num_inference_steps == 1
    assert warm_up.options["model_dirs"] == [str(tiny_models_dir)]
    assert lines[-1] == "ready" and not warm_up.input.parent.exists()  # cleaned up


def test_set_up_without_models_says_which_and_how_to_get_them(tmp_path) -> None:
    engine, _ = _engine([tmp_path])
    with pytest.raises(PredictionFailed) as err:
        asyncio.run(engine.start())
    assert "juggernaut_reborn" in str(err.value) and ACCEPT_LICENCES_ENV in str(err.value)
    assert engine.backend.requests == []


def test_set_up_downloads_what_is_missing_once_the_licences_are_accepted(
    tmp_path, tiny_models_dir, monkeypatch
) -> None:
    import shutil

    import app.models.download as download_module

    fetched = []
    folder = tmp_path / "models"
    shutil.copytree(tiny_models_dir, folder)
    (folder / "Lora" / "more_details.safetensors").unlink()  # one file short

    def download(entry, *, accept_licence, progress):
        fetched.append((entry.id, accept_licence))
        progress(0, 10)
        progress(10, 10)
        shutil.copy(tiny_models_dir / "Lora" / "more_details.safetensors", folder / "Lora")
        return folder / "Lora" / "more_details.safetensors"

    monkeypatch.setattr(download_module, "download", download)
    engine, lines = _engine([folder], accept=True)
    asyncio.run(engine.start())
    assert fetched == [("more_details", True)]
    assert any(line.startswith("downloading more_details.safetensors") for line in lines)
    assert "more_details.safetensors 100%|##########| 10/10" in lines
    assert len(engine.backend.requests) == 1  # then the warm-up


def test_a_prediction_fetches_its_images_and_keeps_the_output_for_cog(tmp_path) -> None:
    engine, lines = _engine([tmp_path])
    inputs = {"image": _data_url(_png((12, 10))), "mask": _data_url(_png((12, 10))), "seed": 5}
    first = asyncio.run(engine.run(inputs | {"output_format": "webp"}))
    request = engine.backend.requests[-1]
    assert first.suffix == ".webp" and first.exists()
    assert request.params.seed == 5 and request.params.mode == "creative"
    assert Path(request.params.mask).read_bytes() == _png((12, 10))
    assert lines[:2] == ["engine on CPU (2 threads)", "pre-upscale"]
    assert "diffusion 100%|##########| 4/4" in lines and "note: a note" in lines
    assert sum("diffusion" in line for line in lines) == 5  # one line per percent step
    second = asyncio.run(engine.run({"image": inputs["image"]}))
    assert first.exists()  # Cog may still be sending it
    asyncio.run(engine.run({"image": inputs["image"]}))
    assert not first.exists() and second.exists()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": "file:///etc/hostname"}, "not a file: URL"),
        ({"image": "data:,x", "custom_sd_model": "/root/model.ckpt"}, "not a path"),
        ({"image": "data:image/png;base64,aGVsbG8="}, "image: "),
    ],
)
def test_a_refused_input_fails_before_the_engine_runs(tmp_path, inputs, message) -> None:
    engine, _ = _engine([tmp_path])
    with pytest.raises(PredictionFailed, match=message):
        asyncio.run(engine.run(inputs))
    assert engine.backend.requests == []


def test_an_engine_failure_is_the_predictions_error(tmp_path) -> None:
    failing = _Backend(JobError(ErrorKind.out_of_memory, "the GPU ran out of memory"))
    engine, _ = _engine([tmp_path], backend=failing)
    with pytest.raises(PredictionFailed, match="ran out of memory"):
        asyncio.run(engine.run({"image": _data_url(_png())}))


def test_the_settings_cap_and_device_reach_every_prediction(tmp_path, monkeypatch) -> None:
    """The CLI's engine options: the served engine passes the settings' output cap, device and
    tile to the worker, which refuses an output over the cap as it does for a local job."""
    import dataclasses

    import app.serve.config as config_module
    from app.store.settings import Settings

    settings = dataclasses.replace(
        Settings(), max_output_megapixels=0.5, device="cpu", tile=128, model_dirs=("/m",)
    )
    monkeypatch.setattr(config_module, "load_settings", lambda: settings)
    config = ServeConfig.from_environment({MODELS_ENV: str(tmp_path)})
    engine = ServedEngine(config, log=lambda line: None, backend=_Backend())
    asyncio.run(engine.run({"image": _data_url(_png())}))
    options = engine.backend.requests[-1].options
    assert options["max_output_pixels"] == 500_000 and options["device"] == "cpu"
    assert options["tile"] == 128 and options["model_dirs"] == [str(tmp_path), "/m"]
