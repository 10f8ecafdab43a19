"""Allocate+release over HTTP: debugregd next to a no-op FastAPI endpoint, side by side.

Both servers run under uvicorn with the daemon's own flags (one worker, same loop and HTTP
implementation, no access log) on loopback, and `wrk` drives both with the same Lua script, the
same connections and the same duration, in alternating rounds so that drift on the machine hits
both alike. The script sends `POST /v1/allocations` with the same JSON body (a fresh task id each
time, so every allocation is admitted) and, for each 201 it gets back, a `DELETE` of the returned
id: one pair is one real allocate and one real release. The no-op endpoint parses the same pydantic
body (`debugreg.schema.AllocationRequest`) and answers with a record of the same shape.

    .venv/bin/python bench/http.py --json

The goal's anchor declares its parameters as FastAPI's documentation writes them; the daemon's
allocate and release routes read theirs from the request (`debugregd.api.inputs`), which costs
less. `--direct-noop` adds a third target, a no-op reading its inputs the same way, and its ratio:
what the daemon's own work costs, with the plumbing alike.

Each target's own CPU time (user and system, from /proc) per pair, and the share of the wall
time it was busy, come with its figures: a server that is not busy all the time is waiting on
something other than its CPU.

`--serve-noop PORT [--direct]` runs only a no-op server (this script starts itself that way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

# This file is named like the standard library's `http` package, and Python puts a script's own
# directory first on sys.path: without this, `import httpx` (which imports `http`) imports us.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Header, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from debugreg.schema import AllocationRequest  # noqa: E402
from debugregd.api import inputs  # noqa: E402

BODY = (
    '{"scope":{"kind":"task","tid":%d},"address":"0x7ffd1000","length":8,'
    '"access":"write","priority":"normal","label":"bench"}'
)
GOAL_RATIO = 0.8

# One thread's state in wrk: POST an allocation, or DELETE one whose id came back. Each thread
# counts its own outcomes; `done` (which runs in wrk's main Lua state) sums them per thread.
LUA = r"""
local threads = {}
local token = "__TOKEN__"
local template = '__BODY__'

function setup(thread)
  thread:set("base", 100000000 + #threads * 10000000)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  head, tail, ids = 1, 0, {}
  created, released, failed = 0, 0, 0
  post_headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
  delete_headers = {["Authorization"] = "Bearer " .. token}
end

function request()
  if head <= tail then
    local id = ids[head]
    ids[head] = nil
    head = head + 1
    return wrk.format("DELETE", "/v1/allocations/" .. id, delete_headers, nil)
  end
  n = n + 1
  return wrk.format("POST", "/v1/allocations", post_headers, string.format(template, base + n))
end

function response(status, headers, body)
  if status == 201 then
    tail = tail + 1
    ids[tail] = string.match(body, '"id":"([^"]+)"')
    created = created + 1
  elseif status == 200 then
    released = released + 1
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local c, r, f = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    r = r + t:get("released")
    f = f + t:get("failed")
  end
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"duration_us":%d,"requests":%d,"created":%d,"released":%d,"failed":%d,' ..
    '"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, c, r, f,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def noop_app(direct: bool = False) -> FastAPI:
    """The anchor: the daemon's routes with the same body parsing and no arbitration.

    They declare their body, header and path parameters, as FastAPI's documentation writes
    them. With `direct`, they read them from the request instead, as the daemon's allocate and
    release routes do (`debugregd.api.inputs`): the anchor that isolates the daemon's own work.
    """
    app = FastAPI(title="no-op", max_body_size=65_536)
    counter = [0]

    def record(body: AllocationRequest | None, allocation_id: str, state: str) -> dict[str, Any]:
        now = time.time()
        scope = body.scope.model_dump(exclude_none=True) if body else {"kind": "task", "tid": 1}
        return {
            "id": allocation_id,
            "session": "s1",
            "state": state,
            "scope": scope,
            "address": f"0x{body.address:x}" if body else "0x7ffd1000",
            "length": body.length if body else 8,
            "access": body.access if body else "write",
            "priority": 300,
            "evictable": True,
            "on_evict": "release",
            "generation": counter[0],
            "registers": [
                {"cpu": 0, "pool": "dr", "index": 0},
                {"cpu": 1, "pool": "dr", "index": 0},
            ],
            "space": "user",
            "label": body.label if body else "bench",
            "created_at": now,
            "updated_at": now,
        }

    def created(body: AllocationRequest) -> JSONResponse:
        counter[0] += 1
        return JSONResponse(record(body, f"a{counter[0]}", "installed"), status_code=201)

    if direct:

        @app.post("/v1/allocations", status_code=201)
        async def allocate_direct(request: Request) -> JSONResponse:
            inputs.header(request, b"authorization")  # read, as the daemon reads it
            return created(await inputs.body(request, AllocationRequest))

        @app.delete("/v1/allocations/{allocation_id}")
        async def release_direct(request: Request) -> JSONResponse:
            inputs.header(request, b"authorization")  # read, as the daemon reads it
            return JSONResponse(record(None, request.path_params["allocation_id"], "released"))

    else:

        @app.post("/v1/allocations", status_code=201)
        async def allocate(
            body: AllocationRequest, authorization: Annotated[str | None, Header()] = None
        ) -> JSONResponse:
            return created(body)

        @app.delete("/v1/allocations/{allocation_id}")
        async def release(
            allocation_id: str, authorization: Annotated[str | None, Header()] = None
        ) -> JSONResponse:
            return JSONResponse(record(None, allocation_id, "released"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_noop(port: int, direct: bool) -> int:
    """Serve the no-op app exactly as `debugregd serve` serves the daemon."""
    config = uvicorn.Config(
        noop_app(direct),
        host="127.0.0.1",
        port=port,
        workers=1,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling readiness, bounded by the deadline
    raise RuntimeError(f"{url} did not become ready in {timeout_s} s")


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def run_wrk(
    url: str, script: Path, threads: int, connections: int, seconds: float
) -> dict[str, Any]:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's user and system CPU time so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the measured rounds; latency percentiles are the worst round's."""
    seconds = sum(r["duration_us"] for r in rounds) / 1e6
    pairs = sum(r["released"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    return {
        "pairs": pairs,
        "pairs_per_s": round(pairs / seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
        "p50_ms": round(max(r["p50_us"] for r in rounds) / 1000, 3),
        "p90_ms": round(max(r["p90_us"] for r in rounds) / 1000, 3),
        "p99_ms": round(max(r["p99_us"] for r in rounds) / 1000, 3),
        "max_ms": round(max(r["max_us"] for r in rounds) / 1000, 3),
        "failed": sum(r["failed"] + r["socket_errors"] for r in rounds),
        "rounds_pairs_per_s": [round(r["released"] / (r["duration_us"] / 1e6), 1) for r in rounds],
        # The server's own CPU per pair: user (Python, parsing, SQLite) and system (sockets,
        # journal writes). Where time goes when instruction counts do not say.
        "cpu_user_us_per_pair": round(sum(r["cpu_user_s"] for r in rounds) / pairs * 1e6, 1),
        "cpu_sys_us_per_pair": round(sum(r["cpu_sys_s"] for r in rounds) / pairs * 1e6, 1),
        "cpu_busy": round(sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in rounds) / seconds, 3),
    }


def start_servers(
    stack: contextlib.ExitStack, tmp: str, cpus: int, direct_noop: bool = False
) -> tuple[dict[str, str], dict[str, subprocess.Popen[bytes]]]:
    """Start debugregd and the no-op server (and the direct no-op); all are stopped (SIGTERM)
    when `stack` closes."""
    env = dict(os.environ, DEBUGREGD_ADMIN_KEY=secrets.token_urlsafe(16))
    ports = {"debugregd": free_port(), "noop": free_port()}
    if direct_noop:
        ports["noop_direct"] = free_port()
    me = str(Path(__file__).resolve())
    commands = {
        "debugregd": [
            *(sys.executable, "-m", "debugregd", "serve", "--port", str(ports["debugregd"])),
            *("--state-dir", f"{tmp}/state", "--cpus", str(cpus)),
        ],
        "noop": [sys.executable, me, "--serve-noop", str(ports["noop"])],
    }
    if direct_noop:
        port = str(ports["noop_direct"])
        commands["noop_direct"] = [sys.executable, me, "--serve-noop", port, "--direct"]
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    log = stack.enter_context(Path(tmp, "servers.log").open("ab"))  # noqa: SIM115 (the stack closes it)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, cmd in commands.items():
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs[name] = proc
        stack.callback(stop, proc)
    for name, url in urls.items():
        wait_ready(url, procs[name])
    return urls, procs


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def py_spy() -> str:
    """py-spy from PATH or beside this interpreter (a venv's bin)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--py-spy needs py-spy: pip install py-spy (into the venv)")
    return found


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench/http.py needs wrk (Debian package 'wrk')")
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, contextlib.ExitStack() as stack:
        targets, procs = start_servers(stack, tmp, args.cpus, args.direct_noop)
        session = httpx.post(
            f"{targets['debugregd']}/v1/sessions",
            json={"name": "bench-http", "ttl_s": 86_400},
            timeout=10,
        )
        session.raise_for_status()
        script = Path(tmp, "pairs.lua")
        script.write_text(
            LUA.replace("__TOKEN__", session.json()["token"]).replace("__BODY__", BODY)
        )
        for url in targets.values():  # warm-up: imports, caches, first SQLite pages
            run_wrk(url, script, args.threads, args.connections, args.warmup)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for n in range(args.rounds):
            for name, url in targets.items():
                profiler = None
                if args.py_spy and name == "debugregd" and n == 0:
                    profiler = subprocess.Popen(
                        [
                            *(py_spy(), "record", "--format", "raw", "--rate", "200"),
                            *("--pid", str(procs[name].pid), "--output", args.py_spy),
                            *("--duration", f"{max(1, int(args.duration))}", "--nonblocking"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                user, sys_ = cpu_seconds(procs[name].pid)
                result = run_wrk(url, script, args.threads, args.connections, args.duration)
                user_after, sys_after = cpu_seconds(procs[name].pid)
                result["cpu_user_s"] = user_after - user
                result["cpu_sys_s"] = sys_after - sys_
                rounds[name].append(result)
                if profiler is not None:
                    profiler.wait(timeout=60)
    results = {name: summarise(r) for name, r in rounds.items()}
    ratio = results["debugregd"]["pairs_per_s"] / max(results["noop"]["pairs_per_s"], 1e-9)
    extra: dict[str, Any] = {}
    if "noop_direct" in results:
        direct = results["debugregd"]["pairs_per_s"] / results["noop_direct"]["pairs_per_s"]
        extra = {"noop_direct": results["noop_direct"], "ratio_to_direct": round(direct, 3)}
    return {
        "benchmark": "http allocate+release",
        "machine": machine(),
        "wrk": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
        },
        "daemon_cpus": args.cpus,
        "latency_note": "per HTTP request (allocate or release), wrk's percentiles",
        "debugregd": results["debugregd"],
        "noop": results["noop"],
        "ratio": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
        **extra,
    }


def show(result: dict[str, Any]) -> None:
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    w = result["wrk"]
    print(
        f"wrk: {w['threads']} thread(s), {w['connections']} connections, "
        f"{w['rounds']} x {w['duration_s']} s per target"
    )
    print(
        f"{'target':<11} {'pairs/s':>9} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} "
        f"{'cpu us/pair':>11} {'busy':>5}"
    )
    for name in ("debugregd", "noop", "noop_direct"):
        if name not in result:
            continue
        r = result[name]
        cpu = r["cpu_user_us_per_pair"] + r["cpu_sys_us_per_pair"]
        print(
            f"{name:<11} {r['pairs_per_s']:>9.1f} {r['requests_per_s']:>9.1f} "
            f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['failed']:>6} {cpu:>11.0f} "
            f"{r['cpu_busy']:>5.2f}"
        )
    verdict = "met" if result["goal_met"] else "MISSED"
    print(f"ratio debugregd/no-op: {result['ratio']:.3f} (goal >= {GOAL_RATIO}: {verdict})")
    if "ratio_to_direct" in result:
        print(f"ratio debugregd/direct no-op: {result['ratio_to_direct']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration", type=int, default=2, help="seconds per round per target")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target")
    parser.add_argument(
        "--rounds", type=int, default=16, help="alternating rounds per target (short rounds, often)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--cpus", type=int, default=2, help="the daemon's --cpus")
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile the daemon's first measured round with py-spy (collapsed stacks to FILE)",
    )
    parser.add_argument(
        "--direct-noop",
        action="store_true",
        help="also measure a no-op that reads its inputs from the request, as the daemon does",
    )
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop is not None:
        return serve_noop(args.serve_noop, args.direct)
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    return 0  # a missed goal is a finding in the output, not a failure of `make bench`


if __name__ == "__main__":
    sys.exit(main())
