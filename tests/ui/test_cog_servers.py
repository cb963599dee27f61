"""The window's list of Cog servers under "Run on", and the settings page that lists them.

The servers are :class:`tests.doubles.cog.CogHealthDouble` (a Cog health check over real HTTP)
and a port nothing listens on.
"""

from __future__ import annotations

import socket
import time

import pytest

from app.store.settings import Settings
from app.ui.dialogs.settings import SettingsDialog
from app.ui.params.cog_servers import CogServerList
from app.ui.params.panel import ParamsPanel
from tests.doubles.cog import CogHealthDouble


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def servers():
    ready = CogHealthDouble("READY", (2, 1)).start()
    busy = CogHealthDouble("BUSY").start()
    yield ready, busy
    ready.stop()
    busy.stop()


def test_each_server_is_listed_with_its_state(qtbot, servers) -> None:
    ready, busy = servers
    gone = _closed_port()
    view = CogServerList(lambda: ([ready.url, busy.url, gone], None))
    qtbot.addWidget(view)
    view.refresh()
    qtbot.waitUntil(lambda: len(view.states()) == 3, timeout=15000)
    assert view.states() == [(ready.url, "ready"), (busy.url, "busy"), (gone, "unreachable")]
    texts = [label.text() for label in view.labels]
    assert "ready (1 of 2 slots free)" in texts[0] and "busy" in texts[1]
    assert "unreachable: connection refused" in texts[2]
    assert view.title.text() == "Your Cog servers: 2 of 3 answering"
    assert [label.accessibleName() for label in view.labels] == [
        f"Cog server {url}" for url in (ready.url, busy.url, gone)
    ]
    busy.status = "READY"  # the box is free again: the next check says so
    view.refresh_button.click()
    qtbot.waitUntil(lambda: view.states()[1] == (busy.url, "ready"), timeout=15000)
    assert len(view.labels) == 3


def test_checking_never_blocks_the_window(qtbot, servers) -> None:
    ready, _ = servers
    ready.inject("GET", "/health-check", "delay", delay=1.0)
    view = CogServerList(lambda: ([ready.url], None))
    qtbot.addWidget(view)
    started = time.monotonic()
    view.refresh()
    assert time.monotonic() - started < 0.2  # the question went to a worker
    assert view.title.text() == "Your Cog servers: checking…" and view.states() == []
    qtbot.waitUntil(lambda: view.states() == [(ready.url, "ready")], timeout=15000)


def test_an_older_answer_does_not_replace_a_newer_one(qtbot, servers) -> None:
    ready, busy = servers
    ready.inject("GET", "/health-check", "delay", delay=0.8)  # the first question is slow
    urls = [[ready.url], [busy.url]]
    view = CogServerList(lambda: (urls.pop(0), None))
    qtbot.addWidget(view)
    view.refresh()
    view.refresh()
    qtbot.waitUntil(lambda: view.states() == [(busy.url, "busy")], timeout=15000)
    qtbot.wait(1200)  # the slow first answer arrives, and is dropped
    assert view.states() == [(busy.url, "busy")]


def test_run_on_shows_the_servers_while_cog_is_chosen(qtbot, servers, monkeypatch) -> None:
    ready, busy = servers
    monkeypatch.setenv("CLARIFIER_COG_BASE_URL", f"{ready.url}, {busy.url}")
    panel = ParamsPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert not panel.cog_servers.isVisible()
    panel.engine_combo.setCurrentIndex(panel.engine_combo.findData("cog"))
    panel.engine_combo.activated.emit(panel.engine_combo.currentIndex())
    assert panel.backend()[0] == "cog" and panel.cog_servers.isVisible()
    qtbot.waitUntil(
        lambda: panel.cog_servers.states() == [(ready.url, "ready"), (busy.url, "busy")],
        timeout=15000,
    )
    panel.set_backend("local")
    assert not panel.cog_servers.isVisible()


def test_the_settings_page_takes_several_cog_servers(qtbot) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    cog = dialog.provider_pages["cog"]
    assert "several" in cog.url_edit.toolTip()
    cog.url_edit.setText("http://gpu-a:5000, http://gpu-b:5000")
    assert dialog.ok_button.isEnabled() and not cog.url_error.isVisibleTo(dialog)
    segmind = dialog.provider_pages["segmind"]
    segmind.url_edit.setText("https://a.example https://b.example")
    assert not dialog.ok_button.isEnabled()
    assert "must be one address" in segmind.url_error.text()
    segmind.url_edit.setText("")
    assert dialog.ok_button.isEnabled()
    assert dialog.result_settings().provider_urls == {"cog": "http://gpu-a:5000, http://gpu-b:5000"}
