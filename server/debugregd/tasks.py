"""Task lifetime: knowing when a watched thread exits, so a dead task never blocks admission.

Each watched thread gets a pidfd (`pidfd_open` with PIDFD_THREAD, Linux 6.9 and later, for any
thread, not only a process's leader) that the event loop waits on: it becomes readable when the
thread exits. Where the kernel offers no pidfd for a thread, the thread's /proc entry is checked
once a second instead. Either way the daemon learns it as a fact (`on_exit(tid)`), which it
journals as a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Iterable

PIDFD_THREAD = os.O_EXCL  # pidfd_open's flag for a thread that need not lead its process
POLL_S = 1.0  # how often threads without a pidfd are looked for in /proc


def exited(tid: int) -> bool:
    """Whether thread `tid` is gone: no /proc entry, or a zombie (which holds no breakpoint)."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not ours to read: alive as far as we can tell
    # The state follows the command name, which is in parentheses and may contain them.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state in (b"Z", b"X")


class TaskWatcher:
    """Calls `on_exit(tid)` once when a watched thread exits; runs on the event loop."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit
        self._pidfds: dict[int, int] = {}  # tid -> pidfd the loop reads
        self._polled: set[int] = set()  # tids without a pidfd, checked in /proc
        self._poller: asyncio.Task[None] | None = None

    @property
    def watched(self) -> set[int]:
        return set(self._pidfds) | self._polled

    def watch(self, tid: int) -> bool:
        """Watch `tid` until it exits; False if it was watched already or is gone."""
        if tid in self._pidfds or tid in self._polled:
            return False
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(tid, PIDFD_THREAD)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                loop.call_soon(self.on_exit, tid)  # gone already
                return False
            # EINVAL (a kernel without PIDFD_THREAD for this thread), EPERM...: use /proc.
            self._polled.add(tid)
            if self._poller is None:
                self._poller = loop.create_task(self._poll(), name="task-poller")
            return True
        self._pidfds[tid] = fd
        loop.add_reader(fd, self._gone, tid)
        return True

    def keep_only(self, tids: Iterable[int]) -> None:
        """Stop watching every thread not in `tids` (the daemon no longer cares about them)."""
        keep = set(tids)
        for tid in [t for t in self._pidfds if t not in keep]:
            self._forget(tid)
        self._polled &= keep

    def close(self) -> None:
        for tid in list(self._pidfds):
            self._forget(tid)
        self._polled.clear()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def _gone(self, tid: int) -> None:
        self._forget(tid)
        self.on_exit(tid)

    def _forget(self, tid: int) -> None:
        fd = self._pidfds.pop(tid)
        with contextlib.suppress(ValueError, RuntimeError):  # the loop may be closing
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for tid in [t for t in self._polled if exited(t)]:
                self._polled.discard(tid)
                self.on_exit(tid)
