"""The model manifest, hashes and file checks, finding files in A1111/ComfyUI/plain folders, and
removing Clarifier's own (downloads are tests/unit/test_model_download.py)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ModelError
from pipeline.models import manifest
from pipeline.models.files import check_model_file, file_hashes, hash_file
from pipeline.models.store import (
    ROLES,
    entry_by_id,
    find_models,
    load_manifest,
    locate,
    resolve_models,
)
from pipeline.models.upkeep import remove, verify
from pipeline.params import SD_MODELS, UpscaleParams
from pipeline.paths import resources_dir
from tests.doubles.fake_models import (
    addnet_of,
    fake_resources,
    safetensors_bytes,
    torch_zip,
    unsafe_pickle,
)

_FIELDS = {
    "id": str,
    "role": str,
    "file": str,
    "alt_files": list,
    "repo": str,
    "path": str,
    "revision": str,
    "size": (int, type(None)),
    "size_exact": bool,
    "sha256": (str, type(None)),
    "sha256_prefix": (str, type(None)),
    "addnet_hash": (str, type(None)),
    "hash_source": str,
    "licence": str,
    "licence_url": str,
    "licence_verified": bool,
    "non_commercial": bool,
    "required": bool,
    "page": str,
    "purpose": str,
}
BIG = {"control_v11f1e_sd15_tile": 3_000_000}  # bytes of floats: more than one 1 MiB chunk


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA", "CACHE", "CONFIG"):
        monkeypatch.setenv(f"CLARIFIER_{name}_DIR", str(tmp_path / name.lower()))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A manifest describing tiny fake files; returns their bytes by id."""
    blobs = fake_resources(tmp_path / "resources", big=BIG)
    monkeypatch.setattr(manifest, "resources_dir", lambda: tmp_path / "resources")
    return blobs


def _place(root: Path, folders: dict[str, str], blobs: dict[str, bytes]) -> dict[str, Path]:
    """Write every fake model into ``root`` under its role's folder (as the layout names it)."""
    placed = {}
    for entry in load_manifest():
        path = root / folders[entry.role] / entry.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blobs[entry.id])
        placed[entry.id] = path
    return placed


# --- the manifest -----------------------------------------------------------------------------
def test_the_manifest_is_complete_and_well_formed() -> None:
    data = json.loads((resources_dir() / "models.json").read_text(encoding="utf-8"))
    assert data["notes"] and all(isinstance(n, str) for n in data["notes"])
    raw = data["models"]
    for entry in raw:
        assert set(entry) == set(_FIELDS), entry["id"]
        for name, kind in _FIELDS.items():
            assert isinstance(entry[name], kind), (entry["id"], name)
        assert entry["role"] in ROLES
        if entry["sha256"] is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            assert entry["sha256"].startswith(entry["sha256_prefix"])
        if entry["sha256_prefix"] is not None:
            assert re.fullmatch(r"[0-9a-f]{10}", entry["sha256_prefix"])
        if entry["addnet_hash"] is not None:
            assert re.fullmatch(r"[0-9a-f]{12}|[0-9a-f]{64}", entry["addnet_hash"])
        assert entry["licence_url"].startswith("https://") and entry["page"].startswith("https://")
        if not entry["licence_verified"]:
            assert "unknown" in entry["licence"] and "check the model page" in entry["licence"]
    for key in ("id", "file"):
        values = [e[key].lower() for e in raw]
        assert len(values) == len(set(values)), key
    entries = load_manifest()
    assert len(entries) == len(raw) == 9
    for choice in SD_MODELS:
        name, _, tag = choice.partition(" [")
        entry = entry_by_id(name)
        assert entry is not None and entry.role == "checkpoint", choice
        if tag:  # Clarity's [hash] is the first 10 digits of the file's sha256
            assert entry.sha256_prefix == tag.rstrip("]")
    # what Clarity's defaults use is there and marked required
    defaults = UpscaleParams()
    for name in ("more_details", "SDXLrender_v2.0", "JuggernautNegative-neg", "juggernaut_reborn"):
        entry = entry_by_id(name)
        assert entry is not None and entry.required
        assert (
            Path(entry.file).stem in defaults.prompt + defaults.negative_prompt + defaults.sd_model
        )
    assert {e.role for e in entries if e.required} == {
        "checkpoint",
        "vae",
        "controlnet",
        "lora",
        "embedding",
    }
    ultrasharp = entry_by_id("4x-UltraSharp")
    assert ultrasharp is not None and ultrasharp.non_commercial and not ultrasharp.required


def test_a_broken_manifest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_resources(tmp_path)
    data = json.loads((tmp_path / "models.json").read_text())
    data["models"][0]["sha256"] = "XYZ"
    data["models"][1]["role"] = "refiner"
    (tmp_path / "models.json").write_text(json.dumps(data))
    monkeypatch.setattr(manifest, "resources_dir", lambda: tmp_path)
    with pytest.raises(ModelError, match="sha256 is not 64 lowercase hex"):
        load_manifest()
    data["models"][0]["sha256"] = None
    (tmp_path / "models.json").write_text(json.dumps(data))
    manifest._manifest.cache_clear()
    with pytest.raises(ModelError, match="role 'refiner' is not one of"):
        load_manifest()
    manifest._manifest.cache_clear()


# --- hashes and file checks -------------------------------------------------------------------
def test_hashes_match_their_definitions_and_the_cache_follows_changes(tmp_path: Path) -> None:
    data = safetensors_bytes(5000, seed=3, metadata={"ss_note": "x"})
    path = tmp_path / "a.safetensors"
    path.write_bytes(data)
    hashes = file_hashes(path)
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert hashes.addnet == addnet_of(data) != hashes.sha256
    # the addnet hash ignores the header: other metadata, same tensors, same addnet hash
    other = tmp_path / "other.safetensors"
    other.write_bytes(safetensors_bytes(5000, seed=3, metadata={"ss_note": "another note"}))
    assert hash_file(other).addnet == hashes.addnet and hash_file(other).sha256 != hashes.sha256
    path.write_bytes(data[:-4] + b"\x00\x00\x00\x00")  # same size, new content
    assert file_hashes(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_hashes(path).addnet == addnet_of(path.read_bytes())


def test_file_checks_catch_truncation_html_and_unsafe_pickles(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    good.write_bytes(safetensors_bytes(100, seed=1))
    check_model_file(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ModelError, match="truncated"):
        check_model_file(cut)
    page = tmp_path / "page.safetensors"
    page.write_bytes(b"<!DOCTYPE html><html>please log in</html>")
    with pytest.raises(ModelError, match=r"not a \.safetensors file"):
        check_model_file(page)
    safe = tmp_path / "emb.pt"
    safe.write_bytes(torch_zip({"string_to_param": {"*": [0.1, 0.2]}, "name": "emb"}))
    check_model_file(safe)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(unsafe_pickle())
    # The callable is named (print; under Ray in the same process, the print Ray installed).
    with pytest.raises(ModelError, match=r"would run code when loaded \(.*print\)"):
        check_model_file(evil)
    legacy = tmp_path / "old.ckpt"
    legacy.write_bytes(b"\x80\x02" + b"junk")
    with pytest.raises(ModelError, match="old-style or unknown pickle"):
        check_model_file(legacy)


# --- finding files ----------------------------------------------------------------------------
A1111 = {
    "checkpoint": "models/Stable-diffusion",
    "vae": "models/VAE",
    "controlnet": "extensions/sd-webui-controlnet/models",
    "lora": "models/Lora/sd15",
    "embedding": "embeddings",
    "upscaler": "models/ESRGAN",
}
COMFY = {
    "checkpoint": "checkpoints/sd15",
    "vae": "vae",
    "controlnet": "controlnet",
    "lora": "loras",
    "embedding": "embeddings",
    "upscaler": "upscale_models",
}
FLAT = dict.fromkeys(ROLES, "")


@pytest.mark.parametrize(
    ("layout", "folders"),
    [
        ("A1111", A1111),
        ("ComfyUI", {r: f"models/{f}" for r, f in COMFY.items()}),
        ("ComfyUI", COMFY),  # its models/ folder given directly
        ("plain folder", FLAT),
    ],
)
def test_resolve_finds_every_file_in_each_layout(
    tmp_path: Path, fake: dict[str, bytes], layout: str, folders: dict[str, str]
) -> None:
    root = tmp_path / "install"
    placed = _place(root, folders, fake)
    extra_lora = root / (folders["lora"] or ".") / "my_style.safetensors"
    if folders["lora"]:
        extra_lora.write_bytes(safetensors_bytes(8, seed=99))
    params = UpscaleParams(mode="creative", upscaler="4x-UltraSharp")
    models = resolve_models(params, [root])
    assert models.checkpoint == placed["juggernaut_reborn"]
    assert models.vae == placed["vae-ft-mse-840000"]
    assert models.controlnet == placed["control_v11f1e_sd15_tile"]
    assert models.upscaler == placed["4x-UltraSharp"]
    assert models.loras["more_details"] == placed["more_details"]
    assert models.loras["SDXLrender_v2.0"] == placed["SDXLrender_v2.0"]
    assert models.embeddings["JuggernautNegative-neg"] == placed["JuggernautNegative-neg"]
    assert models.config_dir == tmp_path / "resources" / "sd15"  # none in the folder: bundled
    if folders["lora"]:  # every LoRA of a LoRA folder, not only Clarity's
        assert models.loras["my_style"] == extra_lora
    assert locate(root).layout == layout
    other = resolve_models(params.replace(sd_model=SD_MODELS[2]), [root])
    assert other.checkpoint == placed["flat2DAnimerge_v45Sharp"]


def test_names_match_case_insensitively_and_a_folder_config_wins(
    tmp_path: Path, fake: dict[str, bytes]
) -> None:
    root = tmp_path / "mine"
    placed = _place(root, {r: f.lower() for r, f in A1111.items()}, fake)
    shouting = placed["juggernaut_reborn"].with_name("JUGGERNAUT_REBORN.SAFETENSORS")
    placed["juggernaut_reborn"].rename(shouting)
    (root / "sd15-config").mkdir()
    models = resolve_models(UpscaleParams(mode="creative"), [root])
    assert models.checkpoint == shouting
    assert models.config_dir == root / "sd15-config"


def test_renamed_files_are_found_by_hash_only_when_asked(
    tmp_path: Path, fake: dict[str, bytes]
) -> None:
    root = tmp_path / "renamed"
    placed = _place(root, A1111, fake)
    for model_id, new in (
        ("juggernaut_reborn", "jugg-v1.safetensors"),  # full sha256
        ("epicrealism_naturalSinRC1VAE", "epic.safetensors"),  # short hash only
        ("more_details", "detail_tweaker.safetensors"),  # LoRA: addnet hash only
    ):
        placed[model_id] = placed[model_id].rename(placed[model_id].with_name(new))
    params = UpscaleParams(mode="creative")
    with pytest.raises(ModelError) as caught:
        resolve_models(params, [root])
    missing = [m.name for m in caught.value.missing]
    assert missing == ["juggernaut_reborn.safetensors", "more_details.safetensors"]
    models = resolve_models(params, [root], by_hash=True)
    assert models.checkpoint == placed["juggernaut_reborn"]
    assert models.loras["more_details"] == placed["more_details"]
    epic = resolve_models(params.replace(sd_model=SD_MODELS[0]), [root], by_hash=True)
    assert epic.checkpoint == placed["epicrealism_naturalSinRC1VAE"]


def test_one_error_lists_everything_missing_with_sizes_licences_and_commands(
    tmp_path: Path, fake: dict[str, bytes]
) -> None:
    params = UpscaleParams(
        mode="creative",
        lora_links="https://example.com/loras/cool.safetensors, /nowhere/local.safetensors",
    )
    with pytest.raises(ModelError) as caught:
        resolve_models(params, [tmp_path / "does-not-exist"])
    message = str(caught.value)
    names = [m.name for m in caught.value.missing]
    assert names == [
        "juggernaut_reborn.safetensors",
        "vae-ft-mse-840000-ema-pruned.safetensors",
        "control_v11f1e_sd15_tile.pth",
        "https://example.com/loras/cool.safetensors",
        "/nowhere/local.safetensors",
        "more_details.safetensors",
        "SDXLrender_v2.0.safetensors",
        "JuggernautNegative-neg.pt",
    ]
    juggernaut = entry_by_id("juggernaut_reborn")
    assert juggernaut is not None
    assert f"juggernaut_reborn.safetensors (checkpoint, {juggernaut.size_text}" in message
    assert "licence: unknown — check the model page" in message
    assert (
        "  clarifier models download juggernaut_reborn vae-ft-mse-840000 control_v11f1e_sd15_tile "
        "'https://example.com/loras/cool.safetensors' more_details SDXLrender_v2.0 "
        "JuggernautNegative-neg\n"
    ) in message
    link = params.replace(lora_links="", custom_sd_model="https://example.com/c.safetensors")
    with pytest.raises(ModelError) as caught:
        resolve_models(link, [])
    command = "  clarifier models download 'https://example.com/c.safetensors' --role checkpoint"
    assert command in str(caught.value)
    assert "--models DIR" in message and "clarifier models locate DIR" in message
    assert "/nowhere/local.safetensors (lora) — in lora_links: no such file" in message
    # a prompt without Clarity's LoRAs and embedding needs only the three base files
    plain = UpscaleParams(mode="creative", prompt="a photo", negative_prompt="blurry")
    check = find_models(plain, [])
    assert [m.role for m in check.missing] == ["checkpoint", "vae", "controlnet"]


def test_custom_checkpoint_and_local_lora_links_are_used_directly(
    tmp_path: Path, fake: dict[str, bytes]
) -> None:
    root = tmp_path / "models"
    placed = _place(root, A1111, fake)
    mine = tmp_path / "elsewhere" / "my_ckpt.safetensors"
    lora = tmp_path / "elsewhere" / "Extra-Lora.safetensors"
    mine.parent.mkdir()
    mine.write_bytes(safetensors_bytes(16, seed=5))
    lora.write_bytes(safetensors_bytes(16, seed=6))
    params = UpscaleParams(mode="creative", custom_sd_model=str(mine), lora_links=f" {lora} ")
    models = resolve_models(params, [root])
    assert models.checkpoint == mine
    assert models.loras["Extra-Lora"] == lora
    assert models.vae == placed["vae-ft-mse-840000"]
    with pytest.raises(ModelError, match="custom_sd_model: no such file"):
        resolve_models(params.replace(custom_sd_model=str(tmp_path / "nope.safetensors")), [root])


# --- remove (no network: pipeline.models.upkeep) ---------------------------------------------
def test_remove_only_touches_clarifiers_own_folder(tmp_path: Path, fake: dict[str, bytes]) -> None:
    root = tmp_path / "install"
    placed = _place(root, A1111, fake)
    entry = entry_by_id("juggernaut_reborn")
    assert entry is not None
    with pytest.raises(ModelError, match="never deleted"):
        remove(entry)
    assert placed[entry.id].exists()
    assert verify(entry, [root]).status == "verified"
    with pytest.raises(ModelError, match="not downloaded by Clarifier"):
        remove("https://example.com/never.safetensors")


# --- the import contract ---------------------------------------------------------------------
def test_model_store_and_the_cli_part_import_no_torch() -> None:
    code = (
        "import sys, pipeline.models.store, app.models.download, app.cli.models; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "sys.exit(str(heavy) if heavy else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
