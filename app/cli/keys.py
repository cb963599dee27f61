"""``clarifier keys``: the hosted providers' API keys.

``keys set PROVIDER`` stores a key in the OS keyring (read from the terminal without echo, or
from stdin), ``keys delete PROVIDER`` removes it, and ``keys list`` shows which providers have
one (masked), where it comes from, and the environment variables that would override it. The
providers and their variables come from :mod:`app.backends.registry`, so listing them imports
no provider module.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from app.backends import registry
from app.cli.common import EXIT_FAILED, EXIT_OK
from app.store.secrets import SecretsError, delete_key, find_key, set_key

__all__ = ["add_keys_parser", "cmd_keys"]


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="store or remove the hosted providers' API keys")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="which providers have a key, and where it comes from")
    for verb, text in (("set", "store a key in the OS keyring"), ("delete", "remove a stored key")):
        parser = actions.add_parser(verb, help=text)
        parser.add_argument("provider", choices=sorted(registry.provider_names()))


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "list":
        for info in sorted(registry.providers(), key=lambda p: p.name):
            envs = info.key_envs
            found = find_key(info.name, envs)
            if not info.needs_key:
                state = "no key needed"
            elif found.key:
                state = f"{found.masked} (from {found.source})"
            else:
                state = "not set" + (f"; {found.problem}" if found.problem else "")
            print(f"{info.name:10} {state:40} env: {', '.join(envs)}")
        return EXIT_OK
    if args.action == "set":
        if sys.stdin.isatty():
            key = getpass.getpass(f"{args.provider} API key (not shown): ")
        else:
            key = sys.stdin.readline()
        try:
            set_key(args.provider, key, registry.key_envs(args.provider))
        except SecretsError as exc:
            print(f"clarifier: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"stored the {args.provider} key in the system keyring")
        return EXIT_OK
    try:
        removed = delete_key(args.provider)
    except SecretsError as exc:
        print(f"clarifier: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"removed the {args.provider} key" if removed else f"no {args.provider} key was stored")
    return EXIT_OK
