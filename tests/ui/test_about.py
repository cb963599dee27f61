"""The About box: version, licences of Clarifier, its libraries and every manifest model."""

from __future__ import annotations

import importlib.metadata

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.ui.dialogs.about import PROJECT_URL, AboutDialog
from pipeline.models.manifest import load_manifest
from tests.ui.test_settings_dialog import unnamed_controls


def test_about_names_the_version_and_every_licence(qtbot) -> None:
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    text = " ".join(dialog.text.toPlainText().split())
    version = importlib.metadata.version("clarifier")
    assert f"Clarifier {version}" in text
    assert "Apache License 2.0" in text
    assert "LGPLv3" in text and "qasync" in text and "BSD 2-Clause" in text
    for library, licence in (
        ("torch", "BSD-3-Clause"),
        ("diffusers", "Apache-2.0"),
        ("transformers", "Apache-2.0"),
        ("Pillow", "MIT-CMU"),
        ("numpy", "BSD-3-Clause"),
        ("httpx", "BSD-3-Clause"),
        ("keyring", "MIT"),
    ):
        version_of = importlib.metadata.version(library)
        assert f"{library} {version_of} {licence}" in text, library
    assert "Real-ESRGAN" in text and "CreativeML Open RAIL-M" in text
    entries = load_manifest()
    assert entries
    for entry in entries:
        assert f"{entry.file} — {entry.purpose} {' '.join(entry.licence.split())}" in text
    ultrasharp = next(e for e in entries if e.id == "4x-UltraSharp")
    assert f"{ultrasharp.licence} (non-commercial use only" in text
    assert "does not copy Clarity's code" in text
    assert PROJECT_URL in dialog.text.toHtml()
    assert dialog.text.openExternalLinks()
    flags = dialog.text.textInteractionFlags()
    assert flags & Qt.TextInteractionFlag.TextSelectableByMouse
    assert flags & Qt.TextInteractionFlag.TextSelectableByKeyboard
    assert unnamed_controls(dialog) == []


def test_copy_versions_puts_them_on_the_clipboard(qtbot) -> None:
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    dialog.copy_versions()
    copied = QGuiApplication.clipboard().text()
    assert copied.splitlines()[0] == f"Clarifier {importlib.metadata.version('clarifier')}"
    assert f"httpx {importlib.metadata.version('httpx')}" in copied
