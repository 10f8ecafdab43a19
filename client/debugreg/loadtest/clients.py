"""A simulated client: one session, its own event stream, and what it believes it holds.

Scenarios subclass `Client` and write `step()`; the runner opens, steps and closes them. Every
load operation takes a ticket from the shared `Context` first, so a run stops at its operation
budget or its deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from debugreg import schema
from debugreg.loadtest.api import Api, Reply, Stream
from debugreg.loadtest.audit import Notice
from debugreg.loadtest.stats import Outcome
from debugreg.loadtest.transport import TransportError
from debugreg.priorities import priority_value

DATA_POOLS = {"x86_64": "dr", "arm64": "wrp", "ppc64": "dawr"}
SUBSCRIBE_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 15.0
ADDRESS_BASE = 0x1000_0000  # user space on every profile, far below x86's TASK_SIZE_MAX


@dataclass(frozen=True, slots=True)
class Host:
    """What the scenarios need to know of the daemon's host (GET /v1/host)."""

    profile: str
    cpus: int
    pool: str  # the pool that data watchpoints ("write") use
    slots: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Host:
        host = schema.Host.model_validate(data)
        pool = DATA_POOLS.get(host.profile) or next(iter(host.pools))
        return cls(host.profile, host.cpus, pool, host.pools[pool])


@dataclass
class Context:
    """What every client of one run shares."""

    apis: list[Api]  # one per group of `group` clients (see runner.engines)
    admin_key: str
    host: Host
    think_s: float
    ttl_s: float
    deadline: float  # time.monotonic() at which the load stops
    budget: int | None  # load operations to hand out in all; None: only the deadline counts
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    group: int = 1_000_000
    issued: int = 0
    notices: list[Notice] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)  # every session a client followed
    stream_failures: list[str] = field(default_factory=list)

    @property
    def api(self) -> Api:
        """The first group's: for the runner's own requests (snapshots)."""
        return self.apis[0]

    def api_for(self, index: int) -> Api:
        return self.apis[index // self.group % len(self.apis)]

    def done(self) -> bool:
        if self.stop.is_set():
            return True
        if time.monotonic() >= self.deadline or (
            self.budget is not None and self.issued >= self.budget
        ):
            self.stop.set()
            return True
        return False

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def take(self) -> bool:
        """A ticket for one load operation, or False once the run is over."""
        if self.done():
            return False
        self.issued += 1
        return True


class Client:
    """One session with its own stream. Subclasses implement `step()`."""

    role = "client"
    keeps_alive = True  # renewed by the runner; a client that lets leases lapse says False

    def __init__(self, ctx: Context, index: int, rng: random.Random) -> None:
        self.ctx = ctx
        self.index = index
        self.rng = rng
        self.api = ctx.api_for(index)
        self.session_id: str | None = None
        self.token = ""
        self.stream: Stream | None = None
        self.stream_task: asyncio.Task[None] | None = None
        self.holdings: dict[str, str] = {}  # live allocation id -> installed | waiting
        self.gone: set[str] = set()  # ids known terminal: late stream events must not revive them
        self.changed = asyncio.Event()
        self.closed = False  # the stream delivered this session's session_closed
        self.closed_at = 0.0  # when it did
        self.lost = False  # the daemon no longer knows the token (401)
        self.next_keepalive = 0.0
        self.expires_at = 0.0  # the lease's end as the daemon set it at open (its clock = ours)
        self.ttl_s = ctx.ttl_s
        self._addresses = 0

    # -- the session and its stream

    def grants(self) -> dict[str, Any]:
        """Session grants; anything here makes the session open with the admin key."""
        return {}

    async def open(self, *, ttl_s: float | None = None) -> bool:
        """Open a session and subscribe to its stream before anything is allocated."""
        grants = self.grants()
        self.ttl_s = ttl_s if ttl_s is not None else self.ctx.ttl_s
        body = schema.SessionRequest(
            name=f"loadtest-{self.role}-{self.index}", ttl_s=self.ttl_s, **grants
        ).model_dump(exclude_none=True)
        reply = await self.api.call(
            "open_session",
            "POST",
            "/v1/sessions",
            self.ctx.admin_key if grants else None,
            body=body,
        )
        if not reply.ok:
            return False
        self.session_id = str(reply.body["id"])
        self.token = str(reply.body["token"])
        self.expires_at = float(reply.body["expires_at"])
        self.closed = self.lost = False
        self.holdings.clear()
        # A random first renewal: sessions opened together in setup must not renew in lockstep.
        self.next_keepalive = time.monotonic() + self.rng.uniform(0.3, 1.0) * self.ttl_s / 3
        self.ctx.sessions.add(self.session_id)
        return await self.subscribe()

    async def setup(self) -> bool:
        """Before the load starts: open the session and subscribe."""
        return await self.open()

    async def subscribe(self) -> bool:
        """Follow this session's stream from the current event id: nothing of it is missed."""
        assert self.session_id is not None
        await self.unsubscribe()  # a client follows one stream at a time
        started = time.perf_counter()
        since = await self.event_id()
        stream = Stream(
            self.api.engine,
            f"/v1/sessions/{self.session_id}/events",
            self.token,
            self.on_event,
            since=since,
        )
        self.stream = stream
        self.stream_task = asyncio.create_task(stream.run(), name=f"stream-{self.session_id}")
        ready = asyncio.create_task(stream.ready.wait())
        await asyncio.wait(
            {ready, self.stream_task},
            timeout=SUBSCRIBE_TIMEOUT_S,
            return_when=asyncio.FIRST_COMPLETED,
        )
        ready.cancel()
        ok = stream.ready.is_set()
        outcome = Outcome.SUCCESS if ok else Outcome.ERROR
        self.api.recorder.record(
            "subscribe", time.perf_counter() - started, outcome, stream.failure or "timeout"
        )
        if not ok:
            self.ctx.stream_failures.append(f"{self.session_id}: {stream.failure or 'timeout'}")
        return ok

    async def event_id(self) -> int | None:
        """The committed event id this session's allocation list is consistent with, where a
        new stream starts (/healthz says only ok or not)."""
        assert self.session_id is not None
        path = f"/v1/allocations?session={self.session_id}&limit=1"
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            status, content = await self.api.engine.request("GET", path, headers, None)
            return int(json.loads(content)["event_id"]) if status == 200 else None
        except (TransportError, ValueError, KeyError):
            return None

    def on_event(self, data: dict[str, Any], received: float) -> None:
        """Track this session's notices; the audit checks them against the admin stream."""
        kind = data.get("type")
        alloc = data.get("allocation") or {}
        aid = str(alloc.get("id", ""))
        if kind == "evicted":
            self.ctx.notices.append(
                Notice(
                    str(data.get("session")),
                    aid,
                    int(data["id"]),
                    float(data["at"]),
                    received,
                )
            )
            if aid not in self.gone:
                if alloc.get("state") == "waiting":
                    self.holdings[aid] = "waiting"
                else:
                    self.holdings.pop(aid, None)
                    self.gone.add(aid)
        elif kind in ("installed", "reinstalled"):
            if aid not in self.gone:
                self.holdings[aid] = "installed"
        elif kind in ("released", "expired"):
            self.holdings.pop(aid, None)
            self.gone.add(aid)
        elif kind == "session_closed":
            self.closed = True
            self.closed_at = received
            if self.stream is not None:
                self.stream.finished = True
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait for this client's stream to make `predicate` true, at most `timeout_s`."""
        end = time.monotonic() + timeout_s
        while not predicate():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return predicate()
        return True

    async def close(self) -> None:
        """Close the session (releasing all it holds), then stop following its stream once the
        stream has shown the close: every notice before it has then arrived."""
        if self.session_id is not None and not self.closed and not self.lost:
            reply = await self.api.call(
                "close_session", "DELETE", f"/v1/sessions/{self.session_id}", self.token
            )
            if reply.ok or reply.status in (401, 404):
                await self.until(lambda: self.closed, CLOSE_TIMEOUT_S)
        await self.unsubscribe()

    async def unsubscribe(self) -> None:
        if self.stream_task is not None:
            self.stream_task.cancel()
            # gather, not a bare await: it absorbs the stream's cancellation, not ours
            await asyncio.gather(self.stream_task, return_exceptions=True)
            self.stream_task = None

    # -- operations (each takes a ticket; None means the run is over)

    def next_address(self, align: int = 8) -> int:
        """A fresh address: no two live requests of the run are identical, so none share."""
        self._addresses += 1
        return ADDRESS_BASE + self.index * 0x10_0000 + (self._addresses % 0x1_0000) * align

    async def allocate(self, op: str = "allocate", **fields: Any) -> Reply | None:
        if not self.ctx.take():
            return None
        fields.setdefault("address", self.next_address())
        fields.setdefault("length", 8)
        fields.setdefault("access", "write")
        fields.setdefault("label", f"loadtest-{self.role}")
        body = schema.AllocationRequest.model_validate(fields).model_dump(mode="json")
        reply = await self.api.call(
            op,
            "POST",
            "/v1/allocations",
            self.token,
            body=body,
            priority=priority_value(fields.get("priority", "normal")),
        )
        if reply.ok:
            aid = str(reply.body["id"])
            if aid not in self.gone:
                self.holdings[aid] = str(reply.body["state"])
        self.note(reply)
        return reply

    async def release(self, allocation: str) -> Reply | None:
        if not self.ctx.take():
            return None
        reply = await self.api.call(
            "release", "DELETE", f"/v1/allocations/{allocation}", self.token
        )
        if reply.ok or reply.status == 404:
            self.holdings.pop(allocation, None)
            self.gone.add(allocation)
        self.note(reply)
        return reply

    async def keepalive(self) -> None:
        """Renew the lease once a third of it has gone by (the runner calls this for every
        client that `keeps_alive`, from setup until the drain starts)."""
        if self.session_id is None or self.lost or self.closed:
            return
        if time.monotonic() < self.next_keepalive:
            return
        self.next_keepalive = time.monotonic() + self.rng.uniform(0.9, 1.1) * self.ttl_s / 3
        reply = await self.api.call(
            "keepalive", "POST", f"/v1/sessions/{self.session_id}/keepalive", self.token
        )
        self.note(reply)

    def note(self, reply: Reply) -> None:
        if reply.status == 401:
            self.lost = True  # the lease ran out under us; `run` opens a new one

    async def think(self, scale: float = 1.0) -> None:
        """Pause like a real client between operations (exponential, mean --think-ms)."""
        mean = self.ctx.think_s * scale
        if mean <= 0:
            await asyncio.sleep(0)  # let others run: a closed loop must not starve the streams
            return
        pause = min(
            self.rng.expovariate(1.0 / mean), max(0.0, self.ctx.deadline - time.monotonic())
        )
        await asyncio.sleep(pause)

    # -- the loop

    async def step(self) -> None:
        raise NotImplementedError

    async def stagger(self) -> None:
        """Start at a random point of the first pause: 500 clients stepping at the same instant
        would measure a thundering herd the setup made, not the daemon."""
        if self.ctx.think_s > 0:
            await asyncio.sleep(self.rng.uniform(0, min(self.ctx.think_s, self.ctx.time_left())))

    async def run(self) -> None:
        """Step until the run is over; a lost session is reopened."""
        await self.stagger()
        while not self.ctx.done():
            if self.lost or self.session_id is None:
                await self.unsubscribe()
                if not self.ctx.take() or not await self.open():
                    return
            await self.step()
