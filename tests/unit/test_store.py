"""Presets (built-in and user) and settings files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.store.presets import PresetError, PresetStore
from app.store.settings import Settings, load_settings, save_settings
from pipeline.params import UpscaleParams
from pipeline.paths import resources_dir


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    return PresetStore(user_dir=tmp_path / "presets")


def test_builtin_presets_load_and_validate(store: PresetStore) -> None:
    names = [p.name for p in store.list()]
    assert names[:6] == ["Clarity default", "Faithful", "Portrait", "Anime", "Subtle", "Max detail"]
    assert store.get("Clarity default").apply() == UpscaleParams(mode="creative")
    faithful = store.get("faithful").apply()
    assert (faithful.mode, faithful.scale_factor) == ("faithful", 4.0)
    assert store.get("max-detail").apply().tiling_width == 80  # found by slug too


def test_a_preset_lays_its_values_over_a_base(store: PresetStore) -> None:
    base = UpscaleParams(seed=42, prompt="a red fox")
    applied = store.get("Portrait").apply(base)
    assert applied.seed == 42 and applied.prompt == "a red fox"
    assert applied.creativity == 0.3 and applied.sd_model.startswith("epicrealism")


def test_user_presets_save_rename_export_import_delete(store: PresetStore, tmp_path: Path) -> None:
    params = UpscaleParams(creativity=0.42, seed=7).replace(**{"creative.fractality": 4})
    saved = store.save("My look", params, "for night shots")
    assert saved.path is not None and saved.path.parent == tmp_path / "presets"
    assert store.get("my look").apply() == params
    with pytest.raises(PresetError, match="already exists"):
        store.save("My look", UpscaleParams())
    store.save("My look", UpscaleParams(creativity=0.5), overwrite=True)
    assert store.get("My look").apply().creativity == 0.5

    renamed = store.rename("My look", "Night")
    assert renamed.name == "Night" and store.get("Night").apply().creativity == 0.5
    with pytest.raises(PresetError, match="no preset called 'My look'"):
        store.get("My look")

    exported = store.export("Night", tmp_path / "night.json")
    store.delete("Night")
    assert "Night" not in [p.name for p in store.list()]
    imported = store.import_file(exported)
    assert imported.name == "Night" and imported.apply().creativity == 0.5


def test_builtins_are_read_only(store: PresetStore) -> None:
    before = sorted(p.read_bytes() for p in (resources_dir() / "presets").glob("*.json"))
    for action in (
        lambda: store.save("Faithful", UpscaleParams()),
        lambda: store.delete("Faithful"),
        lambda: store.rename("Portrait", "Mine"),
    ):
        with pytest.raises(PresetError, match="built-in"):
            action()
    after = sorted(p.read_bytes() for p in (resources_dir() / "presets").glob("*.json"))
    assert before == after


def test_bad_preset_files_are_refused_clearly(store: PresetStore, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    with pytest.raises(PresetError, match="not valid JSON"):
        store.import_file(bad_json)
    bad_params = tmp_path / "bad-params.json"
    bad_params.write_text(json.dumps({"name": "x", "params": {"creativity": 9}}))
    with pytest.raises(PresetError, match="creativity = 9"):
        store.import_file(bad_params)
    with pytest.raises(PresetError, match="Did you mean 'Portrait'"):
        store.get("Portrait2")
    # A damaged user file does not hide the others.
    store.user_dir.mkdir(parents=True, exist_ok=True)
    (store.user_dir / "broken.json").write_text("[]")
    store.save("Fine", UpscaleParams())
    assert "Fine" in [p.name for p in store.list()]


def test_settings_round_trip_and_survive_damage(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    assert load_settings(path) == Settings()
    custom = Settings(max_output_megapixels=100, device="cpu", tile=128, model_dirs=("/m",))
    save_settings(custom, path)
    assert load_settings(path) == custom
    assert custom.max_output_pixels == 100_000_000
    path.write_text("{broken")
    assert load_settings(path) == Settings()
    assert (tmp_path / "settings.json.bad").exists()
    with pytest.raises(ValueError, match="tile"):
        save_settings(Settings(tile=5), path)
