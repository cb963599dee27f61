"""Load the SD 1.5 + ControlNet pipeline from the files people have, offline and safely.

Clarity's models come as A1111 files: a single-file checkpoint, a standalone VAE, an LDM-format
ControlNet pickle, kohya LoRAs. diffusers can convert all of them, but left alone it reaches for
the Hub (configs, tokenizer) and cannot say clearly what is wrong with a file. So:

* every weights file is read once, by :mod:`pipeline.diffusion.sd_files` (pickles only through
  ``torch.load(weights_only=True)``); diffusers only ever sees the tensors, never a path it could
  unpickle by itself;
* the configs, tokenizer and scheduler come from a local diffusers-layout folder (by default the
  bundled ``resources/sd15``), so nothing is downloaded;
* each component is converted by diffusers' own ``from_single_file`` converters (the text encoder
  is a plain prefix strip, done here so that it can be loaded strictly), and then checked: a
  weight the file lacks is an error, not a silently random layer;
* a file in the wrong slot (an SDXL checkpoint, a LoRA given as checkpoint) is named for what
  it looks like, so that the message says what to do.

The VAE may run in a different dtype from the rest (fp32 by default: the SD 1.5 VAE overflows in
fp16). The engine does its own VAE stage; diffusers' stock ``__call__`` expects one dtype, so use
``vae_dtype=dtype`` for it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.diffusion.sd_files import (
    LDM_TEXT_ENCODER,
    LDM_UNET,
    LDM_VAE,
    FileHash,
    addnet_hash,
    describe_weights,
    file_fingerprint,
    file_stamp,
    read_expected,
    read_weights,
    require_file,
    tensors_only,
)
from pipeline.errors import ModelError, PipelineError
from pipeline.paths import resources_dir

if TYPE_CHECKING:
    # diffusers' top-level names (its documented API) are lazy re-exports that pyright does not
    # count as exported; the same holds for the imports of them below.
    from diffusers import StableDiffusionControlNetImg2ImgPipeline  # pyright: ignore[reportPrivateImportUsage]

__all__ = [
    "FileHash",
    "PipelineCache",
    "adapter_name",
    "addnet_hash",
    "bundled_config_dir",
    "describe_weights",
    "file_fingerprint",
    "load_pipeline",
    "read_weights",
    "set_loras",
]

_CHECKPOINT = ("an SD 1.5 checkpoint",)
_CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)


def bundled_config_dir() -> Path:
    """The SD 1.5 configs and tokenizer shipped with Clarifier (``resources/sd15``)."""
    return resources_dir() / "sd15"


# --- offline loading --------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' warnings and progress bars while loading. In 0.42.1 diffusers
    warns about fp32 modules on every cast even when there are none, and the text-encoder LoRA
    load prints a spurious "MISSING" report for adapters loaded earlier; our own checks report
    what matters."""
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bar = tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*peft_config.*", category=UserWarning)
            warnings.filterwarnings("ignore", message="Adapter .* deleted", category=UserWarning)
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bar:
            tlog.enable_progress_bar()


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No network for the duration, even through code paths that ignore local_files_only."""
    import huggingface_hub.constants as hub_constants

    env = os.environ.get("HF_HUB_OFFLINE")
    flag = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = flag
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def _check_config_dir(config_dir: Path, need_controlnet: bool) -> None:
    needed = [*_CONFIG_FILES, *(["controlnet/config.json"] if need_controlnet else [])]
    missing = [name for name in needed if not (config_dir / name).is_file()]
    tokenizer = config_dir / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file() and not (
        (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
    ):
        missing.append("tokenizer/vocab.json + merges.txt")
    if missing:
        raise ModelError(
            f"the SD 1.5 config folder {config_dir} is incomplete (missing {', '.join(missing)}); "
            "reinstall Clarifier, or remove the sd15-config folder from your models folder"
        )


def _finish(model: torch.nn.Module, label: str, source: Path) -> torch.nn.Module:
    """Refuse a model with weights the file did not provide (diffusers leaves them on 'meta')."""
    empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise ModelError(
            f"{source}: the {label} weights are incomplete ({len(empty)} tensors missing, "
            f"e.g. {empty[0]}); the file is not a complete SD 1.5 model"
        )
    return model.eval().requires_grad_(False)


def _convert(cls: Any, state: dict[str, torch.Tensor], label: str, source: Path, **kw: Any) -> Any:
    """One component through diffusers' single-file converter, with errors made readable."""
    try:
        model = cls.from_single_file(state, local_files_only=True, **kw)
    except PipelineError:
        raise
    except Exception as exc:
        if "meta tensor" in str(exc):  # diffusers left a weight the file lacks on 'meta'
            raise ModelError(
                f"{source}: the {label} weights are incomplete; the file is not a complete "
                "SD 1.5 model (download it again)"
            ) from exc
        raise ModelError(
            f"{source}: the {label} does not match the SD 1.5 architecture ({exc})"
        ) from exc
    return _finish(model, label, source)


def _load_text_encoder(
    state: dict[str, torch.Tensor], config_dir: Path, dtype: torch.dtype, source: Path
) -> torch.nn.Module:
    """CLIP text encoder from ``cond_stage_model.transformer.[text_model.]*`` keys, strictly.

    transformers ≥ 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` level), so both the old
    and the new key spellings map onto the bare names."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    weights = {}
    for key, value in state.items():
        name = key.removeprefix(LDM_TEXT_ENCODER).removeprefix("text_model.")
        if name != "embeddings.position_ids":  # a buffer the model builds itself
            weights[name] = value
    config = CLIPTextConfig.from_pretrained(config_dir / "text_encoder", local_files_only=True)
    with init_empty_weights():
        model = CLIPTextModel(config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{source}: the text encoder does not match SD 1.5's CLIP ViT-L/14 ({exc})"
        ) from exc
    if unexpected:
        raise ModelError(
            f"{source}: the text encoder has unexpected weights (e.g. {unexpected[0]}); "
            "it is not SD 1.5's CLIP ViT-L/14"
        )
    del missing  # reported by _finish, which also catches parameters left on 'meta'
    # transformers wraps .to in @wraps(nn.Module.to), which pyright reads as unbound.
    return _finish(model.to(dtype), "text encoder", source)  # pyright: ignore[reportArgumentType]


def _split_checkpoint(
    path: Path, need_vae: bool, config_dir: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = read_expected(path, "checkpoint", _CHECKPOINT, "choose an SD 1.5 checkpoint")
    tensors = tensors_only(state)
    unet = {k: v for k, v in tensors.items() if k.startswith(LDM_UNET)}
    vae = {k: v for k, v in tensors.items() if k.startswith(LDM_VAE)}
    te = {k: v for k, v in tensors.items() if k.startswith(LDM_TEXT_ENCODER)}
    conv_in = unet.get(LDM_UNET + "input_blocks.0.0.weight")
    expected = json.loads((config_dir / "unet" / "config.json").read_text())["in_channels"]
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] != expected:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(conv_in.shape[1], "a modified")
        raise ModelError(
            f"{path} is {kind} SD 1.5 checkpoint ({conv_in.shape[1]} input channels, not "
            f"{expected}); choose a regular SD 1.5 checkpoint"
        )
    if need_vae and not vae:
        raise ModelError(
            f"{path} contains no VAE; choose a VAE file (for example "
            "vae-ft-mse-840000-ema-pruned.safetensors)"
        )
    return unet, vae, te


def _load_vae(path: Path, config_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL  # pyright: ignore[reportPrivateImportUsage]

    if path.is_dir():
        return _from_folder(AutoencoderKL, path, "VAE", dtype)
    state = read_expected(path, "VAE", ("a VAE", *_CHECKPOINT), "choose an SD 1.5 VAE file")
    tensors = tensors_only(state)
    if any(k.startswith(LDM_VAE) for k in tensors):  # a VAE taken from a full checkpoint
        tensors = {k: v for k, v in tensors.items() if k.startswith(LDM_VAE)}
    # EMA-era VAE files carry the training loss (LPIPS) weights too; they are not part of it.
    tensors = {k: v for k, v in tensors.items() if not k.startswith(("loss.", "model_ema."))}
    return _convert(
        AutoencoderKL, tensors, "VAE", path, config=str(config_dir), subfolder="vae",
        torch_dtype=dtype,
    )  # fmt: skip


def _from_folder(cls: Any, folder: Path, label: str, dtype: torch.dtype, **kw: Any) -> Any:
    """A component in diffusers layout; diffusers itself loads pickles with weights_only."""
    try:
        model = cls.from_pretrained(folder, local_files_only=True, torch_dtype=dtype, **kw)
    except Exception as exc:
        raise ModelError(f"{folder}: cannot load the {label} from this folder ({exc})") from exc
    return _finish(model, label, folder)


def _load_controlnet(path: Path, config_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import ControlNetModel  # pyright: ignore[reportPrivateImportUsage]

    path = Path(path).expanduser()
    if path.is_dir():
        return _from_folder(ControlNetModel, path, "ControlNet", dtype)
    fix = "choose control_v11f1e_sd15_tile (.pth or .safetensors)"
    state = read_expected(path, "ControlNet", ("a ControlNet",), fix)
    return _convert(
        ControlNetModel, tensors_only(state), "ControlNet", path, config=str(config_dir),
        subfolder="controlnet", torch_dtype=dtype,
    )  # fmt: skip


def _tokenizer_and_scheduler(config_dir: Path) -> tuple[Any, Any]:
    import diffusers
    from transformers import CLIPTokenizer

    index = json.loads((config_dir / "model_index.json").read_text())
    scheduler_name = (index.get("scheduler") or [None, "PNDMScheduler"])[1]
    scheduler_cls = getattr(diffusers, scheduler_name, None)
    if scheduler_cls is None:
        raise ModelError(f"{config_dir}/model_index.json names an unknown scheduler")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(config_dir / "tokenizer", local_files_only=True)
        scheduler = scheduler_cls.from_pretrained(
            config_dir, subfolder="scheduler", local_files_only=True
        )
    except Exception as exc:
        raise ModelError(f"the SD 1.5 config folder {config_dir} is damaged ({exc})") from exc
    return tokenizer, scheduler


def _components_from_checkpoint(
    checkpoint: Path, vae: Path | None, config_dir: Path, dtype: torch.dtype, vae_dtype: torch.dtype
) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]

    if checkpoint.is_dir():
        if not (checkpoint / "unet").is_dir():
            raise ModelError(
                f"{checkpoint} is a folder but not a diffusers model (it has no unet/ folder)"
            )
        from transformers import CLIPTextModel

        parts = {
            "unet": _from_folder(UNet2DConditionModel, checkpoint / "unet", "UNet", dtype),
            "text_encoder": _from_folder(
                CLIPTextModel, checkpoint / "text_encoder", "text encoder", dtype
            ),
        }
        if vae is None:
            parts["vae"] = _from_folder(AutoencoderKL, checkpoint / "vae", "VAE", vae_dtype)
        if (checkpoint / "tokenizer").is_dir() and (checkpoint / "scheduler").is_dir():
            config_dir = checkpoint
    else:
        unet_sd, vae_sd, te_sd = _split_checkpoint(
            require_file(checkpoint, "checkpoint"), vae is None, config_dir
        )
        parts = {
            "unet": _convert(
                UNet2DConditionModel, unet_sd, "UNet", checkpoint, config=str(config_dir),
                subfolder="unet", torch_dtype=dtype,
            ),
            "text_encoder": _load_text_encoder(te_sd, config_dir, dtype, checkpoint),
        }  # fmt: skip
        if vae is None:
            parts["vae"] = _convert(
                AutoencoderKL, vae_sd, "VAE", checkpoint, config=str(config_dir),
                subfolder="vae", torch_dtype=vae_dtype,
            )  # fmt: skip
        del unet_sd, vae_sd, te_sd
    if vae is not None:
        parts["vae"] = _load_vae(Path(vae).expanduser(), config_dir, vae_dtype)
    parts["tokenizer"], parts["scheduler"] = _tokenizer_and_scheduler(config_dir)
    return parts


def load_pipeline(
    checkpoint: Path,
    *,
    vae: Path | None,
    controlnet: Path,
    config_dir: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
) -> StableDiffusionControlNetImg2ImgPipeline:
    """The SD 1.5 img2img + ControlNet pipeline from local files, with no network access.

    ``checkpoint``: an A1111 single-file checkpoint or a diffusers folder. ``vae``: a standalone
    VAE file (or folder) replacing the checkpoint's, or None to keep the baked one. ``controlnet``:
    an LDM ``.pth``/``.safetensors`` or a diffusers folder. ``config_dir``: the diffusers-layout
    config folder (default: the bundled ``resources/sd15``). No safety checker; attention is
    diffusers' default, PyTorch SDPA. Raises :class:`ModelError` for any bad file."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline  # pyright: ignore[reportPrivateImportUsage]

    config_dir = Path(config_dir).expanduser() if config_dir else bundled_config_dir()
    checkpoint = Path(checkpoint).expanduser()
    controlnet = Path(controlnet).expanduser()
    if not config_dir.is_dir():
        raise ModelError(f"the SD 1.5 config folder {config_dir} does not exist")
    _check_config_dir(config_dir, need_controlnet=not controlnet.is_dir())
    for what, path in (("checkpoint", checkpoint), ("VAE", vae), ("ControlNet", controlnet)):
        if path is not None and not Path(path).expanduser().exists():  # fail before slow work
            raise ModelError(f"{what} not found: {path}; check the models folder")
    with _offline(), _quiet():
        parts = _components_from_checkpoint(checkpoint, vae, config_dir, dtype, vae_dtype)
        parts["controlnet"] = _load_controlnet(controlnet, config_dir, dtype)
        # diffusers types both as required, though None is its documented "no safety checker".
        pipe = StableDiffusionControlNetImg2ImgPipeline(
            **parts,
            safety_checker=None,  # pyright: ignore[reportArgumentType]
            feature_extractor=None,  # pyright: ignore[reportArgumentType]
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.device(device))


# --- LoRA -------------------------------------------------------------------------------------


def adapter_name(path: Path) -> str:
    """The adapter name for a LoRA file: its stem, with characters torch module names cannot
    hold (``.`` in ``SDXLrender_v2.0``) replaced by ``_``."""
    return re.sub(r"\W", "_", Path(path).stem) or "lora"


def _read_lora(path: Path) -> dict[str, torch.Tensor]:
    state = read_expected(path, "LoRA", ("a LoRA",), "choose an SD 1.5 LoRA file")
    tensors = tensors_only(state)
    if any("hada_" in k or "lokr_" in k for k in tensors):
        raise ModelError(
            f"{path} is a LyCORIS (LoHa/LoKr) network; only plain LoRA files are supported"
        )
    return tensors


def _loaded_loras(pipe: Any) -> dict[str, tuple[object, ...]]:
    loaded = getattr(pipe, "_clarifier_loras", None)
    if loaded is None:
        loaded = {}
        pipe._clarifier_loras = loaded
    return loaded


def set_loras(pipe: Any, loras: Mapping[Path, tuple[float, float]]) -> dict[Path, str]:
    """Make exactly ``loras`` active: file → (text-encoder weight, UNet weight).

    Files already loaded (same path, size and mtime) are reused; others are removed from the
    models, so memory does not grow across jobs. An empty mapping removes every LoRA, leaving
    the plain model. Returns the adapter name used for each file."""
    wanted: dict[str, tuple[Path, tuple[object, ...], tuple[float, float]]] = {}
    for path, weights in loras.items():
        path = require_file(Path(path), "LoRA")
        name = base = adapter_name(path)
        count = 2
        while name in wanted:  # two different files with the same stem
            name, count = f"{base}_{count}", count + 1
        wanted[name] = (path, file_stamp(path), (float(weights[0]), float(weights[1])))
    loaded = _loaded_loras(pipe)
    if not wanted:
        if loaded:
            with _quiet():
                pipe.unload_lora_weights()
            loaded.clear()
        return {}
    stale = [n for n, stamp in loaded.items() if n not in wanted or wanted[n][1] != stamp]
    if stale:
        with _quiet():
            pipe.delete_adapters(stale)
        for name in stale:
            del loaded[name]
    for name, (path, stamp, _) in wanted.items():
        if name not in loaded:
            _load_lora(pipe, path, name)
            loaded[name] = stamp
    parts = pipe.get_list_adapters()
    weights = [
        {
            component: w
            for component, w in (("text_encoder", te), ("unet", unet))
            if name in parts.get(component, ())
        }
        for name, (_, _, (te, unet)) in wanted.items()
    ]
    pipe.set_adapters(list(wanted), adapter_weights=weights)
    return {path: name for name, (path, _, _) in wanted.items()}


def _load_lora(pipe: Any, path: Path, name: str) -> None:
    state = _read_lora(path)
    has_unet = any("unet" in k for k in state)
    try:
        with _offline(), _quiet():
            pipe.load_lora_weights(state, adapter_name=name)
    except PipelineError:
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):
            pipe.delete_adapters([name])
        raise ModelError(
            f"LoRA {path} does not fit this SD 1.5 model ({exc}); "
            "it may be for another base model (SDXL, SD 2)"
        ) from exc
    parts = pipe.get_list_adapters()
    if not any(name in names for names in parts.values()) or (
        has_unet and name not in parts.get("unet", ())
    ):
        with contextlib.suppress(Exception):
            pipe.delete_adapters([name])
        raise ModelError(f"LoRA {path}: none of its layers match this SD 1.5 model")


# --- cache -----------------------------------------------------------------------------------


class PipelineCache:
    """Keeps one loaded pipeline between jobs; loads again only when a file changed.

    The worker runs many jobs with the same models, and loading them takes seconds to minutes.
    When the files differ, the old pipeline is released (and the CUDA cache emptied) *before*
    the new one is loaded, so two never share the device. LoRAs stay loaded with the pipeline;
    call :func:`set_loras` for every job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._pipe: Any = None
        self.loads = 0  # how many times get() actually loaded (observable for tests and logs)

    def get(
        self,
        checkpoint: Path,
        vae: Path | None,
        controlnet: Path,
        config_dir: Path | None,
        device: torch.device | str,
        dtype: torch.dtype,
        vae_dtype: torch.dtype = torch.float32,
    ) -> StableDiffusionControlNetImg2ImgPipeline:
        """The pipeline for these files, from memory when they have not changed."""
        config_dir = Path(config_dir) if config_dir else bundled_config_dir()
        try:
            key = (
                *(file_stamp(Path(p)) if p else None for p in (checkpoint, vae, controlnet)),
                file_stamp(config_dir),
                str(torch.device(device)),
                str(dtype),
                str(vae_dtype),
            )
        except OSError as exc:
            raise ModelError(f"model file not found: {exc.filename}") from exc
        with self._lock:
            if self._pipe is not None and key == self._key:
                return self._pipe
            self._release()
            pipe = load_pipeline(
                checkpoint, vae=vae, controlnet=controlnet, config_dir=config_dir,
                device=device, dtype=dtype, vae_dtype=vae_dtype,
            )  # fmt: skip
            self._pipe, self._key = pipe, key
            self.loads += 1
            return pipe

    def clear(self) -> None:
        """Release the cached pipeline (its memory is freed once no caller holds it)."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        device = getattr(self._pipe, "device", None)
        self._pipe, self._key = None, None
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()
