"""Tiny random SD1.5-structured models, written in the real file formats people download.

The creative engine is tested on a CPU without the 4 GB of real weights, so this module builds
models with the exact SD1.5 *structure* (4 UNet levels, 2 resnets per level, attention in levels
0-2, a CLIP text encoder, a KL VAE, a ControlNet v1.1) but tiny widths, and writes them the way
A1111 users have them on disk: an LDM single-file checkpoint, a standalone VAE, an LDM ControlNet
pickle, kohya LoRAs and an A1111 textual-inversion ``.pt``. The loaders then run their real
conversion paths. The diffusers→LDM key maps here are written from the two architectures'
module layouts; the loader tests check them against diffusers' own LDM→diffusers converters, so a
mistake here cannot hide.

``DIR/_reference/`` holds the same weights in diffusers layout, for tests to compare against (and
to load "a diffusers folder"); it is not part of a real models folder.

Run ``python -m tests.tiny_models DIR`` to write the set and list its files.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_DIR",
    "CONTROLNET_FILE",
    "EMBEDDING_FILE",
    "LORA_FILES",
    "REFERENCE_DIR",
    "TINY_UNET_CONFIG",
    "TINY_VAE_CONFIG",
    "VAE_FILE",
    "build_tiny_models",
    "controlnet_to_ldm",
    "text_encoder_to_ldm",
    "unet_to_ldm",
    "vae_to_ldm",
]

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_FILE = "Stable-diffusion/juggernaut_reborn.safetensors"
VAE_FILE = "VAE/vae-ft-mse-840000-ema-pruned.safetensors"
CONTROLNET_FILE = "ControlNet/control_v11f1e_sd15_tile.pth"
LORA_FILES = ("Lora/more_details.safetensors", "Lora/SDXLrender_v2.0.safetensors")
EMBEDDING_FILE = "embeddings/JuggernautNegative-neg.pt"
CONFIG_DIR = "sd15-config"
REFERENCE_DIR = "_reference"

# Widths differ per level so that a key mapped to the wrong level fails on shape, not silently.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (8, 16, 24, 32),
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (4, 8, 12, 16),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 32,
    "scaling_factor": 0.18215,
}
# Four entries: three stride-2 convs give the VAE's ×8, and the converter expects
# input_hint_block.14 as the last conv.
TINY_HINT_CHANNELS = (4, 8, 8, 16)
_MERGES = (("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"))


# --- tokenizer ------------------------------------------------------------------------------


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0-255, in byte order.

    Printable Latin-1 bytes stand for themselves; the others are moved to code points from 256 up,
    in the order they occur, which is the convention CLIP's vocabulary follows."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = 0
    chars = []
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_vocab() -> dict[str, int]:
    """Bytes, bytes as word ends, a few merges, then BOS and EOS last (as in CLIP)."""
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def _write_tokenizer(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)


# --- random weights -------------------------------------------------------------------------


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace every parameter by seeded noise of a sensible scale.

    diffusers zero-initialises the ControlNet's output convs (and would make its residuals
    vanish), and default inits draw from the global RNG; fan-in scaling keeps activations finite
    through the deep UNet while every layer still matters to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim == 1:
                value = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
            else:
                value = noise / math.sqrt(param[0].numel())
            param.copy_(value)


def _tiny_models(vocab_size: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    _randomize(unet, 1)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_HINT_CHANNELS
    )
    _randomize(controlnet, 2)
    baked_vae = AutoencoderKL(**TINY_VAE_CONFIG)
    _randomize(baked_vae, 3)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    _randomize(vae, 4)
    te_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(te_config)
    _randomize(text_encoder, 5)
    models = {
        "unet": unet,
        "controlnet": controlnet,
        "baked_vae": baked_vae,
        "vae": vae,
        "text_encoder": text_encoder,
    }
    for model in models.values():
        model.eval()
    return models


# --- diffusers → LDM key maps ---------------------------------------------------------------

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _unet_prefixes(config: dict[str, Any], *, up: bool) -> dict[str, str]:
    """diffusers module prefix → LDM module prefix for the UNet trunk (shared with ControlNet).

    LDM numbers its blocks flat: input block 0 is conv_in, then per level ``layers_per_block``
    (resnet, attention) pairs and one downsampler; output blocks have one more pair per level and
    the upsampler sits after the attention when there is one."""
    per = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    out = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    for i in range(levels):
        for j in range(per):
            out[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{1 + i * (per + 1) + j}.0"
            out[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{1 + i * (per + 1) + j}.1"
        if i < levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
    if not up:
        return out
    out.update({"conv_norm_out": "out.0", "conv_out": "out.2"})
    for i in range(levels):
        for j in range(per + 1):
            out[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (per + 1) + j}.0"
            out[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (per + 1) + j}.1"
        if i < levels - 1:
            slot = 2 if config["up_block_types"][i].startswith("CrossAttn") else 1
            out[f"up_blocks.{i}.upsamplers.0.conv"] = (
                f"output_blocks.{i * (per + 1) + per}.{slot}.conv"
            )
    return out


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    """Swap the longest known module prefix of ``key``, then a known sub-module name after it."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            rest = ".".join(parts[cut:])
            for old, new in inner.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            return f"{prefixes[head]}.{rest}"
    raise KeyError(f"no LDM name for {key!r}")


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict → LDM keys (``model.diffusion_model.*``)."""
    prefixes = _unet_prefixes(config, up=True)
    return {
        "model.diffusion_model." + _rename(k, prefixes, _UNET_RESNET): v for k, v in state.items()
    }


def controlnet_to_ldm(
    state: dict[str, torch.Tensor], config: dict[str, Any], prefix: str = "control_model."
) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel state dict → the ControlNet v1.1 LDM keys."""
    prefixes = _unet_prefixes(config, up=False)
    hint_convs = len(config["conditioning_embedding_out_channels"]) * 2 - 2
    prefixes["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
    for k in range(hint_convs):
        prefixes[f"controlnet_cond_embedding.blocks.{k}"] = f"input_hint_block.{2 * (k + 1)}"
    prefixes["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (hint_convs + 1)}"
    prefixes["controlnet_mid_block"] = "middle_block_out.0"
    downs = {k.split(".")[1] for k in state if k.startswith("controlnet_down_blocks.")}
    for n in downs:
        prefixes[f"controlnet_down_blocks.{n}"] = f"zero_convs.{n}.0"
    return {prefix + _rename(k, prefixes, _UNET_RESNET): v for k, v in state.items()}


def vae_to_ldm(
    state: dict[str, torch.Tensor], config: dict[str, Any], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict → LDM keys; bare for a standalone A1111 VAE file,
    ``first_stage_model.`` inside a checkpoint. LDM's mid-block attention uses 1×1 convs."""
    levels = len(config["block_out_channels"])
    prefixes = {
        "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
    }
    for part in ("encoder", "decoder"):
        prefixes.update(
            {
                f"{part}.conv_in": f"{part}.conv_in",
                f"{part}.conv_out": f"{part}.conv_out",
                f"{part}.conv_norm_out": f"{part}.norm_out",
                f"{part}.mid_block.resnets.0": f"{part}.mid.block_1",
                f"{part}.mid_block.resnets.1": f"{part}.mid.block_2",
                f"{part}.mid_block.attentions.0": f"{part}.mid.attn_1",
            }
        )
    for i in range(levels):
        for j in range(config["layers_per_block"]):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (
            f"encoder.down.{i}.downsample.conv"
        )
        # LDM numbers decoder levels from the bottom (low resolution) up, diffusers top down.
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = (
                f"decoder.up.{levels - 1 - i}.block.{j}"
            )
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (
            f"decoder.up.{levels - 1 - i}.upsample.conv"
        )
    inner = {"conv_shortcut": "nin_shortcut", **_VAE_ATTENTION}
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes, inner)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[prefix + new] = value
    return out


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers-5 (flattened) CLIPTextModel state dict → A1111 checkpoint keys."""
    out = {f"cond_stage_model.transformer.text_model.{k}": v for k, v in state.items()}
    width = state["embeddings.position_embedding.weight"].shape[0]
    # Real checkpoints carry this buffer; loaders must cope with it.
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(width)[
        None
    ]
    return out


# --- LoRA and TI ----------------------------------------------------------------------------


# kohya's default targets: every Linear of CLIP's attention and MLP; in the UNet, the
# transformer blocks' attention projections (and, in many files, proj_in/proj_out).
_KOHYA_TE_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _kohya_lora(
    models: dict[str, Any], rank: int, seed: int, unet_layers: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """A kohya-style LoRA on the UNet's transformer blocks and the text encoder's layers.

    Weights are small (×0.1): unit-scale random LoRAs blow up through the tiny models.
    diffusers 0.42.1 cannot load a kohya text-encoder part without ``out_proj`` ("Could not
    automatically infer state dict type"), so the text encoder always gets kohya's full set."""
    gen = torch.Generator().manual_seed(seed)
    targets: list[tuple[str, torch.nn.Module]] = []
    for name, module in models["unet"].named_modules():
        layer = name.removesuffix(".0").rsplit(".", 1)[-1]
        if ".attentions." in name and layer in unet_layers and hasattr(module, "weight"):
            targets.append(("lora_unet_" + name.replace(".", "_"), module))
    for name, module in models["text_encoder"].named_modules():
        if name.rsplit(".", 1)[-1] in _KOHYA_TE_LAYERS:
            targets.append(("lora_te_text_model_" + name.replace(".", "_"), module))
    state: dict[str, torch.Tensor] = {}
    for key, module in targets:
        weight = module.weight
        extra = tuple(weight.shape[2:])
        down = torch.randn((rank, weight.shape[1], *extra), generator=gen) * 0.1
        up = torch.randn((weight.shape[0], rank, *((1,) * len(extra))), generator=gen) * 0.1
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


def _a1111_embedding(hidden: int, vectors: int, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.randn((vectors, hidden), generator=gen) * 0.1},
        "name": "JuggernautNegative-neg",
        "step": 0,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }


# --- writing --------------------------------------------------------------------------------


def _write_config_dir(folder: Path, models: dict[str, Any]) -> None:
    """The tiny counterpart of resources/sd15: same files, tiny shapes."""
    bundled = ROOT / "resources" / "sd15"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundled / "model_index.json", folder / "model_index.json")
    (folder / "scheduler").mkdir(exist_ok=True)
    shutil.copy(
        bundled / "scheduler" / "scheduler_config.json",
        folder / "scheduler" / "scheduler_config.json",
    )
    models["unet"].save_config(folder / "unet")
    models["vae"].save_config(folder / "vae")
    models["controlnet"].save_config(folder / "controlnet")
    models["text_encoder"].config.save_pretrained(folder / "text_encoder")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _write_reference(folder: Path, models: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    for name in ("unet", "controlnet", "vae", "baked_vae"):
        models[name].save_pretrained(folder / name, safe_serialization=True)
    te = folder / "text_encoder"
    models["text_encoder"].config.save_pretrained(te)
    save_file(_state(models["text_encoder"]), str(te / "model.safetensors"))


def _write_diffusers_pipeline(folder: Path, config_dir: Path, reference: Path) -> None:
    """A diffusers-layout copy of the checkpoint (baked VAE), to test loading a folder."""
    shutil.copytree(config_dir, folder, ignore=shutil.ignore_patterns("controlnet"))
    for name, source in (("unet", "unet"), ("vae", "baked_vae"), ("text_encoder", "text_encoder")):
        shutil.rmtree(folder / name)
        shutil.copytree(reference / source, folder / name)


def _place(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _a1111_checkpoint(models: dict[str, Any]) -> dict[str, torch.Tensor]:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    return {
        **unet_to_ldm(_state(models["unet"]), dict(models["unet"].config)),
        **vae_to_ldm(_state(models["baked_vae"]), TINY_VAE_CONFIG, prefix="first_stage_model."),
        **text_encoder_to_ldm(_state(models["text_encoder"])),
        # Real checkpoints carry the training schedule too; loaders must ignore it.
        "betas": betas,
        "alphas_cumprod": torch.cumprod(1 - betas, 0),
    }


def _write_loras(root: Path, models: dict[str, Any]) -> list[Path]:
    from safetensors.torch import save_file

    attention = ("to_q", "to_k", "to_v", "to_out")
    states = (
        _kohya_lora(models, rank=4, seed=11, unet_layers=(*attention, "proj_in", "proj_out")),
        _kohya_lora(models, rank=2, seed=12, unet_layers=attention),
    )
    paths = []
    for name, state in zip(LORA_FILES, states, strict=True):
        path = _place(root, name)
        save_file(state, str(path), metadata={"ss_network_module": "networks.lora"})
        paths.append(path)
    return paths


def build_tiny_models(root: Path) -> dict[str, Any]:
    """Write the tiny models folder under ``root`` and return where everything is.

    Keys: ``root``, ``checkpoint``, ``vae``, ``controlnet``, ``loras`` (list), ``embedding``,
    ``config`` (the tiny sd15-config), ``reference`` (diffusers-layout copies: unet, vae,
    baked_vae, text_encoder, controlnet), ``pipeline`` (a diffusers folder of the checkpoint),
    ``vocab_size``. Deterministic: the same bytes every time."""
    from safetensors.torch import save_file

    root = Path(root)
    config_dir = root / CONFIG_DIR
    vocab_size = _write_tokenizer(config_dir / "tokenizer")
    models = _tiny_models(vocab_size)
    _write_config_dir(config_dir, models)
    paths: dict[str, Any] = {"root": root, "config": config_dir, "vocab_size": vocab_size}

    paths["checkpoint"] = _place(root, CHECKPOINT_FILE)
    save_file(_a1111_checkpoint(models), str(paths["checkpoint"]), metadata={"format": "pt"})
    paths["vae"] = _place(root, VAE_FILE)
    save_file(vae_to_ldm(_state(models["vae"]), TINY_VAE_CONFIG), str(paths["vae"]))
    paths["controlnet"] = _place(root, CONTROLNET_FILE)
    controlnet = controlnet_to_ldm(_state(models["controlnet"]), dict(models["controlnet"].config))
    torch.save(controlnet, paths["controlnet"])  # a plain dict of tensors: weights_only loads it
    paths["loras"] = _write_loras(root, models)
    paths["embedding"] = _place(root, EMBEDDING_FILE)
    torch.save(_a1111_embedding(hidden=32, vectors=3, seed=13), paths["embedding"])

    paths["reference"] = root / REFERENCE_DIR
    _write_reference(paths["reference"], models)
    paths["pipeline"] = paths["reference"] / "pipeline"
    _write_diffusers_pipeline(paths["pipeline"], config_dir, paths["reference"])
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.tiny_models DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    build_tiny_models(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size:>9}  {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
