"""Who debugs the tasks debugregd watches, for `--yield-to-tracers` (DESIGN section 12).

A debugger that does not ask (plain gdb) attaches to a task through ptrace before it writes the
task's debug registers. The kernel reports every attach and detach on its process events connector
(netlink, `PROC_EVENT_PTRACE`), the moment it happens, to a daemon with CAP_NET_ADMIN; the daemon
then has the time gdb spends reading symbols to make room. A tracer that exits (or is killed)
without detaching sends no ptrace event: its tracees are let go as it exits, which the connector
reports as the tracer's `PROC_EVENT_EXIT`. Where the connector is not open to it,
each watched task's `TracerPid` in /proc is read every `POLL_S` instead; the same reading, less
often, catches anything the connector dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("debugregd")

POLL_S = 0.1  # without the connector: how often watched tasks' TracerPid is read
CHECK_S = 5.0  # with it: how often, in case an event was dropped

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_PTRACE = 0x100
PROC_EVENT_EXIT = 0x80000000
# nlmsghdr (16 bytes), cn_msg (20), then proc_event: what, cpu, timestamp_ns, and for a ptrace
# event process_pid, process_tgid, tracer_pid, tracer_tgid.
_HEADER = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT = struct.Struct("=IIQ")
_PTRACE = struct.Struct("=iiii")
_EXIT = struct.Struct("=ii")  # the exiting thread and its process (then exit code, signal...)
_EVENT_AT = _HEADER.size + _CN_MSG.size

OnChange = Callable[[int, int], None]  # (tid, tracer pid; 0 once it detached)


def tracer_of(tid: int) -> int:
    """The pid tracing `tid` (TracerPid in /proc), 0 for none or a task that is gone."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def describe(pid: int) -> str:
    """'PID 4242 (gdb)': how a tracer is named to the holders it displaces."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return f"PID {pid} ({comm.read().strip()})"
    except OSError:
        return f"PID {pid}"


class TracerWatcher:
    """Calls `on_change(tid, tracer)` when a tracer attaches to or detaches from a task in
    `watched()`; runs on the event loop."""

    def __init__(self, watched: Callable[[], set[int]], on_change: OnChange) -> None:
        self.watched = watched
        self.on_change = on_change
        self.known: dict[int, int] = {}  # tid -> tracer pid, for traced tasks
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def events(self) -> bool:
        """Whether the kernel's process events connector tells attaches as they happen."""
        return self._socket is not None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._socket = _listen()
        except OSError as exc:
            log.info("process events connector unavailable (%s): polling TracerPid", exc)
        else:
            loop.add_reader(self._socket.fileno(), self._read)
        self.check()
        self._task = loop.create_task(self._poll(), name="tracer-poller")

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def check(self) -> None:
        """Read the tracer of every watched task and report what changed."""
        tids = self.watched()
        for tid in list(self.known):
            if tid not in tids:
                del self.known[tid]
        for tid in tids:
            self._saw(tid, tracer_of(tid))

    def check_one(self, tid: int) -> None:
        """Read the tracer of task `tid` alone (one just watched) and report it if it changed."""
        self._saw(tid, tracer_of(tid))

    def _saw(self, tid: int, tracer: int) -> None:
        if self.known.get(tid, 0) == tracer:
            return
        if tracer:
            self.known[tid] = tracer
        else:
            self.known.pop(tid, None)
        self.on_change(tid, tracer)

    def _read(self) -> None:
        assert self._socket is not None
        watched: set[int] | None = None
        while True:
            try:
                data = self._socket.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: events were dropped; read everything afresh
                log.warning("process events connector: %s; reading TracerPid again", exc)
                self.check()
                return
            if len(data) < _EVENT_AT + _EVENT.size + _PTRACE.size:
                continue
            what, _, _ = _EVENT.unpack_from(data, _EVENT_AT)
            if what == PROC_EVENT_EXIT:
                # The kernel detached its tracees as the tracer thread exited.
                gone, _ = _EXIT.unpack_from(data, _EVENT_AT + _EVENT.size)
                for tid in [t for t, tracer in self.known.items() if tracer == gone]:
                    self._saw(tid, 0)
                continue
            if what != PROC_EVENT_PTRACE:
                continue
            tid, _, tracer, _ = _PTRACE.unpack_from(data, _EVENT_AT + _EVENT.size)
            if watched is None:
                watched = self.watched()
            if tid in watched:
                self._saw(tid, tracer)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S if self.events else POLL_S)
            self.check()


def _listen() -> socket.socket:
    """A netlink socket subscribed to the kernel's process events (needs CAP_NET_ADMIN)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        sock.bind((0, CN_IDX_PROC))
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        message = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        sock.send(
            _HEADER.pack(_HEADER.size + len(message), NLMSG_DONE, 0, 0, os.getpid()) + message
        )
    except OSError:
        sock.close()
        raise
    return sock
