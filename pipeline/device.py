"""Which torch device and dtype the local engine runs on, and how to name it for people.

``auto`` prefers CUDA, then Apple's MPS, then the CPU. Asking for a device that is not there is
an error rather than a silent fallback, so that a person who picked "CUDA" is never surprised by
an hour-long CPU run.

Dtypes: fp16 on CUDA (the ESRGAN-family nets are routinely run in half precision there, Real-ESRGAN
does so by default, and it halves memory); fp32 on the CPU (fp16 convolutions are slow or missing
there). On MPS we use fp32 as well: fp16 there is not verified for these nets in this project, and
a wrong colour is worse than a slower run. Change :func:`default_dtype` once it has been measured.
"""

from __future__ import annotations

import json
import sys

import torch

from pipeline.errors import PipelineError

__all__ = ["DEVICE_PREFERENCES", "default_dtype", "describe_device", "pick_device", "pick_dtype"]

DEVICE_PREFERENCES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(preference: str = "auto") -> torch.device:
    """The device for ``preference`` ("auto", "cuda", "cuda:N", "mps" or "cpu")."""
    choice = preference.strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not _mps_available():
            raise PipelineError(
                "the Apple GPU (MPS) was requested but is not available here; choose auto or cpu"
            )
        return torch.device("mps")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PipelineError(
                "an NVIDIA GPU (CUDA) was requested but this torch build or machine has none; "
                "choose auto or cpu, or install the CUDA build of torch"
            )
        device = torch.device(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(
                f"CUDA device {device.index} was requested but only "
                f"{torch.cuda.device_count()} GPU(s) are present"
            )
        return device
    raise PipelineError(
        f"unknown device {preference!r}: choose one of {', '.join(DEVICE_PREFERENCES)}"
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (see the module docstring for why)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype for ``precision`` ("auto", "fp16", "bf16" or "fp32") on ``device``.

    Half precision on the CPU is refused rather than run: its convolutions are missing or many
    times slower there, so a person who picked it would only wait longer for the same image."""
    choice = (precision or "auto").strip().lower()
    if choice == "auto":
        return default_dtype(device)
    if choice not in _DTYPES:
        raise PipelineError(
            f"unknown precision {precision!r}: choose one of auto, {', '.join(_DTYPES)}"
        )
    kind = torch.device(device).type
    if choice == "fp16" and kind == "cpu":
        raise PipelineError("fp16 precision needs a GPU; on the CPU choose auto, bf16 or fp32")
    if choice == "bf16" and kind == "mps":
        raise PipelineError("bf16 precision is not supported on Apple GPUs; choose auto or fp16")
    return _DTYPES[choice]


def describe_device(device: torch.device) -> str:
    """A short human description: ``"NVIDIA H100 80GB HBM3, 79.1 GiB"`` or ``"CPU (2 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        return f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def _main(argv: list[str]) -> int:
    """``python -m pipeline.device [PREFERENCE]``: one JSON line naming the engine's device, for
    the window's status bar (the window itself never imports torch)."""
    try:
        device = pick_device(argv[0] if argv else "auto")
        sys.stdout.write(
            json.dumps({"device": str(device), "description": describe_device(device)}) + "\n"
        )
    except PipelineError as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
