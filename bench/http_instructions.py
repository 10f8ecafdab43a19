"""Instructions per allocate+release pair through the HTTP app, debugregd next to bench/http.py's
no-op and its direct variant (`--direct-noop` there), counted by Callgrind: the steady figure for
comparing two versions of the request path on a machine too noisy to time them. Instructions are
not time: fewer instructions than the no-op's can still take longer.

    .venv/bin/python bench/http_instructions.py --json

Each app is driven in-process through ASGI (no sockets, no uvicorn) by `--clients` concurrent
clients, each POSTing bench/http.py's body and DELETEing the id it gets back. Each runs under
`valgrind --tool=callgrind` twice, doing the same warm-up and then 0 and then `--pairs` pairs; the
difference divided by the pairs is the figure, so start-up cancels out. The daemon runs with the GC
settings `debugregd serve` uses. Needs Debian's valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# bench/http.py is named like the standard library's `http`, and Python puts a script's own
# directory first on sys.path: without this, Starlette's `import http` would import it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import uvloop  # noqa: E402

from debugregd.api.app import create_app  # noqa: E402
from debugregd.config import Settings  # noqa: E402

WARMUP = 200

Message = dict[str, Any]


def load(name: str) -> Any:
    """bench/<name>.py, loaded by path: this directory is off sys.path (see above)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def call(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, bytes]:
    """One HTTP request through the ASGI app: its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent: list[Message] = []
    received = False

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the request is whole: nothing more comes
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def lifespan(app: Any) -> Any:
    """Start the app's lifespan; returns the coroutine function that ends it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: Message) -> None:
        await outbox.put(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, send))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return stop


async def drive(app: Any, token: str, body: str, clients: int, pairs: int, base: int) -> None:
    headers = [
        (b"authorization", b"Bearer " + token.encode()),
        (b"content-type", b"application/json"),
        (b"host", b"127.0.0.1:8765"),
    ]
    left = pairs

    async def client(n: int) -> None:
        nonlocal left
        tid = base + n * 10_000_000
        while left > 0:
            left -= 1
            tid += 1
            status, out = await call(app, "POST", "/v1/allocations", headers, (body % tid).encode())
            assert status == 201, out
            allocation = json.loads(out)["id"]
            status, out = await call(app, "DELETE", f"/v1/allocations/{allocation}", headers)
            assert status == 200, out

    await asyncio.gather(*(client(n) for n in range(clients)))


async def workload(target: str, clients: int, pairs: int) -> None:
    """The measured child: `WARMUP` pairs, then `pairs` more, against `target`."""
    bench = load("http")
    with tempfile.TemporaryDirectory(prefix="bench-http-instructions-") as tmp:
        daemon = create_app(Settings(state_dir=Path(tmp), cpus=2), admin_key="bench")
        stop = await lifespan(daemon)
        headers = [(b"content-type", b"application/json")]
        status, out = await call(
            daemon, "POST", "/v1/sessions", headers, b'{"name":"bench","ttl_s":86400}'
        )
        assert status == 201, out
        token = json.loads(out)["token"]
        app = daemon if target == "debugregd" else bench.noop_app(target == "noop_direct")
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)  # as `debugregd serve` sets it
        await drive(app, token, bench.BODY, clients, WARMUP, 100_000_000)
        await drive(app, token, bench.BODY, clients, pairs, 500_000_000)
        await stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pairs", type=int, default=400, help="allocate+release pairs counted")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)  # the measured child
    args = parser.parse_args()
    if args.run:
        target, clients, pairs = args.run[0], int(args.run[1]), int(args.run[2])
        uvloop.run(workload(target, clients, pairs))  # the loop `debugregd serve` runs on
        return 0
    callgrind = load("instructions").callgrind
    targets = ("debugregd", "noop", "noop_direct")
    runs = [
        [sys.executable, __file__, "--run", target, str(args.clients), str(n)]
        for target in targets
        for n in (0, args.pairs)
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:  # six Callgrind runs, two at a time
        totals = list(pool.map(callgrind, runs))
    per_pair = {
        target: round((totals[2 * i + 1] - totals[2 * i]) / args.pairs)
        for i, target in enumerate(targets)
    }
    result = {
        "instructions_per_pair": per_pair,
        "ratio": round(per_pair["noop"] / per_pair["debugregd"], 3),
        "ratio_to_direct": round(per_pair["noop_direct"] / per_pair["debugregd"], 3),
        "clients": args.clients,
        "pairs": args.pairs,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for target, n in per_pair.items():
            print(f"{target:<10} {n:>12,} instructions per pair")
        print(f"ratio no-op/debugregd: {result['ratio']:.3f}")
        print(f"ratio direct no-op/debugregd: {result['ratio_to_direct']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
