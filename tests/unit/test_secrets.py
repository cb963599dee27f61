"""API keys: environment first (the vendor's own name), then the OS keyring; never in clear."""

from __future__ import annotations

import keyring
import keyring.backend
import keyring.errors
import pytest

from app.backends import registry
from app.store import secrets

SEGMIND = registry.key_envs("segmind")  # the store knows no provider: callers name the variables
APIFRAME = registry.key_envs("apiframe")


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.store.get((service, username))

    def set_password(self, service, username, password):
        self.store[(service, username)] = password

    def delete_password(self, service, username):
        if (service, username) not in self.store:
            raise keyring.errors.PasswordDeleteError("not found")
        del self.store[(service, username)]


class BrokenKeyring(MemoryKeyring):
    def get_password(self, service, username):
        raise keyring.errors.KeyringLocked("the collection is locked")

    def set_password(self, service, username, password):
        raise keyring.errors.NoKeyringError("no backend")


@pytest.fixture
def ring(monkeypatch):
    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    for name in ("SEGMIND_API_KEY", "CLARIFIER_SEGMIND_API_KEY", "CLARIFIER_APIFRAME_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield memory
    keyring.set_keyring(previous)


def test_keyring_then_environment_override(ring, monkeypatch) -> None:
    assert secrets.find_key("segmind", SEGMIND).key is None
    secrets.set_key("segmind", "  SG_0123456789abcdef \n", SEGMIND)
    info = secrets.find_key("segmind", SEGMIND)
    assert (info.key, info.source, info.masked) == ("SG_0123456789abcdef", "keyring", "SG_…cdef")
    monkeypatch.setenv("CLARIFIER_SEGMIND_API_KEY", "from-clarifier-env")
    assert secrets.find_key("segmind", SEGMIND).source == "env:CLARIFIER_SEGMIND_API_KEY"
    monkeypatch.setenv("SEGMIND_API_KEY", "from-vendor-env")  # the vendor's own name wins
    assert secrets.find_key("segmind", SEGMIND).key == "from-vendor-env"
    assert secrets.delete_key("segmind") and not secrets.delete_key("segmind")


def test_vendor_variable_names() -> None:
    assert registry.key_envs("replicate") == ("REPLICATE_API_TOKEN", "CLARIFIER_REPLICATE_API_KEY")
    assert registry.key_envs("fal") == ("FAL_KEY", "CLARIFIER_FAL_API_KEY")
    assert registry.key_envs("apiframe") == ("CLARIFIER_APIFRAME_API_KEY",)
    assert SEGMIND == ("SEGMIND_API_KEY", "CLARIFIER_SEGMIND_API_KEY")
    assert secrets.mask("short") == "•••••" and "abcdef" not in secrets.mask("r8_abcdefghijkl")


def test_a_broken_keyring_explains_itself(monkeypatch) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())
    monkeypatch.delenv("CLARIFIER_APIFRAME_API_KEY", raising=False)
    try:
        info = secrets.find_key("apiframe", APIFRAME)
        assert info.key is None and "keyring is not available" in info.problem
        with pytest.raises(secrets.SecretsError, match="CLARIFIER_APIFRAME_API_KEY"):
            secrets.set_key("apiframe", "afk_1", APIFRAME)
        with pytest.raises(secrets.SecretsError, match="empty"):
            secrets.set_key("apiframe", "   ", APIFRAME)
    finally:
        keyring.set_keyring(previous)
