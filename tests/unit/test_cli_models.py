"""``clarifier models …`` and ``clarifier upscale --models DIR``, through app.cli.main."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from app import cli
from app.cli import upscale
from app.store.settings import load_settings
from pipeline.models import manifest
from pipeline.models.store import entry_by_id, load_manifest, models_dir
from tests.doubles.fake_models import fake_resources
from tests.doubles.hf_hub import HubDouble

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "samples" / "astronaut.jpg"


@pytest.fixture(autouse=True)
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Private Clarifier folders and a manifest of tiny fake models; returns their bytes."""
    for name in ("DATA", "CACHE", "CONFIG"):
        monkeypatch.setenv(f"CLARIFIER_{name}_DIR", str(tmp_path / name.lower()))
    blobs = fake_resources(tmp_path / "resources")
    monkeypatch.setattr(manifest, "resources_dir", lambda: tmp_path / "resources")
    return blobs


@pytest.fixture(scope="module")
def hub():
    with HubDouble() as double:
        yield double


@pytest.fixture
def served(world: dict[str, bytes], hub: HubDouble, monkeypatch: pytest.MonkeyPatch) -> HubDouble:
    for entry in load_manifest():
        hub.add_file(entry.repo, entry.path, world[entry.id], revision=entry.revision)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    return hub


def _a1111(root: Path, blobs: dict[str, bytes], ids: list[str]) -> dict[str, Path]:
    folders = {
        "checkpoint": "models/Stable-diffusion",
        "vae": "models/VAE",
        "controlnet": "models/ControlNet",
        "lora": "models/Lora",
        "embedding": "embeddings",
        "upscaler": "models/ESRGAN",
    }
    placed = {}
    for entry in load_manifest():
        if entry.id in ids:
            path = root / folders[entry.role] / entry.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blobs[entry.id])
            placed[entry.id] = path
    return placed


def _rows(text: str) -> dict[str, str]:
    """The models list as {id: the rest of its line}."""
    ids = {e.id for e in load_manifest()}
    rows = {}
    for line in text.splitlines():
        first = line.split(" ", 1)[0].rstrip("*")
        if first in ids:
            rows[first] = line
    return rows


def test_list_shows_licences_and_where_each_file_is(
    tmp_path: Path, world: dict[str, bytes], capsys
) -> None:
    placed = _a1111(tmp_path / "webui", world, ["juggernaut_reborn", "4x-UltraSharp"])
    assert cli.main(["models", "list", "--models", str(tmp_path / "webui")]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == len(load_manifest())
    assert rows["juggernaut_reborn"].endswith(f"found at {placed['juggernaut_reborn']}")
    assert rows["juggernaut_reborn"].startswith("juggernaut_reborn*")  # required by the defaults
    assert "CC BY-NC-SA 4.0" in rows["4x-UltraSharp"] and " NC " in rows["4x-UltraSharp"]
    assert "unverified" in rows["more_details"] and " ? " in rows["more_details"]
    assert rows["vae-ft-mse-840000"].endswith("missing")
    assert cli.main(["models", "list", "--models", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_download_asks_for_the_licences_then_fetches_and_verifies(
    served: HubDouble, world: dict[str, bytes], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = len(served.seen)
    assert cli.main(["models", "download", "vae-ft-mse-840000"]) == 2  # no terminal to ask
    captured = capsys.readouterr()
    assert "--accept-licences" in captured.err and "MIT" in captured.out
    assert len(served.seen) == before, "nothing is fetched before the licence is accepted"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert cli.main(["models", "download", "4x-UltraSharp"]) == 1
    out = capsys.readouterr().out
    assert "NON-COMMERCIAL USE ONLY" in out and "Nothing downloaded" in out
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert cli.main(["models", "download", "4x-UltraSharp", "--no-progress"]) == 0
    path = models_dir() / "ESRGAN" / "4x-UltraSharp.pth"
    assert path.read_bytes() == world["4x-UltraSharp"]
    assert f"ok    4x-UltraSharp → {path}" in capsys.readouterr().out

    code = cli.main(["models", "download", "--all-required", "--accept-licences"])
    out = capsys.readouterr().out
    assert code == 0, out
    required = [e for e in load_manifest() if e.required]
    assert out.count("ok    ") == len(required)
    assert cli.main(["models", "list"]) == 0
    rows = _rows(capsys.readouterr().out)
    vae = models_dir() / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors"
    assert rows["vae-ft-mse-840000"].endswith(f"  verified {vae}")  # hashed while downloading
    assert rows["epicrealism_naturalSinRC1VAE"].endswith("missing")
    # asking again finds them all: nothing to fetch, no licence question
    assert cli.main(["models", "download", "--all-required"]) == 0
    assert capsys.readouterr().out.count("have  ") == len(required)


def test_download_reports_unknown_ids_and_failures(served: HubDouble, capsys) -> None:
    assert cli.main(["models", "download", "sdxl_turbo", "--accept-licences"]) == 2
    assert "unknown model 'sdxl_turbo'; known models: juggernaut_reborn" in capsys.readouterr().err
    assert cli.main(["models", "download"]) == 2
    entry = entry_by_id("JuggernautNegative-neg")
    assert entry is not None and entry.sha256
    served.corrupt(entry.sha256)
    try:
        code = cli.main(["models", "download", entry.id, "more_details", "--accept-licences"])
    finally:
        served.state.corrupt.clear()
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  JuggernautNegative-neg: the download of JuggernautNegative-neg.pt" in out
    assert "ok    more_details" in out  # the others still finish


def test_verify_flags_a_changed_file(tmp_path: Path, world: dict[str, bytes], capsys) -> None:
    placed = _a1111(tmp_path / "webui", world, ["juggernaut_reborn", "more_details"])
    args = ["models", "verify", "--models", str(tmp_path / "webui")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"ok    juggernaut_reborn {placed['juggernaut_reborn']}: matches sha256" in out
    assert "ok    more_details" in out and "LoRA (addnet) hash" in out
    assert cli.main([*args, "vae-ft-mse-840000"]) == 1
    assert "miss  vae-ft-mse-840000: not found" in capsys.readouterr().out
    data = placed["juggernaut_reborn"].read_bytes()
    placed["juggernaut_reborn"].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert cli.main(args) == 1
    assert "BAD   juggernaut_reborn" in capsys.readouterr().out


def test_locate_reports_and_remembers_a_folder(
    tmp_path: Path, world: dict[str, bytes], capsys
) -> None:
    comfy = tmp_path / "ComfyUI"
    vae = comfy / "models" / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors"
    vae.parent.mkdir(parents=True)
    vae.write_bytes(world["vae-ft-mse-840000"])
    (comfy / "models" / "checkpoints").mkdir()
    (comfy / "models" / "loras").mkdir()
    (comfy / "models" / "loras" / "film_grain.safetensors").write_bytes(b"x")
    assert cli.main(["models", "locate", str(comfy)]) == 0
    out = capsys.readouterr().out
    assert f"{comfy.resolve()} (ComfyUI):" in out
    assert f"found vae-ft-mse-840000 at {vae}" in out and "1 LoRA file(s)" in out
    assert load_settings().model_dirs == (str(comfy.resolve()),)
    assert cli.main(["models", "locate", str(comfy)]) == 0  # remembered once
    assert load_settings().model_dirs == (str(comfy.resolve()),)
    capsys.readouterr()
    assert cli.main(["models", "list"]) == 0  # the settings' folders are searched
    assert _rows(capsys.readouterr().out)["vae-ft-mse-840000"].endswith(f"found at {vae}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["models", "locate", str(empty)]) == 1
    assert "not remembered" in capsys.readouterr().out
    assert cli.main(["models", "locate", str(tmp_path / "nope")]) == 2


def test_remove_deletes_downloads_only(served: HubDouble, tmp_path: Path, capsys) -> None:
    assert cli.main(["models", "download", "more_details", "--accept-licences"]) == 0
    path = models_dir() / "Lora" / "more_details.safetensors"
    assert path.exists()
    capsys.readouterr()
    assert cli.main(["models", "remove", "more_details"]) == 0
    assert f"removed {path}" in capsys.readouterr().out and not path.exists()
    assert cli.main(["models", "remove", "more_details"]) == 1
    assert "never deleted" in capsys.readouterr().err


def test_upscale_takes_models_folders_and_fails_fast_when_files_are_missing(
    tmp_path: Path, world: dict[str, bytes], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "out.png")
    assert cli.main(["upscale", str(SAMPLE), "-o", out, "--models", str(tmp_path / "nope")]) == 2
    assert "--models" in capsys.readouterr().err
    code = cli.main(["upscale", str(SAMPLE), "-o", out, "--mode", "creative", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "creative mode needs 6 model file(s)" in err
    assert "clarifier models download juggernaut_reborn" in err

    webui = tmp_path / "webui"
    _a1111(webui, world, [e.id for e in load_manifest()])
    seen: dict[str, object] = {}

    async def fake_run(items, params, *, options, **kwargs) -> int:
        seen.update(options=options, mode=params.mode)
        return 0

    monkeypatch.setattr(upscale, "run_items", fake_run)
    args = ["upscale", str(SAMPLE), "-o", out, "--mode", "creative", "--models", str(webui)]
    assert cli.main(args) == 0
    assert seen["mode"] == "creative"
    assert seen["options"]["model_dirs"] == [str(webui.resolve())]  # type: ignore[index]
