"""``clarifier models``: list, download, verify, locate and remove the creative engine's models.

Downloads happen only here (or in the window's model manager), never on their own; each shows
the model's licence and whether it forbids commercial use, and needs it accepted (interactively
or with ``--accept-licences``). ``locate`` scans an A1111 or ComfyUI install people already have
and remembers it in the settings, so nothing is downloaded twice. Exit status as for the rest of
the CLI: 0 ok, 1 failures, 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from app.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from app.models import remove, verify
from app.store.settings import load_settings, save_settings
from pipeline.errors import Cancelled, ModelError
from pipeline.models.store import (
    ModelEntry,
    entry_by_id,
    find_entry,
    human_size,
    is_link,
    is_verified,
    load_manifest,
    locate,
    search_roots,
)

__all__ = ["add_models_parser", "cmd_models", "model_dirs_from"]


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser(
        "models",
        help="list, download, verify, locate or remove the creative mode's model files",
        description="The model files of creative mode: Clarity's checkpoints, VAE, ControlNet, "
        "LoRAs and embedding. Files you already have (an A1111 or ComfyUI install) are found "
        "with `locate` or --models DIR; nothing is downloaded unless you ask.",
    )
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    def with_dirs(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--models",
            action="append",
            default=[],
            metavar="DIR",
            help="also look in this folder (repeatable)",
        )
        return parser

    listing = with_dirs(actions.add_parser("list", help="every model and where it is"))
    listing.add_argument("--details", action="store_true", help="purpose, page and hash source")

    get = with_dirs(actions.add_parser("download", help="download models (shows licences first)"))
    get.add_argument("targets", nargs="*", metavar="ID|URL", help="model ids (see list) or links")
    get.add_argument("--all-required", action="store_true", help="every model Clarity needs")
    get.add_argument(
        "--accept-licences", action="store_true", help="accept the licences without asking"
    )
    get.add_argument(
        "--role",
        choices=("lora", "checkpoint", "vae", "controlnet", "embedding", "upscaler"),
        help="what a downloaded link is (default lora, as Clarity's lora_links)",
    )
    get.add_argument("--no-progress", action="store_true", help="no progress bar")

    check = with_dirs(actions.add_parser("verify", help="re-hash the model files found"))
    check.add_argument("ids", nargs="*", metavar="ID", help="models to check (default: all found)")

    find = actions.add_parser("locate", help="scan a folder (A1111, ComfyUI) and remember it")
    find.add_argument("folder", type=Path, metavar="DIR")
    find.add_argument("--by-hash", action="store_true", help="also find renamed files (slow)")
    find.add_argument("--no-remember", action="store_true", help="do not add it to the settings")

    drop = actions.add_parser("remove", help="delete a downloaded model from Clarifier's folder")
    drop.add_argument("target", metavar="ID|URL")


def model_dirs_from(extra: Sequence[str]) -> list[str]:
    """``--models`` folders (checked, absolute), then the settings' ``model_dirs``."""
    dirs: list[str] = []
    for raw in extra:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise UsageError(f"--models {raw}: no such folder")
        dirs.append(str(path.resolve()))
    return dirs + [d for d in load_settings().model_dirs if d not in dirs]


def _entry(text: str) -> ModelEntry:
    entry = entry_by_id(text)
    if entry is None:
        known = ", ".join(e.id for e in load_manifest())
        raise UsageError(f"unknown model {text!r}; known models: {known} (or give an http(s) link)")
    return entry


# --- list -------------------------------------------------------------------------------------
def _nc_flag(entry: ModelEntry) -> str:
    if entry.non_commercial:
        return "NC"
    return "-" if entry.licence_verified else "?"


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    roots = search_roots(model_dirs_from(args.models))
    print(f"{'ID':30} {'ROLE':10} {'SIZE':>10}  {'LICENCE':18} {'NC':2}  STATE", file=out)
    for entry in load_manifest():
        path = find_entry(entry, roots)
        state = "missing"
        if path is not None:
            state = f"{'verified' if is_verified(entry, path) else 'found at'} {path}"
        licence = entry.licence if entry.licence_verified else "unverified"
        mark = "*" if entry.required else " "
        print(
            f"{entry.id + mark:30} {entry.role:10} {entry.size_text:>10}  {licence[:18]:18} "
            f"{_nc_flag(entry):2}  {state}",
            file=out,
        )
        if args.details:
            print(f"{'':32}{entry.purpose}", file=out)
            print(f"{'':32}page: {entry.page}  licence: {entry.licence}", file=out)
            print(f"{'':32}hash: {entry.hash_source}", file=out)
    print(
        "* used by Clarity's defaults. NC: non-commercial licence; ?: licence not verified, "
        "read the model page (--details).",
        file=out,
    )
    print("Searched: " + (", ".join(map(str, roots)) or "nothing yet"), file=out)
    return EXIT_OK


# --- download ---------------------------------------------------------------------------------
class _Bar:
    """A byte progress line on a terminal; nothing elsewhere."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self.stream, self.name = stream, name
        self.started = self.last = time.monotonic()
        self.first: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = done  # a resumed download starts part-way
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.started, 1e-3)
        text = f"{self.name}  {human_size(done)}"
        if total:
            filled = int(24 * done / total)
            text += (
                f" / {human_size(total)}  {'█' * filled}{'░' * (24 - filled)} {done / total:4.0%}"
            )
        self.stream.write(f"\r\x1b[2K{text}  {human_size(int(rate))}/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()


def _confirm(entries: Sequence[ModelEntry], args: argparse.Namespace, out: TextIO) -> bool:
    print("Licences of the models to download:", file=out)
    for entry in entries:
        nc = "  NON-COMMERCIAL USE ONLY" if entry.non_commercial else ""
        unsure = "" if entry.licence_verified else " (not verified: read the page)"
        print(f"  {entry.id} ({entry.size_text}): {entry.licence}{unsure}{nc}", file=out)
        print(f"    {entry.licence_url}", file=out)
    total = sum(e.size or 0 for e in entries)
    print(f"In all about {human_size(total)}.", file=out)
    if args.accept_licences:
        return True
    if not sys.stdin.isatty():
        raise UsageError("accepting the licences needs a terminal; add --accept-licences")
    answer = input("Accept these licences and download? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _cmd_download(args: argparse.Namespace, out: TextIO) -> int:
    links = [t for t in args.targets if is_link(t)]
    entries = [_entry(t) for t in args.targets if not is_link(t)]
    if args.all_required:
        entries += [e for e in load_manifest() if e.required]
    entries = list(dict.fromkeys(entries))
    if not entries and not links:
        raise UsageError(
            "name the models to download (see `clarifier models list`) or --all-required"
        )
    roots = search_roots(model_dirs_from(args.models))
    wanted = []
    for entry in entries:
        path = find_entry(entry, roots)
        if path is not None:
            print(f"have  {entry.id} at {path}", file=out)
        else:
            wanted.append(entry)
    if wanted and not _confirm(wanted, args, out):
        print("Nothing downloaded.", file=out)
        return EXIT_FAILED
    # Here, not at the top: httpx and the retry policy load only when something is downloaded,
    # so building the parser (every clarifier command) stays light.
    from app.models.download import download

    failed = False
    show = not args.no_progress and sys.stderr.isatty()
    for target in [*wanted, *links]:
        name = target.id if isinstance(target, ModelEntry) else target
        bar = _Bar(sys.stderr, name) if show else None
        try:
            path = download(target, role=args.role, accept_licence=True, progress=bar)
        except (Cancelled, KeyboardInterrupt):
            print(f"\nstopped {name}; run the same command to resume", file=out)
            return EXIT_INTERRUPTED
        except ModelError as exc:
            failed = True
            print(f"FAIL  {name}: {exc}", file=out)
            continue
        finally:
            if bar is not None:
                bar.close()
        print(f"ok    {name} → {path}", file=out)
    return EXIT_FAILED if failed else EXIT_OK


# --- verify, locate, remove -------------------------------------------------------------------
def _cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    dirs = model_dirs_from(args.models)
    chosen = [_entry(i) for i in args.ids] or load_manifest()
    failed = False
    for entry in chosen:
        result = verify(entry, dirs)
        if result.status == "missing":
            if args.ids:
                failed = True
                print(f"miss  {entry.id}: not found", file=out)
            continue
        failed |= result.status == "mismatch"
        tag = {"verified": "ok  ", "unchecked": "??  ", "mismatch": "BAD "}[result.status]
        print(f"{tag}  {entry.id} {result.path}: {result.detail}", file=out)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_locate(args: argparse.Namespace, out: TextIO) -> int:
    folder = args.folder.expanduser()
    if not folder.is_dir():
        raise UsageError(f"{args.folder}: no such folder")
    report = locate(folder, by_hash=args.by_hash)
    print(f"{folder.resolve()} ({report.layout}):", file=out)
    for entry, path in report.found:
        print(f"  found {entry.id} at {path}", file=out)
    missing = [e.id for e in load_manifest() if e not in {f[0] for f in report.found}]
    if missing:
        print(f"  not there: {', '.join(missing)}", file=out)
    print(f"  {report.loras} LoRA file(s), {report.embeddings} embedding file(s)", file=out)
    if not report.found and not report.loras and not report.embeddings:
        print("Nothing usable found; not remembered.", file=out)
        return EXIT_FAILED
    if not args.no_remember:
        settings = load_settings()
        where = str(folder.resolve())
        if where not in settings.model_dirs:
            save_settings(dataclasses.replace(settings, model_dirs=(*settings.model_dirs, where)))
        print(f"Remembered: creative runs will look in {where}.", file=out)
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    target = args.target if is_link(args.target) else _entry(args.target)
    try:
        removed = remove(target)
    except ModelError as exc:
        sys.stderr.write(f"clarifier: {exc}\n")
        return EXIT_FAILED
    for path in removed:
        print(f"removed {path}", file=out)
    if not removed:
        print(f"forgot the recorded hash of {args.target}", file=out)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    commands = {
        "list": _cmd_list,
        "download": _cmd_download,
        "verify": _cmd_verify,
        "locate": _cmd_locate,
        "remove": _cmd_remove,
    }
    try:
        return commands[args.action](args, sys.stdout)
    except UsageError as exc:
        sys.stderr.write(f"clarifier: error: {exc}\n")
        return EXIT_USAGE
    except ModelError as exc:
        sys.stderr.write(f"clarifier: {exc}\n")
        return EXIT_FAILED
