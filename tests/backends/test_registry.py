"""Everything that lists backends is derived from :mod:`app.backends.registry`.

The CLI's ``--backend`` and ``keys`` choices, the provider pool, the window's capability lookups
and the settings dialog's provider pages all read the registry, and the key variables the
secrets module is asked about are the registry's. A provider added as one registry entry shows
up in all of them. The backend classes themselves take their label, models, URL, key variables
and cancel support from their entry, so there is no second copy to drift. (That the fields each
model takes agree with the provider mappings is ``test_capabilities.py``'s job.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.backends import capabilities as caps
from app.backends import registry
from app.backends.registry import BackendInfo, ModelInfo, ScaleLimits
from app.backends.remote import RemoteBackend
from app.store import secrets

ROOT = Path(__file__).resolve().parents[2]


def _subcommand(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser


def _choices(parser: argparse.ArgumentParser, dest: str) -> list[str]:
    (action,) = [a for a in parser._actions if a.dest == dest]
    return list(action.choices or ())


def _cli_choices() -> tuple[list[str], list[str]]:
    """The CLI's ``upscale --backend`` and ``keys set`` choices, from a freshly built parser."""
    from app.cli.parser import build_parser

    parser = build_parser()
    backends = _choices(_subcommand(parser, "upscale"), "backend")
    keys = _choices(_subcommand(parser, "keys", "set"), "provider")
    return backends, keys


def _settings_pages() -> list[tuple[str, str, str, bool, tuple[str, ...]]]:
    from app.ui.dialogs.settings_providers import provider_infos

    infos = provider_infos.__wrapped__()  # not the cached answer: the registry may be patched
    return [(i.name, i.label.lower(), i.default_url, i.needs_key, i.key_envs) for i in infos]


def _pool_names() -> list[str]:
    from app.jobs.providers import ProviderPool

    return ProviderPool(env={}).names()


def _check_derived() -> None:
    names = list(registry.names())
    providers = list(registry.provider_names())
    backends, keys = _cli_choices()
    assert backends == names and names[0] == "local"
    assert keys == sorted(providers)
    assert _pool_names() == names
    assert caps.backends() == list(registry.backends())
    assert all(caps.backend_info(n) is registry.get(n) for n in names)
    assert _settings_pages() == [
        (p.name, p.label.lower(), p.default_url, p.needs_key, p.key_envs)
        for p in registry.providers()
    ]


def test_the_cli_the_pool_the_capabilities_and_the_settings_list_the_registry() -> None:
    _check_derived()
    assert registry.provider_names() == (
        "segmind",
        "apiframe",
        "wireflow",
        "replicate",
        "cog",
        "fal",
    )


def test_the_secrets_are_asked_for_the_registrys_key_variables(monkeypatch, capsys) -> None:
    asked: dict[str, tuple[str, ...]] = {}

    def find_key(provider: str, envs) -> secrets.KeyInfo:
        asked[provider] = tuple(envs)
        return secrets.KeyInfo(None, "")

    from app.cli import keys
    from app.jobs import providers

    expected = {p.name: p.key_envs for p in registry.providers()}
    monkeypatch.setattr(keys, "find_key", find_key)
    assert keys.cmd_keys(argparse.Namespace(action="list")) == 0
    assert asked == expected
    out = capsys.readouterr().out
    for envs in expected.values():  # `keys list` shows where each key may be set
        assert f"env: {', '.join(envs)}" in out
    asked.clear()
    monkeypatch.setattr(providers, "find_key", find_key)
    pool = providers.ProviderPool()  # the real environment: the pool asks the secrets module
    assert all(pool.api_key(name) is None for name in expected)
    assert asked == expected
    assert expected["segmind"] == ("SEGMIND_API_KEY", "CLARIFIER_SEGMIND_API_KEY")
    assert expected["cog"] == ("CLARIFIER_COG_API_KEY",)


def test_a_provider_added_to_the_registry_appears_everywhere(monkeypatch) -> None:
    toy = BackendInfo(
        name="toy",
        label="Toy",
        module="tests.backends.toy",
        class_name="ToyBackend",
        catalog=(
            ModelInfo("toy-1", "Toy upscaler", frozenset({"scale_factor"}), ScaleLimits(1, 4)),
        ),
        can_cancel=True,
        default_url="http://toy.test",
        vendor_key_envs=("TOY_KEY",),
    )
    entries = (*registry.backends(), toy)
    monkeypatch.setattr(registry, "_BACKENDS", entries)
    monkeypatch.setattr(registry, "_BY_NAME", {e.name: e for e in entries})
    _check_derived()
    assert "toy" in _cli_choices()[0] and caps.accepted_fields("toy") == {"scale_factor"}
    assert registry.key_envs("toy") == ("TOY_KEY", "CLARIFIER_TOY_API_KEY")

    from app.jobs.providers import ProviderPool

    pool = ProviderPool(env={"TOY_KEY": "k"}, overrides={"toy": {"max_wait": 1.0}})
    try:
        backend = pool.get("toy")
        assert type(backend).__name__ == "ToyBackend" and backend.api_key == "k"
        assert backend.model == "toy-1"
    finally:
        asyncio.run(pool.aclose())


def test_a_backend_class_reads_its_entry_and_may_not_restate_it(monkeypatch) -> None:
    probe = BackendInfo(
        name="probe",
        label="Probe",
        module=__name__,
        class_name="Probe",
        catalog=(
            ModelInfo("p-1", "first", frozenset({"scale_factor"}), ScaleLimits(1, 4)),
            ModelInfo("p-2", "second", frozenset({"scale_factor"}), ScaleLimits(1, 4)),
        ),
        needs_key=False,
        can_cancel=True,
        default_url="http://probe.test",
        vendor_key_envs=("PROBE_KEY",),
    )
    monkeypatch.setitem(registry._BY_NAME, "probe", probe)

    class Probe(RemoteBackend, backend="probe"):
        pass

    assert Probe.info is probe
    assert (Probe.name, Probe.label, Probe.models, Probe.default_base_url) == (
        "probe", "Probe", ("p-1", "p-2"), "http://probe.test"
    )  # fmt: skip
    assert Probe.key_envs == ("PROBE_KEY", "CLARIFIER_PROBE_API_KEY")
    assert (Probe.needs_key, Probe.can_cancel) == (False, True)
    client = httpx.AsyncClient()
    backend = Probe(client)  # the template uses them: the default URL, the first model
    assert (backend.base_url, backend.model) == ("http://probe.test", "p-1")
    asyncio.run(client.aclose())
    with pytest.raises(TypeError, match="restates label"):

        class Restating(RemoteBackend, backend="probe"):
            label = "Probe again"


def test_unknown_names_are_refused_in_the_registrys_words() -> None:
    with pytest.raises(KeyError) as err:
        registry.get("midjourney")
    assert str(err.value).startswith("unknown backend 'midjourney'; available: local, segmind")
    with pytest.raises(ValueError, match="unknown backend"):
        registry.backend_class("midjourney")
    local = registry.get("local")
    assert local.key_envs == () and local.models == () and local.model("") is local.catalog[0]


def test_listing_backends_loads_no_http_client_provider_or_qt() -> None:
    code = (
        "import json, sys\n"
        "import app.cli, app.cli.parser, app.backends.registry as r\n"
        "app.cli.parser.build_parser(); r.backends(); r.key_envs('segmind')\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    forbidden = {"httpx", "PySide6", "torch", "app.jobs.providers", "app.backends.remote"}
    forbidden |= {info.module for info in registry.backends()}
    assert not loaded & forbidden, loaded & forbidden
