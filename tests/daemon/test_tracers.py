"""--yield-to-tracers learns who traces the tasks it watches: the moment a tracer attaches or
detaches (the kernel's process events connector), or by reading TracerPid where that is closed."""

from __future__ import annotations

import asyncio
import ctypes
import subprocess
import sys

import pytest

from debugregd import tracers
from debugregd.tracers import TracerWatcher

# A tracer outside the test: seizes the pid on its command line through ptrace, says "seized",
# and detaches when its stdin closes (by exiting).
TRACER = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
if libc.ptrace(PTRACE_SEIZE, int(sys.argv[1]), None, None) != 0:
    print("refused", ctypes.get_errno(), flush=True)
    sys.exit(1)
print("seized", flush=True)
sys.stdin.read()
"""


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)


def seize(pid: int) -> subprocess.Popen[str]:
    tracer = subprocess.Popen(
        [sys.executable, "-c", TRACER, str(pid)], stdin=-1, stdout=subprocess.PIPE, text=True
    )
    assert tracer.stdout is not None
    if tracer.stdout.readline().strip() != "seized":
        tracer.kill()
        pytest.skip("ptrace is not permitted here (Yama, or no CAP_SYS_PTRACE)")
    return tracer


@pytest.mark.parametrize("connector", [True, False], ids=["events", "polling"])
async def test_an_attach_and_a_detach_are_reported_with_the_tracer(
    connector: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connector:
        # Only the kernel's event may report it: the fallback poll would catch it within 10 s.
        monkeypatch.setattr(tracers, "CHECK_S", 3600.0)
    else:
        monkeypatch.setattr(tracers, "_listen", _closed)
    seen: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    target = sleeper()
    watcher = TracerWatcher(lambda: {target.pid}, lambda tid, pid: seen.put_nowait((tid, pid)))
    watcher.start()
    try:
        if connector and not watcher.events:
            pytest.skip("the process events connector is not open to this process")
        tracer = seize(target.pid)
        assert await asyncio.wait_for(seen.get(), 10) == (target.pid, tracer.pid)
        assert tracers.describe(tracer.pid).startswith(f"PID {tracer.pid} (python")
        assert tracer.stdin is not None
        tracer.stdin.close()
        tracer.wait(timeout=10)
        assert await asyncio.wait_for(seen.get(), 10) == (target.pid, 0)
    finally:
        watcher.close()
        target.kill()
        target.wait()


async def test_tasks_that_are_not_watched_are_not_reported() -> None:
    seen: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    target, other = sleeper(), sleeper()
    watcher = TracerWatcher(lambda: {other.pid}, lambda tid, pid: seen.put_nowait((tid, pid)))
    watcher.start()
    try:
        # `target` is seized first: whichever way the watcher learns (events or polling), what
        # it reports about `other` comes after anything it would have said about `target`.
        tracers_ = [seize(target.pid), seize(other.pid)]
        assert await asyncio.wait_for(seen.get(), 10) == (other.pid, tracers_[1].pid)
        assert seen.empty()
        for tracer in tracers_:
            tracer.kill()
            tracer.wait()
    finally:
        watcher.close()
        for p in (target, other):
            p.kill()
            p.wait()


def _closed() -> object:
    raise PermissionError(1, "not permitted")


def test_tracer_of_reads_nobody_for_a_task_that_is_gone() -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert tracers.tracer_of(int(gone.stdout)) == 0
    assert tracers.tracer_of(ctypes.CDLL(None).getpid()) == 0
