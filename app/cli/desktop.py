"""``clarifier desktop install|uninstall``: the launcher, icons and AppStream metadata in the
person's own XDG folders, so a pip-installed Clarifier appears in the applications menu and in
"Open with" for images.

The files come from the package's resources (``resources/desktop`` and ``resources/icons``).
The launcher's ``Exec`` is rewritten to this installation's ``clarifier``, which a virtual
environment does not put on the desktop's PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from app import APP_ID
from pipeline.paths import resources_dir

__all__ = [
    "add_desktop_parser",
    "cmd_desktop",
    "desktop_files",
    "install",
    "launcher_command",
    "uninstall",
]

_CACHE_TIMEOUT_S = 20


def _data_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The spec: a relative XDG_DATA_HOME is invalid and must be ignored.
    return Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"


def desktop_files(data_home: Path | None = None) -> list[tuple[Path, Path]]:
    """(source in the resources, destination under the XDG data folder) for every file."""
    home = data_home or _data_home()
    res = resources_dir()
    pairs = [
        (res / "desktop" / f"{APP_ID}.desktop", home / "applications" / f"{APP_ID}.desktop"),
        (
            res / "desktop" / f"{APP_ID}.metainfo.xml",
            home / "metainfo" / f"{APP_ID}.metainfo.xml",
        ),
    ]
    hicolor = res / "icons" / "hicolor"
    for icon in sorted(hicolor.glob(f"*/apps/{APP_ID}.*")):
        pairs.append((icon, home / "icons" / "hicolor" / icon.relative_to(hicolor)))
    return pairs


def launcher_command() -> list[str]:
    """How a launcher starts this installation of Clarifier: its own ``clarifier`` script
    beside the interpreter, else the interpreter running the entry module."""
    script = Path(sys.executable).with_name("clarifier")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "app.entry"]


def _exec_quote(arg: str) -> str:
    """One argument of a desktop entry's Exec key (the spec's quoting rules)."""
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg.replace("%", "%%")
    escaped = re.sub(r'(["`$\\])', r"\\\1", arg).replace("%", "%%")
    # The desktop file format escapes backslashes once more inside a string value.
    return '"' + escaped.replace("\\", "\\\\") + '"'


def _launcher_text(template: str, command: list[str]) -> str:
    exec_line = " ".join(_exec_quote(a) for a in command)
    lines = []
    for line in template.splitlines():
        if line.startswith("Exec="):
            line = f"Exec={exec_line} %F"
        elif line.startswith("TryExec="):
            line = f"TryExec={command[0]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _refresh_caches(home: Path) -> None:
    """Tell the desktop about the change where its cache tools exist; harmless without them."""
    for tool, args in (
        ("update-desktop-database", ["-q", str(home / "applications")]),
        ("gtk-update-icon-cache", ["-q", "-f", "-t", str(home / "icons" / "hicolor")]),
    ):
        found = shutil.which(tool)
        if found is None:
            continue
        # A cache tool failing or hanging never undoes the install: the files are in place.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([found, *args], capture_output=True, timeout=_CACHE_TIMEOUT_S)


def install(data_home: Path | None = None, command: list[str] | None = None) -> list[Path]:
    """Copy the launcher, metadata and icons into the XDG data folder; return what was
    written. Running it again replaces them (for example after moving the installation)."""
    home = data_home or _data_home()
    written = []
    for source, dest in desktop_files(home):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        if source.suffix == ".desktop":
            text = _launcher_text(source.read_text(encoding="utf-8"), command or launcher_command())
            tmp.write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(source, tmp)
        tmp.replace(dest)
        written.append(dest)
    _refresh_caches(home)
    return written


def uninstall(data_home: Path | None = None) -> list[Path]:
    """Remove what :func:`install` put there; return what was removed."""
    home = data_home or _data_home()
    removed = []
    for _source, dest in desktop_files(home):
        if dest.is_file():
            dest.unlink()
            removed.append(dest)
    _refresh_caches(home)
    return removed


def add_desktop_parser(sub: argparse._SubParsersAction) -> None:
    desktop = sub.add_parser(
        "desktop", help="add Clarifier to (or remove it from) the applications menu"
    )
    actions = desktop.add_subparsers(dest="desktop_command", metavar="ACTION", required=True)
    actions.add_parser(
        "install",
        help="put the launcher, icons and metadata in your XDG folders (~/.local/share)",
    )
    actions.add_parser("uninstall", help="remove them again")


def cmd_desktop(args: argparse.Namespace) -> int:
    home = _data_home()
    installing = args.desktop_command == "install"
    try:
        paths = install(home) if installing else uninstall(home)
    except OSError as exc:
        print(f"clarifier: error: could not change {home}: {exc}", file=sys.stderr)
        return 1
    if installing:
        print(f"Installed {len(paths)} files under {home}:")
        for path in paths:
            print(f"  {path}")
        print("Clarifier is now in the applications menu, and in 'Open with' for images.")
    elif paths:
        print(f"Removed {len(paths)} files from {home}.")
    else:
        print(f"Nothing to remove: Clarifier's launcher is not installed under {home}.")
    return 0
