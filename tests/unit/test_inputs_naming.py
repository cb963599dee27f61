"""Input collection, image links, pasted images, and output names from the template."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.jobs.inputs import InputError, collect_inputs, fetch_url, save_pasted
from app.store.naming import check_template, output_path, render_name
from app.store.settings import Settings
from pipeline.params import UpscaleParams

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)


def test_folders_are_walked_in_order_skipping_hidden_files_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.png", "b/c.jpg", "b/notes.txt", ".hidden/d.png", ".e.png"):
        (tmp_path / name).write_bytes(PNG)
    found = collect_inputs([tmp_path])
    assert [rel for _, rel in found] == [Path("a.png"), Path("b/c.jpg")]


def _client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_an_image_link_is_downloaded_with_its_name(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    async def go() -> Path:
        async with _client(handler) as client:
            return await fetch_url(client, "https://example.com/pics/My%20Cat.png?x=1", tmp_path)

    path = asyncio.run(go())
    assert path == tmp_path / "My_Cat.png"
    assert path.read_bytes() == PNG
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    ("status", "headers", "body", "message"),
    [
        (404, {}, b"", "answered 404"),
        (200, {"content-type": "text/html"}, b"<html>", "is not an image"),
        (200, {"content-type": "image/png"}, PNG * 100, "more than Clarifier downloads"),
    ],
)
def test_a_bad_link_is_refused_and_leaves_nothing(
    tmp_path: Path, status: int, headers: dict[str, str], body: bytes, message: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    async def go() -> Path:
        async with _client(handler) as client:
            return await fetch_url(client, "https://example.com/x.png", tmp_path, max_bytes=1000)

    with pytest.raises(InputError, match=message):
        asyncio.run(go())
    assert list(tmp_path.iterdir()) == []


def test_pasted_images_get_their_own_files(tmp_path: Path) -> None:
    a, b = save_pasted(PNG, tmp_path), save_pasted(PNG, tmp_path)
    assert a != b and a.read_bytes() == PNG and a.name.startswith("pasted-")


def test_output_names_follow_the_template_and_never_overwrite(tmp_path: Path) -> None:
    params = UpscaleParams(scale_factor=4, seed=7, output_format="webp")
    src = tmp_path / "holiday.jpg"
    assert render_name("{stem}-{mode}-x{scale}", src, params) == "holiday-faithful-x4.webp"
    assert render_name("{stem}_{seed}_{backend}", src, params, backend="segmind") == (
        "holiday_7_segmind.webp"
    )
    assert Settings().filename_template  # the default is valid
    first = output_path("{stem}-x{scale}", src, params, tmp_path)
    first.write_bytes(b"x")
    second = output_path("{stem}-x{scale}", src, params, tmp_path, taken={tmp_path / "t.webp"})
    assert (first.name, second.name) == ("holiday-x4.webp", "holiday-x4-1.webp")
    promised = output_path("{stem}-x{scale}", src, params, tmp_path, taken={second})
    assert promised.name == "holiday-x4-2.webp"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("{stem}-{size}", "unknown field"),
        ("{stem", "malformed"),
        ("a/{stem}", "no /"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_template(template)
    with pytest.raises(ValueError, match=message):
        Settings(filename_template=template).validate()
