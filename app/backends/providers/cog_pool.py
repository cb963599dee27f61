"""Several Cog servers as one pool: what each can take now, and which job gets the next slot.

The Cog backend (:mod:`app.backends.providers.cog`) drives one or more servers. Each is asked
``GET /health-check`` (:func:`probe`): its status (``STARTING``, ``READY``, ``BUSY``,
``SETUP_FAILED``, ``DEFUNCT``, ``UNHEALTHY``) and, where the server reports it (Cog's Python
server with ``concurrency.max`` in ``cog.yaml``), ``"concurrency": {"max": M, "current": N}``.
A server's free capacity is ``M − N`` when reported; otherwise, as coglet reports a server with
spare slots ``READY`` and a full one ``BUSY`` (answering a prediction past its last slot with 409),
one while ``READY`` and none while ``BUSY``.

:class:`ServerPool` hands slots to jobs in arrival order (a job moved off a dead server goes
first): each round asks every server, then gives each waiting job, in order, the server with
the most free capacity, the fewest of this pool's own jobs breaking ties, then the order the
servers were listed in. A slot handed out but not yet used counts against the server until its
next answer. A job waits while any server may free up; it fails when every server has failed
for good (set-up failed, model process dead), or none has answered for ``reach_for`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.backends.base import ErrorKind, JobError
from app.backends.remote import body_of, object_of

__all__ = [
    "Claim",
    "CogServer",
    "ServerPool",
    "ServerState",
    "check_servers",
    "probe",
    "read_health",
]

WHO = "Your Cog server"  # the registry's label at the start of a sentence


class ServerState(enum.StrEnum):
    """What a server can do now, as the window shows it."""

    unknown = "unknown"  # not asked yet
    starting = "starting"  # loading its model
    ready = "ready"  # has a free slot
    busy = "busy"  # every slot taken
    unreachable = "unreachable"  # no answer (refused, timed out, not a Cog server's answer)
    failed = "failed"  # set-up failed, model process dead or unhealthy: it cannot run jobs


@dataclass(eq=False)
class CogServer:
    """One server of the pool and what its last health check said."""

    url: str
    sync: bool = False  # its webhooks cannot reach this machine: predictions are synchronous
    state: ServerState = ServerState.unknown
    capacity: int | None = None  # slots in all, when the server reports them
    in_use: int | None = None  # slots taken (by anyone), when the server reports them
    problem: str = ""  # why it is unreachable or failed, in words
    error: JobError | None = None  # the error a job gets when this is the only server left
    instance: str | None = None  # its set-up time: a new one means it restarted
    checked_at: float = 0.0  # monotonic time of the last answer (or failure to answer)
    down_since: float | None = None  # when it stopped answering
    holders: set[Claim] = field(default_factory=set)  # this pool's jobs placed here
    schema: tuple[str | None, dict[str, Any] | None] | None = None  # per instance, for the backend

    @property
    def reported_free(self) -> int:
        """Free slots as the server says (its own count includes every client's jobs)."""
        if self.state not in (ServerState.ready, ServerState.busy):
            return 0
        if self.capacity is not None and self.in_use is not None:
            return max(0, self.capacity - self.in_use)
        return 1 if self.state is ServerState.ready else 0

    @property
    def free(self) -> int:
        """Free slots, less those handed out that the server has not seen used yet."""
        unseen = sum(1 for c in self.holders if c.used_at is None or c.used_at > self.checked_at)
        return max(0, self.reported_free - unseen)

    def describe(self) -> str:
        """The state in a few words: "ready (1 of 2 slots free)", "unreachable: …"."""
        text = str(self.state)
        if self.state in (ServerState.ready, ServerState.busy) and self.capacity is not None:
            text += f" ({self.reported_free} of {self.capacity} slots free)"
        if self.problem and self.state in (ServerState.unreachable, ServerState.failed):
            text += f": {self.problem}"
        return text


def read_health(server: CogServer, body: Any, *, now: float | None = None) -> None:
    """Record a ``/health-check`` answer on ``server``."""
    server.checked_at = time.monotonic() if now is None else now
    server.problem, server.error = "", None
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        _failed(
            server,
            "it does not answer like a Cog server",
            JobError(
                ErrorKind.protocol,
                f"{server.url} does not answer like a Cog server (its /health-check has no "
                "status); check the address.",
                details={"server": server.url},
            ),
        )
        return
    server.down_since = None
    setup = body.get("setup")
    server.instance = str(setup.get("started_at")) if isinstance(setup, dict) else None
    concurrency = object_of(body.get("concurrency"))
    capacity, in_use = concurrency.get("max"), concurrency.get("current")
    if isinstance(capacity, int) and isinstance(in_use, int) and capacity >= 1:
        server.capacity, server.in_use = capacity, in_use
    else:
        server.capacity = server.in_use = None
    status = body["status"]
    if status == "READY":
        server.state = ServerState.ready
    elif status == "BUSY":
        server.state = ServerState.busy
    elif status == "STARTING":
        server.state = ServerState.starting
    elif status == "SETUP_FAILED":
        logs = str(object_of(setup).get("logs") or "").strip().splitlines()[-6:]
        tail = " | ".join(line.strip() for line in logs)[-600:] or "no logs"
        _failed(
            server,
            "its model could not be set up",
            JobError(
                ErrorKind.model_failed,
                f"{WHO} could not set up its model: {tail}. Fix it and restart the server.",
                details={"setup_logs": logs, "server": server.url},
            ),
        )
    elif status == "DEFUNCT":
        _failed(
            server,
            "its model process has died",
            JobError(
                ErrorKind.model_failed,
                f"{WHO}'s model process has died (DEFUNCT); restart the server.",
                details={"server": server.url},
            ),
        )
    elif status == "UNHEALTHY":
        _failed(
            server,
            "it reports itself unhealthy",
            JobError(
                ErrorKind.transient,
                f"{WHO} reports itself UNHEALTHY.",
                details={"server": server.url},
            ),
        )
    else:  # SHUTTING_DOWN, or a status a newer Cog adds: nothing can be sent there now
        _unreachable(server, f"it reports {status}", server.checked_at)


def _failed(server: CogServer, problem: str, error: JobError) -> None:
    """The server answers but cannot run jobs until someone fixes it."""
    server.state, server.problem, server.error = ServerState.failed, problem, error
    server.down_since = None


def _unreachable(server: CogServer, problem: str, now: float) -> None:
    server.state, server.problem, server.error = ServerState.unreachable, problem, None
    server.checked_at = now
    server.down_since = server.down_since or now


async def probe(
    client: httpx.AsyncClient,
    server: CogServer,
    *,
    headers: Mapping[str, str] | None = None,
    limit: float = 5.0,
) -> None:
    """Ask ``server`` how it is, once, waiting ``limit`` seconds at most (a pool asks again on
    its own schedule), and record the answer."""
    try:
        response = await client.get(
            f"{server.url}/health-check", headers=dict(headers or {}), timeout=limit
        )
    except httpx.ConnectError:
        _unreachable(server, "connection refused", time.monotonic())
        return
    except httpx.TimeoutException:
        _unreachable(server, f"no answer in {limit:g} s", time.monotonic())
        return
    except httpx.HTTPError as exc:
        _unreachable(server, f"the connection failed ({type(exc).__name__})", time.monotonic())
        return
    code = response.status_code
    if code in (401, 403):
        server.checked_at = time.monotonic()
        _failed(
            server,
            "it refused the API key",
            JobError(
                ErrorKind.auth,
                f"{server.url} refused the API key (HTTP {code}); check the key set for your "
                "Cog servers.",
                details={"server": server.url},
            ),
        )
        return
    if code == 404:
        server.checked_at = time.monotonic()
        _failed(
            server,
            "no /health-check: not a Cog server?",
            JobError(
                ErrorKind.protocol,
                f"{server.url} does not answer like a Cog server (no /health-check); check the "
                "address.",
                details={"server": server.url},
            ),
        )
        return
    body = body_of(response)
    if code >= 500 and not isinstance(body, dict):
        _unreachable(server, f"HTTP {code}", time.monotonic())
        return
    read_health(server, body)


async def check_servers(
    urls: Sequence[str],
    *,
    api_key: str | None = None,
    limit: float = 3.0,
    client: httpx.AsyncClient | None = None,
) -> list[CogServer]:
    """Every server's state now, all asked at once, each for ``limit`` seconds at most: what
    the window lists."""
    servers = [CogServer(url.rstrip("/")) for url in urls]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        await asyncio.gather(*(probe(client, s, headers=headers, limit=limit) for s in servers))
    return servers


@dataclass(eq=False)
class Claim:
    """One job's place in the queue and, once granted, its slot on a server."""

    urgent: bool = False  # moved off a server that died: served before new jobs
    since: float = field(default_factory=time.monotonic)
    server: CogServer | None = None
    used_at: float | None = None  # when its prediction was sent to the server


class ServerPool:
    """Hands the servers' free slots to waiting jobs (see the module's notes).

    ``ask`` asks one server how it is (the backend's :func:`probe`, with its key); ``poll`` is
    how often waiting jobs ask again; ``reach_for`` is read each time it is needed (a live
    backend's setting may change)."""

    def __init__(
        self,
        servers: Iterable[CogServer],
        ask: Callable[[CogServer], Awaitable[object]],
        *,
        poll: float = 1.0,
        reach_for: Callable[[], float] = lambda: 120.0,
    ) -> None:
        self.servers = list(servers)
        if not self.servers:
            raise ValueError("a Cog pool needs at least one server")
        self._ask = ask
        self.poll = poll
        self._reach_for = reach_for
        self._queue: list[Claim] = []
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._dirty = True  # something changed since the last round: ask again now
        self._last_round = float("-inf")

    # --- joining, leaving ---------------------------------------------------------------------
    def enqueue(self, *, urgent: bool = False) -> Claim:
        """A new place in the queue; urgent ones go after the urgent ones already waiting."""
        claim = Claim(urgent=urgent)
        at = sum(1 for c in self._queue if c.urgent) if urgent else len(self._queue)
        self._queue.insert(at, claim)
        self._touch()
        return claim

    def release(self, claim: Claim | None) -> None:
        """The job is done with its slot (or gives up its place); safe to call twice."""
        if claim is None:
            return
        if claim in self._queue:
            self._queue.remove(claim)
        if claim.server is not None:
            claim.server.holders.discard(claim)
            claim.server = None
        self._touch()

    def used(self, claim: Claim) -> None:
        """The claim's prediction was sent: from the server's next answer on, it counts it."""
        claim.used_at = time.monotonic()

    def lost(self, server: CogServer, problem: str) -> None:
        """A request to ``server`` failed for good: take it out until it answers again."""
        _unreachable(server, problem, time.monotonic())
        self._touch()

    def _touch(self) -> None:
        self._dirty = True
        self._changed.set()
        self._changed = asyncio.Event()

    # --- waiting ------------------------------------------------------------------------------
    async def wait(self, claim: Claim, within: float | None = None) -> CogServer | None:
        """The server granted to ``claim``, waiting up to ``within`` seconds (None: as long as
        any server may free up); None when the time ran out (the claim keeps its place).
        Raises the JobError that ends the job when no server can take it."""
        deadline = None if within is None else time.monotonic() + within
        while claim.server is None:
            if claim not in self._queue:
                raise RuntimeError("waiting on a claim that left the queue")
            changed = self._changed
            async with self._lock:
                if claim.server is None and (
                    self._dirty or time.monotonic() - self._last_round >= self.poll
                ):
                    await self._round()
            if claim.server is not None:
                break
            error = self._hopeless(claim)
            if error is not None:
                self.release(claim)
                raise error
            left = self.poll if deadline is None else min(self.poll, deadline - time.monotonic())
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                pass
        return claim.server

    async def refresh(self) -> None:
        """Ask every server how it is now, at the same time."""
        await asyncio.gather(*(self._ask(server) for server in self.servers))

    async def _round(self) -> None:
        self._dirty = False
        await self.refresh()
        self._last_round = time.monotonic()
        granted = False
        for claim in list(self._queue):
            server = self.best()
            if server is None:
                break
            claim.server = server
            server.holders.add(claim)
            self._queue.remove(claim)
            granted = True
        if granted:
            self._changed.set()
            self._changed = asyncio.Event()

    def best(self) -> CogServer | None:
        """The server the next job should go to, or None while none has a free slot."""
        ranked = [
            (-server.free, len(server.holders), index, server)
            for index, server in enumerate(self.servers)
            if server.free > 0
        ]
        return min(ranked, key=lambda r: r[:3])[3] if ranked else None

    def _hopeless(self, claim: Claim) -> JobError | None:
        states = [s.state for s in self.servers]
        if all(state is ServerState.failed for state in states):
            kinds = {s.error.kind for s in self.servers if s.error is not None}
            kind = kinds.pop() if len(kinds) == 1 else ErrorKind.model_failed
            return self._combined(kind, "can run jobs")
        reachable = any(
            state in (ServerState.ready, ServerState.busy, ServerState.starting) for state in states
        )
        if not reachable and time.monotonic() - claim.since >= self._reach_for():
            return self._combined(ErrorKind.transient, "answers")
        return None

    def _combined(self, kind: ErrorKind, what: str) -> JobError:
        if len(self.servers) == 1:
            server = self.servers[0]
            if server.error is not None:
                return server.error
            return JobError(
                kind,
                f"Cannot reach your Cog server at {server.url} ({server.problem}); check that "
                "it is running and that the address in the settings is right.",
                details={"servers": {server.url: server.problem}},
            )
        listed = "; ".join(f"{s.url}: {s.problem or s.state}" for s in self.servers)
        return JobError(
            kind,
            f"None of your {len(self.servers)} Cog servers {what} ({listed}). Nothing was lost: "
            "retry the job once one is back.",
            details={"servers": {s.url: s.problem or str(s.state) for s in self.servers}},
        )

    def waiting_message(self) -> str:
        """Why a job waits, in words."""
        if len(self.servers) == 1:
            server = self.servers[0]
            if server.state is ServerState.starting:
                return f"{WHO} is still starting; waiting"
            if server.state in (ServerState.unreachable, ServerState.failed):
                return f"{WHO} cannot be reached ({server.problem}); waiting for it"
            return f"{WHO} is busy; waiting"
        counts: dict[str, int] = {}
        for server in self.servers:
            counts[str(server.state)] = counts.get(str(server.state), 0) + 1
        told = ", ".join(f"{n} {state}" for state, n in counts.items())
        return f"Waiting for a free slot on your Cog servers ({told})"
