"""Eviction notices over SSE: notice latency with 1 and 1,000 subscribers, and 10,000 idle ones.

Each subscriber is a session holding a background allocation on a task of its own and following
its own stream (`GET /v1/sessions/{id}/events`). An eviction is caused the way it happens in
practice: a ptrace-class session asks for every register of that task, evicting the holder. The
latency is the `at` of the `evicted` event (set by the daemon when it evicted) to the moment the
holder's stream delivered it, both on this machine's clock.

1. anchor: 1 subscriber, single evictions one after another;
2. 1,000 subscribers: the same single evictions while 999 others stay connected, then a burst
   (one admin bulk eviction of all 1,000 holders at once);
3. 10,000 idle subscribers: the daemon's RSS (VmRSS) before, with 10,000 sessions, and with their
   10,000 streams open, and single evictions among them.

    .venv/bin/python bench/sse.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

# bench/http.py shadows the standard library's `http` for scripts run from bench/ (Python puts a
# script's directory first on sys.path), and httpx imports `http`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from debugreg.loadtest.stats import summarize_ms  # noqa: E402
from debugreg.loadtest.transport import RawEngine, TransportError  # noqa: E402

GOAL_NOTICE_P99_MS = 20.0
GOAL_RSS_MB = 500.0
ADDRESS = 0x10000000
FULL = 32  # bytes that take all four x86 registers of a task (four aligned 8-byte chunks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(wanted: int) -> int:
    """Streams are file descriptors on both sides: raise the soft limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


class Bench:
    """One daemon, the sessions and streams opened against it, and the notices they got."""

    def __init__(self, url: str, admin_key: str, pid: int) -> None:
        self.url = url
        self.admin_key = admin_key
        self.pid = pid
        self.http = RawEngine(url, max_connections=256)
        self.waiting: dict[str, asyncio.Future[float]] = {}  # allocation id -> notice latency
        self.burst: list[float] = []
        self.holders: list[Holder] = []
        self.stream_tasks: list[asyncio.Task[None]] = []
        self.connected = 0
        self.ptrace_token = ""

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.admin_key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(3):
            try:
                status, content = await self.http.request(method, path, headers, data)
                return status, json.loads(content) if content else None
            except TransportError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1)  # a connection refused under a burst of connects
        raise AssertionError("unreachable")

    async def open_session(self, name: str, **grants: Any) -> tuple[str, str]:
        anonymous = not grants
        status, body = await self.call(
            "POST",
            "/v1/sessions",
            None if anonymous else self.admin_key,
            {"name": name, "ttl_s": 3600, **grants},
        )
        assert status == 201, (status, body)
        return str(body["id"]), str(body["token"])

    def on_event(self, data: dict[str, Any], received: float) -> None:
        if data.get("type") != "evicted":
            return
        latency = received - float(data["at"])
        future = self.waiting.pop(str(data["allocation"]["id"]), None)
        if future is not None and not future.done():
            future.set_result(latency)
        else:
            self.burst.append(latency)

    async def follow(self, holder: Holder) -> None:
        headers = {"Authorization": f"Bearer {holder.token}"}
        with contextlib.suppress(TransportError):
            async for sse in self.http.events(f"/v1/sessions/{holder.session}/events", headers):
                if sse is None:
                    self.connected += 1
                    holder.ready.set()
                    continue
                received = time.time()
                self.on_event(json.loads(sse.data), received)

    async def add_holders(self, count: int, *, allocate: bool, concurrency: int = 100) -> None:
        """Open `count` sessions, subscribe each, and (if `allocate`) give each a holding."""
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                holder = Holder(*await self.open_session("bench-sse"), tid=len(self.holders) + 1)
                self.holders.append(holder)
                task = asyncio.create_task(self.follow(holder))
                self.stream_tasks.append(task)
                await asyncio.wait_for(holder.ready.wait(), 60)
                if allocate:
                    await self.hold(holder)

        await asyncio.gather(*(one() for _ in range(count)))

    async def hold(self, holder: Holder) -> None:
        status, body = await self.call(
            "POST",
            "/v1/allocations",
            holder.token,
            {
                "scope": {"kind": "task", "tid": holder.tid},
                "address": ADDRESS,
                "length": 8,
                "access": "write",
                "priority": "background",
            },
        )
        assert status == 201, (status, body)
        holder.allocation = str(body["id"])

    async def evict_one(self, holder: Holder) -> float:
        """A ptrace-class request for all of the holder's task registers evicts it."""
        assert holder.allocation is not None
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[holder.allocation] = future
        status, body = await self.call(
            "POST",
            "/v1/allocations",
            self.ptrace_token,
            {
                "scope": {"kind": "task", "tid": holder.tid},
                "address": ADDRESS + 0x1000,
                "length": FULL,
                "access": "write",
                "priority": "ptrace",
            },
        )
        assert status == 201, (status, body)
        latency = await asyncio.wait_for(future, 10)
        await self.call("DELETE", f"/v1/allocations/{body['id']}", self.ptrace_token)
        await self.hold(holder)
        return latency

    async def single_evictions(self, rounds: int, rng: random.Random) -> list[float]:
        holding = [h for h in self.holders if h.allocation is not None]
        return [await self.evict_one(rng.choice(holding)) for _ in range(rounds)]

    async def burst_eviction(self) -> tuple[list[float], float]:
        """Evict every background holder in one admin command; each notice's latency."""
        expected = sum(1 for h in self.holders if h.allocation is not None)
        self.burst = []
        started = time.perf_counter()
        status, body = await self.call(
            "POST", "/v1/evictions", self.admin_key, {"below_priority": "normal", "reason": "bench"}
        )
        assert status == 200, (status, body)
        deadline = time.monotonic() + 30
        while len(self.burst) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # polling a counter the streams fill, bounded
        for holder in self.holders:
            holder.allocation = None
        return list(self.burst), time.perf_counter() - started

    async def close(self) -> None:
        for task in self.stream_tasks:
            task.cancel()
        await asyncio.gather(*self.stream_tasks, return_exceptions=True)
        await self.http.aclose()


class Holder:
    __slots__ = ("allocation", "ready", "session", "tid", "token")

    def __init__(self, session: str, token: str, *, tid: int) -> None:
        self.session = session
        self.token = token
        self.tid = tid
        self.allocation: str | None = None
        self.ready = asyncio.Event()


def latency_ms(values: Sequence[float]) -> dict[str, Any]:
    return {**summarize_ms(values), "count": len(values)}


async def timed(label: str, job: Callable[[], Awaitable[Any]]) -> Any:
    started = time.perf_counter()
    out = await job()
    print(f"bench/sse: {label} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return out


async def measure_notices(args: argparse.Namespace, url: str, key: str, pid: int) -> dict[str, Any]:
    """Phases 1 and 2: single evictions with 1 and 1,000 subscribers, then a burst."""
    bench = Bench(url, key, pid)
    rng = random.Random(args.seed)
    try:
        _, bench.ptrace_token = await bench.open_session("bench-ptrace", max_priority="ptrace")
        out: dict[str, Any] = {}
        await bench.add_holders(1, allocate=True)
        one = await timed("1 subscriber", lambda: bench.single_evictions(args.rounds, rng))
        out["subscribers_1"] = {"single_evictions": latency_ms(one)}
        await timed("999 more subscribers", lambda: bench.add_holders(999, allocate=True))
        single = await timed(
            "single evictions at 1,000", lambda: bench.single_evictions(args.rounds, rng)
        )
        burst, took = await timed("burst at 1,000", bench.burst_eviction)
        out["subscribers_1000"] = {
            "connected": bench.connected,
            "single_evictions": latency_ms(single),
            "burst_eviction": {**latency_ms(burst), "bulk_request_s": round(took, 3)},
            "rss_mb": round(rss_mb(pid), 1),
        }
        return out
    finally:
        await bench.close()


async def measure_idle(args: argparse.Namespace, url: str, key: str, pid: int) -> dict[str, Any]:
    """Phase 3, on a fresh daemon: RSS with `--idle` sessions and then their streams, and single
    evictions among them."""
    bench = Bench(url, key, pid)
    rng = random.Random(args.seed)
    try:
        _, bench.ptrace_token = await bench.open_session("bench-ptrace", max_priority="ptrace")
        rss_before = rss_mb(pid)
        gate = asyncio.Semaphore(200)

        async def session() -> None:
            async with gate:
                holder = Holder(*await bench.open_session("bench-idle"), tid=len(bench.holders) + 1)
                bench.holders.append(holder)

        async def sessions() -> None:
            await asyncio.gather(*(session() for _ in range(args.idle)))

        async def streams() -> None:
            for n, holder in enumerate(bench.holders, 1):
                bench.stream_tasks.append(asyncio.create_task(bench.follow(holder)))
                if n % 200 == 0:  # connect in waves: uvicorn's accept backlog is 2048
                    await asyncio.wait_for(holder.ready.wait(), 60)
            await asyncio.gather(*(asyncio.wait_for(h.ready.wait(), 120) for h in bench.holders))

        await timed(f"{args.idle:,} sessions", sessions)
        rss_sessions = rss_mb(pid)
        await timed(f"{args.idle:,} streams", streams)
        rss_streams = rss_mb(pid)
        for holder in rng.sample(bench.holders, min(args.rounds, len(bench.holders))):
            await bench.hold(holder)
        single = await timed(
            f"single evictions at {args.idle:,}",
            lambda: bench.single_evictions(args.rounds, rng),
        )
        return {
            "subscribers": args.idle,
            "connected": bench.connected,
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_with_sessions": round(rss_sessions, 1),
            "rss_mb_with_streams": round(rss_streams, 1),
            "kb_per_session": round((rss_sessions - rss_before) * 1024 / args.idle, 2),
            "kb_per_stream": round((rss_streams - rss_sessions) * 1024 / args.idle, 2),
            "single_evictions": latency_ms(single),
        }
    finally:
        await bench.close()


Measure = Callable[[argparse.Namespace, str, str, int], Coroutine[Any, Any, dict[str, Any]]]


def with_daemon(args: argparse.Namespace, measure: Measure) -> dict[str, Any]:
    """Start a fresh daemon (its own state directory), measure, stop it."""
    key = secrets.token_urlsafe(16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DEBUGREGD_ADMIN_KEY=key)
    with tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp:
        cmd = [
            *(sys.executable, "-m", "debugregd", "serve", "--port", str(port)),
            *("--state-dir", f"{tmp}/state", "--cpus", str(args.cpus)),
        ]
        with Path(tmp, "daemon.log").open("ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_ready(url)
                return asyncio.run(measure(args, url, key, proc.pid))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    async def probe() -> bool:
        engine = RawEngine(url, max_connections=1)
        try:
            status, _ = await engine.request("GET", "/healthz", {}, None)
            return status == 200
        except TransportError:
            return False
        finally:
            await engine.aclose()

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(probe()):
            return
        time.sleep(0.05)  # polling readiness, bounded by the deadline
    raise RuntimeError(f"debugregd at {url} did not become ready")


def verdicts(result: dict[str, Any], idle: int) -> dict[str, Any]:
    single = result["subscribers_1000"]["single_evictions"]["p99"]
    out: dict[str, Any] = {
        "notice_p99_ms_at_1000": single,
        "notice_p99_goal_ms": GOAL_NOTICE_P99_MS,
        "notice_goal_met": single <= GOAL_NOTICE_P99_MS,
    }
    if idle > 0:
        block = result[f"idle_{idle}"]
        out["rss_mb_at_idle"] = block["rss_mb_with_streams"]
        out["rss_goal_mb"] = GOAL_RSS_MB
        out["rss_goal_met"] = (
            block["rss_mb_with_streams"] < GOAL_RSS_MB and block["connected"] == idle
        )
    return out


def show(result: dict[str, Any], idle: int) -> None:
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['loadavg_1m_at_start']}")
    print(f"{'eviction-to-notice (ms)':<34} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'n':>6}")
    rows = [
        ("1 subscriber (anchor)", result["subscribers_1"]["single_evictions"]),
        ("1,000 subscribers, single", result["subscribers_1000"]["single_evictions"]),
        ("1,000 subscribers, burst of 1,000", result["subscribers_1000"]["burst_eviction"]),
    ]
    if idle > 0:
        rows.append((f"{idle:,} subscribers, single", result[f"idle_{idle}"]["single_evictions"]))
    for label, r in rows:
        print(
            f"{label:<34} {r['p50']:>7.2f} {r['p90']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.2f} "
            f"{r['count']:>6}"
        )
    if idle > 0:
        b = result[f"idle_{idle}"]
        print(
            f"RSS: {b['rss_mb_before']} MB before, {b['rss_mb_with_sessions']} MB with {idle:,} "
            f"sessions, {b['rss_mb_with_streams']} MB with their streams ({b['connected']:,} "
            f"connected; {b['kb_per_stream']} KB per stream)"
        )
    v = result["goals"]
    print(
        f"goal notice p99 <= {GOAL_NOTICE_P99_MS:g} ms at 1,000: "
        f"{'met' if v['notice_goal_met'] else 'MISSED'} ({v['notice_p99_ms_at_1000']:.2f} ms)"
    )
    if "rss_goal_met" in v:
        print(
            f"goal {idle:,} subscribers under {GOAL_RSS_MB:g} MB: "
            f"{'met' if v['rss_goal_met'] else 'MISSED'} ({v['rss_mb_at_idle']} MB)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=200, help="single evictions per phase")
    parser.add_argument("--idle", type=int, default=10_000, help="idle subscribers (0: skip)")
    parser.add_argument("--cpus", type=int, default=2, help="the daemon's --cpus")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    fd_limit = raise_fd_limit(args.idle + 2048)
    result: dict[str, Any] = {"benchmark": "sse eviction notices", "machine": machine()}
    result["fd_limit"] = fd_limit
    result.update(with_daemon(args, measure_notices))
    if args.idle > 0:
        result[f"idle_{args.idle}"] = with_daemon(args, measure_idle)
    result["goals"] = verdicts(result, args.idle)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result, args.idle)
    return 0  # a missed goal is a finding in the output, not a failure of `make bench`


if __name__ == "__main__":
    sys.exit(main())
