"""The arbiter's cost per allocate+release pair as live task allocations grow, against the kernel.

One run measures, on this machine: the microseconds of one allocate+release pair through the pure
`Arbiter` (task scope, priority normal, sim: no backend at all) with 10, 1,000 and 100,000 live task
allocations held by distinct tasks; and, as the anchor, the kernel's own perf_event_open+close of a
per-task write breakpoint (pid=0, cpu=-1) made from Python through ctypes, as the perf backend
makes it. A sample is the mean over many pairs; each figure is the median of the samples.

    .venv/bin/python bench/core.py --json

Goals (DESIGN section 11b): a pair costs at most 2x the kernel's open+close, and a pair with
100,000 live tasks at most 1.5x a pair with 10.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import json
import multiprocessing
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from debugregd.backends import perf_event
from debugregd.core import Access, Arbiter, Priority, Request, Scope

SIZES = (10, 1_000, 100_000)
ADDRESS = 0x7FFD1000  # a user-space word; each task watches its own copy of it
RATIO_GOAL = 2.0
SCALING_GOAL = 1.5
REPO = Path(__file__).resolve().parent.parent


class Clock:
    """The core takes time as a parameter: a float that only moves forward, never a syscall."""

    def __init__(self) -> None:
        self.now = 0.0

    def tick(self) -> float:
        self.now += 0.001
        return self.now


def request(tid: int) -> Request:
    return Request(Scope.task(tid), ADDRESS, 8, Access.WRITE, int(Priority.NORMAL))


def populated(live: int, ncpus: int, clock: Clock) -> tuple[Arbiter, str]:
    """An arbiter holding `live` installed task allocations, one per task, in one session."""
    arb = Arbiter(ncpus=ncpus)
    session, _ = arb.open_session("bench", 86_400, clock.tick())
    for tid in range(1, live + 1):
        arb.allocate(session.id, request(tid), clock.tick())
    return arb, session.id


Sample = tuple[float, float]  # mean microseconds per pair: (wall clock, this thread's CPU time)
WALL, CPU = 0, 1


def time_pairs(
    arb: Arbiter, session: str, first_tid: int, pairs: int, clock: Clock
) -> tuple[Sample, int]:
    """Mean microseconds of one allocate+release on fresh tasks, and the next unused tid."""
    requests = [request(tid) for tid in range(first_tid, first_tid + pairs)]
    allocate, release, tick = arb.allocate, arb.release, clock.tick
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for req in requests:
        alloc, _ = allocate(session, req, tick())
        release(alloc.id, tick(), session_id=session)
    cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    return (wall / pairs / 1_000, cpu / pairs / 1_000), first_tid + pairs


def _size_worker(live: int, ncpus: int, conn: Connection) -> None:
    """A child holding one populated arbiter: answers each number of pairs with a sample."""
    clock = Clock()
    arb, session = populated(live, ncpus, clock)
    tid = live + 1
    conn.send(None)  # populated: ready to be timed
    while (pairs := conn.recv()) is not None:
        sample, tid = time_pairs(arb, session, tid, pairs, clock)
        if len(arb.allocations) != live:
            raise AssertionError("a timed pair must leave the arbiter as it found it")
        conn.send(sample)


class SizeWorker:
    """One process per size. Each heap holds one arbiter, so the cost of a size (its garbage
    collector's walks included) is its own; and the sizes take turns, so a burst of noise from
    elsewhere on the machine falls on all of them alike instead of on whichever ran then."""

    def __init__(self, live: int, ncpus: int) -> None:
        context = multiprocessing.get_context("fork")
        self.live = live
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_size_worker, args=(live, ncpus, child), daemon=True)
        self.process.start()

    def ready(self) -> None:
        self.conn.recv()

    def sample(self, pairs: int) -> Sample:
        self.conn.send(pairs)
        sample: Sample = self.conn.recv()
        return sample

    def stop(self) -> None:
        self.conn.send(None)
        self.process.join()


class KernelAnchor:
    """perf_event_open+close of a per-task write breakpoint on this thread, through ctypes."""

    def __init__(self) -> None:
        self.word = ctypes.c_uint64(0)
        self.attr = perf_event.breakpoint_attr(
            perf_event.HW_BREAKPOINT_W, ctypes.addressof(self.word), 8, exclude_kernel=True
        )

    def permitted(self) -> bool:
        try:
            os.close(perf_event.perf_event_open(self.attr, 0, -1))
        except perf_event.PerfEventError as exc:
            print(f"kernel anchor skipped: perf_event_open refused: {exc}", file=sys.stderr)
            return False
        return True

    def sample(self, pairs: int) -> Sample:
        open_, close, attr = perf_event.perf_event_open, os.close, self.attr
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(pairs):
            close(open_(attr, 0, -1))
        cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
        return wall / pairs / 1_000, cpu / pairs / 1_000


def ctypes_call_us(pairs: int) -> float:
    """Microseconds of a trivial syscall (getppid) through the same ctypes path: the share of the
    anchor that is Python calling C rather than the kernel arming a breakpoint."""
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    getppid = ctypes.c_long(110 if platform.machine() == "x86_64" else 173)
    start = time.perf_counter_ns()
    for _ in range(pairs):
        syscall(getppid)
    return (time.perf_counter_ns() - start) / pairs / 1_000


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
    }


def revision() -> dict[str, Any]:
    """The commit measured, and whether the core had uncommitted changes on top of it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    core = "server/debugregd/core"
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "core_dirty": bool(git("status", "--porcelain", core)),
    }


def profile(live: int, ncpus: int, pairs: int, top: int) -> str:
    """cProfile of `pairs` allocate+release pairs with `live` allocations held, hottest first."""
    clock = Clock()
    arb, session = populated(live, ncpus, clock)
    _, tid = time_pairs(arb, session, live + 1, pairs, clock)
    profiler = cProfile.Profile()
    profiler.enable()
    time_pairs(arb, session, tid, pairs, clock)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _median(samples: list[Sample], which: int) -> float:
    return round(statistics.median(s[which] for s in samples), 3)


def pin(cpu: int | None) -> int | None:
    """Pin this process (and so the size workers it forks) to `cpu`, by default the last one it
    may use: the sizes and the kernel then take turns on one CPU, under the same conditions,
    instead of wherever the scheduler puts each process. None when `cpu` is negative."""
    if cpu is not None and cpu < 0:
        return None
    chosen = max(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def run(pairs: int, reps: int, sizes: tuple[int, ...], cpu: int | None) -> dict[str, Any]:
    """Every figure of one run, as the JSON object `--json` prints."""
    ncpus = os.cpu_count() or 1
    workers = [SizeWorker(n, ncpus) for n in sizes]
    for worker in workers:
        worker.ready()
    anchor = KernelAnchor()
    kernel_ok = anchor.permitted()
    samples: dict[str, list[Sample]] = {str(n): [] for n in sizes}
    kernel_samples: list[Sample] = []
    for rep in range(reps + 1):  # round 0 warms up every path and is dropped
        # Rotate who goes first so no size always follows the same neighbour.
        order = workers[rep % len(workers) :] + workers[: rep % len(workers)]
        for worker in order:
            sample = worker.sample(pairs)
            if rep:
                samples[str(worker.live)].append(sample)
        if kernel_ok:
            sample = anchor.sample(pairs)
            if rep:
                kernel_samples.append(sample)
    for worker in workers:
        worker.stop()

    smallest, largest = str(min(sizes)), str(max(sizes))
    figures: dict[str, Any] = {}
    # Wall clock is the headline; CPU time is the same work without the time other processes
    # took the CPU away, which on a shared machine is most of the spread between samples.
    for prefix, which in (("", WALL), ("cpu_", CPU)):
        pair = {n: _median(s, which) for n, s in samples.items()}
        kernel = _median(kernel_samples, which) if kernel_ok else None
        figures[f"{prefix}pair_us"] = pair
        figures[f"{prefix}kernel_pair_us"] = kernel
        figures[f"{prefix}ratio_vs_kernel"] = (
            {n: round(us / kernel, 3) for n, us in pair.items()} if kernel else None
        )
        figures[f"{prefix}scaling_{largest}_vs_{smallest}"] = round(
            pair[largest] / pair[smallest], 3
        )
    goals: dict[str, Any] = {"ratio_vs_kernel_max": RATIO_GOAL, "scaling_max": SCALING_GOAL}
    for prefix, clock in (("", "wall"), ("cpu_", "cpu")):
        ratios = figures[f"{prefix}ratio_vs_kernel"]
        goals[clock] = {
            "ratio_met": None if ratios is None else all(r <= RATIO_GOAL for r in ratios.values()),
            "scaling_met": figures[f"{prefix}scaling_{largest}_vs_{smallest}"] <= SCALING_GOAL,
        }
    return {
        **figures,
        "spread_us": {
            n: [round(min(x[WALL] for x in s), 3), round(max(x[WALL] for x in s), 3)]
            for n, s in samples.items()
        },
        "ctypes_call_us": round(ctypes_call_us(pairs), 3),
        "goals": goals,
        "method": {
            "pairs_per_sample": pairs,
            "samples": reps,
            "statistic": "median of samples; a sample is the mean microseconds per pair",
            "arbiter": f"x86_64, ncpus={ncpus}, task scope, priority normal, one session, "
            "one process per size, sizes and the kernel take turns",
            "pinned_cpu": cpu,
            "kernel": "perf_event_open(pid=0, cpu=-1, HW_BREAKPOINT_W, len 8) + close, via ctypes",
        },
        "revision": revision(),
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def sizes_arg(text: str) -> tuple[int, ...]:
    sizes = tuple(int(n) for n in text.split(","))
    if len(set(sizes)) != len(sizes) or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be distinct positive integers")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--pairs", type=int, default=1_000, help="pairs per sample")
    parser.add_argument("--reps", type=int, default=31, help="samples per size; the median counts")
    parser.add_argument(
        "--sizes",
        type=sizes_arg,
        default=SIZES,
        help="live allocations to measure at, comma-separated (default 10,1000,100000)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="LIVE",
        help="instead: cProfile the pairs with LIVE allocations held, hottest functions first",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        help="the CPU every process of the run is pinned to (default: the last one allowed; "
        "-1: not pinned)",
    )
    args = parser.parse_args()
    if args.profile is not None:
        print(profile(args.profile, os.cpu_count() or 1, args.pairs, 30))
        return
    result = run(args.pairs, args.reps, args.sizes, pin(args.cpu))
    if args.json:
        print(json.dumps(result))
        return
    for prefix, clock in (("", "wall clock"), ("cpu_", "CPU time")):
        ratios = result[f"{prefix}ratio_vs_kernel"] or {}
        print(f"{clock}:")
        for n, us in result[f"{prefix}pair_us"].items():
            print(f"  {int(n):>7} live: {us:8.2f} us per pair ({ratios.get(n)}x the kernel)")
        print(f"   kernel: {result[f'{prefix}kernel_pair_us']} us per perf_event_open+close")
        scaling = next(v for k, v in result.items() if k.startswith(f"{prefix}scaling_"))
        print(f"  scaling: {scaling}x")
    print(f"goals: {result['goals']}")


if __name__ == "__main__":
    main()
