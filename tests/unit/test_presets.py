"""Preset preferences: "Clarity default" pre-upscales with Clarity's own 4x-UltraSharp when it is
installed and with the bundled Real-ESRGAN x4plus otherwise, says which and under which licence,
and the run's metadata names the upscaler actually used.

"Installed" is checked against the model store the engine itself resolves files with
(:func:`pipeline.models.store.find_models`), and the end-to-end run goes through the real engine
on the tiny models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.store.presets import PresetError, PresetStore, read_preset_file
from app.store.settings import Settings, save_settings
from pipeline.models.files import file_sha256
from pipeline.models.store import find_models
from pipeline.params import UpscaleParams

ULTRASHARP = "4x-UltraSharp"
FALLBACK = "realesrgan-x4plus"


@pytest.fixture(autouse=True)
def own_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data and config folder: Clarifier's own models folder starts empty."""
    monkeypatch.setenv("CLARIFIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLARIFIER_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "data" / "models"


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    return PresetStore(user_dir=tmp_path / "presets")


def _place(root: Path, relative: str, data: bytes = b"not really weights") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write(path: Path, **data) -> Path:
    body = {"clarifier_preset": 1, "name": "Mine", "params": {"version": 1}} | data
    path.write_text(json.dumps(body))
    return path


def test_without_ultrasharp_the_bundled_real_esrgan_is_used(store: PresetStore) -> None:
    preset = store.get("Clarity default")
    (choice,) = preset.resolve(model_dirs=())
    assert (choice.field, choice.value, choice.path) == ("upscaler", FALLBACK, None)
    assert choice.candidates == (ULTRASHARP, FALLBACK) and choice.passed_over == (ULTRASHARP,)
    assert not choice.non_commercial
    line = choice.describe()
    assert "realesrgan-x4plus (bundled with Clarifier)" in line
    assert "4x-UltraSharp is preferred but not installed" in line
    assert "clarifier models download 4x-UltraSharp" in line and "non-commercial" in line
    assert preset.apply(model_dirs=()) == UpscaleParams(mode="creative", upscaler=FALLBACK)


@pytest.mark.parametrize(
    "relative",
    [
        "ESRGAN/4x-UltraSharp.pth",  # A1111's models folder
        "models/ESRGAN/4x-UltraSharp.pth",  # an A1111 install
        "models/upscale_models/4x-UltraSharp.safetensors",  # ComfyUI, the other published name
        "4x-ultrasharp.PTH",  # a plain folder; names match case-insensitively
    ],
)
def test_an_installed_ultrasharp_is_preferred_where_the_engine_finds_it(
    store: PresetStore, tmp_path: Path, relative: str
) -> None:
    folder = tmp_path / "webui"
    placed = _place(folder, relative)
    preset = store.get("Clarity default")
    (choice,) = preset.resolve(model_dirs=[str(folder)])
    assert (choice.value, choice.path, choice.passed_over) == (ULTRASHARP, placed, ())
    assert choice.non_commercial and choice.entry is not None
    line = choice.describe()
    assert f"4x-UltraSharp, found at {placed}" in line
    assert "CC BY-NC-SA 4.0 (non-commercial use only)" in line
    params = preset.apply(UpscaleParams(seed=5), model_dirs=[str(folder)])
    assert (params.upscaler, params.mode, params.seed) == (ULTRASHARP, "creative", 5)
    # The engine's own resolver loads that very file for these parameters.
    assert find_models(params, [str(folder)]).upscaler == placed


def test_the_settings_folders_and_clarifiers_own_are_searched_by_default(
    store: PresetStore, tmp_path: Path, own_folders: Path
) -> None:
    preset = store.get("Clarity default")
    assert preset.apply().upscaler == FALLBACK
    folder = tmp_path / "comfy"
    _place(folder, "models/upscale_models/4x-UltraSharp.pth")
    assert preset.apply().upscaler == FALLBACK  # not a folder anyone named
    save_settings(Settings(model_dirs=(str(folder),)))
    assert preset.apply().upscaler == ULTRASHARP
    save_settings(Settings())
    assert preset.apply().upscaler == FALLBACK
    downloaded = _place(own_folders, "ESRGAN/4x-UltraSharp.pth")  # where downloads go
    (choice,) = preset.resolve()
    assert (choice.value, choice.path) == (ULTRASHARP, downloaded)


def test_the_first_installed_candidate_wins_in_file_order(tmp_path: Path) -> None:
    anime_first = _write(
        tmp_path / "a.json",
        prefer={"upscaler": ["realesrgan-x4plus-anime", "4x-UltraSharp", "realesrgan-x4plus"]},
    )
    folder = tmp_path / "models"
    _place(folder, "ESRGAN/4x-UltraSharp.pth")
    preset = read_preset_file(anime_first)
    for _ in range(3):  # the same folders give the same answer every time
        assert preset.apply(model_dirs=[folder]).upscaler == "realesrgan-x4plus-anime"
    assert preset.resolve(model_dirs=[folder])[0].passed_over == ()


@pytest.mark.parametrize(
    ("prefer", "params", "message"),
    [
        ({"sd_model": ["juggernaut_reborn", "x"]}, {}, "only upscaler can be preferred"),
        ({"upscaler": ["4x-UltraSharp", FALLBACK]}, {"upscaler": FALLBACK}, "both in 'params'"),
        ({"upscaler": ["4x-UltraSharp"]}, {}, "must end with a bundled upscaler"),
        ({"upscaler": ["juggernaut_reborn", FALLBACK]}, {}, "neither bundled .* nor an upscaler"),
        ({"upscaler": ["my-own-net", FALLBACK]}, {}, "'my-own-net', which is neither bundled"),
        ({"upscaler": [FALLBACK, FALLBACK]}, {}, "names a model twice"),
        ({"upscaler": FALLBACK}, {}, "not a list of names"),
        ({"upscaler": []}, {}, "not a list of names"),
        (["upscaler"], {}, "'prefer' is not an object"),
    ],
)
def test_bad_preferences_are_refused_when_read(
    tmp_path: Path, prefer: object, params: dict, message: str
) -> None:
    path = _write(tmp_path / "bad.json", params={"version": 1, **params}, prefer=prefer)
    with pytest.raises(PresetError, match=message):
        read_preset_file(path)


def test_preferences_survive_export_import_and_rename(store: PresetStore, tmp_path: Path) -> None:
    exported = store.export("Clarity default", tmp_path / "clarity.json")
    data = json.loads(exported.read_text())
    assert data["prefer"] == {"upscaler": [ULTRASHARP, FALLBACK]}
    assert "upscaler" not in data["params"]
    data["name"] = "Clarity, mine"
    exported.write_text(json.dumps(data))
    imported = store.import_file(exported)
    assert imported.prefer == {"upscaler": (ULTRASHARP, FALLBACK)} and not imported.builtin
    renamed = store.rename("Clarity, mine", "Clarity again")
    assert store.get("Clarity again").prefer == renamed.prefer == imported.prefer
    saved = json.loads(next((tmp_path / "presets").glob("*.json")).read_text())
    assert saved["prefer"] == {"upscaler": [ULTRASHARP, FALLBACK]}


def test_a_preset_without_preferences_writes_none(store: PresetStore) -> None:
    saved = store.save("Plain", {"version": 1, "creativity": 0.4})
    assert "prefer" not in saved.to_file_dict() and saved.resolve() == []


def test_the_run_records_the_upscaler_it_used(tiny_models_dir: Path, tmp_path: Path) -> None:
    """Clarity default, with a 4x-UltraSharp in a ComfyUI folder, through the real engine: the
    metadata names that file and its hash (a compact ×4 network stands in for the weights)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pipeline.engine import EngineOptions, upscale
    from pipeline.io import LoadedImage, SourceInfo
    from pipeline.metadata import format_infotext, parse_infotext_fields
    from pipeline.sr.ncnn import load_bundled

    state, _, _ = load_bundled("realesr-animevideov3")
    weights = tmp_path / "comfy" / "models" / "upscale_models" / "4x-UltraSharp.safetensors"
    weights.parent.mkdir(parents=True)
    save_file(state, str(weights))
    dirs = [str(tiny_models_dir), str(tmp_path / "comfy")]
    base = UpscaleParams(num_inference_steps=4, seed=3)
    params = PresetStore().get("Clarity default").apply(base, model_dirs=dirs)
    assert params.upscaler == ULTRASHARP

    torch.set_num_threads(1)
    rgb = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    source = SourceInfo(
        path=None, format="PNG", mode="RGB", width=40, height=32, bit_depth=8, grayscale=False,
        has_alpha=False, frames=1, icc_profile=None, exif=None, xmp=None,
    )  # fmt: skip
    result = upscale(
        LoadedImage(rgb=rgb, alpha=None, source=source),
        params,
        options=EngineOptions(device="cpu", model_dirs=tuple(Path(d) for d in dirs)),
    )
    assert result.rgb.shape == (64, 80, 3)
    assert result.info.models["upscaler"] == ULTRASHARP
    assert result.info.models["upscaler_sha256"] == file_sha256(weights)
    fields = parse_infotext_fields(format_infotext(result.info))  # what A1111 readers see
    assert fields.get("Tiled Diffusion upscaler", fields.get("Upscaler")) == ULTRASHARP


def test_faithful_mode_finds_the_preferred_upscaler_where_creative_mode_does(
    tmp_path: Path,
) -> None:
    """A 4x-UltraSharp in an A1111 ESRGAN folder (not loose in the folder given) runs in the
    faithful mode too, so switching mode after applying Clarity default keeps working."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pipeline.engine import EngineOptions, upscale
    from pipeline.io import LoadedImage, SourceInfo
    from pipeline.sr.ncnn import load_bundled

    state, _, _ = load_bundled("realesr-animevideov3")
    weights = tmp_path / "webui" / "models" / "ESRGAN" / "4x-UltraSharp.safetensors"
    weights.parent.mkdir(parents=True)
    save_file(state, str(weights))
    dirs = [str(tmp_path / "webui")]
    params = PresetStore().get("Clarity default").apply(UpscaleParams(), model_dirs=dirs)
    assert params.upscaler == ULTRASHARP
    torch.set_num_threads(1)
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    source = SourceInfo(
        path=None, format="PNG", mode="RGB", width=32, height=24, bit_depth=8, grayscale=False,
        has_alpha=False, frames=1, icc_profile=None, exif=None, xmp=None,
    )  # fmt: skip
    result = upscale(
        LoadedImage(rgb=rgb, alpha=None, source=source),
        params.replace(mode="faithful"),
        options=EngineOptions(device="cpu", model_dirs=(tmp_path / "webui",)),
    )
    assert result.rgb.shape == (48, 64, 3)
    assert result.info.models["upscaler"] == ULTRASHARP
    assert result.info.models["upscaler_sha256"] == file_sha256(weights)


def test_a_missing_preferred_upscaler_says_how_to_get_it_in_faithful_mode(tmp_path: Path) -> None:
    import numpy as np

    from pipeline.engine import EngineOptions, upscale
    from pipeline.errors import ModelError
    from pipeline.io import LoadedImage, SourceInfo

    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    source = SourceInfo(
        path=None, format="PNG", mode="RGB", width=16, height=16, bit_depth=8, grayscale=False,
        has_alpha=False, frames=1, icc_profile=None, exif=None, xmp=None,
    )  # fmt: skip
    params = UpscaleParams(mode="faithful", upscaler=ULTRASHARP)
    with pytest.raises(ModelError) as info:
        upscale(
            LoadedImage(rgb=rgb, alpha=None, source=source),
            params,
            options=EngineOptions(device="cpu", model_dirs=(tmp_path,)),
        )
    message = str(info.value)
    assert "clarifier models download 4x-UltraSharp" in message and "non-commercial" in message
    assert f"Searched: {tmp_path}" in message and "--models DIR" in message
