"""The settings dialog's page for one hosted provider: its API key, base URL and limits.

The Cog page's address field takes several servers, separated by commas or spaces (see
:data:`app.store.settings.MULTI_URL_PROVIDERS`): jobs are spread over them.

Keys go to the OS keyring (:mod:`app.store.secrets`) the moment Save is pressed, never into the
settings file; a key is shown masked ("r8_…9fQa (keyring)") and the field that took it is
cleared. A key that comes from the environment is shown, read-only, with the variable's name:
the dialog cannot change it. The keyring is asked off the GUI thread, since a locked keyring can
keep a call waiting for seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.backends import registry
from app.store import secrets
from app.store.settings import MULTI_URL_PROVIDERS
from app.ui.dialogs.model_tasks import run_in_pool

__all__ = ["ProviderInfo", "ProviderPage", "provider_infos", "refresh_keys", "warm_up"]


@dataclass(frozen=True)
class ProviderInfo:
    """What the page needs to know of a provider: from the registry, and the request budget and
    concurrency defaults from its backend class."""

    name: str
    label: str
    default_url: str
    default_rpm: int
    default_concurrency: int
    needs_key: bool
    key_envs: tuple[str, ...]
    several_urls: bool = False  # a pool of the person's own servers (Cog)


def _label(name: str) -> str:
    """The provider's label at the start of a line ("your Cog server" → "Your Cog server")."""
    label = registry.get(name).label
    return label[:1].upper() + label[1:] if label.startswith("your ") else label


@cache
def provider_infos() -> tuple[ProviderInfo, ...]:
    """Every hosted provider with its defaults. Imports each backend module (about 0.1 s the
    first time): :func:`warm_up` does that off the GUI thread."""
    infos = []
    for entry in registry.providers():
        cls = entry.load()
        limit, window = cls.budget_limit
        infos.append(
            ProviderInfo(
                name=entry.name,
                label=_label(entry.name),
                default_url=entry.default_url,
                default_rpm=max(1, round(limit * 60 / window)),
                default_concurrency=int(cls.default_concurrency),
                needs_key=entry.needs_key,
                key_envs=entry.key_envs,
                several_urls=entry.name in MULTI_URL_PROVIDERS,
            )
        )
    return tuple(infos)


def warm_up() -> None:
    """Import the provider modules in a worker, so the first Settings opens at once."""
    run_in_pool(provider_infos)


def _named(widget: QWidget, name: str, tip: str) -> QWidget:
    widget.setAccessibleName(name)
    widget.setToolTip(tip)
    return widget


class ProviderPage(QWidget):
    """One provider's key, URL, requests per minute and concurrency. ``changed`` fires on any
    edit of the URL or limits; ``key_changed(name)`` after a key was saved or removed."""

    changed = Signal()
    key_changed = Signal(str)

    def __init__(self, info: ProviderInfo, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.info = info
        self._generation = 0
        label = info.label
        form = QFormLayout(self)

        if info.several_urls:
            text = (
                f"{label} needs its address; list several servers to spread jobs over them. "
                "A key only if you put one in front of them."
            )
        elif not info.needs_key:
            text = f"{label} needs its address; a key only if you put one in front of it."
        else:
            text = f"Jobs sent to {label} use your {label} account and its API key."
        intro = QLabel(text)
        intro.setWordWrap(True)
        form.addRow(intro)

        self.key_status = QLabel("Checking the keyring…")
        self.key_status.setWordWrap(True)
        _named(self.key_status, f"{label} API key status", "Where the key comes from")
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("Paste a new key")
        _named(
            self.key_edit,
            f"New {label} API key",
            "The key is saved in the system keyring, never in a file or a log",
        )
        self.save_button = QPushButton("Save key")
        _named(self.save_button, f"Save {label} key", "Store this key in the system keyring now")
        self.remove_button = QPushButton("Remove key")
        _named(self.remove_button, f"Remove {label} key", "Delete the stored key from the keyring")
        self.save_button.setEnabled(False)
        self.remove_button.setEnabled(False)
        self.key_edit.textChanged.connect(self._key_typed)
        self.key_edit.returnPressed.connect(self.save_key)
        self.save_button.clicked.connect(self.save_key)
        self.remove_button.clicked.connect(self.remove_key)
        row = QHBoxLayout()
        row.addWidget(self.key_edit, 1)
        row.addWidget(self.save_button)
        row.addWidget(self.remove_button)
        title = "API key" if info.needs_key else "API key (optional)"
        form.addRow(title, self.key_status)
        form.addRow("", row)

        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText(info.default_url)
        _named(
            self.url_edit,
            f"{label} base URL",
            (
                "One server's address, or several separated by commas or spaces: jobs go to "
                f"whichever has a free slot, and move on if one stops; empty = {info.default_url}"
            )
            if info.several_urls
            else f"Scheme and host, as the vendor documents it; empty = {info.default_url}",
        )
        self.url_edit.textChanged.connect(self.changed)
        self.url_error = QLabel()
        self.url_error.setWordWrap(True)
        self.url_error.setAccessibleName(f"{label} base URL problem")
        self.url_error.hide()
        form.addRow("Servers" if info.several_urls else "Base URL", self.url_edit)
        form.addRow("", self.url_error)

        self.rpm_spin = QSpinBox()
        self.rpm_spin.setRange(0, 100_000)
        self.rpm_spin.setSpecialValueText(f"Default ({info.default_rpm} a minute)")
        self.rpm_spin.setSuffix(" a minute")
        _named(
            self.rpm_spin,
            f"{label} requests per minute",
            "How many requests a minute your plan allows (0 = the provider's default)",
        )
        self.concurrency_spin = QSpinBox()
        self.concurrency_spin.setRange(0, 64)
        self.concurrency_spin.setSpecialValueText(f"Default ({info.default_concurrency})")
        self.concurrency_spin.setSuffix(" at once")
        _named(
            self.concurrency_spin,
            f"{label} concurrency",
            "How many jobs are handed to the servers at once; each waits for a free slot "
            "(0 = the default)"
            if info.several_urls
            else "How many jobs may run there at the same time (0 = the provider's default)",
        )
        self.rpm_spin.valueChanged.connect(self.changed)
        self.concurrency_spin.valueChanged.connect(self.changed)
        form.addRow("Requests", self.rpm_spin)
        form.addRow("Concurrency", self.concurrency_spin)

        notes = self._environment_notes()
        if notes:
            note = QLabel(notes)
            note.setWordWrap(True)
            note.setAccessibleName(f"{label} environment overrides")
            form.addRow(note)

    def _environment_notes(self) -> str:
        upper = self.info.name.upper()
        notes = []
        for what, var in (
            ("base URL", f"CLARIFIER_{upper}_BASE_URL"),
            ("limit", f"CLARIFIER_{upper}_RPM"),
        ):
            if os.environ.get(var):
                notes.append(f"${var} is set and overrides the {what} here.")
        return " ".join(notes)

    # --- values -------------------------------------------------------------------------------
    def load(self, url: str, rpm: int | None, concurrency: int | None) -> None:
        self.url_edit.setText(url)
        self.rpm_spin.setValue(rpm or 0)
        self.concurrency_spin.setValue(concurrency or 0)

    def url(self) -> str:
        return self.url_edit.text().strip()

    def rpm(self) -> int | None:
        return self.rpm_spin.value() or None

    def concurrency(self) -> int | None:
        return self.concurrency_spin.value() or None

    def show_url_error(self, message: str) -> None:
        self.url_error.setText(f"⚠ {message}" if message else "")
        self.url_error.setVisible(bool(message))
        self.url_edit.setAccessibleDescription(message)

    # --- the key ------------------------------------------------------------------------------
    def new_key_request(self) -> int:
        """Number a new question to the keyring about this page's key: from now on only the
        answer to this one is shown (an older answer arriving late is dropped)."""
        self._generation += 1
        return self._generation

    def show_key_answer(self, generation: int, answer: secrets.KeyInfo | Exception) -> None:
        """Show the keyring's answer to request ``generation``: the key found, or why not."""
        if isinstance(answer, Exception):
            self._key_problem(generation, str(answer))
        else:
            self._show_key(generation, answer)

    def refresh_key(self) -> None:
        """Ask where the key comes from (off the GUI thread)."""
        generation, name, envs = self.new_key_request(), self.info.name, self.info.key_envs
        run_in_pool(
            lambda: secrets.find_key(name, envs),
            owner=self,
            done=lambda info: self._show_key(generation, info),
            failed=lambda exc: self._key_problem(generation, str(exc)),
        )

    def _show_key(self, generation: int, info: secrets.KeyInfo, note: str = "") -> None:
        if generation != self._generation:
            return
        from_env = info.source.startswith("env:")
        if from_env:
            var = info.source.removeprefix("env:")
            text = (
                f"{info.masked}, from ${var}. Set in the environment: Clarifier cannot change "
                f"it here; unset {var} to use a key from the keyring."
            )
        elif info.key:
            text = f"{info.masked} (keyring)"
        elif info.problem:
            text = (
                f"No key: {info.problem}. Set {self.info.key_envs[0]} in the environment instead."
            )
        else:
            text = "No key saved." if self.info.needs_key else "None (not needed)."
        self.key_status.setText(f"{text} {note}".strip())
        self.key_edit.setEnabled(not from_env)
        self.key_edit.setToolTip(
            f"${info.source.removeprefix('env:')} provides the key"
            if from_env
            else "The key is saved in the system keyring, never in a file or a log"
        )
        self.remove_button.setEnabled(info.source == "keyring")
        self._key_typed()

    def _key_problem(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.key_status.setText(message[:1].upper() + message[1:])
            self._key_typed()

    def _key_typed(self) -> None:
        self.save_button.setEnabled(
            self.key_edit.isEnabled() and bool(self.key_edit.text().strip())
        )

    def save_key(self) -> None:
        key = self.key_edit.text().strip()
        if not key or not self.key_edit.isEnabled():
            return
        self._generation += 1
        generation, name, envs = self._generation, self.info.name, self.info.key_envs
        self.save_button.setEnabled(False)
        self.key_status.setText("Saving to the keyring…")

        def work() -> tuple[secrets.KeyInfo, bool]:
            secrets.set_key(name, key, envs)
            found = secrets.find_key(name, envs)
            return found, found.key == key or found.source.startswith("env:")

        def saved(result: tuple[secrets.KeyInfo, bool]) -> None:
            if generation != self._generation:
                return
            info, kept = result
            self.key_edit.clear()  # the key itself never stays in a widget
            note = (
                ""
                if kept
                else "The keyring accepted the key but does not give it back (no usable "
                f"keyring here?); set {self.info.key_envs[0]} in the environment instead."
            )
            self._show_key(generation, info, note)
            self.key_changed.emit(name)

        run_in_pool(
            work,
            owner=self,
            done=saved,
            failed=lambda exc: self._key_problem(generation, str(exc)),
        )

    def remove_key(self) -> None:
        self._generation += 1
        generation, name = self._generation, self.info.name
        self.remove_button.setEnabled(False)

        def removed(_: object) -> None:
            self.key_changed.emit(name)
            self.refresh_key()

        run_in_pool(
            lambda: secrets.delete_key(name),
            owner=self,
            done=removed,
            failed=lambda exc: self._key_problem(generation, str(exc)),
        )


def refresh_keys(pages: Sequence[ProviderPage]) -> None:
    """Ask the keyring for every page's key, one after the other in a single worker: not every
    keyring backend (D-Bus Secret Service, a locked KWallet) copes with parallel calls."""
    if not pages:
        return
    asked = [(page, page.new_key_request(), page.info.name, page.info.key_envs) for page in pages]
    jobs = [(name, envs) for _, _, name, envs in asked]

    def work() -> dict[str, secrets.KeyInfo | Exception]:
        found: dict[str, secrets.KeyInfo | Exception] = {}
        for name, envs in jobs:
            try:
                found[name] = secrets.find_key(name, envs)
            except Exception as exc:  # noqa: BLE001 - one provider's failure is its own
                found[name] = exc
        return found

    def done(found: dict[str, secrets.KeyInfo | Exception]) -> None:
        for page, generation, name, _ in asked:
            page.show_key_answer(generation, found[name])

    run_in_pool(work, owner=pages[0], done=done)
