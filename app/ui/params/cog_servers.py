"""Your Cog servers under "Run on", each with its state: ready, busy, starting, unreachable or
failed.

The list shows the servers the Cog backend would use (``CLARIFIER_COG_BASE_URL``, the settings,
or the default: :meth:`app.jobs.providers.ProviderPool.base_url`, split by
:func:`app.store.settings.split_urls`). Their health checks run in a worker thread
(:func:`app.backends.providers.cog_pool.check_servers`), never on the GUI thread, every
``every_s`` seconds while the list is shown and when its button is pressed; an answer to an
older question is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from app.store.settings import split_urls

__all__ = ["CogServerList", "ServerLine", "configured_servers"]

log = logging.getLogger(__name__)

# Where the list learns the servers' addresses and their key.
Source = Callable[[], tuple[Sequence[str], str | None]]

# The colour of each state's dot: green, amber, grey, red.
_DOTS = {
    "ready": "#2e9d4c",
    "busy": "#d08a00",
    "starting": "#8a8a8a",
    "unknown": "#8a8a8a",
    "unreachable": "#c62828",
    "failed": "#c62828",
}


@dataclass(frozen=True)
class ServerLine:
    """One server as the list shows it."""

    url: str
    state: str  # a cog_pool.ServerState value, or "checking"
    detail: str  # the state in words, with its reason


def configured_servers() -> tuple[Sequence[str], str | None]:
    """The Cog servers' addresses and the key set for them, as a job would use them (reads
    the settings file and the keyring: call it off the GUI thread)."""
    from app.jobs.providers import ProviderPool
    from app.store.settings import load_settings

    pool = ProviderPool(load_settings())
    return split_urls(pool.base_url("cog")), pool.api_key("cog")


def _check(source: Source) -> list[ServerLine]:
    from app.backends.providers.cog_pool import check_servers

    urls, key = source()
    servers = asyncio.run(check_servers(urls, api_key=key))  # this worker's own event loop
    return [ServerLine(s.url, str(s.state), s.describe()) for s in servers]


class _Relay(QObject):
    done = Signal(int, object, str)  # generation, list[ServerLine] or None, error


class _Check(QRunnable):
    def __init__(self, generation: int, source: Source, relay: _Relay) -> None:
        super().__init__()
        self._generation, self._source, self._relay = generation, source, relay

    def run(self) -> None:
        lines: list[ServerLine] | None = None
        error = ""
        try:
            lines = _check(self._source)
        except Exception as exc:  # noqa: BLE001 - a bad setting must not kill the pool thread
            log.warning("checking the Cog servers failed: %s", exc)
            error = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(RuntimeError):  # the list was deleted meanwhile
            self._relay.done.emit(self._generation, lines, error)


class CogServerList(QWidget):
    """One line per Cog server: a coloured dot, its address and its state."""

    def __init__(
        self,
        source: Source = configured_servers,
        *,
        every_s: float = 15.0,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setAccessibleName("Cog servers")
        self._source = source
        self._generation = 0
        self.lines: list[ServerLine] = []
        self.labels: list[QLabel] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        head = QHBoxLayout()
        self.title = QLabel("Your Cog servers: checking…")
        self.title.setAccessibleName("Cog servers summary")
        self.refresh_button = QToolButton()
        self.refresh_button.setText("↻")
        self.refresh_button.setAccessibleName("Check the Cog servers again")
        self.refresh_button.setToolTip("Ask every Cog server how it is now")
        self.refresh_button.clicked.connect(self.refresh)
        head.addWidget(self.title, 1)
        head.addWidget(self.refresh_button)
        layout.addLayout(head)
        self._rows = QVBoxLayout()
        self._rows.setContentsMargins(8, 0, 0, 0)
        layout.addLayout(self._rows)
        self._timer = QTimer(self)
        self._timer.setInterval(max(1, round(every_s * 1000)))
        self._timer.timeout.connect(self.refresh)
        self._relay = _Relay(self)
        self._relay.done.connect(self._answered)

    def refresh(self) -> None:
        """Ask every server again, in a worker; the lines change when the answers are in."""
        self._generation += 1
        self.title.setText("Your Cog servers: checking…")
        QThreadPool.globalInstance().start(_Check(self._generation, self._source, self._relay))

    def states(self) -> list[tuple[str, str]]:
        """``(address, state)`` of each server, as last shown."""
        return [(line.url, line.state) for line in self.lines]

    def _answered(self, generation: int, lines: list[ServerLine] | None, error: str) -> None:
        if generation != self._generation:
            return  # an older question's answer
        if lines is None:
            self.title.setText(f"Your Cog servers: could not check them ({error})")
            return
        self.lines = lines
        while self.labels:
            label = self.labels.pop()
            self._rows.removeWidget(label)
            label.deleteLater()
        for line in lines:
            label = QLabel(
                f'<span style="color:{_DOTS.get(line.state, "#8a8a8a")}">●</span> '
                f"{_escape(line.url)}: {_escape(line.detail)}"
            )
            label.setAccessibleName(f"Cog server {line.url}")
            label.setAccessibleDescription(line.detail)
            label.setToolTip(f"{line.url}: {line.detail}")
            self._rows.addWidget(label)
            self.labels.append(label)
        ready = sum(1 for line in lines if line.state in ("ready", "busy"))
        self.title.setText(f"Your Cog servers: {ready} of {len(lines)} answering")

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()
        self._timer.start()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._timer.stop()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
