"""`debugreg loadtest`: many clients contending for a few debug registers, audited.

    debugreg loadtest --url http://127.0.0.1:8765 --scenario uniform,priority-storm --clients 50

Exits 0 when the audit passed and every eviction reached its owner once, 1 when not, 2 when the
run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live

from debugreg.loadtest.report import progress_panel, render, to_json
from debugreg.loadtest.runner import Config, Progress, Result, SetupError, run
from debugreg.loadtest.scenarios import SCENARIOS

__all__ = ["Config", "Result", "build_parser", "main", "run"]

T = TypeVar("T")


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(SCENARIOS)}, comma-separated"
        )
    return names


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def build_parser(prog: str = "debugreg loadtest") -> argparse.ArgumentParser:
    about = "; ".join(f"{s.name}: {s.about}" for s in SCENARIOS.values())
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Drive many clients contending for debug registers against a running debugregd, "
            "measure latencies and eviction notices, and audit the daemon's state. "
            f"Scenarios: {about}."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DEBUGREGD_URL", "http://127.0.0.1:8765"),
        help="the daemon (env DEBUGREGD_URL); loopback only is sensible",
    )
    parser.add_argument(
        "--admin-key",
        default=None,
        help="admin key for /v1/state, /v1/events and ptrace grants (env DEBUGREGD_ADMIN_KEY)",
    )
    parser.add_argument(
        "--scenario",
        type=_scenarios,
        default=("uniform",),
        help=f"comma-separated, combinable: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--clients", type=_positive(int), default=10, help="simulated clients")
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=None,
        help="seconds of load (default 10; with --operations, a 600 s cap)",
    )
    parser.add_argument(
        "--operations", type=_positive(int), default=None, help="stop after this many operations"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the clients")
    parser.add_argument(
        "--think-ms",
        type=float,
        default=50.0,
        help="mean pause between one client's operations (exponential); 0 is a closed loop",
    )
    parser.add_argument("--ttl", type=_positive(float), default=30.0, help="session TTL, seconds")
    parser.add_argument(
        "--snapshot-interval",
        type=_positive(float),
        default=1.0,
        help="seconds between audited GET /v1/state snapshots",
    )
    parser.add_argument(
        "--engine",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP engine: raw (lean asyncio HTTP/1.1, a tenth of httpx's CPU) or httpx",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-live", action="store_true", help="no live progress display")
    return parser


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (uvicorn[standard] brings it).

    The run keeps every event and snapshot for the audit, so the heap only grows: the default
    collector thresholds would scan it all again and again, each full pass a pause in which the
    tester measures nothing but itself. Rarer collections, and the startup heap frozen out of
    them, keep its own pauses out of the latencies."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a load test; the exit code says whether the daemon passed the audit."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    admin_key = args.admin_key or os.environ.get("DEBUGREGD_ADMIN_KEY")
    err = Console(stderr=True)
    if not admin_key:
        err.print(
            "debugreg loadtest: the audit reads /v1/state and /v1/events, which need the admin "
            "key: set DEBUGREGD_ADMIN_KEY or pass --admin-key"
        )
        return 2
    config = Config(
        url=args.url.rstrip("/"),
        admin_key=admin_key,
        scenarios=args.scenario,
        clients=args.clients,
        duration_s=args.duration,
        operations=args.operations,
        seed=args.seed,
        think_ms=max(0.0, args.think_ms),
        ttl_s=args.ttl,
        snapshot_interval_s=args.snapshot_interval,
        engine=args.engine,
    )
    show_live = err.is_terminal and not args.no_live
    try:
        if show_live:
            with Live(progress_panel(Progress()), console=err, refresh_per_second=4) as live:

                def update(p: Progress) -> None:
                    live.update(progress_panel(p))

                result = _run_loop(run(config, update))
        else:
            result = _run_loop(run(config))
    except SetupError as exc:
        err.print(f"debugreg loadtest: {exc}")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(to_json(result), indent=2) + "\n")
    else:
        render(result, Console())
    return 0 if result.passed else 1
