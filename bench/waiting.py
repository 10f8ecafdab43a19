"""Allocate+release on one CPU, with and without 20,000 waiters queued on another, over HTTP.

    .venv/bin/python bench/waiting.py --json

Two daemons run side by side (`debugregd serve --cpus 2`, sim backend, each on its own state
directory). On both, CPU 1 is filled by one session's four CPU-wide allocations; on the
"queued" one, 20 sessions (each within the default --max-waiting-per-session of 1,000) then
queue 20,000 `wait: true` allocations for CPU 1 (issue 17's attack: anyone may open sessions).
A client then allocates CPU 0 and releases it, pair after pair, over one keep-alive connection,
in rounds that alternate between the two daemons so that drift on the machine hits both alike.

Per daemon: the median and 90th percentile wall time of a pair as the client saw it, and the
daemon's own CPU time per pair (user and system, from /proc), which leaves out the client. The
goal (issue 17) is the queued daemon within 2x of the empty one.

`--server-path DIR` imports the daemon from DIR (an older commit's `server/`, extracted with
`git archive`) to measure it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/http.py is named like the standard library's `http` package, and Python puts a script's
# own directory first on sys.path: without this, `import httpx` (which imports `http`) finds it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402

ADMIN_KEY = "bench-admin-key"
GOAL_RATIO = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_request(cpu: int, address: int, *, wait: bool = False) -> dict[str, Any]:
    return {
        "scope": {"kind": "cpu", "cpu": cpu},
        "address": hex(address),
        "length": 8,
        "access": "write",
        "wait": wait,
        "label": "bench",
    }


class Daemon:
    """One `debugregd serve` process on a loopback port."""

    def __init__(self, name: str, directory: Path, server_path: Path | None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, DEBUGREGD_ADMIN_KEY=ADMIN_KEY)
        if server_path is not None:
            env["PYTHONPATH"] = f"{server_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
        state = directory / name
        self.log = (directory / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "debugregd", "serve", "--cpus", "2"]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port), "--state-dir", str(state)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the daemon did not start; see {self.log.name}")
            time.sleep(0.05)  # polling readiness, bounded by the deadline
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.pair_seconds: list[float] = []
        self.cpu_per_pair: list[float] = []

    def session(self) -> str:
        answer = self.client.post("/v1/sessions", json={"name": "bench", "ttl_s": 3600})
        answer.raise_for_status()
        token: str = answer.json()["token"]
        return token

    def fill_cpu1(self) -> None:
        headers = {"Authorization": f"Bearer {self.session()}"}
        for n in range(4):
            answer = self.client.post(
                "/v1/allocations", json=cpu_request(1, 0x10000 + 8 * n), headers=headers
            )
            assert answer.status_code == 201 and answer.json()["state"] == "installed", answer.text

    async def queue(self, waiters: int, sessions: int, concurrency: int) -> None:
        """`waiters` waiting allocations for CPU 1, spread over `sessions` sessions."""
        tokens = [self.session() for _ in range(sessions)]
        per = -(-waiters // sessions)
        todo = [(tokens[n // per], n) for n in range(waiters)]
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:

            async def worker() -> None:
                while todo:
                    token, n = todo.pop()
                    body = cpu_request(1, 0x100000 + 8 * n, wait=True)
                    headers = {"Authorization": f"Bearer {token}"}
                    answer = await http.post("/v1/allocations", json=body, headers=headers)
                    assert answer.status_code == 201, answer.text
                    assert answer.json()["state"] == "waiting", answer.text

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    def waiting(self) -> int:
        answer = self.client.get(
            "/v1/state", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120
        )
        return len(answer.json()["waiting"])

    def round(self, token: str, pairs: int) -> None:
        """`pairs` allocate+release pairs on CPU 0, timed one by one."""
        headers = {"Authorization": f"Bearer {token}"}
        body = cpu_request(0, 0x20000)
        cpu = cpu_seconds(self.proc.pid)
        for _ in range(pairs):
            started = time.perf_counter()
            made = self.client.post("/v1/allocations", json=body, headers=headers)
            gone = self.client.delete(f"/v1/allocations/{made.json()['id']}", headers=headers)
            self.pair_seconds.append(time.perf_counter() - started)
            assert made.status_code == 201 and gone.status_code == 200, (made.text, gone.text)
        self.cpu_per_pair.append((cpu_seconds(self.proc.pid) - cpu) / pairs)

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.pair_seconds)
        return {
            "pairs": len(ordered),
            "median_ms": round(statistics.median(ordered) * 1e3, 3),
            "p90_ms": round(ordered[int(len(ordered) * 0.9)] * 1e3, 3),
            "daemon_cpu_us_per_pair": round(statistics.median(self.cpu_per_pair) * 1e6, 1),
        }

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="debugregd-waiting-") as tmp:
        empty = Daemon("empty", Path(tmp), args.server_path)
        queued = Daemon("queued", Path(tmp), args.server_path)
        try:
            for daemon in (empty, queued):
                daemon.fill_cpu1()
            started = time.perf_counter()
            asyncio.run(queued.queue(args.waiters, args.sessions, args.concurrency))
            queue_s = time.perf_counter() - started
            assert queued.waiting() == args.waiters
            tokens = {d.name: d.session() for d in (empty, queued)}
            for daemon in (empty, queued):  # warm up: connections, caches, the first pairs
                daemon.round(tokens[daemon.name], args.pairs)
                daemon.pair_seconds.clear()
                daemon.cpu_per_pair.clear()
            for _ in range(args.rounds):
                for daemon in (empty, queued):
                    daemon.round(tokens[daemon.name], args.pairs)
            assert queued.waiting() == args.waiters  # nothing was served in between
            result = {d.name: d.figures() for d in (empty, queued)}
        finally:
            empty.stop()
            queued.stop()
    ratio = result["queued"]["median_ms"] / result["empty"]["median_ms"]
    cpu_ratio = (
        result["queued"]["daemon_cpu_us_per_pair"] / result["empty"]["daemon_cpu_us_per_pair"]
    )
    return {
        "benchmark": "allocate+release on CPU 0 with and without waiters queued on CPU 1, HTTP",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "server_path": None if args.server_path is None else str(args.server_path),
        "waiters": args.waiters,
        "waiter_sessions": args.sessions,
        "queueing_s": round(queue_s, 1),
        "rounds": args.rounds,
        "pairs_per_round": args.pairs,
        **result,
        "ratio_median": round(ratio, 2),
        "ratio_daemon_cpu": round(cpu_ratio, 2),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO and cpu_ratio <= GOAL_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--waiters", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20, help="sessions the waiters use")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight to queue")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per daemon, alternating")
    parser.add_argument("--pairs", type=int, default=300, help="pairs per round")
    parser.add_argument("--server-path", type=Path, help="import the daemon from this directory")
    args = parser.parse_args(argv)
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ("empty", "queued"):
            r = result[name]
            print(
                f"{name:>7}: median {r['median_ms']} ms, p90 {r['p90_ms']} ms, "
                f"daemon {r['daemon_cpu_us_per_pair']} us/pair"
            )
        print(f"ratio {result['ratio_median']} (daemon CPU {result['ratio_daemon_cpu']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
