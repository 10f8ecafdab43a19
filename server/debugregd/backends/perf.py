"""The perf backend: real hardware breakpoints through perf_event_open (DESIGN section 12).

Each armed watchpoint is one counting perf event per chunk and per target: a task on every CPU is
pid=tid, cpu=-1; a task with an affinity set is one event per CPU of the set, which the kernel
counts on that CPU only; a CPU or CPU-set watchpoint is pid=-1, cpu=c for each CPU.

The kernel does its own admission with the same rule as the core, so when it refuses (ENOSPC) what
the core admitted, users outside debugregd hold registers the core did not know of. The backend
then measures them (`debugregd.backends.measure`) and answers the core with that fact.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from debugregd.backends import perf_event
from debugregd.backends.base import Hit, Targets
from debugregd.backends.measure import ALL_CPUS, Armed, FreeRoom, outside_holders
from debugregd.backends.perf_event import PerfEventError
from debugregd.core.kernel import (
    DENIED,
    INVALID,
    NO_TASK,
    UNAVAILABLE,
    Answer,
    Measurement,
    NoRoom,
    Rejected,
)
from debugregd.core.model import Watchpoint
from debugregd.core.profiles import Access, Profile, x86_64
from debugregd.core.watch import Chunk

BP_TYPES = {
    Access.EXEC: perf_event.HW_BREAKPOINT_X,
    Access.WRITE: perf_event.HW_BREAKPOINT_W,
    Access.RW: perf_event.HW_BREAKPOINT_RW,
}
ANY_TASK = -1  # perf's pid argument for "every task on this CPU"
# The machine each profile describes, as platform.machine() names it.
MACHINES = {"x86_64": ("x86_64",), "arm64": ("aarch64", "arm64"), "ppc64": ("ppc64", "ppc64le")}
# Registers x86-64 has per CPU (DR0-DR3): fixed by the architecture, whatever is free now.
X86_SLOTS = 4
MEASURE_LIMIT = 32  # more breakpoints than any CPU has: a measurement ends by ENOSPC before

Target = tuple[int, int]  # (pid, cpu) as perf_event_open takes them


class ProbeError(RuntimeError):
    """The machine contradicts the configuration; the message says what to change."""


@dataclass(slots=True)
class _Counter:
    """One perf event: one chunk on one target."""

    fd: int
    chunk: Chunk
    target: Target
    seen: int = 0  # the count at the last poll


class PerfBackend:
    """Arms what the core installs as perf_event_open hardware breakpoints and counts hits."""

    name = "perf"
    real_tasks = True

    def __init__(self, profile: Profile | None = None, ncpus: int | None = None) -> None:
        self.profile = profile or x86_64()
        self.ncpus = ncpus or os.cpu_count() or 1
        self.slots = dict(self.profile.pools)
        self._counters: dict[Watchpoint, list[_Counter]] = {}
        self._mine = {pool: Armed(self.ncpus) for pool in self.slots}
        self._lost: list[Watchpoint] = []
        word = self._word = ctypes.c_uint64(0)
        self._probe_address = ctypes.addressof(word)
        self.probed: dict[str, Any] = {}

    # -- the kernel port

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        """Close the events of `freeing`, open those of `wps`; on a refusal, close what was just
        opened, open `freeing` again and answer why (measured, for ENOSPC)."""
        parked = [wp for wp in freeing if wp in self._counters]
        for wp in parked:
            self.disarm(wp)
        done: list[Watchpoint] = []
        for wp in wps:
            try:
                self._arm_one(wp)
            except _OpenFailed as failed:
                for w in done:
                    self.disarm(w)  # nothing for a reservation, which is never kept open
                for w in parked:
                    try:
                        self._arm_one(w)
                    except _OpenFailed:  # someone took the room in between: say so later
                        self._lost.append(w)
                return self._answer(failed, wp)
            done.append(wp)
        return None

    def disarm(self, wp: Watchpoint) -> None:
        counters = self._counters.pop(wp, None)
        if counters is not None:
            _close_all(counters)
            self._mine[self._pool(wp)].remove(wp)

    def measure(self, targets: dict[str, Targets]) -> list[Measurement]:
        out = []
        for budget, want in targets.items():
            if budget not in self.slots or not want:
                continue
            out.append(self._measure(budget, want))
        return out

    def probe(self) -> dict[str, Any]:
        """Check the machine against the profile and CPU count; ProbeError says what to change.
        Returns what was found (the free room per CPU and pool, at start)."""
        machine = platform.machine()
        if machine not in MACHINES.get(self.profile.name, ()):
            raise ProbeError(
                f"--profile {self.profile.name} does not describe this {machine} machine; "
                f"use --profile {_profile_of(machine)} with --backend perf, or --backend sim"
            )
        online = online_cpus()
        missing = [c for c in range(self.ncpus) if c not in online]
        if missing:
            raise ProbeError(
                f"--cpus {self.ncpus} asks for CPUs {_ranges(missing)}, which are not online here "
                f"(online: {_ranges(sorted(online))}); use --cpus {len(online)} or fewer"
            )
        free: dict[str, list[int]] = {}
        for pool in self.slots:
            try:
                me = threading.get_native_id()
                free[pool] = [self._free_room(pool, me, c) for c in range(self.ncpus)]
            except PerfEventError as exc:
                raise ProbeError(_not_permitted(exc)) from None
        hardware = {pool: self._hardware_slots(pool, rooms) for pool, rooms in free.items()}
        for pool, slots in self.slots.items():
            if slots > hardware[pool]:
                raise ProbeError(
                    f"--pools {pool}={slots} asks for more registers than this machine has "
                    f"({hardware[pool]} per CPU); use {pool}={hardware[pool]}"
                )
            if slots < hardware[pool]:
                # The kernel would still admit up to the hardware's count, so users outside
                # could not be told from the registers debugregd leaves unused.
                raise ProbeError(
                    f"--pools {pool}={slots} is fewer than the {hardware[pool]} registers the "
                    f"kernel gives every user; with --backend perf use {pool}={hardware[pool]} "
                    "(to keep registers for debuggers that do not ask, use --reserve-for-ptrace)"
                )
        self.probed = {
            "machine": machine,
            "cpus_online": len(online),
            "slots": hardware,
            "free_at_start": free,
        }
        return self.probed

    def lost(self) -> list[Watchpoint]:
        lost, self._lost = self._lost, []
        return [wp for wp in lost if wp.holders]

    def poll_hits(self) -> list[Hit]:
        """One hit per allocation and perf event whose count grew since the last poll."""
        hits: list[Hit] = []
        for wp, counters in self._counters.items():
            for counter in counters:
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
                    "tid": wp.tid,
                    "address": address,
                    "length": length,
                    # A counter cannot tell a read from a write: this is what was watched.
                    "access": wp.access.value,
                    "backend": self.name,
                }
                hits.extend(Hit(a.id, dict(data)) for a in wp.holders)
        return hits

    def close(self) -> None:
        """Close every perf event."""
        for wp in list(self._counters):
            self.disarm(wp)

    def open_events(self) -> dict[str, int]:
        """Open perf events per armed allocation id (shared events count for each holder)."""
        return {a.id: len(counters) for wp, counters in self._counters.items() for a in wp.holders}

    # -- internals

    def _pool(self, wp: Watchpoint) -> str:
        return wp.pool.partition("/")[0]

    def _arm_one(self, wp: Watchpoint) -> None:
        counters: list[_Counter] = []
        bp_type = BP_TYPES[wp.access]
        for chunk in wp.chunks:
            attr = perf_event.breakpoint_attr(bp_type, *chunk, exclude_kernel=not wp.kernel)
            for target in self._targets(wp):
                try:
                    fd = perf_event.perf_event_open(attr, *target)
                except PerfEventError as exc:
                    _close_all(counters)
                    raise _OpenFailed(exc.errno, chunk, target) from exc
                counters.append(_Counter(fd, chunk, target))
        if not wp.armed:  # a reservation: the kernel admits it, and its holder takes the room
            _close_all(counters)
            return
        self._counters[wp] = counters
        self._mine[self._pool(wp)].add(wp)

    def _targets(self, wp: Watchpoint) -> tuple[Target, ...]:
        if wp.tid is None:
            return tuple((ANY_TASK, c) for c in wp.cpus)
        # One event follows the task everywhere; per-CPU events only restrict it.
        if len(wp.cpus) >= self.ncpus:
            return ((wp.tid, ALL_CPUS),)
        return tuple((wp.tid, c) for c in wp.cpus)

    def _answer(self, failed: _OpenFailed, wp: Watchpoint) -> Answer:
        err = failed.errno
        if err == errno.ENOSPC:
            if wp.tid is None:
                want = Targets(cpus=set(wp.cpus), others=set(wp.cpus))
            else:
                want = Targets(tasks={wp.tid})
            try:
                return NoRoom(self._measure(self._pool(wp), want))
            except PerfEventError as exc:
                err = exc.errno  # e.g. the task exited meanwhile
        why = {
            errno.ESRCH: NO_TASK,
            errno.EINVAL: INVALID,
            errno.ENODEV: INVALID,
            errno.ENOENT: INVALID,
            errno.EOPNOTSUPP: INVALID,
            errno.ENOSYS: INVALID,
            errno.EACCES: DENIED,
            errno.EPERM: DENIED,
        }.get(err, UNAVAILABLE)
        return Rejected(why, failed.reason(wp, err), wp.tid if why == NO_TASK else None)

    def _measure(self, pool: str, want: Targets) -> Measurement:
        """Free room on the targets of `want`, opened until ENOSPC and closed at once, turned
        into what users outside debugregd hold there."""
        free = FreeRoom()
        cpus = set(want.cpus) | set(want.others)
        if want.tasks:
            cpus.update(range(self.ncpus))
        # Idle room is measured on this thread, which holds no breakpoint: it fills only this
        # thread's slots, so it never refuses another task (a debugger's ptrace) meanwhile. The
        # CPU-wide room does, for microseconds, so it is measured only where a CPU-wide holder
        # was refused or a holder of that kind is being watched.
        me = threading.get_native_id()
        free.idle = {c: self._free_room(pool, me, c) for c in sorted(cpus)}
        for tid in sorted(want.tasks):
            # CPU by CPU: what users outside hold on a task may differ between CPUs (a
            # breakpoint bound to one), and its record counts where it holds the most.
            try:
                free.tasks[tid] = {c: self._free_room(pool, tid, c) for c in range(self.ncpus)}
            except PerfEventError as exc:
                if exc.errno != errno.ESRCH:
                    raise  # a task that exited holds nothing: not measured
        free.cpu_wide = {c: self._free_room(pool, ANY_TASK, c) for c in sorted(want.others)}
        return outside_holders(pool, self.slots[pool], self._mine[pool], free, me)

    def _free_room(self, pool: str, pid: int, cpu: int) -> int:
        """How many more breakpoints of `pool` the kernel admits for (pid, cpu)."""
        exec_only = pool == self.profile.exec_pool and pool != self.profile.data_pool
        if exec_only:
            bp_type, length = perf_event.HW_BREAKPOINT_X, 1
        else:
            bp_type, length = perf_event.HW_BREAKPOINT_W, 8
        attr = perf_event.breakpoint_attr(bp_type, self._probe_address, length, exclude_kernel=True)
        fds: list[int] = []
        try:
            while len(fds) < MEASURE_LIMIT:
                try:
                    fds.append(perf_event.perf_event_open(attr, pid, cpu))
                except PerfEventError as exc:
                    if exc.errno == errno.ENOSPC:
                        break
                    raise
        finally:
            for fd in fds:
                os.close(fd)
        return len(fds)

    def _hardware_slots(self, pool: str, free: list[int]) -> int:
        """Registers per CPU: x86's DR0-DR3 by the architecture; elsewhere the most found free
        (a lower bound while users outside hold some everywhere)."""
        if self.profile.name == "x86_64":
            return X86_SLOTS
        return max(free, default=0)


class _OpenFailed(Exception):
    """perf_event_open refused one event of a watchpoint."""

    def __init__(self, err: int, chunk: Chunk, target: Target) -> None:
        super().__init__(err)
        self.errno = err
        self.chunk = chunk
        self.target = target

    def reason(self, wp: Watchpoint, err: int) -> str:
        """What the daemon tells the client, naming the cause and, where there is one, the fix."""
        name = errno.errorcode.get(err, str(err))
        cpu = self.target[1]
        where = f"task {wp.tid}" if wp.tid is not None else f"CPU {cpu}"
        address, length = self.chunk
        what = f"0x{address:x}+{length} for {where}"
        if err == errno.ESRCH:
            return f"no such task {wp.tid}: it exited or never existed ({name})"
        if err in (errno.EACCES, errno.EPERM):
            return (
                f"the kernel did not permit a hardware breakpoint ({what}: {name}): another "
                "task needs ptrace access to it, a CPU-wide one CAP_PERFMON or "
                "kernel.perf_event_paranoid <= 0, a kernel address CAP_SYS_ADMIN"
            )
        if err == errno.EINVAL:
            return (
                f"the kernel rejected the breakpoint {what}: invalid address, length, "
                f"alignment or CPU ({name})"
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


def online_cpus() -> set[int]:
    """The CPUs online now, from sysfs (all of os.cpu_count() where sysfs says nothing)."""
    try:
        with open("/sys/devices/system/cpu/online") as handle:
            text = handle.read().strip()
    except OSError:
        return set(range(os.cpu_count() or 1))
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _ranges(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus) if len(cpus) < 8 else f"{cpus[0]}-{cpus[-1]}"


def _profile_of(machine: str) -> str:
    for name, machines in MACHINES.items():
        if machine in machines:
            return name
    return "(none: this architecture has no profile)"


def _not_permitted(exc: PerfEventError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"perf_event_open of a hardware breakpoint is not permitted ({name}): run as root, "
            "or grant CAP_PERFMON (CAP_SYS_ADMIN for other users' tasks) or set "
            "kernel.perf_event_paranoid <= 1; or use --backend sim"
        )
    return (
        f"this machine offers no hardware breakpoints to perf_event_open ({name}): a VM "
        "without debug register passthrough, or a kernel without CONFIG_HAVE_HW_BREAKPOINT; "
        "use --backend sim"
    )


def _close_all(counters: list[_Counter]) -> None:
    for counter in counters:
        os.close(counter.fd)
    counters.clear()
