"""``clarifier upscale``: planning outputs, exit codes, JSON lines, a real batch end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from app.cli.upscale import plan
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--set", "upscaler=realesr-animevideov3"]


def _photo(path: Path, size: int = 24) -> Path:
    from skimage import data

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).resize((size, size)).save(path)
    return path


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- planning ---------------------------------------------------------------------------------
def test_folders_are_mirrored_under_the_output(tmp_path: Path) -> None:
    for rel in ["a.jpg", "sub/b.png", "sub/deeper/c.webp", ".hidden/d.png", "notes.txt"]:
        target = tmp_path / "in" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
    items, _ = plan([str(tmp_path / "in")], str(tmp_path / "out"), UpscaleParams(), "rename")
    outputs = sorted(str(i.output.relative_to(tmp_path / "out")) for i in items)
    assert outputs == ["a.png", "sub/b.png", "sub/deeper/c.png"]


def test_same_stem_inputs_keep_both_outputs(tmp_path: Path) -> None:
    for name in ["a.jpg", "a.png"]:
        (tmp_path / name).write_bytes(b"x")
    items, _ = plan([str(tmp_path)], str(tmp_path / "out"), UpscaleParams(), "rename")
    assert sorted(i.output.name for i in items) == ["a-png.png", "a.png"]


@pytest.mark.parametrize(
    ("policy", "expect_name", "skipped", "error"),
    [
        ("rename", "a-1.png", False, False),
        ("overwrite", "a.png", False, False),
        ("skip", None, True, False),
        ("error", None, False, True),
    ],
)
def test_existing_outputs_follow_the_policy(
    tmp_path: Path, policy, expect_name, skipped, error
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"old")
    [item], _ = plan([str(tmp_path / "a.jpg")], str(tmp_path / "out"), UpscaleParams(), policy)
    assert (item.output.name if item.output else None) == expect_name
    assert item.skipped is skipped and (item.error is not None) is error


def test_a_single_output_file_sets_the_format(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    [item], params = plan(
        [str(tmp_path / "a.png")], str(tmp_path / "big.webp"), UpscaleParams(), "rename"
    )
    assert item.output == tmp_path / "big.webp" and params.output_format == "webp"


# --- usage errors exit with 2 -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "creativity=5"], "creativity = 5.0 is not allowed: a number from 0 to 1"),
        (["--set", "creativty=0.5"], "did you mean 'creativity'"),
        (["--set", "nonsense"], "NAME=VALUE"),
        (["--scale", "40"], "scale_factor = 40.0"),
        (["--seed", "-3"], "seed = -3"),
        (["--preset", "Nope"], "no preset called 'Nope'"),
        (["--backend", "segmind", "--model", "nope"], "Segmind has no model 'nope'"),
        (["--tile", "5"], "tile must be between"),
    ],
)
def test_usage_and_parameter_errors_exit_2(tmp_path: Path, capsys, args, message) -> None:
    source = _photo(tmp_path / "a.png")
    code = main(["upscale", str(source), "-o", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_more_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["upscale", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    a, b = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.png")
    assert main(["upscale", str(a), str(b), "-o", str(tmp_path / "one.png")]) == 2
    assert "2 inputs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["upscale", str(a)])  # -o missing: argparse's own usage error
    assert caught.value.code == 2


# --- real runs through the worker -------------------------------------------------------------
def test_a_single_image_succeeds_with_exit_0_and_a_json_line(tmp_path: Path) -> None:
    source = _photo(tmp_path / "cat.jpg", 32)
    result = _cli(
        "upscale",
        str(source),
        "-o",
        str(tmp_path / "out"),
        "--json",
        "--seed",
        "7",
        "--scale",
        "3",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["status"] == "succeeded" and record["error"] is None
    assert record["output"] == str(tmp_path / "out" / "cat.png")
    assert record["seed"] == 7 and record["parameters"]["scale_factor"] == 3.0
    assert record["size"] == {"input": [32, 32], "output": [96, 96]}
    assert {"load", "pre-upscale", "save", "total"} <= set(record["timings"])
    info = read_run_info(tmp_path / "out" / "cat.png")
    assert info is not None and info.params == UpscaleParams.from_dict(record["parameters"])


def test_a_batch_with_a_bad_file_finishes_the_rest_and_exits_1(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "one.png")
    _photo(tmp_path / "in" / "nested" / "two.jpg")
    (tmp_path / "in" / "nested" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    result = _cli(
        "upscale",
        str(tmp_path / "in"),
        str(tmp_path / "missing.png"),
        "-o",
        str(tmp_path / "out"),
        "--json",
        *FAST,
    )
    assert result.returncode == 1, result.stderr
    records = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["one.png"]["status"] == records["two.jpg"]["status"] == "succeeded"
    assert records["broken.png"]["status"] == "failed"
    assert "broken.png" in records["broken.png"]["error"]["message"]
    assert records["missing.png"]["error"]["message"].endswith("no such file or folder")
    assert (tmp_path / "out" / "one.png").exists()
    assert (tmp_path / "out" / "nested" / "two.png").exists()
    assert not (tmp_path / "out" / "nested" / "broken.png").exists()


def test_human_output_lists_each_image(tmp_path: Path) -> None:
    source = _photo(tmp_path / "cat.png")
    result = _cli("upscale", str(source), "-o", str(tmp_path / "out"), *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok    ") and "24×24 → 48×48" in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_cancels_between_tiles_and_exits_130(tmp_path: Path) -> None:
    source = _photo(tmp_path / "big.png", 160)  # x4plus on a CPU: many seconds of tiles
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "upscale",
            str(source),
            "-o",
            str(tmp_path / "out"),
            "--json",
            "--tile",
            "32",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    model = (
        Path(os.environ["CLARIFIER_HOME"]) / "cache" / "models" / "realesrgan-x4plus.safetensors"
    )
    # Wait until the worker is busy: the model is converted (or was already) and tiles are running.
    while time.monotonic() < deadline and not model.exists():
        time.sleep(0.2)
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["status"] == "canceled"
    assert not (tmp_path / "out" / "big.png").exists()


def test_the_progress_line_fits_the_terminal_and_shows_tiles(monkeypatch) -> None:
    import io
    import os as _os

    from app.backends.base import JobState
    from app.cli.progress import ProgressLine
    from app.jobs import Job, JobEvent

    monkeypatch.setattr("shutil.get_terminal_size", lambda *_: _os.terminal_size((60, 20)))
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.start(2)
    job = Job(
        "job-1",
        Path("a-rather-long-file-name.png"),
        Path("o.png"),
        UpscaleParams(),
        "local",
        state=JobState.running,
        stage="pre-upscale",
        done=3,
        total=12,
    )
    line.update(JobEvent(job, JobState.running, "pre-upscale", 3, 12))
    drawn = stream.getvalue().split("\r\x1b[2K")[-1]
    assert drawn.startswith("[1/2]") and "tile 3/12" in drawn and "25%" in drawn
    assert len(drawn) < 60
    out = io.StringIO()
    line.print_above("ok    a.png → b.png", out)
    assert out.getvalue() == "ok    a.png → b.png\n"


def test_info_params_and_presets_commands(tmp_path: Path, capsys) -> None:
    from pipeline.io.save import save_image
    from pipeline.metadata import RunInfo

    info = RunInfo(
        UpscaleParams(seed=99, sharpen=1.5),
        "local/faithful",
        {"upscaler": "x"},
        (4, 4),
        (8, 8),
        "0.1.0",
    )
    out = save_image(tmp_path / "o.webp", np.zeros((8, 8, 3), np.uint8), info=info)
    assert main(["info", str(out), "--json"]) == 0
    assert RunInfo.from_dict(json.loads(capsys.readouterr().out)) == info
    assert main(["info", str(out)]) == 0
    assert "Seed: 99" in capsys.readouterr().out
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert main(["info", str(plain)]) == 1
    assert "no upscaling parameters" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.png")]) == 1

    assert main(["params"]) == 0
    listing = capsys.readouterr().out
    assert "creativity" in listing and "a number from 0 to 1" in listing
    assert "creative.fractality" in listing
    assert main(["presets"]) == 0
    assert "Faithful" in capsys.readouterr().out
