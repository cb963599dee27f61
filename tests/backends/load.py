"""Many jobs across every hosted provider's double at once: shared by the load test and the
controller-overhead benchmark.

Each provider gets a request budget with a short window (so the budget, not the scenario, sets
the pace), faults on its reads (5xx bursts, 429 storms, HTML error pages), and jobs that take a
few polls. Afterwards :func:`check` proves nothing was lost, nobody was billed twice, and no
double saw more requests in any window than its budget allows.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from app.backends import registry
from app.backends.capabilities import restrict
from app.backends.remote import PollCadence, RequestBudget
from app.jobs import JobController, JobState
from app.jobs.providers import ProviderPool
from app.store.history import HistoryStore
from app.store.settings import Settings
from pipeline.params import UpscaleParams
from tests.doubles.http_double import LoopbackDouble, Resp, Scenario

# name → (double module, class, key variable, key, submit path regex, poll path regex)
PROVIDERS: dict[str, tuple[str, str, str, str, str, str]] = {
    "segmind": ("segmind", "SegmindDouble", "SEGMIND_API_KEY", "SG_0123456789abcdef",
                r"^/v2/clarity-upscaler$", r"^/v2/requests/"),
    "apiframe": ("apiframe", "ApiframeDouble", "CLARIFIER_APIFRAME_API_KEY", "afk_test",
                 r"^/v2/images/upscale$", r"^/v2/jobs/"),
    "wireflow": ("wireflow", "WireflowDouble", "CLARIFIER_WIREFLOW_API_KEY", "sk-test",
                 r"/execute$", r"/executions/"),
    "replicate": ("replicate", "ReplicateDouble", "REPLICATE_API_TOKEN", "r8_test_token",
                  r"^/v1/predictions$", r"^/v1/predictions/"),
    "fal": ("fal", "FalDouble", "FAL_KEY", "fal-test-id:fal-test-secret",
            r"^/fal-ai/clarity-upscaler$", r"/requests/"),
}  # fmt: skip


@dataclass
class Fleet:
    doubles: dict[str, LoopbackDouble]
    budgets: dict[str, RequestBudget]
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for double in self.doubles.values():
            double.stop()


def start_fleet(*, limit: int, window: float, run_s: float = 0.3, faults: bool = True) -> Fleet:
    doubles: dict[str, LoopbackDouble] = {}
    env: dict[str, str] = {}
    for name, (module, cls, key_env, key, _, poll) in PROVIDERS.items():
        mod = importlib.import_module(f"tests.doubles.{module}")
        if name == "wireflow":  # accounts with credit for every job
            double = mod.WireflowDouble(keys={key: mod.WfKey(credits=10**6)})
        elif name == "apiframe":
            double = mod.ApiframeDouble(accounts={key: mod.Account(credits=10**6)})
        elif name == "segmind":
            double = mod.SegmindDouble(balance=1e6)
        else:
            double = getattr(mod, cls)()
        # The doubles enforce the same plan the budgets keep to: an overshoot would earn 429s.
        if name == "wireflow":
            double.plan(requests=limit, executions=limit, window=window)
        elif name == "apiframe":
            double.rate_limit(limit, window)
        double.start()
        double.default_scenario = Scenario(queue_s=0.05, run_s=run_s)
        if faults:
            double.inject("GET", poll, "respond", times=6, response=Resp.json(503, {"error": "x"}))
            double.inject("GET", poll, "respond", times=2, response=Resp.html(502, "Bad Gateway"))
            double.inject(
                "GET",
                poll,
                "respond",
                times=3,
                response=Resp.json(429, {"error": "slow down"}, {"Retry-After": "0.2"}),
            )
        doubles[name] = double
        env[key_env] = key
        env[f"CLARIFIER_{name.upper()}_BASE_URL"] = double.url
        if name == "fal":
            env["CLARIFIER_FAL_STORAGE_URL"] = double.url
    budgets = {name: RequestBudget(limit, window) for name in PROVIDERS}
    budgets["wireflow-execute"] = RequestBudget(limit, window)
    return Fleet(doubles, budgets, env)


def make_pool(fleet: Fleet, *, cadence: float = 0.05, concurrency: int = 16) -> ProviderPool:
    overrides: dict[str, dict[str, Any]] = {
        name: {
            "budget": fleet.budgets[name],
            "cadence": PollCadence(cadence),
            "retry_base": 0.02,
            "concurrency": concurrency,
        }
        for name in PROVIDERS
    }
    overrides["wireflow"]["execute_budget"] = fleet.budgets["wireflow-execute"]
    settings = Settings(provider_concurrency=dict.fromkeys(PROVIDERS, concurrency))
    return ProviderPool(settings, env=fleet.env, overrides=overrides)


def make_inputs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"in{i:03d}.png"
        Image.new("RGB", (16 + i % 5, 12 + i % 3), (i % 256, 80, 160)).save(path)
        paths.append(path)
    return paths


async def run_fleet(
    fleet: Fleet, inputs: list[Path], out: Path, store: HistoryStore | None
) -> tuple[JobController, list[Any], float]:
    pool = make_pool(fleet)
    controller = JobController(pool, store=store, backoff=0.05, max_attempts=5)
    names = list(PROVIDERS)
    started = time.monotonic()
    # As the window sends them: a setting a backend cannot take (Wireflow's seed) left out.
    jobs = [
        controller.submit(
            path,
            out / names[i % len(names)] / f"{path.stem}.png",
            restrict(UpscaleParams(seed=i), names[i % len(names)]),
            backend=names[i % len(names)],
        )
        for i, path in enumerate(inputs)
    ]
    await controller.join()
    elapsed = time.monotonic() - started
    polls = sum(getattr(b, "polls", 0) for b in pool._backends.values())
    await controller.aclose()
    return controller, [jobs, polls], elapsed


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def check(fleet: Fleet, jobs: list[Any], window: float, limit: int) -> dict[str, Any]:
    """Nothing lost, nobody billed twice, no budget exceeded. Returns the figures."""
    lost = [j for j in jobs if j.state is not JobState.succeeded]
    assert not lost, [(j.backend, j.state, j.message) for j in lost[:5]]
    assert all(j.outcome.output.exists() for j in jobs)
    figures: dict[str, Any] = {}
    for name, double in fleet.doubles.items():
        _, _, _, _, submit, _ = PROVIDERS[name]
        mine = [j for j in jobs if j.backend == name]
        ids = {j.remote_id for j in mine}
        assert len(ids) == len(mine), f"{name}: two jobs share a remote id"
        # CDN downloads and fal's signed storage uploads go to other hosts, outside the API's
        # rate limits (and its budget).
        api = [s.real for s in double.log if not re.match(r"^/(cdn|upload)/", s.path)]
        peak = max_in_window(api, window)
        assert peak <= limit, f"{name}: {peak} requests in {window} s, budget {limit}"
        if not registry.backend_class(name).idempotent_submit:
            assert double.count("POST", submit) == len(mine), f"{name}: a job was submitted twice"
        figures[name] = {
            "jobs": len(mine),
            "submits": double.count("POST", submit),
            "requests": len(api),
            "peak_per_window": peak,
        }
    return figures


def run_load(tmp: Path, count: int, *, limit: int, window: float) -> dict[str, Any]:
    fleet = start_fleet(limit=limit, window=window)
    try:
        store = HistoryStore(tmp / "history.sqlite3")
        inputs = make_inputs(tmp / "in", count)
        _, (jobs, polls), elapsed = asyncio.run(run_fleet(fleet, inputs, tmp / "out", store))
        figures = check(fleet, jobs, window, limit)
        rows = store.list(limit=count + 10)
        assert len(rows) == count and all(r.state == "succeeded" for r in rows)
        return {"elapsed": elapsed, "polls": polls, "providers": figures}
    finally:
        fleet.stop()
