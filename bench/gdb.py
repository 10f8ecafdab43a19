"""What the gdb extension costs gdb: the time `gdb -batch -p PID -ex 'watch -l counter' -ex
continue` takes until its first stop, through `debugreg gdb` against plain gdb, in one run.

A fresh target (the C program of tests/support/gdb.py) per run: gdb attaches, sets the watchpoint
and continues; the target writes its counter as soon as gdb resumes it (the line that makes it
write is sent when gdb has set the watchpoint, while the target is still stopped), and the run's
time is from starting the command to gdb's "New value" line (`stop_ms`), and to gdb's exit
(`exit_ms`: detaching, and with the extension closing its session). Variants take turns run by
run; each figure is the median.

- `plain`: `gdb -nx -batch ...`;
- `debugreg_gdb`: `debugreg gdb -nx -batch ...` with the admin key: the launcher, the extension,
  a session opened and one reservation (priority ptrace, arm false) before gdb inserts;
- `sourced`: plain gdb with `-iex 'source EXTENSION'`: the extension without the launcher.

`inside_gdb`: the same steps, one by one from a gdb script, timed inside gdb (far less noisy than
whole commands): sourcing the extension, attaching, and setting the watchpoint (with the
extension: opening a session and reserving).

Against the sim backend (a fake kernel: the reservation is checked by counting) and, where
perf_event_open of a breakpoint is permitted, the perf backend (checked by opening and closing a
real breakpoint on the thread).

    .venv/bin/python bench/gdb.py --json

Goal (issue 15): `debugreg gdb` at most 50 ms more than plain gdb.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core import REPO, machine, revision

# The tests' target and daemon helpers are reused from the repository; this directory leaves the
# path, as its `http.py` would otherwise stand in for the standard library's `http` package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

from tests.support.daemon import Daemon  # noqa: E402
from tests.support.gdb import (  # noqa: E402
    Lines,
    Target,
    compile_target,
    debugreg_gdb,
    environment,
    plain_gdb,
    ptrace_refused,
    unavailable,
)

from debugreg.gdb import EXTENSION  # noqa: E402

GOAL_MS = 50.0


def commands(pid: int) -> dict[str, list[str]]:
    batch = ["-batch", "-p", str(pid), "-ex", "watch -l counter", "-ex", "continue"]
    return {
        "plain": plain_gdb(*batch),
        "debugreg_gdb": debugreg_gdb(*batch),
        "sourced": plain_gdb("-iex", f"source {EXTENSION}", *batch),
    }


def one_run(binary: Path, variant: str, env: dict[str, str]) -> tuple[float, float]:
    """(ms to the first stop, ms to gdb's exit) of one variant on a fresh target."""
    with Target(binary) as target:
        argv = commands(target.pid)[variant]
        start = time.perf_counter()
        with Lines(argv, env) as gdb:
            gdb.expect(r"^Hardware watchpoint 1")
            target.send("w")
            gdb.expect(r"^New value = ")
            stop = time.perf_counter()
            said = gdb.finish()
            end = time.perf_counter()
    if "debugreg:" in said:
        raise SystemExit(f"the extension said something in {variant}:\n{said}")
    return (stop - start) * 1_000, (end - start) * 1_000


# Run by gdb: the same steps one by one, timed inside gdb (the extension sourced or not).
STEPS = """
python
import time
t0 = time.perf_counter()
{source}
t1 = time.perf_counter()
gdb.execute("attach {pid}", to_string=True)
t2 = time.perf_counter()
gdb.execute("watch -l counter", to_string=True)
t3 = time.perf_counter()
print("STEPS", (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000)
end
"""


def steps(binary: Path, extension: bool, env: dict[str, str], tmp: Path) -> list[float]:
    """Milliseconds inside gdb to source the extension (or not), attach, and set the watchpoint
    (with the extension: open a session and reserve)."""
    source = f'gdb.execute("source {EXTENSION}")' if extension else "pass"
    with Target(binary) as target:
        script = tmp / "steps.gdb"
        script.write_text(STEPS.format(source=source, pid=target.pid))
        done = subprocess.run(
            plain_gdb("-batch", "-x", str(script)),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    line = next(line for line in done.stdout.splitlines() if line.startswith("STEPS"))
    return [float(x) for x in line.split()[1:]]


def perf_permitted() -> str | None:
    """Why the perf backend cannot be measured here (None: it can)."""
    code = (
        "import ctypes, os, threading\n"
        "from debugregd.backends import perf_event as p\n"
        "w = ctypes.c_uint64(0)\n"
        "os.close(p.open_breakpoint(p.HW_BREAKPOINT_W, ctypes.addressof(w), 8, "
        "threading.get_native_id()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def measure(backend: str, binary: Path, runs: int, tmp: Path) -> dict[str, Any]:
    ncpus = os.cpu_count() or 1
    daemon = Daemon(tmp / f"state-{backend}", "--backend", backend, "--cpus", str(ncpus))
    daemon.state_dir.mkdir()
    daemon.start()
    try:
        env = environment(DEBUGREG_URL=daemon.url, DEBUGREGD_ADMIN_KEY=daemon.admin_key)
        # Compiled modules cached, as `pip install` leaves them (run 0 writes them here).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        variants = list(commands(0))
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        inside: dict[bool, list[list[float]]] = {False: [], True: []}
        for run in range(runs + 1):  # run 0 warms the page cache and is dropped
            order = variants[run % len(variants) :] + variants[: run % len(variants)]
            for variant in order:
                timing = one_run(binary, variant, env)
                if run:
                    samples[variant].append(timing)
            for extension in (run % 2 == 0, run % 2 == 1):
                figures = steps(binary, extension, env, tmp)
                if run:
                    inside[extension].append(figures)
    finally:
        daemon.kill()
    stop = {v: round(statistics.median(s[0] for s in t), 1) for v, t in samples.items()}
    end = {v: round(statistics.median(s[1] for s in t), 1) for v, t in samples.items()}
    extra = round(stop["debugreg_gdb"] - stop["plain"], 1)
    names = ("source_ms", "attach_ms", "watch_ms")
    return {
        "inside_gdb": {
            "extension" if extension else "plain": {
                name: round(statistics.median(f[k] for f in figures), 1)
                for k, name in enumerate(names)
            }
            for extension, figures in inside.items()
        },
        "stop_ms": stop,
        "exit_ms": end,
        "spread_stop_ms": {
            v: [round(min(s[0] for s in t), 1), round(max(s[0] for s in t), 1)]
            for v, t in samples.items()
        },
        "debugreg_gdb_extra_ms": extra,
        "sourced_extra_ms": round(stop["sourced"] - stop["plain"], 1),
        "goal_met": extra <= GOAL_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per variant and backend")
    parser.add_argument("--backend", choices=["sim", "perf", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    why = unavailable()
    if why is not None:
        raise SystemExit(f"bench/gdb.py: {why}")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gdb-") as tmp:
        binary = compile_target(Path(tmp))
        why = ptrace_refused(binary)
        if why is not None:
            raise SystemExit(f"bench/gdb.py: {why}")
        backends = ["sim", "perf"] if args.backend == "both" else [args.backend]
        if "perf" in backends and (refused := perf_permitted()) is not None:
            print(f"perf backend skipped: {refused}", file=sys.stderr)
            backends.remove("perf")
        for backend in backends:
            result[backend] = measure(backend, binary, args.runs, Path(tmp))
    result["method"] = {
        "runs": args.runs,
        "statistic": "median over runs; variants take turns run by run",
        "command": "gdb -nx -batch -p PID -ex 'watch -l counter' -ex continue",
        "stop": "from starting the command to gdb's 'New value' line",
        "exit": "from starting the command to gdb's exit",
        "inside_gdb": "the same steps run one by one by a gdb script, timed inside gdb",
    }
    result["revision"] = revision()
    result["machine"] = machine()
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for backend in ("sim", "perf"):
        if backend in result:
            figures = result[backend]
            for variant, ms in figures["stop_ms"].items():
                end = figures["exit_ms"][variant]
                print(f"{backend:>4} {variant:>12}: stop {ms:7.1f} ms, exit {end:7.1f} ms")
            print(f"{backend:>4} debugreg gdb adds {figures['debugreg_gdb_extra_ms']} ms")
            for who, step in figures["inside_gdb"].items():
                print(f"{backend:>4} inside gdb, {who}: {step}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
