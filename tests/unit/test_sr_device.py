"""Device choice: auto falls back to the CPU, an explicit missing device is a clear error."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from pipeline import device as dev
from pipeline.errors import PipelineError


def test_cpu_and_auto_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.pick_device() == torch.device("cpu")
    assert dev.pick_device("CPU") == torch.device("cpu")
    with pytest.raises(PipelineError, match="CUDA"):
        dev.pick_device("cuda")
    with pytest.raises(PipelineError, match="MPS"):
        dev.pick_device("mps")
    with pytest.raises(PipelineError, match="unknown device"):
        dev.pick_device("tpu")


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.pick_device() == torch.device("cuda")
    assert dev.pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(PipelineError, match="only 1"):
        dev.pick_device("cuda:3")


def test_default_dtype() -> None:
    assert dev.default_dtype(torch.device("cuda")) == torch.float16
    assert dev.default_dtype(torch.device("cpu")) == torch.float32
    assert dev.default_dtype(torch.device("mps")) == torch.float32


def test_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert re.fullmatch(r"CPU \(\d+ threads?\)", dev.describe_device(torch.device("cpu")))
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=int(79.1 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert dev.describe_device(torch.device("cuda")) == "NVIDIA H100 80GB HBM3, 79.1 GiB"


def test_precision_setting_picks_the_dtype_or_refuses_with_a_reason() -> None:
    cpu = torch.device("cpu")
    assert dev.pick_dtype(cpu, "auto") == torch.float32
    assert dev.pick_dtype(cpu, "fp32") == torch.float32
    assert dev.pick_dtype(cpu, "bf16") == torch.bfloat16
    assert dev.pick_dtype(torch.device("cuda"), "fp32") == torch.float32
    assert dev.pick_dtype(torch.device("cuda"), "auto") == torch.float16
    with pytest.raises(PipelineError, match="fp16 precision needs a GPU"):
        dev.pick_dtype(cpu, "fp16")
    with pytest.raises(PipelineError, match="unknown precision 'fp8'"):
        dev.pick_dtype(cpu, "fp8")
