"""``clarifier jobs``: the run history from a terminal.

``jobs list`` shows the history; ``jobs resume`` finishes what an interrupted session left
running at a provider (it polls and downloads; it never submits again); ``jobs retry`` runs an
ended job again from its last checkpoint; ``jobs resolve`` decides a job whose submit got no
answer (``--resubmit`` sends it again, accepting that the provider may bill twice; ``--close``
gives it up); ``jobs forget`` removes a row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from app.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from app.jobs.controller import Job, JobController, JobEvent
from app.store.history import HistoryError, HistoryStore, RunRecord
from app.store.settings import load_settings

__all__ = ["add_jobs_parser", "cmd_jobs"]


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
    from app.jobs.providers import ProviderPool  # httpx: only for the commands that run jobs

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
