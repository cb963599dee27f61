"""The served model's inputs: Clarity's schema as Replicate publishes it, the mapping onto the
engine's parameters, and the rules for fetching an image input.

The schema is checked against two references that are not this code: the Replicate double's
``clarity_schema()`` (the provider reference's §4.2 table, which the Replicate backend's tests
already hold the official client to) and Cog's own inspector (``cog._inspector``, what coglet
uses to read a runner's signature), so a published default, range or choice that drifts from
either fails here.
"""

from __future__ import annotations

import base64
import gzip
import io
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.serve.fetch import MAX_REDIRECTS, fetch_image
from app.serve.inputs import CLARITY_INPUTS, InputRefused, params_from_inputs
from pipeline.params import SCHEDULERS, UpscaleParams
from tests.doubles.http_double import LoopbackDouble, Req, Resp
from tests.doubles.replicate import clarity_schema

cog = pytest.importorskip("cog")

from app.serve.schema import openapi_schema  # noqa: E402 - needs cog (the runner)


def _png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def schema() -> dict:
    return openapi_schema()


def _resolved(schema: dict, name: str) -> dict:
    """An input's property with its enumeration (``allOf`` reference) folded in."""
    prop = dict(schema["components"]["schemas"]["Input"]["properties"][name])
    for ref in prop.pop("allOf", []):
        enum = schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
        prop.update(type=enum["type"], enum=enum["enum"])
    return prop


# --- the schema -----------------------------------------------------------------------------
def test_every_input_of_replicates_clarity_is_published_alike(schema) -> None:
    reference = clarity_schema()["components"]["schemas"]["Input"]
    inputs = schema["components"]["schemas"]["Input"]
    assert set(inputs["properties"]) == set(reference["properties"])
    assert inputs["required"] == reference["required"] == ["image"]
    for name, want in reference["properties"].items():
        have = _resolved(schema, name)
        assert have["type"] == want["type"], name
        # The double shortens the two prompts' defaults; the next test checks the real ones.
        keys = ("format", "minimum", "maximum") + (() if "prompt" in name else ("default",))
        for key in keys:
            assert have.get(key) == want.get(key) or key not in want, (name, key)
        if "enum" in want:  # the double lists a subset of the 30 samplers
            assert set(want["enum"]) <= set(have["enum"]), name


def test_the_published_inputs_follow_clarity_order_defaults_and_ranges(schema) -> None:
    """The values of the reference notes' §1 table, which Clarity's predict() declares."""
    props = {n: _resolved(schema, n) for n in CLARITY_INPUTS}
    assert [props[n]["x-order"] for n in CLARITY_INPUTS] == list(range(len(CLARITY_INPUTS)))
    assert props["prompt"]["default"] == (
        "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>"
    )
    assert props["negative_prompt"]["default"] == (
        "(worst quality, low quality, normal quality:2) JuggernautNegative-neg"
    )
    assert props["scheduler"]["enum"] == list(SCHEDULERS) and len(SCHEDULERS) == 30
    assert props["scheduler"]["default"] == "DPM++ 3M SDE Karras"
    assert props["sd_model"]["default"] == "juggernaut_reborn.safetensors [338b85bc4f]"
    assert props["tiling_width"]["enum"] == list(range(16, 257, 16))
    assert (props["tiling_width"]["default"], props["tiling_height"]["default"]) == (112, 144)
    assert props["output_format"]["enum"] == ["webp", "jpg", "png"]
    assert props["handfix"]["enum"] == ["disabled", "hands_only", "image_and_hands"]
    assert (props["multistep_factor"]["minimum"], props["multistep_factor"]["maximum"]) == (0, 2)
    assert (props["sharpen"]["minimum"], props["sharpen"]["maximum"]) == (0, 10)
    for unbounded in ("scale_factor", "seed", "downscaling_resolution"):
        assert "minimum" not in props[unbounded] and "maximum" not in props[unbounded]
    assert props["seed"]["default"] == 1337 and props["downscaling_resolution"]["default"] == 768
    assert props["mask"] == props["mask"] | {"format": "uri", "nullable": True, "default": None}
    output = schema["components"]["schemas"]["Output"]
    assert output["type"] == "array" and output["items"] == {"type": "string", "format": "uri"}


def test_cogs_own_inspector_reads_the_runner_as_the_schema_says(tmp_path, monkeypatch, schema):
    """coglet coerces and defaults inputs from the signature, the schema validates them: both
    must agree, input by input."""
    from cog import _inspector

    (tmp_path / "served_runner.py").write_text("from app.serve.runner import Runner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    info = _inspector.create_predictor("served_runner", "Runner")
    monkeypatch.delitem(sys.modules, "served_runner")
    assert list(info.inputs) == list(CLARITY_INPUTS)
    for name, field in info.inputs.items():
        have = _resolved(schema, name)
        assert field.type.json_type()["type"] == have["type"], name
        assert field.default == have.get("default"), name
        assert field.ge == have.get("minimum") and field.le == have.get("maximum"), name
        assert (field.choices or None) == have.get("enum"), name
    assert str(info.output.kind) == "OutputKind.LIST"


# --- inputs → parameters --------------------------------------------------------------------
def test_the_defaults_are_clarifiers_defaults_in_creative_mode(schema) -> None:
    props = schema["components"]["schemas"]["Input"]["properties"]
    defaults = {name: spec["default"] for name, spec in props.items() if "default" in spec}
    assert set(props) - set(defaults) == {"image"}
    assert params_from_inputs(defaults | {"image": "data:,"}) == UpscaleParams(mode="creative")


def test_a_replicate_request_maps_field_by_field() -> None:
    params = params_from_inputs(
        {
            "image": "https://example.org/in.png",
            "scale_factor": 4,
            "dynamic": 9,
            "creativity": 0.5,
            "resemblance": 1.2,
            "tiling_width": 64,
            "scheduler": "Euler a",
            "num_inference_steps": 30,
            "seed": 99,
            "sharpen": 2,
            "output_format": "webp",
            "lora_links": "https://example.org/a.safetensors",
        }
    )
    assert params.mode == "creative" and params.scale_factor == 4.0 and params.dynamic == 9.0
    assert (params.creativity, params.resemblance, params.tiling_width) == (0.5, 1.2, 64)
    assert (params.scheduler, params.num_inference_steps, params.seed) == ("Euler a", 30, 99)
    assert (params.sharpen, params.output_format) == (2.0, "webp")
    assert params.lora_links == "https://example.org/a.safetensors"


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"custom_sd_model": "/etc/passwd"}, "custom_sd_model"),
        ({"lora_links": "https://a.example/x.safetensors, ../../secret.pt"}, "lora_links"),
        ({"scale_factor": 20}, "scale_factor"),
        ({"seed": -1}, "seed"),
        ({"version": "1"}, "version"),
    ],
)
def test_inputs_the_server_will_not_take_are_refused_by_name(inputs, named) -> None:
    with pytest.raises(InputRefused, match=named):
        params_from_inputs({"image": "data:,", **inputs})


# --- fetching an image input ----------------------------------------------------------------
class _Files(LoopbackDouble):
    name = "files"

    def __init__(self) -> None:
        super().__init__()
        self.route("GET", r"/hop/(?P<n>\d+)", self.hop)
        self.route("GET", r"/to-file", lambda r: Resp(302, b"", {"Location": "file:///etc/passwd"}))
        self.route("GET", r"/to-ftp", lambda r: Resp(301, b"", {"Location": "ftp://x/in.png"}))
        self.route("GET", r"/big", lambda r: Resp(200, b"\0" * 4096, {"Content-Type": "image/png"}))
        self.route("GET", r"/bomb", self.bomb)
        self.route("GET", r"/gone", lambda r: Resp.text(404, "Not Found"))

    def hop(self, req: Req) -> Resp:
        left = int(req.match["n"])
        if left == 0:
            return Resp(200, _png(), {"Content-Type": "image/png"})
        return Resp(302, b"", {"Location": f"/hop/{left - 1}"})

    def bomb(self, req: Req) -> Resp:  # 40 bytes on the wire, 1 MiB once decoded
        return Resp(200, gzip.compress(b"\0" * 2**20), {"Content-Encoding": "gzip"})


@pytest.fixture
def files():
    with _Files() as double:
        yield double


def _fetch(url: str, limit: int = 2**20) -> bytes:
    import asyncio

    async def go() -> bytes:
        async with httpx.AsyncClient() as client:
            return await fetch_image(url, name="image", client=client, limit=limit)

    return asyncio.run(go())


def test_data_and_http_urls_give_the_image(files) -> None:
    png = _png()
    assert _fetch("data:image/png;base64," + base64.b64encode(png).decode()) == png
    assert _fetch(files.cdn_put(png)) == png
    assert _fetch(f"{files.url}/hop/{MAX_REDIRECTS}") == png  # http → http redirects


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("file:///etc/passwd", "not a file: URL"),
        ("ftp://example.org/in.png", "not a ftp: URL"),
        ("/etc/passwd", "not a path on the server"),
        ("{url}/to-file", "redirects to file:"),
        ("{url}/to-ftp", "redirects to ftp:"),
        (f"{{url}}/hop/{MAX_REDIRECTS + 1}", "more than 5 redirects"),
        ("{url}/gone", "answered HTTP 404"),
        ("data:image/png;base64,not*base64", "not valid base64"),
    ],
)
def test_other_schemes_redirects_and_failures_are_refused(files, where, message) -> None:
    with pytest.raises(InputRefused, match=message):
        _fetch(where.format(url=files.url))
    assert not files.requests("GET", "/etc")


def test_the_size_limit_holds_for_declared_streamed_and_inline_inputs(files) -> None:
    with pytest.raises(InputRefused, match="larger than this server takes"):
        _fetch(f"{files.url}/big", limit=1024)  # Content-Length says so: not read
    with pytest.raises(InputRefused, match="larger than this server takes"):
        _fetch(f"{files.url}/bomb", limit=64 * 1024)  # small on the wire, large decoded
    inline = "data:image/png;base64," + base64.b64encode(b"\0" * 4096).decode()
    with pytest.raises(InputRefused, match=r"larger than this server takes \(0\.0 MiB\)"):
        _fetch(inline, limit=1024)


def test_a_fetched_file_that_is_not_an_image_is_refused_as_the_cli_would(files) -> None:
    with pytest.raises(InputRefused, match=r"image: .*text file"):
        _fetch(files.cdn_put(b"hello, this is text", "text/plain"))


def test_messages_never_show_credentials_or_signatures(files) -> None:
    url = files.url.replace("http://", "http://user:secret@") + "/gone?sig=abc123"
    with pytest.raises(InputRefused) as err:
        _fetch(url)
    assert "secret" not in str(err.value) and "abc123" not in str(err.value)
    assert Path("/gone").name in str(err.value)
