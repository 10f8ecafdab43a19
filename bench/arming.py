"""What arming within the command costs: an allocate+release pair with the perf backend (the kernel
asked before the answer), with the sim backend (the fake kernel), and with no kernel at all, side
by side with the kernel's own perf_event_open+close, in one run.

Every target allocates and releases one 8-byte write watch on this thread (task scope, priority
normal) through the `Arbiter`, with its kernel set to the backend; the anchor opens and closes the
same breakpoint through ctypes, as the perf backend does. Targets take turns round by round; a
sample is the mean over many pairs, each figure the median of the samples.

    .venv/bin/python bench/arming.py --json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from core import machine, revision
from debugregd.backends import perf_event
from debugregd.backends.perf import PerfBackend
from debugregd.backends.sim import SimBackend
from debugregd.core import Access, Arbiter, Priority, Request, Scope
from debugregd.core.kernel import Kernel, Unarmed

Sample = tuple[float, float]  # (wall, CPU) microseconds per pair


def arbiter_pairs(kernel: Kernel) -> Callable[[int], Sample]:
    ncpus = os.cpu_count() or 1
    arb = Arbiter(ncpus=ncpus)
    arb.kernel = kernel
    word = ctypes.c_uint64(0)
    request = Request(
        Scope.task(threading.get_native_id()),
        ctypes.addressof(word),
        8,
        Access.WRITE,
        int(Priority.NORMAL),
    )
    session, _ = arb.open_session("bench", 86_400, 0.0)
    now = [0.0]

    def sample(pairs: int) -> Sample:
        allocate, release = arb.allocate, arb.release
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        t = now[0]
        for _ in range(pairs):
            t += 0.001
            alloc, _ = allocate(session.id, request, t)
            release(alloc.id, t, session_id=session.id)
        now[0] = t
        cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
        _ = word  # kept alive for the breakpoints' address
        return wall / pairs / 1_000, cpu / pairs / 1_000

    return sample


def kernel_pairs() -> Callable[[int], Sample]:
    word = ctypes.c_uint64(0)
    attr = perf_event.breakpoint_attr(
        perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, exclude_kernel=True
    )
    tid = threading.get_native_id()

    def sample(pairs: int) -> Sample:
        open_, close = perf_event.perf_event_open, os.close
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(pairs):
            close(open_(attr, tid, -1))
        cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
        return wall / pairs / 1_000, cpu / pairs / 1_000

    return sample


def run(pairs: int, reps: int) -> dict[str, Any]:
    ncpus = os.cpu_count() or 1
    targets: dict[str, Callable[[int], Sample]] = {
        "core_only": arbiter_pairs(Unarmed()),
        "sim": arbiter_pairs(SimBackend(ncpus=ncpus)),
    }
    try:
        os.close(kernel_open_probe())
    except perf_event.PerfEventError as exc:
        print(f"perf targets skipped: perf_event_open refused: {exc}", file=sys.stderr)
    else:
        targets["perf"] = arbiter_pairs(PerfBackend(None, ncpus))
        targets["kernel_open_close"] = kernel_pairs()
    samples: dict[str, list[Sample]] = {name: [] for name in targets}
    for rep in range(reps + 1):  # round 0 warms up every path and is dropped
        names = list(targets)
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            sample = targets[name](pairs)
            if rep:
                samples[name].append(sample)
    wall = {n: round(statistics.median(s[0] for s in v), 3) for n, v in samples.items()}
    cpu = {n: round(statistics.median(s[1] for s in v), 3) for n, v in samples.items()}
    kernel = wall.get("kernel_open_close")
    ratios = {n: round(us / kernel, 3) for n, us in wall.items()} if kernel else None
    return {
        "pair_us": wall,
        "cpu_pair_us": cpu,
        "ratio_vs_kernel_open_close": ratios,
        "perf_over_sim_us": round(wall["perf"] - wall["sim"], 3) if "perf" in wall else None,
        "method": {
            "pairs_per_sample": pairs,
            "samples": reps,
            "statistic": "median of samples; a sample is the mean microseconds per pair",
            "pair": "Arbiter.allocate + release of one 8-byte write watch on this thread "
            f"(task scope, cpu=-1), ncpus={ncpus}, the arbiter's kernel set to each backend",
            "kernel": "perf_event_open(pid=this thread, cpu=-1, HW_BREAKPOINT_W, len 8) + close",
        },
        "revision": revision(),
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def kernel_open_probe() -> int:
    word = ctypes.c_uint64(0)
    return perf_event.open_breakpoint(
        perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, threading.get_native_id()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2_000, help="pairs per sample")
    parser.add_argument("--reps", type=int, default=15, help="samples per target")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = run(args.pairs, args.reps)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, us in result["pair_us"].items():
        ratio = (result["ratio_vs_kernel_open_close"] or {}).get(name)
        print(f"{name:>18}: {us:8.2f} us/pair" + (f"  ({ratio}x the kernel)" if ratio else ""))


if __name__ == "__main__":
    main()
