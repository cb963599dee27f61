"""A minimal provider protocol and its double, to test what every remote backend shares.

POST /jobs {image, scale} → 200 {"id", "status_url"}; GET /jobs/{id} → {"status":
queued|running|done|failed, "progress", "output", "error"}; POST /jobs/{id}/cancel. No
idempotency unless the double is told to honour ``Idempotency-Key``.
"""

from __future__ import annotations

import secrets

from app.backends.base import JobState
from app.backends.remote import PollCadence, RemoteBackend, RemoteStatus, Ticket
from tests.doubles.http_double import LoopbackDouble, Req, Resp, tiny_png


class ToyDouble(LoopbackDouble):
    name = "toy"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.jobs: dict[str, dict] = {}
        self.keys: dict[str, str] = {}
        self.honour_keys = False
        self.route("POST", r"/jobs", self.create)
        self.route("GET", r"/jobs/(?P<id>[^/]+)", self.get)
        self.route("POST", r"/jobs/(?P<id>[^/]+)/cancel", self.cancel)

    def create(self, req: Req) -> Resp:
        if req.header("x-key") != "secret":
            return Resp.json(401, {"error": "bad key"})
        key = req.header("idempotency-key")
        with self.lock:
            if self.honour_keys and key in self.keys:
                job_id = self.keys[key]
                return Resp.json(200, {"id": job_id, "status_url": f"{self.url}/jobs/{job_id}"})
            job_id = secrets.token_hex(6)
            self.jobs[job_id] = {
                "at": self.clock.now(),
                "scenario": self.next_scenario(),
                "canceled": False,
                "body": req.json(),
            }
            if key:
                self.keys[key] = job_id
        return Resp.json(200, {"id": job_id, "status_url": f"{self.url}/jobs/{job_id}"})

    def get(self, req: Req) -> Resp:
        job = self.jobs.get(req.match["id"])
        if job is None or self.clock.now() - job["at"] > 3600:
            return Resp.json(404, {"error": "not found"})
        if job["canceled"]:
            return Resp.json(200, {"status": "canceled"})
        scenario = job["scenario"]
        elapsed = self.clock.now() - job["at"]
        phase = scenario.phase(elapsed)
        body = {"status": phase, "progress": scenario.progress(elapsed)}
        if phase == "done":
            if "output" not in job:
                job["output"] = self.cdn_put(scenario.output or tiny_png(24, 20), ttl=3600)
            body["output"] = job["output"]
        if phase == "failed":
            body["error"] = scenario.fail
        return Resp.json(200, body)

    def cancel(self, req: Req) -> Resp:
        job = self.jobs.get(req.match["id"])
        if job is None:
            return Resp.json(404, {"error": "not found"})
        job["canceled"] = True
        return Resp.json(200, {})


class ToyBackend(RemoteBackend):
    name = "toy"
    label = "Toy"
    models = ("toy-1",)
    key_envs = ("TOY_KEY",)
    can_cancel = True
    cadence = PollCadence(0.02)

    def auth_headers(self) -> dict[str, str]:
        return {"x-key": self.api_key or ""}

    def map_params(self, params):
        return {"scale": params.scale_factor, "seed": params.seed}

    async def submit(self, fields, image, mask, ticket: Ticket) -> Ticket:
        headers = {"Idempotency-Key": ticket.key} if self.idempotent_submit else {}
        response = await self.http(
            "POST",
            "/jobs",
            during="submit",
            safe=self.idempotent_submit,
            json={**fields, "image": image},
            headers=headers,
        )
        body = await self.json_of(response)
        ticket.remote_id = body["id"]
        ticket.urls["status"] = body["status_url"]
        return ticket

    async def poll(self, ticket: Ticket) -> RemoteStatus:
        body = await self.json_of(await self.http("GET", ticket.urls["status"], during="poll"))
        states = {
            "queued": JobState.queued,
            "running": JobState.running,
            "done": JobState.succeeded,
            "failed": JobState.failed,
            "canceled": JobState.canceled,
        }
        state = states[body["status"]]
        error = self.failed(body.get("error") or "") if state is JobState.failed else None
        outputs = (body["output"],) if body.get("output") else ()
        return RemoteStatus(
            state, body["status"], progress=body.get("progress"), outputs=outputs, error=error
        )

    async def cancel(self, ticket: Ticket) -> bool:
        await self.http("POST", f"/jobs/{ticket.remote_id}/cancel", during="cancel", safe=True)
        return True
