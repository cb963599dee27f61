"""Provider API keys: in the OS keyring, overridable by environment variables.

A key is looked up in the environment variables the caller names first (for a provider, its
vendor's own variable where one exists, such as ``SEGMIND_API_KEY``, then
``CLARIFIER_<PROVIDER>_API_KEY``: :attr:`app.backends.registry.BackendInfo.key_envs`), then in the
keyring under the service ``clarifier``. This module knows no provider: the variable names are
always passed in, so the store stays below the backends. Keys are never written to files, logs,
the history or output metadata; code that shows one uses :func:`mask`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KeyInfo", "SecretsError", "delete_key", "find_key", "mask", "set_key"]

SERVICE = "clarifier"


class SecretsError(Exception):
    """The keyring cannot store or read a key; the message says what to do instead."""


@dataclass(frozen=True)
class KeyInfo:
    key: str | None
    source: str  # "env:NAME", "keyring", or "" when there is none
    problem: str = ""  # why the keyring could not be asked, if it could not

    @property
    def masked(self) -> str:
        return mask(self.key) if self.key else ""


def mask(key: str) -> str:
    """Enough of a key to recognise it, never enough to use it: ``SG_…a1b2``."""
    key = key.strip()
    if len(key) <= 8:
        return "•" * len(key)
    head = key[:3] if key[2:3] in ("_", "-") else ""
    return f"{head}…{key[-4:]}"


def _keyring():  # imported lazily: the keyring package probes D-Bus backends on import
    import keyring.errors  # binds ``keyring``; delete_key catches one of its errors

    return keyring


def find_key(provider: str, envs: Sequence[str]) -> KeyInfo:
    """``provider``'s key: from the first of the variables ``envs`` that is set, else from the
    keyring."""
    for name in envs:
        value = os.environ.get(name, "").strip()
        if value:
            return KeyInfo(value, f"env:{name}")
    try:
        value = _keyring().get_password(SERVICE, provider)
    except Exception as exc:  # noqa: BLE001 - keyring backends raise anything (D-Bus, locked)
        return KeyInfo(None, "", f"the system keyring is not available ({_why(exc)})")
    return KeyInfo(value, "keyring") if value else KeyInfo(None, "")


def set_key(provider: str, key: str, envs: Sequence[str]) -> None:
    """Store ``provider``'s key in the keyring; ``envs`` are the variables that can hold it
    instead (the first is named when the keyring cannot store it)."""
    key = key.strip()
    if not key:
        raise SecretsError("the key is empty")
    try:
        _keyring().set_password(SERVICE, provider, key)
    except Exception as exc:  # noqa: BLE001
        raise SecretsError(
            f"the system keyring cannot store the key ({_why(exc)}); set {envs[0]} in the "
            "environment instead"
        ) from None


def delete_key(provider: str) -> bool:
    """Remove the stored key; False if there was none."""
    try:
        keyring = _keyring()
        try:
            keyring.delete_password(SERVICE, provider)
        except keyring.errors.PasswordDeleteError:
            return False
    except Exception as exc:  # noqa: BLE001
        raise SecretsError(f"the system keyring cannot be changed ({_why(exc)})") from None
    return True


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
