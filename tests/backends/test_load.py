"""200 jobs across the five hosted providers' doubles, with faults on their reads: every result
arrives, no provider bills a job twice, and no provider's request budget is exceeded."""

from __future__ import annotations

from pathlib import Path

from tests.backends.load import run_load


def test_200_jobs_across_providers_lose_nothing_and_keep_every_budget(tmp_path: Path) -> None:
    figures = run_load(tmp_path, 200, limit=40, window=1.0)
    for name, numbers in figures["providers"].items():
        assert numbers["jobs"] == 40, name
        # One submit per job, except where the protocol re-sends safely (idempotency keys).
        assert numbers["submits"] >= 40 and numbers["peak_per_window"] <= 40, (name, numbers)
    assert figures["polls"] >= 200
