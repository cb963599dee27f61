"""A Cog server's ``GET /health-check``, for the pool's reading of it and the window's list.

Predictions are tested against the real server (coglet) in ``tests/backends/test_cog*.py``; this
double only answers the health check, in the shape of Cog's Python server: ``status``, the
``setup`` record (its ``started_at`` tells a restart) and, when set, ``concurrency`` with
``max`` and ``current`` (what Cog's Python server reports for a model with ``concurrency.max``
in ``cog.yaml``; coglet 0.23 reports no concurrency: a full server says ``BUSY``). Set
``status`` and ``concurrency`` at any time; ``inject`` a delay to make it slow.
"""

from __future__ import annotations

from tests.doubles.http_double import LoopbackDouble, Req, Resp

__all__ = ["CogHealthDouble"]


class CogHealthDouble(LoopbackDouble):
    name = "cog"

    def __init__(
        self,
        status: str = "READY",
        concurrency: tuple[int, int] | None = None,
        *,
        started_at: str = "2026-01-01T00:00:00.000000+00:00",
    ) -> None:
        super().__init__()
        self.status = status
        self.concurrency = concurrency  # (max, current)
        self.started_at = started_at
        self.setup_logs = "loading the upscaler\n"
        self.route("GET", r"/health-check", self._health)

    def _health(self, req: Req) -> Resp:
        body: dict[str, object] = {
            "status": self.status,
            "setup": {
                "started_at": self.started_at,
                "completed_at": self.started_at,
                "status": "failed" if self.status == "SETUP_FAILED" else "succeeded",
                "logs": self.setup_logs,
            },
        }
        if self.concurrency is not None:
            most, current = self.concurrency
            body["concurrency"] = {"max": most, "current": current}
        return Resp.json(200, body)
