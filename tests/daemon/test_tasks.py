"""Task lifetime: the daemon learns that a watched thread exited (a pidfd the event loop waits on,
or /proc where there is none), once, whether it is a process or one thread of one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from debugregd import tasks
from debugregd.tasks import TaskWatcher

THREADED = """
import sys, threading
done = threading.Event()
def worker():
    print(threading.get_native_id(), flush=True)
    done.wait()
t = threading.Thread(target=worker)
t.start()
sys.stdin.readline()
done.set()
t.join()
print("joined", flush=True)
sys.stdin.readline()
"""


async def exits(watcher_exits: asyncio.Queue[int]) -> int:
    return await asyncio.wait_for(watcher_exits.get(), timeout=10)


async def test_a_process_that_exits_is_reported_once() -> None:
    gone: asyncio.Queue[int] = asyncio.Queue()
    watcher = TaskWatcher(gone.put_nowait)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        watcher.watch(proc.pid)
        watcher.watch(proc.pid)  # watched already: still one report
        assert proc.pid in watcher.watched
        proc.kill()
        proc.wait()
        assert await exits(gone) == proc.pid
        assert gone.empty() and proc.pid not in watcher.watched
    finally:
        watcher.close()


async def test_one_thread_of_a_process_that_exits_is_reported() -> None:
    gone: asyncio.Queue[int] = asyncio.Queue()
    watcher = TaskWatcher(gone.put_nowait)
    proc = subprocess.Popen(
        [sys.executable, "-c", THREADED], stdin=-1, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        thread = int(proc.stdout.readline())
        watcher.watch(thread)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "joined"
        assert await exits(gone) == thread
        assert proc.poll() is None  # the process lives on
    finally:
        proc.kill()
        proc.wait()
        watcher.close()


async def test_a_task_gone_before_it_is_watched_is_reported_at_once() -> None:
    gone: asyncio.Queue[int] = asyncio.Queue()
    watcher = TaskWatcher(gone.put_nowait)
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(done.stdout)
    watcher.watch(pid)
    assert await exits(gone) == pid
    watcher.close()


def test_proc_tells_a_zombie_and_a_missing_task_from_a_live_one() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    assert proc.stdin is not None
    assert not tasks.exited(proc.pid)
    proc.stdin.close()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert tasks.exited(proc.pid)  # which holds no breakpoint any more
    proc.wait()
    assert tasks.exited(proc.pid)


async def test_keep_only_stops_watching_the_others() -> None:
    gone: asyncio.Queue[int] = asyncio.Queue()
    watcher = TaskWatcher(gone.put_nowait)
    procs = [
        subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
        for _ in range(2)
    ]
    try:
        for p in procs:
            watcher.watch(p.pid)
        watcher.keep_only({procs[1].pid})
        assert watcher.watched == {procs[1].pid}
        for p in procs:
            p.kill()
            p.wait()
        assert await exits(gone) == procs[1].pid
    finally:
        watcher.close()
