"""``clarifier keys`` and ``clarifier jobs``: provider keys, and the run history from a terminal.

``keys set PROVIDER`` stores a key in the OS keyring (read from the terminal without echo, or
from stdin), ``keys list`` shows which providers have one (masked) and where it comes from.

``jobs list`` shows the history; ``jobs resume`` finishes what an interrupted session left
running at a provider (it polls and downloads; it never submits again); ``jobs retry`` runs an
ended job again from its last checkpoint; ``jobs resolve`` decides a job whose submit got no
answer (``--resubmit`` sends it again, accepting that the provider may bill twice; ``--close``
gives it up); ``jobs forget`` removes a row.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
import time
from typing import Any

from app.jobs.controller import Job, JobController, JobEvent
from app.jobs.providers import PROVIDERS, ProviderPool, provider_class, provider_key_envs
from app.store.history import HistoryError, HistoryStore, RunRecord
from app.store.secrets import SecretsError, delete_key, find_key, set_key
from app.store.settings import load_settings

__all__ = ["add_jobs_parser", "add_keys_parser", "cmd_jobs", "cmd_keys", "open_history"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger(__name__)


def open_history() -> HistoryStore | None:
    """The history database, or None (with a warning) when it cannot be opened: a batch still
    runs, it is only not recorded."""
    try:
        return HistoryStore()
    except HistoryError as exc:
        print(f"clarifier: warning: {exc}; this run is not recorded", file=sys.stderr)
        return None


# --- keys -------------------------------------------------------------------------------------
def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="store or remove the hosted providers' API keys")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="which providers have a key, and where it comes from")
    for verb, text in (("set", "store a key in the OS keyring"), ("delete", "remove a stored key")):
        parser = actions.add_parser(verb, help=text)
        parser.add_argument("provider", choices=sorted(PROVIDERS))


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in sorted(PROVIDERS):
            cls = provider_class(name)
            envs = provider_key_envs(name)
            info = find_key(name, envs)
            if not cls.needs_key:
                state = "no key needed"
            elif info.key:
                state = f"{info.masked} (from {info.source})"
            else:
                state = "not set" + (f"; {info.problem}" if info.problem else "")
            print(f"{name:10} {state:40} env: {', '.join(envs)}")
        return EXIT_OK
    if args.action == "set":
        if sys.stdin.isatty():
            key = getpass.getpass(f"{args.provider} API key (not shown): ")
        else:
            key = sys.stdin.readline()
        try:
            set_key(args.provider, key)
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


# --- jobs -------------------------------------------------------------------------------------
def add_jobs_parser(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="the run history: list, resume, retry, resolve, forget")
    actions = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="recent runs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--search", help="match a path, prompt, model, seed or request id")
    listing.add_argument("--state", action="append", help="only this state (repeatable)")
    listing.add_argument("--json", action="store_true", help="one JSON object per run")
    actions.add_parser("resume", help="finish the jobs an interrupted session left running")
    retry = actions.add_parser("retry", help="run an ended job again from its last checkpoint")
    retry.add_argument("id", help="the run id (a unique prefix is enough)")
    resolve = actions.add_parser("resolve", help="decide a job whose submit got no answer")
    resolve.add_argument("id")
    choice = resolve.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--resubmit", action="store_true", help="send it again (the provider may bill twice)"
    )
    choice.add_argument("--close", action="store_true", help="give it up")
    forget = actions.add_parser("forget", help="remove a run from the history (files stay)")
    forget.add_argument("id")


def _find(store: HistoryStore, prefix: str) -> RunRecord:
    matches = store.with_prefix(prefix.strip())
    if len(matches) != 1:
        what = "no run" if not matches else "more than one run"
        raise LookupError(f"{what} with an id starting {prefix!r}")
    return matches[0]


def _line(record: RunRecord) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created))
    where = record.backend + (f"/{record.model}" if record.model else "")
    cost = f"  cost {record.cost:g} {record.cost_unit}".rstrip() if record.cost is not None else ""
    remote = f"  request {record.remote_id}" if record.remote_id else ""
    text = (
        f"{record.id[:10]}  {when}  {record.state:14} {where:34} seed {record.seed}\n"
        f"            {record.input} → {record.output}{remote}{cost}"
    )
    if record.state not in ("succeeded",) and record.message:
        text += f"\n            {record.message}"
    return text


def _job_line(job: Job) -> str:
    if job.outcome is not None:
        return f"ok    {job.input} → {job.outcome.output}"
    return f"{job.state:5} {job.input}: {job.message}"


async def _drive(store: HistoryStore, start: Any) -> int:
    settings = load_settings()
    controller = JobController(ProviderPool(settings), store=store)

    def on_event(event: JobEvent) -> None:
        if event.state.terminal or event.state == "submit-unknown":
            print(_job_line(event.job), flush=True)

    controller.add_listener(on_event)
    jobs = start(controller)
    try:
        await controller.join()
    finally:
        await controller.aclose()
    return EXIT_OK if all(j.state == "succeeded" for j in jobs) else EXIT_FAILED


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        store = HistoryStore()
    except HistoryError as exc:
        print(f"clarifier: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _jobs(args, store)
    except LookupError as exc:
        print(f"clarifier: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


def _jobs(args: argparse.Namespace, store: HistoryStore) -> int:
    if args.action == "list":
        records = store.list(states=args.state, search=args.search, limit=args.limit)
        for record in records:
            if args.json:
                data = {k: v for k, v in vars(record).items() if k not in ("options",)}
                print(json.dumps(data, ensure_ascii=False))
            else:
                print(_line(record))
        if not records and not args.json:
            print("no runs recorded yet")
        return EXIT_OK
    if args.action == "forget":
        record = _find(store, args.id)
        store.delete(record.id)
        print(f"forgot run {record.id[:10]} (its files were left in place)")
        return EXIT_OK
    if args.action == "resume":
        pending = store.unfinished()
        if not pending:
            print("nothing to resume")
            return EXIT_OK
        return asyncio.run(_drive(store, lambda c: c.resume()))
    record = _find(store, args.id)

    def start(controller: JobController) -> list[Job]:
        job = Job.from_record(record)
        controller.jobs[job.id] = job
        if args.action == "retry":
            return [controller.retry(job.id)]
        return [controller.resolve(job.id, resubmit=args.resubmit)]

    try:
        return asyncio.run(_drive(store, start))
    except ValueError as exc:
        print(f"clarifier: {exc}", file=sys.stderr)
        return EXIT_USAGE
