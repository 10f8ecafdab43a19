"""The perf backend: real hardware breakpoints through perf_event_open (DESIGN section 12).

Each armed watchpoint is one perf event per chunk and per target: a task on every CPU is pid=tid,
cpu=-1; a task with an affinity set is one event per CPU of the set, which the kernel counts on
that CPU only; a CPU or CPU-set watchpoint is pid=-1, cpu=c for each CPU.

Hits say who (DESIGN section 16): each event samples every hit into its ring buffer (ip, tid,
time, CPU, address), drained on the event loop when the kernel signals data, into an aggregator
that reports, per watchpoint and interval, the exact count (read from the counter, so lost samples
never make it wrong), the samples lost, and the top call sites; at most a budget of samples per
watchpoint and interval is taken, so a hot variable costs bounded CPU. Where a ring cannot be
mapped (locked memory), the event only counts.

The kernel does its own admission with the same rule as the core, so when it refuses (ENOSPC) what
the core admitted, users outside debugregd hold registers the core did not know of. The backend
then measures them (`debugregd.backends.measure`) and answers the core with that fact.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from debugregd.backends import perf_event
from debugregd.backends.base import Hit, Targets
from debugregd.backends.hits import (
    DEFAULT_BUDGET,
    DEFAULT_SITES,
    HitAggregator,
    HitReport,
    name_site,
)
from debugregd.backends.measure import Armed, FreeRoom, outside_holders
from debugregd.backends.perf_event import PerfEventError
from debugregd.backends.ring import SampleReader, Totals, open_sampler
from debugregd.backends.symbols import Resolver
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
ALL_CPUS = -1  # perf's cpu argument for "this task on every CPU"
# The machine each profile describes, as platform.machine() names it.
MACHINES = {"x86_64": ("x86_64",), "arm64": ("aarch64", "arm64"), "ppc64": ("ppc64", "ppc64le")}
# Registers x86-64 has per CPU (DR0-DR3): fixed by the architecture, whatever is free now.
X86_SLOTS = 4
MEASURE_LIMIT = 32  # more breakpoints than any CPU has: a measurement ends by ENOSPC before

Target = tuple[int, int]  # (pid, cpu) as perf_event_open takes them


class ProbeError(RuntimeError):
    """The machine contradicts the configuration; the message says what to change."""


RING_PAGES = 16  # 64 KiB of samples per event: about 1,300 hits between two drains
NOTHING_YET = Totals(0, 0)


@dataclass(slots=True)
class _Counter:
    """One perf event: one chunk on one target; sampling into `ring`, or (no ring) counting."""

    fd: int
    chunk: Chunk
    target: Target
    ring: SampleReader | None = None
    seen: Totals = NOTHING_YET  # hits and lost samples at the last report
    listening: bool = False  # the loop wakes us when the kernel has samples


class PerfBackend:
    """Arms what the core installs as perf_event_open hardware breakpoints and counts hits."""

    name = "perf"
    real_tasks = True

    def __init__(
        self,
        profile: Profile | None = None,
        ncpus: int | None = None,
        *,
        hit_budget: int = DEFAULT_BUDGET,
        hit_sites: int = DEFAULT_SITES,
    ) -> None:
        self.profile = profile or x86_64()
        self.ncpus = ncpus or os.cpu_count() or 1
        self.slots = dict(self.profile.pools)
        self._counters: dict[Watchpoint, list[_Counter]] = {}
        self.hits = HitAggregator(
            time.time(),
            sites=hit_sites,
            budget=hit_budget,
            time_offset=time.time() - time.monotonic(),
        )
        self.resolver = Resolver()
        # Tasks that exited: forgotten by the resolver after its next pass, which may still
        # name the call sites of their last report.
        self._exited: list[int] = []
        self._ended: list[Hit] = []  # final reports of watchpoints disarmed since the last one
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
        if counters is None:
            return
        # Its last samples and counts, reported with the next hits (to the holders it had).
        for counter in counters:
            self._take(wp, counter, None)
            self._count(wp, counter)
        report = self.hits.take(wp, time.time())
        if report is not None:
            self._ended.extend(self._hits(wp, report))
        _close_all(counters)
        self._mine[wp.pool].remove(wp)

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
        """One hit report per allocation whose watchpoint was hit (or lost samples) since the
        last poll: the exact count, samples lost, top call sites (not yet resolved to files and
        symbols: `resolve`)."""
        hits, self._ended = self._ended, []
        for wp, counters in self._counters.items():
            for counter in counters:
                self._take(wp, counter, self.hits.room(wp))
                self._count(wp, counter)
        for key, report in self.hits.flush(time.time()).items():
            if isinstance(key, Watchpoint):
                hits.extend(self._hits(key, report))
        for wp, counters in self._counters.items():  # a new interval: room to take again
            for counter in counters:
                self._listen(wp, counter, True)
        return hits

    def resolve(self, hits: Sequence[Hit]) -> None:
        """Name the mapping and function of each reported call site, in place. Reads ELF files:
        run it off the event loop (one thread at a time; its caches are not locked)."""
        exited, self._exited = self._exited, []
        for hit in hits:
            for site in hit.data.get("sites", ()):
                if site["mapping"] is None:
                    name_site(site, self.resolver.resolve(site["pid"], int(site["ip"], 16)))
        for tid in exited:
            self.resolver.forget(tid)

    def close(self) -> None:
        """Close every perf event."""
        for wp in list(self._counters):
            self.disarm(wp)

    def forget_task(self, tid: int) -> None:
        """Task `tid` exited: what is cached of its memory map goes (its pid may be reused),
        once its last report is named."""
        self._exited.append(tid)

    def open_events(self) -> dict[str, int]:
        """Open perf events per armed allocation id (shared events count for each holder)."""
        return {a.id: len(counters) for wp, counters in self._counters.items() for a in wp.holders}

    # -- internals

    def _arm_one(self, wp: Watchpoint) -> None:
        counters: list[_Counter] = []
        bp_type = BP_TYPES[wp.access]
        for chunk in wp.chunks:
            for target in self._targets(wp):
                try:
                    counters.append(self._open(wp, bp_type, chunk, target))
                except PerfEventError as exc:
                    _close_all(counters)
                    raise _OpenFailed(exc.errno, chunk, target) from exc
        if not wp.armed:  # a reservation: the kernel admits it, and its holder takes the room
            _close_all(counters)
            return
        self._counters[wp] = counters
        self._mine[wp.pool].add(wp)
        for counter in counters:
            self._listen(wp, counter, True)

    def _open(self, wp: Watchpoint, bp_type: int, chunk: Chunk, target: Target) -> _Counter:
        """One event: sampling into a ring, or only counting where a ring cannot be mapped (or
        for a reservation, which is closed at once)."""
        exclude_kernel = not wp.kernel
        if wp.armed:
            try:
                ring = open_sampler(
                    bp_type, *chunk, *target, exclude_kernel=exclude_kernel, data_pages=RING_PAGES
                )
            except PerfEventError:
                raise
            except OSError:  # mmap: the locked-memory limit, or a CPU the reader cannot fence
                pass
            else:
                return _Counter(ring.fd, chunk, target, ring)
        attr = perf_event.breakpoint_attr(bp_type, *chunk, exclude_kernel=exclude_kernel)
        return _Counter(perf_event.perf_event_open(attr, *target), chunk, target)

    def _listen(self, wp: Watchpoint, counter: _Counter, on: bool) -> None:
        """Have the event loop drain `counter`'s ring when the kernel signals samples (on), or
        not (its budget is spent, or its task exited: a hangup stays readable for good)."""
        ring = counter.ring
        if ring is None or counter.listening == on or (on and ring.exited):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a benchmark, a test): drained at each poll
        if on:
            loop.add_reader(ring.fd, self._take, wp, counter, -1)
        else:
            loop.remove_reader(ring.fd)
        counter.listening = on

    def _take(self, wp: Watchpoint, counter: _Counter, limit: int | None) -> None:
        """Drain `counter`'s samples into the aggregator: at most `limit` (-1: the interval's
        room), none beyond its budget; what is left the kernel drops and counts."""
        ring = counter.ring
        if ring is None or ring.fd < 0:
            return
        if limit is not None and limit < 0:
            limit = self.hits.room(wp)
        if limit is not None and limit <= 0:
            self._listen(wp, counter, False)
            return
        self.hits.add(wp, ring.drain(limit).samples)
        if ring.exited or self.hits.room(wp) <= 0:
            self._listen(wp, counter, False)

    def _count(self, wp: Watchpoint, counter: _Counter) -> None:
        """The exact hits (and lost samples) since the last report, from the counter."""
        if counter.ring is not None:
            now = counter.ring.totals()
        else:
            now = Totals(perf_event.read_count(counter.fd), 0)
        self.hits.count(wp, now.hits - counter.seen.hits, now.lost - counter.seen.lost)
        counter.seen = now

    def _hits(self, wp: Watchpoint, report: HitReport) -> list[Hit]:
        """One hit per holder of `wp`, with what was watched."""
        address, length = wp.chunks[0][0], sum(n for _, n in wp.chunks)
        data: dict[str, Any] = {
            **report,
            "tid": wp.tid,
            "address": address,
            "length": length,
            # A breakpoint cannot tell a read from a write: this is what was watched.
            "access": wp.access.value,
            "backend": self.name,
        }
        return [Hit(a.id, dict(data)) for a in wp.holders]

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
            try:
                return NoRoom(self._measure(wp.pool, Targets.refused(wp)))
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
        if counter.listening:
            asyncio.get_running_loop().remove_reader(counter.fd)
            counter.listening = False
        if counter.ring is not None:
            counter.ring.close()
        else:
            os.close(counter.fd)
    counters.clear()
