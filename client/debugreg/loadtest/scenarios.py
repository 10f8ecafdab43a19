"""The contention scenarios: who the clients are and what each does in a step.

Scenarios combine (`--scenario uniform,priority-storm`): the clients are split between them and
all of them contend for the same CPUs at once. Task ids are per scenario, so contention across
scenarios happens through CPU-scoped holders and the shared per-CPU budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from debugreg.loadtest.clients import Client, Context
from debugreg.loadtest.stats import Outcome
from debugreg.priorities import Priority

MAX_WAIT_S = 2.0  # a waiting request is withdrawn after this long, so waiters keep moving


def _scope(client: Client, tids: Sequence[int]) -> dict[str, Any]:
    """A task (any CPU, or pinned to one), a CPU, or all CPUs, at random."""
    rng, cpus = client.rng, client.ctx.host.cpus
    r = rng.random()
    if r < 0.6:
        scope: dict[str, Any] = {"kind": "task", "tid": rng.choice(tids)}
        if rng.random() < 0.3:
            scope["cpus"] = [rng.randrange(cpus)]
        return scope
    if r < 0.9:
        return {"kind": "cpu", "cpu": rng.randrange(cpus)}
    return {"kind": "cpus", "cpus": "all"}


class Uniform(Client):
    """Allocates and releases at random across CPUs and a shared set of tasks."""

    role = "uniform"

    def __init__(self, ctx: Context, index: int, rng: random.Random, tids: Sequence[int]) -> None:
        super().__init__(ctx, index, rng)
        self.tids = tids

    async def step(self) -> None:
        held = list(self.holdings)
        if held and (len(held) >= 3 or self.rng.random() < 0.45):
            await self.release(self.rng.choice(held))
        else:
            await self.allocate(
                scope=_scope(self, self.tids),
                priority=self.rng.choice(("background", "normal")),
                on_evict="wait" if self.rng.random() < 0.2 else "release",
            )
        await self.think()


class Holder(Client):
    """A background squatter keeping CPU-held registers filled: evicted, it asks again (or its
    allocation waits to be reinstalled), so every register stays contended."""

    role = "holder"

    def __init__(self, ctx: Context, index: int, rng: random.Random, share: int) -> None:
        super().__init__(ctx, index, rng)
        self.share = share  # registers this holder keeps asking for

    async def step(self) -> None:
        if len(self.holdings) < self.share:
            await self.allocate(
                scope={"kind": "cpu", "cpu": self.rng.randrange(self.ctx.host.cpus)},
                priority="background",
                on_evict="wait" if self.index % 2 == 0 else "release",
                wait=True,
            )
        elif self.rng.random() < 0.05:
            await self.release(self.rng.choice(list(self.holdings)))
        await self.think()


class Ptracer(Client):
    """A debugger (ptrace class, a session the admin key granted): takes up to every register
    for its own task, possibly one CPU-wide, holds them briefly, and lets go."""

    role = "ptrace"

    def __init__(self, ctx: Context, index: int, rng: random.Random, tid: int) -> None:
        super().__init__(ctx, index, rng)
        self.tid = tid

    def grants(self) -> dict[str, Any]:
        return {"max_priority": "ptrace"}

    async def step(self) -> None:
        slots = self.ctx.host.slots
        if self.rng.random() < 0.2:
            wanted = [{"kind": "cpu", "cpu": self.rng.randrange(self.ctx.host.cpus)}]
        else:
            count = self.rng.choice((1, 1, 2, 3, slots))
            wanted = [{"kind": "task", "tid": self.tid}] * count
        for scope in wanted:
            if await self.allocate("allocate_ptrace", scope=scope, priority="ptrace") is None:
                return
        await self.think()
        for aid in list(self.holdings):
            if await self.release(aid) is None:
                return
        await self.think()


class Pinned(Client):
    """A privileged non-evictable holder on CPU 0: the one kind of holder that may make a
    ptrace-class request fail (and the refusal must name it)."""

    role = "pinned"

    def grants(self) -> dict[str, Any]:
        return {"max_priority": "critical", "allow_non_evictable": True}

    async def step(self) -> None:
        if not self.holdings:
            await self.allocate(
                scope={"kind": "cpu", "cpu": 0}, priority="background", evictable=False, wait=True
            )
        elif self.rng.random() < 0.1:
            await self.release(next(iter(self.holdings)))
        await self.think(scale=5)


class Waiter(Client):
    """Asks with `wait: true` where demand exceeds the registers, waits for its turn (bounded),
    holds, and releases."""

    role = "waiter"

    def __init__(self, ctx: Context, index: int, rng: random.Random, tids: Sequence[int]) -> None:
        super().__init__(ctx, index, rng)
        self.tids = tids

    async def step(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            scope: dict[str, Any] = {"kind": "cpu", "cpu": rng.randrange(self.ctx.host.cpus)}
        else:
            scope = {"kind": "task", "tid": rng.choice(self.tids)}
        reply = await self.allocate(
            scope=scope,
            priority=rng.choice(("background", "normal")),
            on_evict=rng.choice(("release", "wait")),
            wait=True,
        )
        if reply is None or not reply.ok:
            await self.think()
            return
        aid = str(reply.body["id"])
        left = self.ctx.time_left()
        await self.until(lambda: self.holdings.get(aid) != "waiting", min(MAX_WAIT_S, left))
        if self.holdings.get(aid) == "installed":
            await self.think(scale=2)
        if aid in self.holdings:
            await self.release(aid)


class Churner(Client):
    """Short leases: opens a session, allocates, then closes it or lets it expire (no
    keepalive), and starts over with a new session and a new stream."""

    role = "churn"
    keeps_alive = False  # letting leases run out is the point

    def __init__(self, ctx: Context, index: int, rng: random.Random, tid: int) -> None:
        super().__init__(ctx, index, rng)
        self.tid = tid

    async def setup(self) -> bool:
        return True  # each cycle opens its own session

    async def run(self) -> None:
        await self.stagger()
        while self.ctx.take():
            if not await self.open(ttl_s=self.rng.uniform(1.0, 3.0)):
                await self.unsubscribe()
                await self.think()
                continue
            for _ in range(self.rng.randint(1, 3)):
                scope: dict[str, Any] = (
                    {"kind": "task", "tid": self.tid}
                    if self.rng.random() < 0.7
                    else {"kind": "cpu", "cpu": self.rng.randrange(self.ctx.host.cpus)}
                )
                if await self.allocate(scope=scope, priority="background") is None:
                    return  # the runner's teardown closes the session
            if self.rng.random() < 0.5:
                await self.close()
            else:
                await self.await_expiry()
            await self.think()

    async def await_expiry(self) -> None:
        """Wait for the daemon to expire the lease; record how late its notice came (from the
        `expires_at` the daemon gave at open to the stream's session_closed)."""
        started = time.perf_counter()
        closed = await self.until(lambda: self.closed, self.ttl_s + 5.0)
        late = self.closed_at - self.expires_at
        self.api.recorder.record(
            "expiry",
            max(0.0, late) if closed else time.perf_counter() - started,
            Outcome.SUCCESS if closed else Outcome.ERROR,
            "no session_closed before the deadline",
        )
        await self.unsubscribe()
        self.session_id = None


# x86 DR7 (DESIGN section 2): enable L at bit 2n, R/W at 16+4n, LEN at 18+4n.
RW_BITS = {"exec": 0b00, "write": 0b01, "rw": 0b11}
LEN_BITS = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}


def dr7_for(slots: dict[int, tuple[int, int, str]]) -> int:
    """DR7 enabling `slots` (DR index -> address, length, access) with local enables."""
    dr7 = 0
    for n, (_, length, access) in slots.items():
        dr7 |= 1 << (2 * n)
        dr7 |= RW_BITS[access] << (16 + 4 * n)
        dr7 |= LEN_BITS[length] << (18 + 4 * n)
    return dr7


class RawWriter(Client):
    """A ptrace user writing DR0-DR3 and DR7 for its task (PUT /v1/tasks/{tid}/debugregs),
    keeping some registers between writes and clearing them all now and then."""

    role = "raw"

    def __init__(self, ctx: Context, index: int, rng: random.Random, tid: int) -> None:
        super().__init__(ctx, index, rng)
        self.tid = tid
        self.slots: dict[int, tuple[int, int, str]] = {}

    def grants(self) -> dict[str, Any]:
        return {"max_priority": "ptrace"}

    async def step(self) -> None:
        if self.ctx.host.profile != "x86_64":  # no raw ABI: behave as a ptrace-class allocator
            reply = await self.allocate(
                "allocate_ptrace", scope={"kind": "task", "tid": self.tid}, priority="ptrace"
            )
            await self.think()
            if reply is not None and reply.ok:
                await self.release(str(reply.body["id"]))
            return
        rng = self.rng
        if self.slots and rng.random() < 0.3:
            self.slots = {}
        else:
            keep = {n: s for n, s in self.slots.items() if rng.random() < 0.5}
            for n in rng.sample(range(4), rng.randint(1, 4)):
                if n in keep:
                    continue
                access = rng.choice(("write", "rw", "exec"))
                length = 1 if access == "exec" else rng.choice((1, 2, 4, 8))
                keep[n] = (self.next_address(), length, access)
            self.slots = keep
        await self.write()
        await self.think()

    async def write(self) -> None:
        if not self.ctx.take():
            return
        body: dict[str, Any] = {f"dr{n}": "0x0" for n in range(4)}
        for n, (address, _, _) in self.slots.items():
            body[f"dr{n}"] = f"0x{address:x}"
        body["dr7"] = dr7_for(self.slots)
        reply = await self.api.call(
            "set_debugregs",
            "PUT",
            f"/v1/tasks/{self.tid}/debugregs",
            self.token,
            body=body,
            priority=Priority.PTRACE,
        )
        if not reply.ok:
            self.slots = {}  # all or nothing: the previous registers are unchanged, forget them
        self.note(reply)


# ---------------------------------------------------------------------------- the registry

Build = Callable[[Context, int, int, int, Callable[[int], random.Random]], list[Client]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    about: str
    min_clients: int
    build: Build  # (ctx, clients, first index, tid base, rng for an index) -> clients


def _uniform(
    ctx: Context, n: int, first: int, tids: int, rng: Callable[[int], random.Random]
) -> list[Client]:
    pool = [tids + k for k in range(max(2, n // 4))]
    return [Uniform(ctx, first + i, rng(first + i), pool) for i in range(n)]


def _storm(
    ctx: Context, n: int, first: int, tids: int, rng: Callable[[int], random.Random]
) -> list[Client]:
    pinned = 1 if n >= 4 else 0
    holders = max(1, (n - pinned) // 2)
    registers = ctx.host.cpus * ctx.host.slots
    share = max(1, -(-registers // holders))  # together they ask for every register
    out: list[Client] = []
    for i in range(n):
        index = first + i
        if i < pinned:
            out.append(Pinned(ctx, index, rng(index)))
        elif i < pinned + holders:
            out.append(Holder(ctx, index, rng(index), min(share, ctx.host.slots)))
        else:
            out.append(Ptracer(ctx, index, rng(index), tids + i))
    return out


def _waiters(
    ctx: Context, n: int, first: int, tids: int, rng: Callable[[int], random.Random]
) -> list[Client]:
    pool = [tids, tids + 1]
    return [Waiter(ctx, first + i, rng(first + i), pool) for i in range(n)]


def _churn(
    ctx: Context, n: int, first: int, tids: int, rng: Callable[[int], random.Random]
) -> list[Client]:
    return [Churner(ctx, first + i, rng(first + i), tids + i) for i in range(n)]


def _raw(
    ctx: Context, n: int, first: int, tids: int, rng: Callable[[int], random.Random]
) -> list[Client]:
    writers = max(1, n // 2)
    raw_tids = [tids + i for i in range(writers)]
    out: list[Client] = [
        RawWriter(ctx, first + i, rng(first + i), raw_tids[i]) for i in range(writers)
    ]
    out += [Uniform(ctx, first + i, rng(first + i), raw_tids) for i in range(writers, n)]
    return out


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("uniform", "N clients allocating and releasing at random", 1, _uniform),
        Scenario(
            "priority-storm",
            "background holders fill every register while ptrace-class clients arrive",
            2,
            _storm,
        ),
        Scenario("waiters", "more demand than registers, wait: true", 1, _waiters),
        Scenario("churn", "sessions opening, closing and expiring with short TTLs", 1, _churn),
        Scenario("raw", "ptrace-style DR7 writes mixed with well-behaved clients", 2, _raw),
    )
}


def build_clients(ctx: Context, names: Sequence[str], total: int, seed: int) -> list[Client]:
    """Split `total` clients between the scenarios (each gets at least its minimum)."""
    clients: list[Client] = []

    def rng(index: int) -> random.Random:
        return random.Random(f"{seed}:{index}")

    share, extra = divmod(total, len(names))
    for k, name in enumerate(names):
        scenario = SCENARIOS[name]
        n = max(scenario.min_clients, share + (1 if k < extra else 0))
        clients += scenario.build(ctx, n, len(clients), 100_000 * (k + 1), rng)
    return clients
