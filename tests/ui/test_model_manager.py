"""The model manager against a tiny fake manifest: states, downloads (a fake that writes in
chunks), failures, verify, remove and locate. Nothing reaches the network."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QThreadPool

from app.ui.dialogs import model_tasks
from app.ui.dialogs.model_manager import ModelManagerDialog
from app.ui.dialogs.model_table import LICENCE, STATE, WHERE
from pipeline.errors import Cancelled, ModelError
from pipeline.models import manifest
from pipeline.models.files import file_hashes
from pipeline.models.store import ROLE_FOLDERS, ModelEntry, human_size, load_manifest, models_dir
from tests.doubles.fake_models import fake_resources
from tests.ui.test_settings_dialog import unnamed_controls

A1111 = {
    "checkpoint": "models/Stable-diffusion",
    "vae": "models/VAE",
    "controlnet": "extensions/sd-webui-controlnet/models",
    "lora": "models/Lora",
    "embedding": "embeddings",
    "upscaler": "models/ESRGAN",
}


@pytest.fixture
def blobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """A private Clarifier folder and a manifest of tiny fake files (bytes by id)."""
    for name in ("DATA", "CACHE", "CONFIG"):
        monkeypatch.setenv(f"CLARIFIER_{name}_DIR", str(tmp_path / name.lower()))
    data = fake_resources(tmp_path / "resources")
    monkeypatch.setattr(manifest, "resources_dir", lambda: tmp_path / "resources")
    yield data
    QThreadPool.globalInstance().waitForDone(5000)  # no worker outlives the test's folders


@pytest.fixture
def confirms(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every confirmation is answered yes and recorded (title, or "licences: ids")."""
    asked: list[str] = []

    def confirm(self: ModelManagerDialog, title: str, text: str, accept: str) -> bool:
        asked.append(title)
        return True

    def licences(self: ModelManagerDialog, entries: list[ModelEntry]) -> bool:
        asked.append("licences: " + ",".join(e.id for e in entries))
        return True

    monkeypatch.setattr(ModelManagerDialog, "_confirm", confirm)
    monkeypatch.setattr(ModelManagerDialog, "_confirm_licences", licences)
    return asked


def _entry(model_id: str) -> ModelEntry:
    return next(e for e in load_manifest() if e.id == model_id)


def _place(root: Path, model_id: str, data: bytes) -> Path:
    entry = _entry(model_id)
    path = root / A1111[entry.role] / entry.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _open(qtbot, dirs: list[str]) -> ModelManagerDialog:
    dialog = ModelManagerDialog(dirs)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: bool(dialog.rows()), timeout=5000)
    return dialog


def _cell(dialog: ModelManagerDialog, model_id: str, column: int) -> str:
    return dialog.table.cell_text(model_id, column)


def _fake_download(
    blobs: dict[str, bytes],
    reports: list[tuple[int, int | None]],
    gate: threading.Event | None = None,
    fail: dict[str, Exception] | None = None,
) -> Callable[..., Path]:
    """Writes the fake file in four chunks into Clarifier's folder, reporting progress; waits
    at half way while ``gate`` is unset; raises ``fail[id]`` for the ids named there."""

    def download(entry: ModelEntry, *, accept_licence: bool, progress, cancel, **_: object) -> Path:
        assert accept_licence
        if fail and entry.id in fail:
            raise fail[entry.id]
        data = blobs[entry.id]
        dest = models_dir() / ROLE_FOLDERS[entry.role][0] / entry.file
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{entry.file}.part")
        step = -(-len(data) // 4)
        with open(part, "wb") as out:
            for start in range(0, len(data), step):
                out.write(data[start : start + step])
                reports.append((start + len(data[start : start + step]), len(data)))
                progress(*reports[-1])
                if gate is not None and start + step >= len(data) // 2:
                    while not gate.wait(0.01):
                        if cancel():
                            raise Cancelled("download cancelled; run it again to resume")
        part.replace(dest)
        return dest

    return download


def test_states_and_readiness_from_the_manifest(qtbot, blobs, tmp_path: Path) -> None:
    root = tmp_path / "a1111"
    checked = _place(root, "juggernaut_reborn", blobs["juggernaut_reborn"])
    file_hashes(checked)  # hashed once: the scan knows it from the cache
    _place(root, "vae-ft-mse-840000", blobs["vae-ft-mse-840000"])  # present, never hashed
    dialog = _open(qtbot, [str(root)])

    assert dialog.state_of("juggernaut_reborn")[0] == "verified"
    assert dialog.state_of("vae-ft-mse-840000")[0] == "unverified"
    assert dialog.state_of("control_v11f1e_sd15_tile")[0] == "missing"
    assert _cell(dialog, "juggernaut_reborn", STATE) == "Verified"
    assert _cell(dialog, "vae-ft-mse-840000", STATE) == "Present, not verified"
    assert _cell(dialog, "juggernaut_reborn", WHERE) == str(checked)
    assert _cell(dialog, "realesrgan-x4plus", WHERE) == "bundled"
    assert _cell(dialog, "realesrgan-x4plus", STATE) == "Ready (bundled)"
    assert "non-commercial" in _cell(dialog, "4x-UltraSharp", LICENCE)
    assert "CC BY-NC-SA" in _cell(dialog, "4x-UltraSharp", LICENCE)
    assert unnamed_controls(dialog) == []

    missing = [e for e in load_manifest() if e.required][2:]  # all but the two placed
    assert [e.id for e in missing] == [
        "control_v11f1e_sd15_tile",
        "more_details",
        "SDXLrender_v2.0",
        "JuggernautNegative-neg",
    ]
    size = human_size(sum(e.size or 0 for e in missing))
    assert dialog.header_text() == (
        f"Faithful mode: ready (bundled Real-ESRGAN). Creative mode: 4 files missing ({size})."
    )


def test_a_download_shows_progress_and_ends_verified(
    qtbot,
    blobs,
    confirms,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reports: list[tuple[int, int | None]] = []
    gate = threading.Event()
    monkeypatch.setattr(model_tasks, "download", _fake_download(blobs, reports, gate))
    dialog = _open(qtbot, [])
    target = "JuggernautNegative-neg"
    assert not dialog.download_button.isEnabled()
    dialog.select(target)
    assert dialog.download_button.isEnabled()
    dialog.download_button.click()
    assert confirms == [f"licences: {target}"]

    qtbot.waitUntil(
        lambda: target in dialog.table.bars and dialog.table.bars[target].value() >= 240
    )
    bar = dialog.table.bars[target]
    assert dialog.state_of(target)[0] == "downloading"
    assert bar.maximum() == 1000 and "of" in bar.format()
    assert dialog.cancel_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: dialog.state_of(target)[0] == "verified")
    assert reports[-1] == (len(blobs[target]), len(blobs[target]))
    dest = models_dir() / "embeddings" / "JuggernautNegative-neg.pt"
    assert dest.read_bytes() == blobs[target]
    assert target not in dialog.table.bars
    assert _cell(dialog, target, STATE) == "Verified"
    qtbot.waitUntil(lambda: str(dest) == _cell(dialog, target, WHERE))
    required = sum(e.required for e in load_manifest())
    assert f"{required - 1} files missing" in dialog.header_text()
    assert not dialog.busy()


def test_a_failed_download_says_why_and_the_others_go_on(
    qtbot,
    blobs,
    confirms,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offline = ModelError(
        "cannot reach https://huggingface.co/lllyasviel/ControlNet-v1-1/resolve/main/"
        "control_v11f1e_sd15_tile.pth: [Errno -2] Name or service not known"
    )
    fail = {"control_v11f1e_sd15_tile": offline}
    monkeypatch.setattr(model_tasks, "download", _fake_download(blobs, [], fail=fail))
    dialog = _open(qtbot, [])
    dialog.download_all_button.click()
    required = [e.id for e in load_manifest() if e.required]
    assert confirms == ["licences: " + ",".join(required)]
    qtbot.waitUntil(lambda: not dialog.busy() and "1 file missing" in dialog.header_text())

    state, detail = dialog.state_of("control_v11f1e_sd15_tile")
    assert state == "failed"
    assert detail.startswith("Could not reach huggingface.co ([Errno -2] Name or service")
    assert "Could not reach huggingface.co" in _cell(dialog, "control_v11f1e_sd15_tile", STATE)
    assert dialog.status_text().startswith(
        "Downloaded 5 of 6 files. control_v11f1e_sd15_tile.pth: Could not reach huggingface.co"
    )
    for model_id in required:
        if model_id != "control_v11f1e_sd15_tile":
            assert dialog.state_of(model_id)[0] == "verified", model_id
    dialog.select("control_v11f1e_sd15_tile")
    assert dialog.download_button.isEnabled()  # a failure can be retried


def test_cancel_stops_a_download_and_keeps_the_row_missing(
    qtbot,
    blobs,
    confirms,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    monkeypatch.setattr(model_tasks, "download", _fake_download(blobs, [], gate))
    dialog = _open(qtbot, [])
    dialog.select("more_details")
    dialog.download_button.click()
    qtbot.waitUntil(lambda: dialog.state_of("more_details")[0] == "downloading")
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.busy())
    assert dialog.state_of("more_details")[0] == "missing"
    assert "Cancelled" in dialog.status_text()
    assert not dialog.cancel_button.isEnabled()


def test_verify_reports_a_corrupt_file(qtbot, blobs, tmp_path: Path) -> None:
    root = tmp_path / "mine"
    good = bytearray(blobs["juggernaut_reborn"])
    good[-1] ^= 0xFF  # one flipped bit: same name and size, different hash
    _place(root, "juggernaut_reborn", bytes(good))
    dialog = _open(qtbot, [str(root)])
    assert dialog.state_of("juggernaut_reborn")[0] == "unverified"
    dialog.select("juggernaut_reborn")
    dialog.verify_button.click()
    qtbot.waitUntil(lambda: dialog.state_of("juggernaut_reborn")[0] == "mismatch")
    assert dialog.state_of("juggernaut_reborn")[1] == "does not match sha256"
    assert _cell(dialog, "juggernaut_reborn", STATE) == "Does not match"
    assert "does not match" in dialog.status_text()


def test_remove_deletes_only_after_confirmation(
    qtbot,
    blobs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = models_dir() / "Stable-diffusion" / "juggernaut_reborn.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(blobs["juggernaut_reborn"])
    answers = [False, True]
    monkeypatch.setattr(ModelManagerDialog, "_confirm", lambda *_: answers.pop(0))
    dialog = _open(qtbot, [])
    dialog.select("juggernaut_reborn")
    assert dialog.remove_button.isEnabled()
    dialog.remove_button.click()  # answered no
    assert path.exists()
    dialog.remove_button.click()  # answered yes
    qtbot.waitUntil(lambda: dialog.state_of("juggernaut_reborn")[0] == "missing")
    assert not path.exists()
    assert "Removed juggernaut_reborn.safetensors" in dialog.status_text()


def test_files_outside_clarifiers_folder_cannot_be_removed(
    qtbot,
    blobs,
    tmp_path: Path,
) -> None:
    _place(tmp_path / "theirs", "juggernaut_reborn", blobs["juggernaut_reborn"])
    dialog = _open(qtbot, [str(tmp_path / "theirs")])
    dialog.select("juggernaut_reborn")
    assert dialog.verify_button.isEnabled()
    assert not dialog.remove_button.isEnabled()


def test_locate_adds_the_folder_and_emits_the_new_list(
    qtbot,
    blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "stable-diffusion-webui"
    for model_id in ("juggernaut_reborn", "control_v11f1e_sd15_tile", "more_details"):
        _place(root, model_id, blobs[model_id])
    monkeypatch.setattr(ModelManagerDialog, "_ask_folder", lambda *_: str(root))
    dialog = _open(qtbot, ["/somewhere/else"])
    assert dialog.state_of("juggernaut_reborn")[0] == "missing"
    with qtbot.waitSignal(dialog.model_dirs_changed, timeout=5000) as signal:
        dialog.locate_button.click()
    assert signal.args == [["/somewhere/else", str(root.resolve())]]
    assert dialog.status_text().startswith(
        "Found an A1111 folder: 1 of Clarity's 3 checkpoints, ControlNet tile, 1 LoRA."
    )
    qtbot.waitUntil(lambda: dialog.state_of("juggernaut_reborn")[0] != "missing")
    assert _cell(dialog, "juggernaut_reborn", WHERE).startswith(str(root))


def test_open_folder_shows_clarifiers_folder_without_a_selection(
    qtbot, blobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr(ModelManagerDialog, "_open_url", lambda self, url: opened.append(url))
    dialog = _open(qtbot, [])
    dialog.open_button.click()
    assert [u.toLocalFile() for u in opened] == [str(models_dir())]
    assert models_dir().is_dir()


def test_friendly_errors() -> None:
    assert model_tasks.friendly_error(Cancelled("x")).startswith("Cancelled")
    text = model_tasks.friendly_error(
        ModelError("downloading https://x/y failed (timed out); run the same command again")
    )
    assert text == "Downloading https://x/y failed (timed out); download again"
