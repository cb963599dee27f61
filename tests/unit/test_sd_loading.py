"""Offline loading of the SD 1.5 + ControlNet pipeline from A1111-style files.

Everything runs on the tiny SD1.5-structured models of tests/tiny_models.py, written in the real
file formats, so the real conversion paths run; the diffusers-layout copies under ``_reference``
are the ground truth the loaded tensors must equal.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipeline.diffusion import sd_files, sd_loading
from pipeline.diffusion.sd_loading import (
    PipelineCache,
    addnet_hash,
    describe_weights,
    file_fingerprint,
    load_pipeline,
    read_weights,
    set_loras,
)
from pipeline.errors import ModelError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """The models are tiny: one thread is as fast, and stays fast on a shared, busy machine
    (busy-waiting OpenMP threads make oversubscribed runs many times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(tiny: dict[str, Any], **overrides: Any) -> Any:
    checkpoint = overrides.pop("checkpoint", tiny["checkpoint"])
    kwargs: dict[str, Any] = {
        "vae": tiny["vae"],
        "controlnet": tiny["controlnet"],
        "config_dir": tiny["config"],
        "device": "cpu",
        "dtype": torch.float32,
    }
    kwargs.update(overrides)
    return load_pipeline(checkpoint, **kwargs)


@pytest.fixture(scope="module")
def tiny(tiny_models: dict[str, Any]) -> dict[str, Any]:
    return tiny_models


@pytest.fixture(scope="module")
def pipe(tiny: dict[str, Any]) -> Any:
    return _load(tiny)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _run(pipe: Any, image: Image.Image) -> np.ndarray:
    out = pipe(
        "a cat",
        negative_prompt="the dog",
        image=image,
        control_image=image,
        num_inference_steps=4,
        strength=0.5,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return out.images[0]


@pytest.fixture(scope="module")
def base_output(pipe: Any, image: Image.Image) -> np.ndarray:
    set_loras(pipe, {})
    return _run(pipe, image)


def _reference(tiny: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    folder = tiny["reference"] / name
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1
    return load_file(str(files[0]))


def _assert_same_tensors(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(reference)
    different = [k for k in reference if not torch.equal(state[k], reference[k])]
    assert different == []


# --- the bundled config ------------------------------------------------------------------------


def test_bundled_config_builds_the_real_sd15_sizes() -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd_loading.bundled_config_dir()
    assert cfg == ROOT / "resources" / "sd15"
    with init_empty_weights():
        models = {
            "unet": UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(cfg, subfolder="unet")
            ),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(cfg, subfolder="vae")),
            "controlnet": ControlNetModel.from_config(
                ControlNetModel.load_config(cfg, subfolder="controlnet")
            ),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig.from_pretrained(cfg, subfolder="text_encoder")
            ),
        }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert counts == {
        "unet": 859_520_964,
        "vae": 83_653_863,
        "controlnet": 361_279_120,
        "text_encoder": 123_060_480,
    }
    assert models["vae"].config.scaling_factor == 0.18215
    assert models["controlnet"].config.controlnet_conditioning_channel_order == "rgb"
    te = models["text_encoder"].config
    assert (te.bos_token_id, te.eos_token_id, te.pad_token_id) == (49406, 49407, 49407)
    assert te.hidden_act == "quick_gelu"


def test_bundled_scheduler_and_index() -> None:
    cfg = sd_loading.bundled_config_dir()
    sched = json.loads((cfg / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_start"] == 0.00085
    assert sched["beta_end"] == 0.012
    assert sched["beta_schedule"] == "scaled_linear"
    assert sched["steps_offset"] == 1
    assert sched["num_train_timesteps"] == 1000
    assert sched["prediction_type"] == "epsilon"
    index = json.loads((cfg / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]


# --- loading -----------------------------------------------------------------------------------


def test_every_tensor_equals_the_source(pipe: Any, tiny: dict[str, Any]) -> None:
    _assert_same_tensors(pipe.unet, _reference(tiny, "unet"))
    _assert_same_tensors(pipe.vae, _reference(tiny, "vae"))  # the standalone VAE
    _assert_same_tensors(pipe.controlnet, _reference(tiny, "controlnet"))
    _assert_same_tensors(pipe.text_encoder, _reference(tiny, "text_encoder"))
    assert pipe.safety_checker is None
    assert pipe.tokenizer.bos_token_id == tiny["vocab_size"] - 2
    assert pipe.tokenizer.eos_token_id == tiny["vocab_size"] - 1
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.scheduler.config.steps_offset == 1


def test_standalone_vae_replaces_the_baked_one(pipe: Any, tiny: dict[str, Any]) -> None:
    baked = _load(tiny, vae=None)
    _assert_same_tensors(baked.vae, _reference(tiny, "baked_vae"))
    key = "decoder.conv_out.weight"
    assert not torch.equal(baked.vae.state_dict()[key], pipe.vae.state_dict()[key])


def test_old_style_ckpt_and_half_precision(tiny: dict[str, Any], tmp_path: Path) -> None:
    ckpt = tmp_path / "old.ckpt"  # 2022-era files: a pickle with the weights under state_dict
    torch.save({"state_dict": load_file(str(tiny["checkpoint"])), "global_step": 470000}, ckpt)
    half = _load(tiny, checkpoint=ckpt, dtype=torch.bfloat16)
    for name in ("unet", "text_encoder", "controlnet"):
        assert {p.dtype for p in getattr(half, name).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.vae.parameters()} == {torch.float32}  # vae_dtype default
    reference = _reference(tiny, "unet")
    state = half.unet.state_dict()
    assert all(torch.equal(state[k], v.to(torch.bfloat16)) for k, v in reference.items())


def test_attention_is_sdpa(pipe: Any) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in (pipe.unet, pipe.controlnet):
        kinds = {type(p) for p in model.attn_processors.values()}
        assert kinds == {AttnProcessor2_0}
    assert pipe.text_encoder.config._attn_implementation == "sdpa"


def test_stock_pipeline_output_is_finite_and_deterministic(
    pipe: Any, image: Image.Image, base_output: np.ndarray
) -> None:
    again = _run(pipe, image)
    assert base_output.shape == (64, 64, 3)
    assert np.isfinite(base_output).all()
    assert np.array_equal(base_output, again)
    assert base_output.std() > 0.02  # the random weights give a real picture, not a flat one


def test_tiny_models_are_not_degenerate(pipe: Any) -> None:
    gen = torch.Generator().manual_seed(3)
    latent = torch.randn((1, 4, 8, 8), generator=gen)
    hint = torch.rand((1, 3, 64, 64), generator=gen)
    words = torch.randn((1, 77, 32), generator=gen)
    with torch.no_grad():
        decoded = pipe.vae.decode(latent).sample
        down, mid = pipe.controlnet(latent, 10, words, controlnet_cond=hint, return_dict=False)
    assert decoded.std() > 0.05
    assert all(r.abs().max() > 0 for r in (*down, mid))  # zero convs are not zero


def test_diffusers_folders_load_the_same_weights(tiny: dict[str, Any]) -> None:
    folder = _load(
        tiny,
        checkpoint=tiny["pipeline"],
        vae=None,
        controlnet=tiny["reference"] / "controlnet",
    )
    _assert_same_tensors(folder.unet, _reference(tiny, "unet"))
    _assert_same_tensors(folder.vae, _reference(tiny, "baked_vae"))
    _assert_same_tensors(folder.controlnet, _reference(tiny, "controlnet"))
    _assert_same_tensors(folder.text_encoder, _reference(tiny, "text_encoder"))


def test_controlnet_without_prefix_as_safetensors(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = read_weights(tiny["controlnet"])
    bare = {k.removeprefix("control_model."): v for k, v in state.items()}
    assert all(not k.startswith("control_model.") for k in bare)
    path = tmp_path / "control_v11f1e_sd15_tile.safetensors"
    save_file(bare, str(path))
    from diffusers import ControlNetModel  # noqa: F401  (imported by the loader anyway)

    model = sd_loading._load_controlnet(path, tiny["config"], torch.float32)
    _assert_same_tensors(model, _reference(tiny, "controlnet"))


def test_loading_restores_the_offline_flag(
    tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    before = hub.HF_HUB_OFFLINE
    seen = []
    real = sd_loading._load_controlnet

    def spy(*args: Any) -> Any:
        seen.append((os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE))
        return real(*args)

    monkeypatch.setattr(sd_loading, "_load_controlnet", spy)
    _load(tiny)
    assert seen == [("1", True)]
    assert "HF_HUB_OFFLINE" not in os.environ
    assert hub.HF_HUB_OFFLINE is before


# --- bad files ---------------------------------------------------------------------------------


def _truncate(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_missing_checkpoint(tiny: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"checkpoint not found: .*nothing\.safetensors"):
        _load(tiny, checkpoint=tmp_path / "nothing.safetensors")


def test_missing_controlnet(tiny: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"ControlNet not found: .*gone\.pth"):
        _load(tiny, controlnet=tmp_path / "gone.pth")


def test_truncated_checkpoint(tiny: dict[str, Any], tmp_path: Path) -> None:
    bad = _truncate(tiny["checkpoint"], tmp_path / "half.safetensors")
    with pytest.raises(ModelError, match=r"half\.safetensors cannot be read: .*damaged"):
        _load(tiny, checkpoint=bad)


def test_truncated_controlnet_pickle(tiny: dict[str, Any], tmp_path: Path) -> None:
    bad = _truncate(tiny["controlnet"], tmp_path / "half.pth")
    with pytest.raises(ModelError, match=r"half\.pth .*damaged"):
        _load(tiny, controlnet=bad)


def test_garbage_file(tiny: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a model " * 100)
    with pytest.raises(ModelError, match=r"junk\.ckpt .*damaged"):
        _load(tiny, checkpoint=bad)


def test_unsafe_pickle_is_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = read_weights(tiny["controlnet"])
    state["note"] = fractions.Fraction(1, 3)  # any class outside the weights-only allowlist
    bad = tmp_path / "control_tampered.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError, match=r"control_tampered\.pth .*[Cc]onvert it to \.safetensors"):
        _load(tiny, controlnet=bad)


def test_safe_pickle_is_accepted(tiny: dict[str, Any]) -> None:
    state = read_weights(tiny["embedding"], "embedding")
    assert describe_weights(state) == "a textual-inversion embedding"
    assert state["string_to_param"]["*"].shape == (3, 32)


def test_lora_as_checkpoint(tiny: dict[str, Any]) -> None:
    with pytest.raises(ModelError, match=r"more_details\.safetensors .*looks like a LoRA"):
        _load(tiny, checkpoint=tiny["loras"][0])


def test_checkpoint_as_controlnet(tiny: dict[str, Any]) -> None:
    with pytest.raises(ModelError, match=r"given as the ControlNet .* SD 1\.5 checkpoint"):
        _load(tiny, controlnet=tiny["checkpoint"])


def test_sdxl_checkpoint(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any) -> None:
        raise AssertionError("a wrong .safetensors file must be refused from its header")

    monkeypatch.setattr(sd_files, "read_weights", never)
    fake = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(8),
        "conditioner.embedders.1.model.ln_final.weight": torch.ones(8),
    }
    path = tmp_path / "sdxl.safetensors"
    save_file(fake, str(path))
    with pytest.raises(ModelError, match=r"sdxl\.safetensors .*looks like an SDXL checkpoint"):
        _load(tiny, checkpoint=path)


def test_inpainting_checkpoint(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(str(tiny["checkpoint"]))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    state[key] = torch.zeros(state[key].shape[0], 9, 3, 3)
    path = tmp_path / "inpaint.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"inpainting SD 1\.5 checkpoint \(9 input channels"):
        _load(tiny, checkpoint=path)


def test_incomplete_checkpoint(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(str(tiny["checkpoint"]))
    del state["model.diffusion_model.output_blocks.4.1.proj_out.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"partial\.safetensors: the UNet weights are incomplete"):
        _load(tiny, checkpoint=path)


def test_checkpoint_that_does_not_match_the_config(tiny: dict[str, Any]) -> None:
    real_sd15 = sd_loading.bundled_config_dir()
    with pytest.raises(ModelError, match=r"does not match the SD 1\.5 architecture"):
        _load(tiny, config_dir=real_sd15, vae=None)


def test_incomplete_config_dir(tiny: dict[str, Any], tmp_path: Path) -> None:
    config = shutil.copytree(tiny["config"], tmp_path / "cfg")
    (config / "vae" / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config folder .*incomplete \(missing vae/config\.json"):
        _load(tiny, config_dir=config)


@pytest.mark.parametrize(
    ("keys", "looks"),
    [
        (["lora_unet_x.lora_down.weight"], "a LoRA"),
        (["lora_te1_x.lora_down.weight", "lora_te2_x.alpha"], "an SDXL LoRA"),
        (["cond_stage_model.model.ln_final.weight", "model.diffusion_model.x"], "an SD 2.x"),
        (["control_model.zero_convs.0.0.weight"], "a ControlNet"),
        (["encoder.conv_in.weight", "decoder.conv_in.weight"], "a VAE"),
        (["double_blocks.0.img_attn.qkv.weight"], "a Flux model"),
        (["conv_first.weight", "conv_last.weight"], "an ESRGAN upscaler"),
        (["down_blocks.0.resnets.0.conv1.weight"], "a diffusers-format model"),
        (["emb_params"], "a textual-inversion embedding"),
        (["something.else"], "an unknown model"),
    ],
)
def test_describe_weights(keys: list[str], looks: str) -> None:
    assert describe_weights(keys).startswith(looks)


# --- LoRA --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_pipe(pipe: Any, base_output: np.ndarray) -> Any:
    """The shared pipeline; each test sets the exact LoRA set it needs (that is the contract
    of set_loras), so adapters loaded by one test are reused by the next."""
    yield pipe
    set_loras(pipe, {})


def _words(pipe: Any) -> torch.Tensor:
    ids = pipe.tokenizer("the cat", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state


def _noise_pred(pipe: Any, words: torch.Tensor) -> torch.Tensor:
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return pipe.unet(latent, 500, words).sample


def test_lora_weight_zero_is_no_lora(
    lora_pipe: Any, image: Image.Image, base_output: np.ndarray, tiny: dict[str, Any]
) -> None:
    a, b = tiny["loras"]
    names = set_loras(lora_pipe, {a: (0.0, 0.0), b: (0.0, 0.0)})
    assert names == {a: "more_details", b: "SDXLrender_v2_0"}
    parts = lora_pipe.get_list_adapters()
    assert set(parts["unet"]) == set(parts["text_encoder"]) == {"more_details", "SDXLrender_v2_0"}
    assert np.array_equal(_run(lora_pipe, image), base_output)


def test_lora_changes_the_output(lora_pipe: Any, tiny: dict[str, Any]) -> None:
    set_loras(lora_pipe, {})
    words = _words(lora_pipe)
    base = _noise_pred(lora_pipe, words)
    set_loras(lora_pipe, {tiny["loras"][0]: (0.5, 1.0)})
    assert (_noise_pred(lora_pipe, _words(lora_pipe)) - base).abs().max() > 1e-3


def test_lora_text_encoder_and_unet_weights_are_separate(
    lora_pipe: Any, tiny: dict[str, Any]
) -> None:
    lora = tiny["loras"][0]
    set_loras(lora_pipe, {})
    base_words = _words(lora_pipe)
    base_pred = _noise_pred(lora_pipe, base_words)
    set_loras(lora_pipe, {lora: (1.0, 0.0)})
    assert not torch.equal(_words(lora_pipe), base_words)
    assert torch.equal(_noise_pred(lora_pipe, base_words), base_pred)
    set_loras(lora_pipe, {lora: (0.0, 1.0)})
    assert torch.equal(_words(lora_pipe), base_words)
    assert not torch.equal(_noise_pred(lora_pipe, base_words), base_pred)


def test_switching_lora_sets(lora_pipe: Any, tiny: dict[str, Any]) -> None:
    a, b = tiny["loras"]
    set_loras(lora_pipe, {})
    words = _words(lora_pipe)
    set_loras(lora_pipe, {b: (1.0, 1.0)})
    b_alone = (_words(lora_pipe), _noise_pred(lora_pipe, words))
    set_loras(lora_pipe, {a: (1.0, 1.0), b: (1.0, 1.0)})
    both = _noise_pred(lora_pipe, words)
    assert not torch.equal(both, b_alone[1])
    set_loras(lora_pipe, {b: (1.0, 1.0)})
    assert lora_pipe.get_list_adapters() == {
        "unet": ["SDXLrender_v2_0"],
        "text_encoder": ["SDXLrender_v2_0"],
    }
    assert torch.equal(_words(lora_pipe), b_alone[0])
    assert torch.equal(_noise_pred(lora_pipe, words), b_alone[1])
    set_loras(lora_pipe, {})
    assert lora_pipe.get_list_adapters() == {}
    assert torch.equal(_words(lora_pipe), words)


def test_lora_pickle_rules(lora_pipe: Any, tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(str(tiny["loras"][0]))
    safe = tmp_path / "detail.pt"
    torch.save(state, safe)
    assert set_loras(lora_pipe, {safe: (1.0, 1.0)}) == {safe: "detail"}
    unsafe = tmp_path / "evil.pt"
    torch.save({**state, "x": fractions.Fraction(2, 3)}, unsafe)
    with pytest.raises(ModelError, match=r"evil\.pt .*[Cc]onvert it to \.safetensors"):
        set_loras(lora_pipe, {unsafe: (1.0, 1.0)})


def test_bad_loras(lora_pipe: Any, tiny: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"juggernaut_reborn\.safetensors .*checkpoint"):
        set_loras(lora_pipe, {tiny["checkpoint"]: (1.0, 1.0)})
    sdxl = tmp_path / "xl_lora.safetensors"
    save_file({"lora_te1_x.lora_down.weight": torch.zeros(1, 2)}, str(sdxl))
    with pytest.raises(ModelError, match=r"xl_lora\.safetensors .*looks like an SDXL LoRA"):
        set_loras(lora_pipe, {sdxl: (1.0, 1.0)})
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(loha))
    with pytest.raises(ModelError, match=r"loha\.safetensors is a LyCORIS"):
        set_loras(lora_pipe, {loha: (1.0, 1.0)})
    wide = {k: torch.cat([v, v], dim=-1) if k.endswith("lora_down.weight") else v
            for k, v in load_file(str(tiny["loras"][1])).items()}  # fmt: skip
    wrong = tmp_path / "sd2_lora.safetensors"
    save_file(wide, str(wrong))
    with pytest.raises(ModelError, match=r"sd2_lora\.safetensors does not fit"):
        set_loras(lora_pipe, {wrong: (1.0, 1.0)})
    assert "sd2_lora" not in str(lora_pipe.get_list_adapters())
    with pytest.raises(ModelError, match=r"LoRA not found"):
        set_loras(lora_pipe, {tmp_path / "nope.safetensors": (1.0, 1.0)})


# --- hashes and cache --------------------------------------------------------------------------


def test_file_fingerprint(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = shutil.copy(tiny["vae"], tmp_path / "v.safetensors")
    expected = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    got = file_fingerprint(path)
    assert got == (expected, expected[:10])
    store = json.loads(sd_files._hash_store().read_text())
    assert expected in store.values()
    with open(path, "ab") as f:
        f.write(b"\0")
    changed = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert file_fingerprint(path).sha256 == changed != expected


def test_addnet_hash_ignores_the_header(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = load_file(str(tiny["loras"][0]))
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_file(state, str(one), metadata={"ss_note": "first"})
    save_file(state, str(two), metadata={"ss_note": "second, longer header"})
    assert one.read_bytes() != two.read_bytes()
    assert addnet_hash(one) == addnet_hash(two)
    assert len(addnet_hash(one)) == 12
    state[next(iter(state))] = state[next(iter(state))] + 1
    save_file(state, str(two), metadata={"ss_note": "first"})
    assert addnet_hash(one) != addnet_hash(two)


def test_pipeline_cache(tiny: dict[str, Any], tmp_path: Path) -> None:
    controlnet = Path(shutil.copy(tiny["controlnet"], tmp_path / "cn.pth"))
    cache = PipelineCache()
    args = (tiny["checkpoint"], tiny["vae"], controlnet, tiny["config"], "cpu", torch.float32)
    first = cache.get(*args)
    assert cache.get(*args) is first
    assert cache.loads == 1
    stat = controlnet.stat()
    os.utime(controlnet, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = cache.get(*args)
    assert second is not first
    assert cache.loads == 2
    assert cache.get(*args[:3], tiny["config"], "cpu", torch.float32, torch.float32) is second
    cache.clear()
    assert cache.get(*args) is not second
    assert cache.loads == 3
    with pytest.raises(ModelError, match="not found"):
        cache.get(tmp_path / "missing.safetensors", None, controlnet, tiny["config"], "cpu",
                  torch.float32)  # fmt: skip


# --- the tiny models themselves ----------------------------------------------------------------


def test_tiny_models_are_deterministic(tiny: dict[str, Any], tmp_path: Path) -> None:
    from tests.tiny_models import build_tiny_models

    again = build_tiny_models(tmp_path / "again")
    for name in ("checkpoint", "vae", "controlnet", "embedding"):
        assert again[name].read_bytes() == tiny[name].read_bytes(), name
    for first, second in zip(again["loras"], tiny["loras"], strict=True):
        assert first.read_bytes() == second.read_bytes()


def test_tiny_checkpoint_uses_a1111_key_layout(tiny: dict[str, Any]) -> None:
    keys = set(load_file(str(tiny["checkpoint"])))
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model", "betas", "alphas_cumprod"}
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # upsampler, no attn
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in keys  # after attention
    vae = load_file(str(tiny["vae"]))
    assert vae["encoder.mid.attn_1.q.weight"].ndim == 4  # LDM's 1×1 conv
    cn = read_weights(tiny["controlnet"])
    assert "control_model.input_hint_block.14.weight" in cn
    assert "control_model.middle_block_out.0.weight" in cn
