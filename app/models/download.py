"""Getting model files — only ever when a person asks.

:func:`download` fetches a manifest entry from Hugging Face (its repo, file and revision; the
endpoint follows ``HF_ENDPOINT`` so a mirror, or the tests' loopback double, can stand in) or any
link (``lora_links``, ``custom_sd_model``, Civitai). Entries need the licence accepted. Transfers
resume (see :mod:`app.models.transfer`); the file is checked (sha256 when a source gives it, else
the server's LFS sha256, the A1111 short hash or the LoRA addnet hash, else the sha256 is
recorded as first seen), then renamed into place, so a models folder never holds a half file
under a real name. A file that fails a check is deleted and reported. Checking and removing
files already there needs no network and stays in the engine (:mod:`pipeline.models.upkeep`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx

from app.models.transfer import (
    ProgressFn,
    disk_error,
    fetch,
    filename_from_disposition,
    head,
    new_client,
)
from pipeline.errors import ModelError
from pipeline.models.files import (
    MODEL_SUFFIXES,
    FileHashes,
    Records,
    check_model_file,
    file_hashes,
    hash_file,
    is_sha256,
    remember_hashes,
    safe_file_name,
)
from pipeline.models.store import ROLE_FOLDERS, ModelEntry, is_link
from pipeline.models.upkeep import discard, own_root, part_file

__all__ = ["LicenceNotAccepted", "download", "hf_url"]

_DEFAULT_ENDPOINT = "https://huggingface.co"


class LicenceNotAccepted(ModelError):
    """A manifest download was asked for without accepting the model's licence."""


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def hf_url(entry: ModelEntry, endpoint: str | None = None) -> str:
    """The Hugging Face "resolve" URL of an entry's file."""
    quote = urllib.parse.quote
    return (
        f"{_endpoint(endpoint)}/{entry.repo}/resolve/"
        f"{quote(entry.revision, safe='')}/{quote(entry.path)}"
    )


def _hf_token() -> str | None:
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:  # the token `hf auth login` saved, if the hub library is there
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no token is a normal state
        return None


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def download(
    target: ModelEntry | str,
    *,
    role: str | None = None,
    dest_dir: Path | str | None = None,
    accept_licence: bool = False,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    client: httpx.Client | None = None,
) -> Path:
    """Download a manifest entry or a link into ``dest_dir`` (default Clarifier's own models
    folder), in the role's A1111 subfolder; returns the file's path. A link's role defaults to
    "lora". A file already there and matching is returned without a transfer. ``client`` is
    for tests (a transport double); by default each call opens and closes its own.

    Raises :class:`LicenceNotAccepted`, :class:`~pipeline.errors.Cancelled` (the part is kept
    and the next call resumes it) or :class:`ModelError` for anything else that went wrong."""
    root = own_root(dest_dir)
    if isinstance(target, ModelEntry):
        if not accept_licence:
            raise LicenceNotAccepted(
                f"{target.file} is licensed under {target.licence_text} ({target.licence_url}); "
                "accept the licence to download it (clarifier models download "
                f"{target.id} --accept-licences)"
            )
    elif not is_link(target):
        raise ModelError(f"{target!r} is neither a model id nor an http(s) link")
    role = role or "lora"  # what Clarity's lora_links are
    if not isinstance(target, ModelEntry) and role not in ROLE_FOLDERS:
        raise ModelError(f"role {role!r} is not one of {', '.join(ROLE_FOLDERS)}")
    try:
        with contextlib.nullcontext(client) if client else new_client() as http:
            if isinstance(target, ModelEntry):
                return _download_entry(target, root, progress, cancel, endpoint, token, http)
            return _download_link(target.strip(), role, root, progress, cancel, token, http)
    except OSError as exc:  # the models folder, not the network (httpx raises no OSError)
        raise disk_error(exc, root) from None


# --- the partial file -------------------------------------------------------------------------
def _part(folder: Path, name: str, identity: str) -> Path:
    """The .part file for a download; a leftover from a different file is thrown away."""
    folder.mkdir(parents=True, exist_ok=True)
    part = part_file(folder, name)
    meta = part.with_name(part.name + ".json")
    try:
        previous = json.loads(meta.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != identity:
        part.unlink(missing_ok=True)
        meta.write_text(json.dumps({"identity": identity}), encoding="utf-8")
    return part


def _finish(part: Path, dest: Path, hashes: FileHashes) -> Path:
    os.replace(part, dest)
    discard(part)
    remember_hashes(dest, hashes)
    return dest


# --- manifest entries -------------------------------------------------------------------------
def _server_hash(
    entry: ModelEntry,
    url: str,
    headers: dict[str, str],
    http: httpx.Client,
    cancel: Callable[[], bool] | None,
) -> tuple[str | None, int]:
    """Ask the hub what it will send: its LFS sha256 (X-Linked-Etag) and size. A file that
    cannot be the one the manifest means is refused before any byte moves."""
    _status, info = head(url, headers, client=http, cancel=cancel)
    etag = (info.get("X-Linked-Etag") or info.get("ETag") or "").strip().strip('"')
    etag = etag.removeprefix("W/").strip('"').lower()
    server_sha = etag if is_sha256(etag) else None
    size_text = info.get("X-Linked-Size") or info.get("Content-Length") or ""
    size = int(size_text) if size_text.isdigit() else 0
    conflict = None
    known = (entry.sha256 or entry.sha256_prefix or "")[:12]
    if server_sha and known and not server_sha.startswith(known):
        conflict = f"sha256 {server_sha[:12]}… instead of {known}…"
    elif entry.size_exact and size and size != entry.size:
        conflict = f"{size} bytes instead of {entry.size}"
    if conflict:
        raise ModelError(
            f"{url} now serves a different {entry.file} ({conflict}) than the one Clarifier "
            "knows; not downloaded. If you trust the new file, download it yourself and add "
            "its folder with --models DIR."
        )
    return server_sha, size


def _download_entry(
    entry: ModelEntry,
    root: Path,
    progress: ProgressFn | None,
    cancel: Callable[[], bool] | None,
    endpoint: str | None,
    token: str | None,
    http: httpx.Client,
) -> Path:
    folder = root / ROLE_FOLDERS[entry.role][0]
    dest = folder / entry.file
    if dest.is_file():
        if entry.matches(file_hashes(dest)) is not False:
            return dest
        raise ModelError(
            f"{dest} is there but is not {entry.id} (its hash differs); remove it first "
            f"(clarifier models remove {entry.id})"
        )
    url = hf_url(entry, endpoint)
    headers = _auth(token or _hf_token())
    server_sha, server_size = _server_hash(entry, url, headers, http, cancel)
    expect_sha = entry.sha256 or server_sha
    size = entry.size if entry.size_exact else (server_size or None)
    part = _part(folder, entry.file, expect_sha or f"{url} {size}")
    fetch(
        url,
        part,
        headers=headers,
        expected_size=size,
        progress=progress,
        cancel=cancel,
        client=http,
    )

    hashes = hash_file(part, Path(entry.file).suffix)
    problem = None
    if size is not None and part.stat().st_size != size:
        problem = f"it has {part.stat().st_size} bytes, not {size}"
    elif expect_sha and hashes.sha256 != expect_sha:
        problem = f"its sha256 is {hashes.sha256[:16]}…, not {expect_sha[:16]}…"
    elif entry.matches(hashes) is False:
        problem = "its hash differs from the model's known short hash"
    if problem is None and not expect_sha:
        try:  # no full hash to lean on: at least make sure it is a loadable weights file
            check_model_file(part, Path(entry.file).suffix, entry.file)
        except ModelError as exc:
            problem = str(exc)
    if problem is not None:
        discard(part)
        raise ModelError(
            f"the download of {entry.file} from {url} is damaged ({problem}); it was deleted. "
            "Run the command again; if this repeats, the file on the server has changed."
        )
    if not entry.sha256:
        records = Records(root)
        records.first_seen[entry.id] = hashes.sha256
        records.save()
    return _finish(part, dest, hashes)


# --- links ------------------------------------------------------------------------------------
def _link_name(url: str, disposition: str | None) -> str | None:
    """Clarity names a Civitai download after the link's last segment (…/models/87153 →
    87153.safetensors, so a prompt says <lora:87153:1>); other links use the server's
    Content-Disposition name or the link's last segment."""
    parts = urllib.parse.urlsplit(url)
    segment = urllib.parse.unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    host = (parts.hostname or "").lower()
    if host == "civitai.com" or host.endswith(".civitai.com"):
        name = safe_file_name(segment)
        return f"{name}.safetensors" if name else None
    name = safe_file_name(filename_from_disposition(disposition) or segment)
    if name and Path(name).suffix.lower() not in MODEL_SUFFIXES:
        name += ".safetensors"  # a bare name: only a verified .safetensors is kept under it
    return name


def _download_link(
    url: str,
    role: str,
    root: Path,
    progress: ProgressFn | None,
    cancel: Callable[[], bool] | None,
    token: str | None,
    http: httpx.Client,
) -> Path:
    records = Records(root)
    existing = records.link_file(url)
    if existing is not None:
        return existing
    folder = root / ROLE_FOLDERS[role][0]
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    part = _part(folder, f"link-{key}", url)
    headers = _auth(token)
    fetched = fetch(url, part, headers=headers, progress=progress, cancel=cancel, client=http)
    meta = part.with_name(part.name + ".json")
    try:  # a resumed download may have been named by an earlier call's first response
        saved = dict(json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        saved = {}
    name = saved.get("name") or _link_name(url, fetched.headers.get("Content-Disposition"))
    if not name:
        discard(part)
        raise ModelError(f"cannot tell a file name for {url}")
    meta.write_text(json.dumps({**saved, "name": name}), encoding="utf-8")
    try:
        check_model_file(part, Path(name).suffix, f"the file from {url} ({name})")
    except ModelError as exc:
        discard(part)
        raise ModelError(f"{exc}; it was deleted") from None
    hashes = hash_file(part, Path(name).suffix)
    first = records.first_seen.get(url)
    dest = folder / name
    problem = None
    if first and first != hashes.sha256:
        problem = (
            f"{url} now sends a different file than when it was first downloaded "
            f"(sha256 {hashes.sha256[:12]}… instead of {first[:12]}…); it was deleted. If you "
            f"trust the new file, forget the old one with: clarifier models remove '{url}'"
        )
    elif dest.exists() and file_hashes(dest).sha256 != hashes.sha256:
        problem = f"{dest} already exists and is a different file; rename or remove it first"
    if problem is not None:
        discard(part)
        raise ModelError(problem)
    if dest.exists():
        discard(part)  # the same bytes are there already
    else:
        _finish(part, dest, hashes)
    records.links[url] = {
        "file": dest.relative_to(root).as_posix(),
        "sha256": hashes.sha256,
        "size": dest.stat().st_size,
    }
    records.first_seen[url] = hashes.sha256
    records.save()
    return dest
