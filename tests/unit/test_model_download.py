"""Model downloads (app.models) through a loopback Hugging Face double and httpx transport
doubles: resume, hash checks, licences, links, tokens and redirects, retries, every failure's
message."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.backends.remote.retry import RetryPolicy
from app.models import remove, transfer, verify
from app.models.download import LicenceNotAccepted, _link_name, download
from pipeline.errors import Cancelled, ModelError
from pipeline.models import manifest
from pipeline.models.files import Records
from pipeline.models.store import entry_by_id, load_manifest, models_dir, resolve_models
from pipeline.params import UpscaleParams
from tests.doubles.fake_models import fake_resources, safetensors_bytes, torch_zip, unsafe_pickle
from tests.doubles.hf_hub import HubDouble

BIG = {"control_v11f1e_sd15_tile": 3_000_000}  # bytes of floats: more than one 1 MiB chunk
A1111 = {
    "checkpoint": "models/Stable-diffusion",
    "vae": "models/VAE",
    "controlnet": "extensions/sd-webui-controlnet/models",
    "lora": "models/Lora/sd15",
    "embedding": "embeddings",
    "upscaler": "models/ESRGAN",
}
LORA = safetensors_bytes(300, seed=7)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA", "CACHE", "CONFIG"):
        monkeypatch.setenv(f"CLARIFIER_{name}_DIR", str(tmp_path / name.lower()))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A manifest describing tiny fake files; returns their bytes by id."""
    blobs = fake_resources(tmp_path / "resources", big=BIG)
    monkeypatch.setattr(manifest, "resources_dir", lambda: tmp_path / "resources")
    return blobs


@pytest.fixture(scope="module")
def hub():
    with HubDouble() as double:
        yield double


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between tries, recorded instead of slept (the policy itself is the
    providers'; tests/backends/test_retry.py checks that both retry the same failures)."""
    seen: list[float] = []

    def pause(seconds: float, stop: Callable[[], bool]) -> None:
        if stop():
            raise Cancelled("download cancelled; run it again to resume")
        seen.append(seconds)

    monkeypatch.setattr(transfer, "_pause", pause)
    monkeypatch.setattr(transfer, "RETRY", RetryPolicy(base=1.0, cap=4.0, retry_for=10.0))
    return seen


def _serve_all(hub: HubDouble, blobs: dict[str, bytes]) -> None:
    for entry in load_manifest():
        hub.add_file(entry.repo, entry.path, blobs[entry.id], revision=entry.revision)


def _place(root: Path, folders: dict[str, str], blobs: dict[str, bytes]) -> dict[str, Path]:
    placed = {}
    for entry in load_manifest():
        path = root / folders[entry.role] / entry.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blobs[entry.id])
        placed[entry.id] = path
    return placed


class _Pieces(httpx.SyncByteStream):
    def __init__(self, data: bytes, size: int = 1 << 20) -> None:
        self.data, self.size = data, size

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start : start + self.size]


def _streamed(status: int, data: bytes = b"", headers: dict[str, str] | None = None):
    """A response whose body streams in 1 MiB pieces, as from a real server (the downloader
    reads it raw)."""
    sent = {"Content-Length": str(len(data)), **(headers or {})}
    return httpx.Response(status, headers=sent, stream=_Pieces(data))


def _client(handle: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return transfer.new_client(transport=httpx.MockTransport(handle))


# --- from Hugging Face (the loopback double) --------------------------------------------------
def test_download_checks_and_places_the_file_then_verify_agrees(
    fake: dict[str, bytes], hub: HubDouble
) -> None:
    _serve_all(hub, fake)
    vae = entry_by_id("vae-ft-mse-840000")
    assert vae is not None
    with pytest.raises(LicenceNotAccepted, match=r"MIT .*--accept-licences"):
        download(vae, endpoint=hub.endpoint)
    before = len(hub.seen)
    path = download(vae, endpoint=hub.endpoint, accept_licence=True, token="secret")
    assert path == models_dir() / "VAE" / vae.file
    assert path.read_bytes() == fake[vae.id]
    assert not list(path.parent.glob(".*"))  # no part files left behind
    fresh = hub.seen[before:]
    assert any(s.server == "cdn" for s in fresh)
    assert all(
        s.headers.get("Authorization") == "Bearer secret" for s in fresh if s.server == "hub"
    )
    assert not any("Authorization" in s.headers for s in fresh if s.server == "cdn")
    result = verify(vae)
    assert (result.status, result.path, result.detail) == ("verified", path, "matches sha256")
    again = len(hub.seen)
    assert download(vae, endpoint=hub.endpoint, accept_licence=True) == path
    assert len(hub.seen) == again  # already there and matching: no transfer
    path.write_bytes(fake[vae.id][:-1] + b"\x00")
    assert verify(vae).status == "mismatch"
    assert remove(vae) == [path] and not path.exists()


def test_a_dropped_connection_resumes_with_a_range_request(
    fake: dict[str, bytes], hub: HubDouble
) -> None:
    _serve_all(hub, fake)
    entry = entry_by_id("control_v11f1e_sd15_tile")
    assert entry is not None and entry.sha256
    hub.fail_once(entry.sha256, after=700_000)
    start = len(hub.seen)
    path = download(entry, endpoint=hub.endpoint, accept_licence=True)
    assert path.read_bytes() == fake[entry.id]
    ranges = [s.headers.get("Range") for s in hub.seen[start:] if s.server == "cdn"]
    assert ranges == [None, "bytes=700000-"]


def test_an_interrupted_download_continues_on_the_next_call(
    fake: dict[str, bytes], hub: HubDouble
) -> None:
    _serve_all(hub, fake)
    entry = entry_by_id("control_v11f1e_sd15_tile")
    assert entry is not None and entry.size
    seen: list[int] = []
    with pytest.raises(Cancelled, match="resume"):
        download(
            entry,
            endpoint=hub.endpoint,
            accept_licence=True,
            progress=lambda done, total: seen.append(done),
            cancel=lambda: bool(seen),
        )
    part = models_dir() / "ControlNet" / f".{entry.file}.part"
    kept = part.stat().st_size
    assert 0 < kept < entry.size and kept == seen[-1]
    start = len(hub.seen)
    path = download(entry, endpoint=hub.endpoint, accept_licence=True)
    assert path.read_bytes() == fake[entry.id] and not part.exists()
    ranges = [s.headers.get("Range") for s in hub.seen[start:] if s.server == "cdn"]
    assert ranges == [f"bytes={kept}-"]


def test_corrupted_or_different_files_are_deleted_and_reported(
    fake: dict[str, bytes], hub: HubDouble
) -> None:
    _serve_all(hub, fake)
    entry = entry_by_id("JuggernautNegative-neg")
    assert entry is not None and entry.sha256
    hub.corrupt(entry.sha256)
    with pytest.raises(ModelError, match=r"is damaged.*its sha256 is .*it was deleted"):
        download(entry, endpoint=hub.endpoint, accept_licence=True)
    folder = models_dir() / "embeddings"
    assert not (folder / entry.file).exists() and not list(folder.glob(".*"))
    hub.state.corrupt.clear()
    # the hub now serves another file under the name: refused before any byte is fetched
    hub.add_file(entry.repo, entry.path, b"another file", revision=entry.revision)
    start = len(hub.seen)
    with pytest.raises(ModelError, match=r"now serves a different JuggernautNegative-neg\.pt"):
        download(entry, endpoint=hub.endpoint, accept_licence=True)
    assert [s.method for s in hub.seen[start:]] == ["HEAD"]


def test_a_lora_without_a_full_hash_is_checked_by_its_addnet_hash_and_recorded(
    fake: dict[str, bytes], hub: HubDouble
) -> None:
    _serve_all(hub, fake)
    entry = entry_by_id("SDXLrender_v2.0")
    assert entry is not None and entry.sha256 is None and entry.addnet_hash
    # served as a plain (non-LFS) file: no sha256 from the server either
    hub.add_file(entry.repo, entry.path, fake[entry.id], revision=entry.revision, lfs=False)
    path = download(entry, endpoint=hub.endpoint, accept_licence=True)
    first = Records(models_dir()).first_seen[entry.id]
    assert first == hashlib.sha256(fake[entry.id]).hexdigest()
    result = verify(entry)
    assert result.status == "verified" and "recorded" in result.detail
    path.unlink()
    tampered = safetensors_bytes(64, seed=1234, metadata={"id": entry.id})  # other weights
    hub.add_file(entry.repo, entry.path, tampered, revision=entry.revision, lfs=False)
    with pytest.raises(ModelError, match="differs from the model's known short hash"):
        download(entry, endpoint=hub.endpoint, accept_licence=True)
    page = b"<html>rate limited</html>"
    hub.add_file(entry.repo, entry.path, page, revision=entry.revision)
    start = len(hub.seen)
    with pytest.raises(ModelError, match=r"now serves a different .* \(25 bytes instead of"):
        download(entry, endpoint=hub.endpoint, accept_licence=True)
    assert [s.method for s in hub.seen[start:]] == ["HEAD"]
    # knowing neither hash nor size, at least the format is checked
    unknown = dataclasses.replace(entry, size=None, size_exact=False, addnet_hash=None)
    hub.add_file(entry.repo, entry.path, page, revision=entry.revision, lfs=False)
    with pytest.raises(ModelError, match=r"damaged \(SDXLrender_v2.0.safetensors is not a \."):
        download(unknown, endpoint=hub.endpoint, accept_licence=True)
    assert not list((models_dir() / "Lora").glob(".*"))


def test_links_are_named_like_clarity_checked_and_found_by_resolve(
    tmp_path: Path, fake: dict[str, bytes], hub: HubDouble
) -> None:
    assert _link_name("https://civitai.com/api/download/models/87153?type=Model", None) == (
        "87153.safetensors"
    )
    assert _link_name("https://x.org/a/b/style.pt?download=true", None) == "style.pt"
    assert _link_name("https://x.org/dl/3", 'attachment; filename="My LoRA.safetensors"') == (
        "My LoRA.safetensors"
    )
    assert _link_name("https://x.org/dl/4", "attachment; filename*=UTF-8''caf%C3%A9.pt") == (
        "café.pt"
    )
    assert _link_name("https://x.org/dl/../../etc", 'attachment; filename="../../x.pt"') == "x.pt"

    lora = safetensors_bytes(300, seed=7)
    url = hub.add_link(
        "/api/download/models/1", lora, disposition='attachment; filename="grain.safetensors"'
    )
    hub.fail_once("/api/download/models/1", after=100)
    path = download(url)
    assert path == models_dir() / "Lora" / "grain.safetensors" and path.read_bytes() == lora
    assert download(url) == path  # recorded: no second transfer
    root = tmp_path / "install"
    _place(root, A1111, fake)
    models = resolve_models(UpscaleParams(mode="creative", lora_links=url), [root])
    assert models.loras["grain"] == path

    ckpt = hub.add_link("/files/custom.ckpt", torch_zip({"state_dict": {}}))
    assert download(ckpt, role="checkpoint").parent == models_dir() / "Stable-diffusion"
    evil = hub.add_link("/files/evil.pt", unsafe_pickle())
    with pytest.raises(ModelError, match="would run code"):
        download(evil)
    page = hub.add_link("/files/page", b"<html>login</html>")
    with pytest.raises(ModelError, match=r"not a \.safetensors file"):
        download(page)
    assert not list((models_dir() / "Lora").glob(".*")), "refused downloads leave nothing"
    assert sorted(p.name for p in (models_dir() / "Lora").iterdir()) == ["grain.safetensors"]


# --- the double -------------------------------------------------------------------------------
def test_the_double_serves_files_the_way_huggingface_hub_expects(
    tmp_path: Path, hub: HubDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants, hf_hub_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    big, small = b"weights" * 5000, b'{"a": 1}'
    hub.add_file("org/repo", "unet/model.safetensors", big)
    hub.add_file("org/repo", "config.json", small, lfs=False)
    for name, data in (("unet/model.safetensors", big), ("config.json", small)):
        got = hf_hub_download("org/repo", name, endpoint=hub.endpoint, local_dir=tmp_path / "hf")
        assert Path(got).read_bytes() == data


# --- tokens, redirects and retries (httpx transport doubles) -----------------------------------
def test_a_token_never_follows_a_redirect_to_another_host_even_on_the_way_back() -> None:
    seen: list[tuple[str, str | None]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization")))
        if request.url.host == "a.test" and request.url.path == "/dl/style.safetensors":
            return httpx.Response(302, headers={"Location": "/moved/style.safetensors"})
        if request.url.path == "/moved/style.safetensors":
            return httpx.Response(302, headers={"Location": "https://cdn.test/blob"})
        if request.url.host == "cdn.test":
            return httpx.Response(307, headers={"Location": "https://a.test/final"})
        return _streamed(200, LORA)

    with _client(handle) as client:
        path = download("https://a.test/dl/style.safetensors", token="tok", client=client)
    assert path.read_bytes() == LORA and path.name == "style.safetensors"
    assert seen == [
        ("a.test", "Bearer tok"),
        ("a.test", "Bearer tok"),  # the same host: the token goes along
        ("cdn.test", None),
        ("a.test", None),  # dropped at the first hop away, and not picked up again
    ]


def test_transient_answers_are_retried_and_a_rate_limit_waits_as_asked(
    waits: list[float],
) -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503),
        httpx.Response(502),
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else _streamed(200, LORA)

    with _client(handle) as client:
        path = download("https://a.test/lora/grain.safetensors", client=client)
    assert path.read_bytes() == LORA
    assert waits[0] == 3.0  # the server's Retry-After
    assert 0.75 * 2 <= waits[1] <= 1.25 * 2 and 0.75 * 4 <= waits[2] <= 1.25 * 4  # backoff


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(404), r"https://a\.test/x\.safetensors does not exist \(HTTP 404\)"),
        (httpx.Response(401), r"refused the download \(HTTP 401\).*HF_TOKEN"),
        (httpx.Response(501), r"failed with HTTP 501; try again later"),
        (
            httpx.Response(429, headers={"Retry-After": "3600"}),
            r"limiting downloads \(HTTP 429\); try again in 60 min",
        ),
    ],
    ids=["404", "401", "501", "429-for-an-hour"],
)
def test_answers_that_no_retry_changes_are_reported_at_once(
    waits: list[float], answer: httpx.Response, message: str
) -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return answer

    with _client(handle) as client, pytest.raises(ModelError, match=message):
        download("https://a.test/x.safetensors", client=client)
    assert len(calls) == 1 and waits == []


def test_a_server_error_that_lasts_gives_up_with_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer, "RETRY", RetryPolicy(base=0.001, cap=0.001, retry_for=0.05))
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503)

    with (
        _client(handle) as client,
        pytest.raises(ModelError, match=r"failed with HTTP 503 \(still, after retrying"),
    ):
        download("https://a.test/x.safetensors", client=client)
    assert len(calls) > 1  # it did retry first


def test_connections_that_keep_dropping_or_never_open_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "RETRY", RetryPolicy(base=0.001, cap=0.001, retry_for=0.05))
    sent = 0

    def drop(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        raise httpx.ReadError("connection reset by peer", request=request)

    with _client(drop) as client, pytest.raises(ModelError) as caught:
        download("https://a.test/lora.safetensors", client=client)
    assert str(caught.value) == (
        "downloading https://a.test/lora.safetensors failed (connection reset by peer); "
        "run the same command again to resume where it stopped"
    )
    assert sent > 1

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with _client(refuse) as client, pytest.raises(ModelError) as caught:
        download("https://a.test/lora.safetensors", client=client)
    assert str(caught.value) == (
        "cannot reach https://a.test/lora.safetensors: [Errno 111] Connection refused"
    )


def test_a_cancel_during_a_wait_between_tries_stops_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer, "RETRY", RetryPolicy(base=30.0, cap=30.0, retry_for=600.0))
    started = time.monotonic()
    with (
        _client(lambda request: httpx.Response(503)) as client,
        pytest.raises(Cancelled, match="resume"),
    ):
        download("https://a.test/x.safetensors", client=client, cancel=lambda: True)
    assert time.monotonic() - started < 5


def test_a_full_disk_is_a_sentence_and_the_part_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"x" * (3 << 20)  # three chunks: the disk fills after the first

    class FullDisk(io.BytesIO):
        def write(self, chunk: bytes) -> int:  # type: ignore[override]
            if self.tell():
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(chunk)

    real_open = open

    def fake_open(path: Path, mode: str = "r", *args: object, **kw: object):
        if str(path).endswith(".part") and "b" in mode and ("w" in mode or "a" in mode):
            Path(path).write_bytes(b"")  # a part file exists, as it would
            return FullDisk()
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(transfer, "open", fake_open, raising=False)
    with (
        _client(lambda request: _streamed(200, data)) as client,
        pytest.raises(ModelError) as caught,
    ):
        download("https://a.test/big.safetensors", client=client)
    message = str(caught.value)
    assert message.startswith("the disk holding ")
    assert " is full; 2.10 MB more are needed" in message
    assert message.endswith(
        "free some space, then run the same command again to resume where it stopped"
    )
    assert "Traceback" not in message and "Errno" not in message
    assert list((models_dir() / "Lora").glob(".link-*.part")), "kept, to resume once there is room"
