"""One load test run: set up, drive the clients, audit while running, drain, audit again.

The order matters for the audit. The initial snapshot is read first and the admin stream follows
from its `event_id`, so the snapshot plus the log account for every change. At the end every client
closes its session and waits for its own stream to show the close (so every notice before it has
arrived), the final snapshot is read, and the admin stream is drained up to its `event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from debugreg.loadtest.api import Api, Stream
from debugreg.loadtest.audit import (
    AuditResult,
    Refusal,
    audit,
    check_snapshot,
    compact_event,
    compact_snapshot,
    expected_notices,
)
from debugreg.loadtest.clients import Client, Context, Host
from debugreg.loadtest.scenarios import build_clients
from debugreg.loadtest.stats import Recorder
from debugreg.loadtest.transport import (
    IDLE_EXPIRY_S,
    Engine,
    HttpxEngine,
    RawEngine,
    TransportError,
)
from debugreg.tls import TLSSettings

SETUP_CONCURRENCY = 64  # sessions opened at once: a burst of 500 would only queue in the daemon
DRAIN_TIMEOUT_S = 30.0
STOP_GRACE_S = 30.0  # how long clients get to finish their last operation after the deadline
MAX_SNAPSHOTS = 240  # kept for the replay comparison; older ones are thinned out


class SetupError(Exception):
    """The run could not start: the daemon is unreachable or the admin key is wrong."""


@dataclass(frozen=True, slots=True)
class Config:
    url: str
    admin_key: str
    scenarios: tuple[str, ...] = ("uniform",)
    clients: int = 10
    duration_s: float | None = None  # None: 10 s, or 600 s when an operation count is given
    operations: int | None = None
    seed: int = 1
    think_ms: float = 50.0
    ttl_s: float = 30.0
    snapshot_interval_s: float = 1.0
    engine: str = "raw"  # or "httpx"

    @property
    def time_limit_s(self) -> float:
        if self.duration_s is not None:
            return self.duration_s
        return 600.0 if self.operations is not None else 10.0


@dataclass
class Progress:
    """What the live display shows, refreshed while the run goes."""

    phase: str = "setup"
    elapsed_s: float = 0.0
    clients: int = 0
    operations: int = 0
    rate: float = 0.0
    refusals: int = 0
    errors: int = 0
    evictions: int = 0
    notices: int = 0
    allocate_p99_ms: float = 0.0
    events: int = 0
    snapshots: int = 0
    violations: int = 0


@dataclass
class Result:
    config: Config
    host: Host
    clients: Counter[str]
    recorder: Recorder
    audit: AuditResult
    notices: list[Any]
    evictions: int  # evictions of the run's own sessions (each owes a notice)
    evictions_total: int  # every eviction in the log, other users' included
    events: int
    load_s: float
    setup_s: float
    drain_s: float
    stream_failures: list[str] = field(default_factory=list)
    loop_lag_s: list[float] = field(default_factory=list)  # the tester's own event loop

    @property
    def passed(self) -> bool:
        return self.audit.passed and self.evictions == len(self.notices)


class AdminLog:
    """The admin stream (`/v1/events`): every event, in order, kept in compact form."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.events: list[dict[str, Any]] = []
        self.last_id = after
        self.evictions = 0
        self.arrived = asyncio.Event()

    def on_event(self, data: dict[str, Any], received: float) -> None:
        self.events.append(compact_event(data))
        self.last_id = max(self.last_id, int(data["id"]))
        if data.get("type") == "evicted":
            self.evictions += 1
        self.arrived.set()

    async def reach(self, event_id: int, timeout_s: float) -> bool:
        """Wait until the stream has delivered `event_id`, at most `timeout_s`."""
        end = time.monotonic() + timeout_s
        while self.last_id < event_id:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return True


class Snapshots:
    """Periodic GET /v1/state, each checked at once (for the live display) and kept for the
    final audit."""

    def __init__(self, api: Api, admin_key: str) -> None:
        self.api = api
        self.admin_key = admin_key
        self.kept: list[dict[str, Any]] = []
        self.violations = 0

    async def take(self) -> dict[str, Any] | None:
        reply = await self.api.call("snapshot", "GET", "/v1/state", self.admin_key)
        if not reply.ok or not isinstance(reply.body, dict):
            return None
        self.violations += len(check_snapshot(reply.body))
        snap = compact_snapshot(reply.body)
        self.kept.append(snap)
        if len(self.kept) > MAX_SNAPSHOTS:
            self.kept = self.kept[::2]  # keep the time span, halve the density
        return snap

    async def poll(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                await self.take()


async def _bounded(concurrency: int, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Any]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def _keep_alive(clients: Sequence[Client]) -> None:
    """Renew every lease that is a third through, all run long (setup and load): a slow setup
    of hundreds of sessions must not let the first ones lapse. Each renewal is sent when it is
    due and runs on its own, so renewals neither bunch up nor wait for one another."""
    keepers = [c for c in clients if c.keeps_alive]
    pending: set[asyncio.Task[None]] = set()
    try:
        while True:
            now = time.monotonic()
            soonest = now + 0.25  # sessions opening in setup become due later
            for client in keepers:
                if client.session_id is None:
                    continue
                if now >= client.next_keepalive:
                    task = asyncio.create_task(client.keepalive())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                soonest = min(soonest, client.next_keepalive)
            await asyncio.sleep(max(0.005, soonest - time.monotonic()))
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class LoopLag:
    """How late this process's own event loop wakes up: when it lags, the tester (not the
    daemon) is the bottleneck and its latencies overstate the daemon's."""

    TICK_S = 0.05

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.TICK_S)
            self.lags.append(max(0.0, loop.time() - before - self.TICK_S))


async def _guarded(client: Client, recorder: Recorder) -> None:
    """A client that crashes is counted, not allowed to end the run."""
    try:
        await client.run()
    except Exception as exc:  # a bug in a scenario must show in the report, not abort the run
        recorder.error_kinds[f"{client.role} client crashed: {exc!r}"] += 1


SHARD_CLIENTS = 8  # clients per httpx pool (see `engines`)


async def engines(config: Config, stack: contextlib.AsyncExitStack) -> tuple[list[Engine], int]:
    """The engines the clients share, and how many clients share each.

    The raw engine keeps one pool for everyone, sized to the client count. httpx's pool scans
    every connection on each request (an expiry check per connection), so with httpx the clients
    are split into groups of SHARD_CLIENTS, each group with pools sized to it.
    """
    if config.engine == "raw":
        try:
            raw = RawEngine(config.url, max_connections=2 * config.clients + 16)
        except ValueError as exc:
            raise SetupError(f"{exc}; use --engine httpx for https") from None
        stack.push_async_callback(raw.aclose)
        return [raw], config.clients
    per_group = 2 * SHARD_CLIENTS  # a client's own request, and its lease renewal
    limits = httpx.Limits(
        max_connections=per_group,
        max_keepalive_connections=per_group,
        keepalive_expiry=IDLE_EXPIRY_S,
    )
    # No read or write timeouts: each costs an anyio cancel scope per socket call, and the run
    # is bounded as a whole (STOP_GRACE_S, DRAIN_TIMEOUT_S).
    timeout = httpx.Timeout(None, connect=10.0)
    # Streams hold their connection for the whole run and are not reused after they end.
    stream_limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    # One context for all pools (each would load the CA store); DEBUGREG_CA, DEBUGREG_CERT and
    # DEBUGREG_KEY point it at a daemon's own CA and a client certificate, as for the CLI.
    tls = TLSSettings.resolve().context() if config.url.startswith("https://") else True
    out: list[Engine] = []
    for _ in range(max(1, math.ceil(config.clients / SHARD_CLIENTS))):
        requests = httpx.AsyncClient(
            base_url=config.url, limits=limits, timeout=timeout, verify=tls
        )
        streams = httpx.AsyncClient(
            base_url=config.url, limits=stream_limits, timeout=timeout, verify=tls
        )
        engine = HttpxEngine(requests, streams)
        stack.push_async_callback(engine.aclose)
        out.append(engine)
    return out, SHARD_CLIENTS


async def run(config: Config, on_progress: Callable[[Progress], None] | None = None) -> Result:
    """Run the configured scenarios against the daemon at `config.url`."""
    recorder = Recorder()
    refusals: list[Refusal] = []
    async with contextlib.AsyncExitStack() as stack:
        shared, group = await engines(config, stack)
        apis = [Api(engine, recorder, refusals) for engine in shared]
        return await _run(config, apis, group, on_progress)


async def _run(
    config: Config,
    apis: list[Api],
    group: int,
    on_progress: Callable[[Progress], None] | None,
) -> Result:
    api = apis[0]
    recorder = api.recorder
    started = time.monotonic()
    try:
        status, content = await api.engine.request("GET", "/v1/host", {}, None)
    except TransportError as exc:
        raise SetupError(f"cannot reach debugregd at {config.url}: {exc}") from None
    if status != 200:
        raise SetupError(f"GET {config.url}/v1/host answered HTTP {status}: is it debugregd?")
    host = Host.from_wire(json.loads(content))
    snapshots = Snapshots(api, config.admin_key)
    initial_reply = await api.call("snapshot", "GET", "/v1/state", config.admin_key)
    if initial_reply.status == 401:
        raise SetupError("the admin key was refused: set DEBUGREGD_ADMIN_KEY or --admin-key")
    if not initial_reply.ok:
        raise SetupError(f"GET /v1/state failed with HTTP {initial_reply.status}")
    initial = compact_snapshot(initial_reply.body)
    log = AdminLog(int(initial["event_id"]))
    admin_stream = Stream(api.engine, "/v1/events", config.admin_key, log.on_event, since=log.after)
    admin_task = asyncio.create_task(admin_stream.run(), name="admin-stream")

    ctx = Context(
        apis=apis,
        group=group,
        admin_key=config.admin_key,
        host=host,
        think_s=config.think_ms / 1000.0,
        ttl_s=config.ttl_s,
        deadline=math.inf,
        budget=config.operations,
    )
    clients = build_clients(ctx, config.scenarios, config.clients, config.seed)
    progress = Progress(clients=len(clients))

    def refresh(phase: str) -> None:
        if on_progress is None:
            return
        totals = recorder.totals()
        progress.phase = phase
        progress.elapsed_s = time.monotonic() - started
        progress.operations = totals["operations"]
        progress.refusals = totals["refusals"]
        progress.errors = totals["errors"]
        progress.rate = recorder.recent_rate()
        progress.allocate_p99_ms = recorder.recent_p99_ms()
        progress.evictions = log.evictions
        progress.notices = len(ctx.notices)
        progress.events = len(log.events)
        progress.snapshots = len(snapshots.kept)
        progress.violations = snapshots.violations
        on_progress(progress)

    async def display(phase: Callable[[], str]) -> None:
        while True:
            refresh(phase())
            await asyncio.sleep(0.25)

    phase = "setup"
    display_task = asyncio.create_task(display(lambda: phase), name="progress")
    renewer: asyncio.Task[None] | None = None
    lag = LoopLag()
    lag_task = asyncio.create_task(lag.watch(), name="loop-lag")
    try:
        await asyncio.wait(
            {asyncio.create_task(admin_stream.ready.wait()), admin_task},
            timeout=15,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not admin_stream.ready.is_set():
            raise SetupError(f"cannot follow /v1/events: {admin_stream.failure or 'timeout'}")

        renewer = asyncio.create_task(_keep_alive(clients), name="keepalive")
        opened = await _bounded(SETUP_CONCURRENCY, [c.setup for c in clients])
        setup_s = time.monotonic() - started
        if not any(opened):
            raise SetupError("no client could open a session and subscribe")

        phase = "load"
        load_started = time.monotonic()
        ctx.deadline = load_started + config.time_limit_s
        poller = asyncio.create_task(
            snapshots.poll(ctx.stop, config.snapshot_interval_s), name="snapshots"
        )
        loops = [
            asyncio.create_task(_guarded(c, recorder), name=f"client-{c.index}")
            for c, ok in zip(clients, opened, strict=True)
            if ok
        ]
        await asyncio.wait(loops, timeout=config.time_limit_s + STOP_GRACE_S)
        ctx.stop.set()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await poller
        load_s = time.monotonic() - load_started

        phase = "drain"
        drain_started = time.monotonic()
        renewer.cancel()  # the sessions are about to be closed: a racing renewal would 404
        await snapshots.take()  # the state under load, before anything is closed
        await _bounded(SETUP_CONCURRENCY, [c.close for c in clients])
        final = await snapshots.take()
        if final is not None:
            await log.reach(int(final["event_id"]), DRAIN_TIMEOUT_S)
        owed = set(expected_notices(log.events, ctx.sessions))
        end = time.monotonic() + 10.0
        while time.monotonic() < end and not owed <= {n.event_id for n in ctx.notices}:
            await asyncio.sleep(0.05)  # bounded: a notice that never comes is the audit's finding
        drain_s = time.monotonic() - drain_started
    finally:
        display_task.cancel()
        lag_task.cancel()
        admin_task.cancel()
        if renewer is not None:
            renewer.cancel()
        for client in clients:
            if client.stream_task is not None:
                client.stream_task.cancel()
        await asyncio.gather(
            display_task,
            lag_task,
            admin_task,
            *([renewer] if renewer is not None else []),
            *(c.stream_task for c in clients if c.stream_task is not None),
            return_exceptions=True,
        )
    refresh("audit")

    result = audit(
        log.events,
        snapshots.kept,
        api.refusals,
        initial=initial,
        notices=ctx.notices,
        sessions=ctx.sessions,
    )
    if admin_stream.failure and admin_stream.reconnects:
        recorder.error_kinds[f"admin stream: {admin_stream.failure}"] += admin_stream.reconnects
    return Result(
        config=config,
        host=host,
        clients=Counter(c.role for c in clients),
        recorder=recorder,
        audit=result,
        notices=ctx.notices,
        evictions=result.checked["evictions"],
        evictions_total=log.evictions,
        events=len(log.events),
        load_s=load_s,
        setup_s=setup_s,
        drain_s=drain_s,
        stream_failures=ctx.stream_failures,
        loop_lag_s=lag.lags,
    )
