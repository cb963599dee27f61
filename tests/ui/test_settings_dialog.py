"""The settings dialog: round trips, validation in place, API keys (masked, keyring only) and
finding an A1111 folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QTabBar,
    QTextEdit,
    QWidget,
)

from app.backends import registry
from app.store import secrets
from app.store.settings import Settings
from app.ui.dialogs.settings import SettingsDialog

KEY = "r8_Zk3pQv7sLmN2xYw8TuB4e9fQa"


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No provider key or override from the environment, unless a test sets one."""
    for info in registry.providers():
        name = info.name
        for var in (*info.key_envs, f"CLARIFIER_{name.upper()}_BASE_URL"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"CLARIFIER_{name.upper()}_RPM", raising=False)
    yield
    QThreadPool.globalInstance().waitForDone(5000)


@pytest.fixture
def keyring(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """secrets.set_key/find_key/delete_key over a dict; what was stored is in the dict."""
    store: dict[str, str] = {}
    real_find = secrets.find_key

    def set_key(provider: str, key: str, envs: Sequence[str]) -> None:
        store[provider] = key

    def find_key(provider: str, envs: Sequence[str]) -> secrets.KeyInfo:
        found = real_find(provider, envs)  # the environment first, as the real one
        if found.source.startswith("env:") or provider not in store:
            return found
        return secrets.KeyInfo(store[provider], "keyring")

    def delete_key(provider: str) -> bool:
        return store.pop(provider, None) is not None

    monkeypatch.setattr(secrets, "set_key", set_key)
    monkeypatch.setattr(secrets, "find_key", find_key)
    monkeypatch.setattr(secrets, "delete_key", delete_key)
    return store


def _open(qtbot, settings: Settings) -> SettingsDialog:
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    for page in dialog.provider_pages.values():  # the keyring answered for every provider
        qtbot.waitUntil(lambda page=page: "Checking" not in page.key_status.text())
    return dialog


def _texts(root: QWidget) -> list[str]:
    """Every piece of text the dialog holds, shown or not."""
    out: list[str] = []
    for widget in [root, *root.findChildren(QWidget)]:
        out += [widget.toolTip(), widget.accessibleName(), widget.accessibleDescription()]
        out.append(widget.windowTitle())
        if isinstance(widget, QLineEdit):
            out += [widget.text(), widget.placeholderText(), widget.displayText()]
        elif isinstance(widget, QLabel | QAbstractButton):
            out.append(widget.text())
        elif isinstance(widget, QTextEdit):
            out.append(widget.toPlainText())
        elif isinstance(widget, QComboBox):
            out += [widget.itemText(i) for i in range(widget.count())]
        elif isinstance(widget, QListWidget):
            out += [widget.item(i).text() for i in range(widget.count())]
    return out


def unnamed_controls(root: QWidget) -> list[str]:
    """Focusable widgets without an accessible name or a tooltip (Qt's own parts of spin
    boxes, combo boxes and tab bars aside)."""
    missing = []
    for widget in root.findChildren(QWidget):
        parent = widget.parentWidget()
        if (
            widget.focusPolicy() == Qt.FocusPolicy.NoFocus
            or isinstance(parent, QAbstractSpinBox | QComboBox | QTabBar)
            or isinstance(widget, QTabBar)
            or widget.window() is not root  # combo box pop-ups
        ):
            continue
        if not widget.accessibleName() or not widget.toolTip():
            missing.append(f"{type(widget).__name__} {widget.accessibleName()!r}")
    return missing


def test_every_control_has_a_name_and_a_tooltip(qtbot) -> None:
    dialog = _open(qtbot, Settings())
    assert unnamed_controls(dialog) == []


def test_unchanged_settings_come_back_equal(qtbot) -> None:
    settings = Settings(
        max_output_megapixels=80.5,
        device="cuda:1",
        precision="bf16",
        tile=256,
        model_dirs=("/models/a", "/models/b"),
        output_dir="/out",
        filename_template="{stem}-{seed}",
        provider_urls={"segmind": "https://eu.segmind.example", "custom": "http://x"},
        provider_rpm={"segmind": 30},
        provider_concurrency={"replicate": 2},
    )
    dialog = _open(qtbot, settings)
    assert dialog.ok_button.isEnabled()
    assert dialog.result_settings() == settings


def test_edits_round_trip_into_the_expected_settings(qtbot) -> None:
    dialog = _open(qtbot, Settings(provider_rpm={"fal": 100}))
    segmind = dialog.provider_pages["segmind"]
    assert segmind.url_edit.placeholderText() == "https://api.segmind.com"
    assert dialog.provider_pages["cog"].url_edit.placeholderText() == "http://localhost:5000"
    segmind.url_edit.setText("https://proxy.example/segmind")
    segmind.rpm_spin.setValue(20)
    dialog.provider_pages["replicate"].concurrency_spin.setValue(3)
    dialog.provider_pages["fal"].rpm_spin.setValue(0)  # back to the provider's default
    dialog.device_combo.setCurrentText("cuda:1")
    dialog.precision_combo.setCurrentIndex(dialog.precision_combo.findData("fp16"))
    dialog.template_edit.setText("{stem}_{seed}_{date}")
    dialog.cap_spin.setValue(120)
    dialog.tile_auto.setChecked(False)
    dialog.tile_spin.setValue(384)
    dialog.output_edit.setText("/tmp/results")

    assert dialog.ok_button.isEnabled()
    dialog.ok_button.click()
    assert dialog.result() == SettingsDialog.DialogCode.Accepted
    assert dialog.result_settings() == Settings(
        max_output_megapixels=120.0,
        device="cuda:1",
        precision="fp16",
        tile=384,
        output_dir="/tmp/results",
        filename_template="{stem}_{seed}_{date}",
        provider_urls={"segmind": "https://proxy.example/segmind"},
        provider_rpm={"segmind": 20},
        provider_concurrency={"replicate": 3},
    )


def test_an_invalid_url_or_template_is_flagged_and_blocks_ok(qtbot) -> None:
    dialog = _open(qtbot, Settings())
    page = dialog.provider_pages["wireflow"]
    page.url_edit.setText("www.wireflow.ai")
    assert not dialog.ok_button.isEnabled()
    dialog.tabs.setCurrentIndex(3)
    dialog.accept()  # refused, and the first problem is brought into view
    assert dialog.result() != SettingsDialog.DialogCode.Accepted
    assert dialog.tabs.currentIndex() == 0
    assert dialog.provider_stack.currentWidget() is page
    assert page.url_error.isVisibleTo(dialog)
    assert "must start with http:// or https://" in page.url_error.text()
    assert page.url_edit.accessibleDescription() == page.url_error.text().removeprefix("⚠ ")
    assert set(dialog.errors()) == {"provider_urls.wireflow"}
    assert not dialog.tabs.tabIcon(0).isNull()  # the Providers tab shows a warning

    page.url_edit.setText("https://www.wireflow.ai")
    assert dialog.ok_button.isEnabled() and not page.url_error.isVisibleTo(dialog)
    assert dialog.tabs.tabIcon(0).isNull()

    dialog.tabs.setCurrentIndex(3)
    dialog.template_edit.setText("{stem}-{colour}")
    assert not dialog.ok_button.isEnabled()
    assert dialog.template_error.isVisibleTo(dialog)
    assert "unknown field(s) colour" in dialog.template_error.text()
    assert dialog.template_example.text() == "—"
    assert not dialog.tabs.tabIcon(3).isNull()
    dialog.template_edit.setText("{stem}/{seed}")
    assert "no / or" in dialog.template_error.text()

    dialog.template_edit.setText("{stem}-{mode}")
    assert dialog.ok_button.isEnabled()
    assert dialog.template_example.text() == (
        "photo.jpg → photo-faithful.png  or  photo-creative.png"
    )
    dialog.device_combo.setCurrentText("gpu")
    assert not dialog.ok_button.isEnabled()
    dialog.accept()
    assert dialog.tabs.currentIndex() == 2 and dialog.device_error.isVisibleTo(dialog)
    assert "not one of auto, cpu, cuda, cuda:N" in dialog.device_error.text()


def test_inserting_a_field_from_the_help_list(qtbot) -> None:
    dialog = _open(qtbot, Settings())
    dialog.template_edit.setText("x-")
    item = next(
        dialog.fields_list.item(i)
        for i in range(dialog.fields_list.count())
        if dialog.fields_list.item(i).text().startswith("{seed}")
    )
    dialog.fields_list.itemActivated.emit(item)
    assert dialog.template_edit.text() == "x-{seed}"
    assert dialog.template_example.text().startswith("photo.jpg → x-1337.png")


def test_saving_a_key_stores_it_in_the_keyring_and_shows_it_masked(
    qtbot,
    keyring: dict[str, str],
) -> None:
    dialog = _open(qtbot, Settings())
    page = dialog.provider_pages["replicate"]
    assert page.key_status.text() == "No key saved."
    assert not page.save_button.isEnabled() and not page.remove_button.isEnabled()
    page.key_edit.setText(KEY)
    assert page.key_edit.echoMode() == QLineEdit.EchoMode.Password
    assert page.save_button.isEnabled()
    with qtbot.waitSignal(dialog.key_changed, timeout=5000) as changed:
        page.save_button.click()
    assert changed.args == ["replicate"]
    assert keyring == {"replicate": KEY}
    assert page.key_status.text() == "r8_…9fQa (keyring)"
    assert page.key_edit.text() == ""
    assert page.remove_button.isEnabled()
    assert not any(KEY in text for text in _texts(dialog))
    assert KEY not in repr(dataclasses.asdict(dialog.result_settings()))

    page.remove_button.click()
    qtbot.waitUntil(lambda: page.key_status.text() == "No key saved.")
    assert keyring == {}


def test_a_keyring_error_is_shown_plainly(qtbot, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(provider: str, key: str, envs: Sequence[str]) -> None:
        raise secrets.SecretsError(
            "the system keyring cannot store the key (NoKeyringError: no backend); set "
            "SEGMIND_API_KEY in the environment instead"
        )

    monkeypatch.setattr(secrets, "set_key", broken)
    dialog = _open(qtbot, Settings())
    page = dialog.provider_pages["segmind"]
    page.key_edit.setText("SG_0123456789abcdef")
    page.save_button.click()
    qtbot.waitUntil(lambda: page.key_status.text().startswith("The system keyring cannot"))
    assert "set SEGMIND_API_KEY in the environment instead" in page.key_status.text()


def test_a_key_from_the_environment_is_read_only(
    qtbot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", KEY)
    dialog = _open(qtbot, Settings())
    page = dialog.provider_pages["replicate"]
    assert page.key_status.text().startswith("r8_…9fQa, from $REPLICATE_API_TOKEN.")
    assert "cannot change" in page.key_status.text()
    assert not page.key_edit.isEnabled()
    assert not page.save_button.isEnabled() and not page.remove_button.isEnabled()
    assert not any(KEY in text for text in _texts(dialog))
    cog = dialog.provider_pages["cog"]
    assert cog.key_status.text() == "None (not needed)."


def test_an_a1111_folder_is_detected_and_added(qtbot, tmp_path: Path) -> None:
    root = tmp_path / "stable-diffusion-webui"
    files = (
        "models/Stable-diffusion/juggernaut_reborn.safetensors",
        "models/Stable-diffusion/epicrealism_naturalSinRC1VAE.safetensors",
        "models/Stable-diffusion/someone_elses_model.safetensors",
        "extensions/sd-webui-controlnet/models/control_v11f1e_sd15_tile.pth",
        "models/Lora/more_details.safetensors",
        "models/Lora/my_style.safetensors",
    )
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not really weights")
    dialog = _open(qtbot, Settings(model_dirs=("/already/there",)))
    dialog._ask_folder = lambda *_: str(root)  # type: ignore[method-assign]
    dialog.detect_button.click()
    qtbot.waitUntil(lambda: dialog.dirs_list.count() == 2)
    assert dialog.dirs_summary.text() == (
        "Found an A1111 folder: 2 of Clarity's 3 checkpoints, ControlNet tile, 2 LoRAs. Added."
    )
    assert dialog.result_settings().model_dirs == ("/already/there", str(root.resolve()))

    empty = tmp_path / "empty"
    empty.mkdir()
    dialog._ask_folder = lambda *_: str(empty)  # type: ignore[method-assign]
    dialog.detect_button.click()
    qtbot.waitUntil(lambda: "Not added" in dialog.dirs_summary.text())
    assert dialog.dirs_list.count() == 2
