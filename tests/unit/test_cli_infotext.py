"""``clarifier upscale --infotext`` and ``clarifier info`` on A1111 infotext: a Clarity run's
settings taken from a text file, standard input or an image, under ``--set`` and the flags."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from app.cli import main
from app.cli.parser import build_parser
from app.cli.upscale import build_params
from app.store.presets import PresetStore
from pipeline.io.load import read_run_info
from pipeline.params import SD_MODELS, UpscaleParams
from tests.unit.test_infotext import CLARITY

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--set", "upscaler=realesr-animevideov3"]


def _params(*args: str, notes: io.StringIO | None = None) -> UpscaleParams:
    parsed = build_parser().parse_args(["upscale", "in.png", "-o", "out", *args])
    return build_params(parsed, PresetStore(), notes)


def _image_with(path: Path, text: str | None) -> Path:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_itxt("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a_clarity_infotext_file_sets_the_run_and_set_flags_override_it(tmp_path: Path) -> None:
    source = tmp_path / "params.txt"
    source.write_text(CLARITY + ", Clip skip: 2", encoding="utf-8")
    notes = io.StringIO()
    params = _params("--infotext", str(source), notes=notes)
    assert (params.mode, params.seed, params.scheduler) == ("creative", 1337, "DPM++ 3M SDE Karras")
    assert (params.tiling_width, params.tiling_height, params.resemblance) == (112, 144, 0.6)
    assert (params.upscaler, params.sd_model) == ("4x-UltraSharp", SD_MODELS[1])
    assert notes.getvalue() == (
        "clarifier: note: --infotext: Clip skip: 2 (Clarity always uses CLIP skip 1)\n"
    )
    over = _params(
        "--infotext", str(source), "--set", "tiling_width=64", "--seed", "5", "--scale", "4"
    )
    assert (over.tiling_width, over.seed, over.scale_factor) == (64, 5, 4.0)
    assert over.tiling_height == 144  # the rest still comes from the infotext


def test_a_preset_goes_under_the_infotext(tmp_path: Path) -> None:
    preset = tmp_path / "mine.json"
    preset.write_text(
        json.dumps({"name": "mine", "params": {"sharpen": 2.0, "tiling_width": 32}}),
        encoding="utf-8",
    )
    source = tmp_path / "p.txt"
    source.write_text(CLARITY, encoding="utf-8")
    params = _params("--preset", str(preset), "--infotext", str(source))
    assert (params.sharpen, params.tiling_width) == (2.0, 112)


def test_infotext_from_standard_input_and_from_an_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("a fox\nSteps: 25, Sampler: Euler a, Seed: 42"))
    params = _params("--infotext", "-")
    assert (params.prompt, params.num_inference_steps, params.seed) == ("a fox", 25, 42)
    image = _image_with(tmp_path / "made.png", CLARITY)
    assert _params("--infotext", str(image)).seed == 1337


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.txt", "no such file"),
        (lambda d: _image_with(d / "plain.png", None), "without generation parameters"),
        (lambda d: (d / "empty.txt").write_text("  \n") and d / "empty.txt", "infotext"),
    ],
)
def test_unusable_infotext_is_a_usage_error(tmp_path: Path, capsys, make, message: str) -> None:
    source = make(tmp_path)
    photo = _image_with(tmp_path / "in.png", None)
    code = main(["upscale", str(photo), "-o", str(tmp_path / "o"), "--infotext", str(source)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_info_lists_what_a1111_infotext_holds_that_clarifier_cannot_map(
    tmp_path: Path, capsys
) -> None:
    image = _image_with(tmp_path / "a1111.png", CLARITY + ", Hires upscale: 2")
    assert main(["info", str(image), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["engine"] == "a1111" and record["params"]["tiling_height"] == 144
    assert "not mapped: Hires upscale: 2" in captured.err


def test_a_run_from_infotext_writes_those_parameters(tmp_path: Path) -> None:
    from skimage import data

    photo = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).resize((24, 24)).save(photo)
    source = tmp_path / "faithful.txt"
    source.write_text("Postprocess upscale by: 3, Postprocess upscaler: x, Seed: 77", "utf-8")
    args = ["upscale", str(photo), "-o", str(tmp_path / "out"), "--json", "--infotext"]
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, str(source), *FAST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["seed"] == 77 and record["size"]["output"] == [72, 72]
    info = read_run_info(tmp_path / "out" / "cat.png")
    assert info is not None and info.params.upscaler == "realesr-animevideov3"  # --set won
