"""Benchmark of the job controller's own cost per poll against the hosted providers' doubles.

Runs many jobs across all five provider doubles at once (short poll cadence, long-running jobs,
generous budgets) and measures the CPU time of the event-loop thread, which is everything the
app does per poll: the controller, the backend, the request budget, httpx, the history writes.
The doubles run in their own threads and are not counted, nor is the saving of outputs (worker
threads). In the same run, a bare ``httpx`` GET loop against the same doubles gives the floor
any HTTP client pays, and the ratio of the two says what the controller adds.

    .venv/bin/python -m tests.bench.bench_remote              # 100 jobs, about 20 s
    .venv/bin/python -m tests.bench.bench_remote --jobs 400 --run-s 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.store.history import HistoryStore  # noqa: E402
from tests.backends.load import check, make_inputs, run_fleet, start_fleet  # noqa: E402


async def _bare_gets(urls: list[str], total: int, concurrency: int) -> float:
    """CPU seconds of this thread per plain GET, the same concurrency as the jobs."""
    async with httpx.AsyncClient() as client:
        await client.get(urls[0])  # warm the connection pool
        queue = [urls[i % len(urls)] for i in range(total)]
        start = time.thread_time()

        async def worker() -> None:
            while queue:
                await client.get(queue.pop())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.thread_time() - start) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--run-s", type=float, default=2.0, help="how long each job runs")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    fleet = start_fleet(limit=100_000, window=1.0, run_s=args.run_s, faults=False)
    try:
        store = HistoryStore(tmp / "history.sqlite3")
        inputs = make_inputs(tmp / "in", args.jobs)
        cpu0 = time.thread_time()
        _, (jobs, polls), elapsed = asyncio.run(run_fleet(fleet, inputs, tmp / "out", store))
        cpu = time.thread_time() - cpu0
        figures = check(fleet, jobs, 1.0, 100_000)
        requests = sum(p["requests"] for p in figures.values())
        # The floor: plain GETs of the same doubles' CDN files (no JSON, no app code).
        urls = [f"{d.url}/cdn/none" for d in fleet.doubles.values()]
        bare = asyncio.run(_bare_gets(urls, 2000, concurrency=min(args.jobs, 80)))
    finally:
        fleet.stop()
    per_request = cpu / requests
    print(
        f"jobs                    {args.jobs} across {len(fleet.doubles)} providers, all succeeded"
    )
    print(f"wall time               {elapsed:.1f} s")
    print(f"polls / API requests    {polls} / {requests}")
    print(f"loop-thread CPU         {cpu:.2f} s ({cpu / elapsed:.0%} of one core)")
    print(f"CPU per API request     {per_request * 1e6:.0f} µs (controller + backend + httpx)")
    print(f"CPU per bare httpx GET  {bare * 1e6:.0f} µs")
    print(f"ratio                   {per_request / bare:.2f}× a bare GET")
    print(f"implied ceiling         {1 / per_request:.0f} requests/s on one core")


if __name__ == "__main__":
    main()
