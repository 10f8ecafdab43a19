"""The perf backend: real hardware breakpoints through perf_event_open (DESIGN section 12).

Each installed allocation becomes one counting perf event per chunk and per target: a task on
every CPU is pid=tid, cpu=-1; a task with an affinity set is one event per CPU of the set, which
the kernel counts on that CPU only; a CPU or CPU-set allocation is pid=-1, cpu=c for each CPU.
The kernel then does its own admission, and since the core admits exactly where the kernel does,
a refusal (ENOSPC) means a user outside debugregd holds registers the core believed free.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from debugregd.backends import perf_event
from debugregd.backends.base import ARM_EVENTS, DISARM_EVENTS, ArmFailure, Hit
from debugregd.backends.perf_event import PerfEventError
from debugregd.core.model import Event
from debugregd.core.profiles import Access, Profile, x86_64
from debugregd.core.watch import Chunk

BP_TYPES = {
    Access.EXEC: perf_event.HW_BREAKPOINT_X,
    Access.WRITE: perf_event.HW_BREAKPOINT_W,
    Access.RW: perf_event.HW_BREAKPOINT_RW,
}

ALL_CPUS = -1  # perf's cpu argument for "wherever the task runs"
ANY_TASK = -1  # perf's pid argument for "every task on this CPU"

Target = tuple[int, int]  # (pid, cpu) as perf_event_open takes them


@dataclass(slots=True)
class _Counter:
    """One perf event: one chunk on one target."""

    fd: int
    chunk: Chunk
    target: Target
    seen: int = 0  # the count at the last poll


@dataclass(slots=True)
class _Armed:
    """The perf events of one watchpoint. Identical allocations of one scope share it, as they
    share a register in the core: opening events for each would take registers the core never
    counted, and the kernel would refuse them."""

    key: tuple[Any, ...]
    access: Access
    tid: int | None
    counters: list[_Counter]
    holders: dict[str, None] = field(default_factory=dict)  # allocation ids, ordered


class PerfBackend:
    """Arms what the core installs as perf_event_open hardware breakpoints and counts hits."""

    name = "perf"

    def __init__(self, profile: Profile | None = None, ncpus: int | None = None) -> None:
        self.profile = profile or x86_64()
        self.ncpus = ncpus or os.cpu_count() or 1
        self._armed: dict[tuple[Any, ...], _Armed] = {}
        self._by_allocation: dict[str, _Armed] = {}

    def apply(self, events: Sequence[Event]) -> list[ArmFailure]:
        """Open the events of installed allocations, close those of ended ones."""
        failures: list[ArmFailure] = []
        for event in events:
            record = event.allocation
            if record is None:
                continue
            if event.type in ARM_EVENTS:
                failure = self._arm(record)
                if failure is not None:
                    failures.append(failure)
            elif event.type in DISARM_EVENTS:
                self._disarm(record["id"])
        return failures

    def poll_hits(self) -> list[Hit]:
        """One hit per allocation and perf event whose count grew since the last poll."""
        hits: list[Hit] = []
        for armed in self._armed.values():
            for counter in armed.counters:
                count = perf_event.read_count(counter.fd)
                delta = count - counter.seen
                if not delta:
                    continue
                counter.seen = count
                cpu = counter.target[1]
                address, length = counter.chunk
                data = {
                    "count": delta,
                    "cpu": None if cpu == ALL_CPUS else cpu,
                    "tid": armed.tid,
                    "address": address,
                    "length": length,
                    # A counter cannot tell a read from a write: this is what was watched.
                    "access": armed.access.value,
                    "backend": self.name,
                }
                hits.extend(Hit(aid, dict(data)) for aid in armed.holders)
        return hits

    def close(self) -> None:
        """Close every perf event."""
        for armed in self._armed.values():
            _close_all(armed.counters)
        self._armed.clear()
        self._by_allocation.clear()

    def open_events(self) -> dict[str, int]:
        """Open perf events per armed allocation id (shared events count for each holder)."""
        return {aid: len(armed.counters) for aid, armed in self._by_allocation.items()}

    # ------------------------------------------------------------------ internals

    def _arm(self, record: dict[str, Any]) -> ArmFailure | None:
        aid: str = record["id"]
        self._disarm(aid)  # a repeated announcement arms afresh, never twice
        access = Access(record["access"])
        address: int = record["address"]
        length: int = record["length"]
        chunks = self.profile.chunks(address, length, access)
        tid, targets = self._targets(record["scope"])
        user = record.get("space", "user") == "user"
        key = (targets, chunks, access, user)
        armed = self._armed.get(key)
        if armed is None:
            try:
                counters = self._open(chunks, targets, access, user)
            except _OpenFailed as failed:
                return ArmFailure(aid, failed.reason(tid, address, length), failed.errno)
            armed = self._armed[key] = _Armed(key, access, tid, counters)
        armed.holders[aid] = None
        self._by_allocation[aid] = armed
        return None

    def _disarm(self, aid: str) -> None:
        armed = self._by_allocation.pop(aid, None)
        if armed is None:
            return
        del armed.holders[aid]
        if not armed.holders:
            del self._armed[armed.key]
            _close_all(armed.counters)

    def _targets(self, scope: dict[str, Any]) -> tuple[int | None, tuple[Target, ...]]:
        kind = scope["kind"]
        if kind == "task":
            tid = int(scope["tid"])
            cpus = scope.get("cpus")
            # One event follows the task everywhere; per-CPU events only restrict it.
            if cpus is None or set(cpus) >= set(range(self.ncpus)):
                return tid, ((tid, ALL_CPUS),)
            return tid, tuple((tid, c) for c in sorted(cpus))
        if kind == "cpu":
            return None, ((ANY_TASK, int(scope["cpu"])),)
        cpus = scope["cpus"]
        chosen = range(self.ncpus) if cpus == "all" else sorted(cpus)
        return None, tuple((ANY_TASK, c) for c in chosen)

    @staticmethod
    def _open(
        chunks: tuple[Chunk, ...], targets: tuple[Target, ...], access: Access, user: bool
    ) -> list[_Counter]:
        """Every event of a watchpoint, or none: on a failure the ones opened are closed."""
        counters: list[_Counter] = []
        bp_type = BP_TYPES[access]
        for chunk in chunks:
            attr = perf_event.breakpoint_attr(bp_type, *chunk, exclude_kernel=user)
            for target in targets:
                try:
                    fd = perf_event.perf_event_open(attr, *target)
                except PerfEventError as exc:
                    _close_all(counters)
                    raise _OpenFailed(exc.errno, chunk, target) from exc
                counters.append(_Counter(fd, chunk, target))
        return counters


class _OpenFailed(Exception):
    """perf_event_open refused one event of a watchpoint."""

    def __init__(self, err: int, chunk: Chunk, target: Target) -> None:
        super().__init__(err)
        self.errno = err
        self.chunk = chunk
        self.target = target

    def reason(self, tid: int | None, address: int, length: int) -> str:
        """What the daemon tells the evicted holder, naming the cause and, where there is one,
        the fix."""
        err = self.errno
        name = errno.errorcode.get(err, str(err))
        cpu = self.target[1]
        where = f"task {tid}" if tid is not None else f"CPU {cpu}"
        what = f"0x{address:x}+{length} for {where}"
        if err == errno.ENOSPC:
            return (
                f"the kernel refused: another user outside debugregd holds the debug registers "
                f"({what}: {name})"
            )
        if err == errno.ESRCH:
            return f"no such task {tid}: it exited or never existed ({name})"
        if err in (errno.EACCES, errno.EPERM):
            return (
                f"the kernel did not permit a hardware breakpoint ({what}: {name}): another "
                "task needs ptrace access to it, a CPU-wide one CAP_PERFMON or "
                "kernel.perf_event_paranoid <= 0, a kernel address CAP_SYS_ADMIN"
            )
        if err == errno.EINVAL:
            return (
                f"the kernel rejected the breakpoint at 0x{self.chunk[0]:x}+{self.chunk[1]} "
                f"({what}): invalid address, length, alignment or CPU ({name})"
            )
        if err == errno.ENODEV:
            return f"CPU {cpu} is offline or has no hardware breakpoints ({what}: {name})"
        if err in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENOSYS):
            return f"this kernel or machine has no hardware breakpoints ({name})"
        if err in (errno.EMFILE, errno.ENFILE):
            return (
                f"debugregd ran out of file descriptors ({what}: {name}); raise its open file "
                "limit (LimitNOFILE)"
            )
        return f"perf_event_open failed for {what}: {os.strerror(err)} ({name})"


def _close_all(counters: list[_Counter]) -> None:
    for counter in counters:
        os.close(counter.fd)
    counters.clear()
