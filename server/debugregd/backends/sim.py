"""The simulated backend: a fake kernel, so everything the perf backend meets is tested anywhere.

It counts registers by Linux's rule (`kernel/events/hw_breakpoint.c`, written here on its own, not
borrowed from the core, so the two check each other): a task breakpoint fits where the CPU-wide
ones plus the task's own leave room, a CPU-wide one where the CPU-wide ones plus the fullest task
do. Users outside debugregd are injected (`inject`, the admin endpoint `POST /v1/sim/outside`) and
hold registers the core does not know of, exactly as gdb or `perf record` would; tasks can be made
to exit (`exit_task`). Hits in simulation come from the core itself (`Arbiter.access`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from debugregd.backends.base import Hit, Targets
from debugregd.backends.measure import Armed, FreeRoom, outside_holders
from debugregd.core.kernel import NO_TASK, Answer, Measurement, NoRoom, Rejected
from debugregd.core.model import Watchpoint
from debugregd.core.profiles import Profile, x86_64


class Registers:
    """One budget's registers on every CPU as the fake kernel counts them: every holder alike,
    the daemon's and the outside users'."""

    __slots__ = ("cpu", "ncpus", "slots", "task", "tasks_at")

    def __init__(self, slots: int, ncpus: int) -> None:
        self.slots = slots
        self.ncpus = ncpus
        self.cpu = [0] * ncpus  # registers held CPU-wide, per CPU
        self.task: dict[int, list[int]] = {}  # per task, registers it holds on each CPU
        self.tasks_at = [Counter[int]() for _ in range(ncpus)]  # per CPU: tasks holding k

    def fullest_task(self, cpu: int) -> int:
        counts = self.tasks_at[cpu]
        return max((k for k, n in counts.items() if n), default=0)

    def fits(self, tid: int | None, cpus: Sequence[int], weight: int) -> bool:
        """Linux's admission rule for `weight` more registers of task `tid` (None: CPU-wide)."""
        slots = self.slots
        if tid is None:
            return all(self.cpu[c] + self.fullest_task(c) + weight <= slots for c in cpus)
        counts = self.task.get(tid)
        return all(self.cpu[c] + (counts[c] if counts else 0) + weight <= slots for c in cpus)

    def add(self, tid: int | None, cpus: Sequence[int], weight: int) -> None:
        """Count (or with a negative weight, uncount) registers held."""
        if tid is None:
            for c in cpus:
                self.cpu[c] += weight
            return
        counts = self.task.setdefault(tid, [0] * self.ncpus)
        for c in cpus:
            old = counts[c]
            counts[c] = old + weight
            self.tasks_at[c][old] -= 1 if old else 0
            if counts[c]:
                self.tasks_at[c][counts[c]] += 1
        if not any(counts):
            del self.task[tid]

    def free(self, tid: int | None, cpu: int) -> int:
        """Room for one more breakpoint of task `tid` (None: CPU-wide) on `cpu`."""
        if tid is None:
            return self.slots - self.cpu[cpu] - self.fullest_task(cpu)
        counts = self.task.get(tid)
        return self.slots - self.cpu[cpu] - (counts[cpu] if counts else 0)


@dataclass(frozen=True, slots=True)
class Injected:
    """Registers a simulated user outside debugregd holds: task `tid` (None: CPU-wide) on
    `cpus`."""

    id: str
    budget: str
    tid: int | None
    cpus: tuple[int, ...]
    registers: int

    def to_dict(self) -> dict[str, Any]:
        scope: dict[str, Any]
        if self.tid is not None:
            scope = {"kind": "task", "tid": self.tid, "cpus": list(self.cpus)}
        else:
            scope = {"kind": "cpus", "cpus": list(self.cpus)}
        return {"id": self.id, "pool": self.budget, "scope": scope, "registers": self.registers}


class NoRoomToInject(Exception):
    """The fake kernel refused an injected outside user, as Linux would refuse it (ENOSPC)."""


class SimBackend:
    """A fake kernel with Linux's count rule, injectable outside users and exiting tasks."""

    name = "sim"
    real_tasks = False

    def __init__(
        self, profile: Profile | None = None, ncpus: int = 1, *, mode_switching: bool = False
    ) -> None:
        self.profile = profile or x86_64()
        self.ncpus = ncpus
        spaces = ("user", "kernel") if mode_switching else ("",)
        self.slots = {
            (f"{pool}/{space}" if space else pool): slots
            for pool, slots in self.profile.pools.items()
            for space in spaces
        }
        self.registers = {budget: Registers(n, ncpus) for budget, n in self.slots.items()}
        self._mine = {budget: Armed(ncpus) for budget in self.slots}
        self._armed: dict[Watchpoint, None] = {}
        self.injected: dict[str, Injected] = {}
        self.exited: set[int] = set()
        self._next = 0

    # -- the kernel port

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        """Admit `wps` by Linux's rule once `freeing` is gone, all or nothing."""
        parked = [wp for wp in freeing if wp in self._armed]
        for wp in parked:
            self._count(wp, -1)
        done: list[Watchpoint] = []
        for wp in wps:
            answer = self._check(wp)
            if answer is not None:
                for w in done:
                    self._count(w, -1)
                for w in parked:
                    self._count(w, 1)
                if isinstance(answer, NoRoom):  # measured as things were before the change
                    answer = NoRoom(self._measure_for(wp))
                return answer
            if wp.armed:  # a reservation's holder takes the room itself: only checked
                self._count(wp, 1)
                done.append(wp)
        return None

    def disarm(self, wp: Watchpoint) -> None:
        if wp in self._armed:
            self._count(wp, -1)

    def measure(self, targets: dict[str, Targets]) -> list[Measurement]:
        out = []
        for budget, want in targets.items():
            regs = self.registers.get(budget)
            if regs is None or not want:
                continue
            free = FreeRoom()
            cpus = set(want.cpus) | set(want.others)
            if want.tasks:
                cpus.update(range(self.ncpus))
            free.idle = {c: regs.slots - regs.cpu[c] for c in sorted(cpus)}
            for tid in sorted(want.tasks):
                if tid in self.exited:
                    continue
                free.tasks[tid] = {c: regs.free(tid, c) for c in range(self.ncpus)}
            free.cpu_wide = {c: regs.free(None, c) for c in sorted(want.others)}
            out.append(outside_holders(budget, regs.slots, self._mine[budget], free))
        return out

    def probe(self) -> dict[str, Any]:
        return {"machine": "simulated", "cpus_online": self.ncpus, "slots": dict(self.slots)}

    def lost(self) -> list[Watchpoint]:
        return []  # nothing races the fake kernel between a refusal and re-arming

    def poll_hits(self) -> list[Hit]:
        """Always empty: simulated hits are injected through the core."""
        return []

    def resolve(self, hits: Sequence[Hit]) -> None:
        """Nothing to name: simulated accesses carry their instruction pointer as given."""

    def forget_task(self, tid: int) -> None:
        """Nothing cached per task."""

    def close(self) -> None:
        """Forget everything armed."""
        for wp in list(self._armed):
            self._count(wp, -1)

    def armed_allocations(self) -> dict[str, Watchpoint]:
        """Every allocation whose watchpoint the fake kernel holds armed, by id."""
        return {a.id: wp for wp in self._armed for a in wp.holders}

    # -- the world outside debugregd

    def inject(self, budget: str, tid: int | None, cpus: tuple[int, ...], registers: int) -> str:
        """A user outside debugregd takes `registers` on task `tid` (None: CPU-wide) on `cpus`;
        NoRoomToInject when the kernel would refuse it."""
        regs = self.registers[budget]
        if tid is not None and tid in self.exited:
            raise NoRoomToInject(f"task {tid} exited")
        if not regs.fits(tid, cpus, registers):
            raise NoRoomToInject(
                f"the kernel has no room for {registers} more on "
                + (f"task {tid}" if tid is not None else f"CPUs {list(cpus)}")
            )
        self._next += 1
        holder = Injected(f"x{self._next}", budget, tid, cpus, registers)
        regs.add(tid, cpus, registers)
        self.injected[holder.id] = holder
        return holder.id

    def remove(self, injected_id: str) -> Injected:
        """The outside user `injected_id` lets go (KeyError if there is none)."""
        holder = self.injected.pop(injected_id)
        self.registers[holder.budget].add(holder.tid, holder.cpus, -holder.registers)
        return holder

    def exit_task(self, tid: int) -> None:
        """Task `tid` exits: the kernel drops every breakpoint on it."""
        self.exited.add(tid)
        for holder in [h for h in self.injected.values() if h.tid == tid]:
            self.remove(holder.id)
        for wp in [w for w in self._armed if w.tid == tid]:
            self._count(wp, -1)

    # -- internals

    def _check(self, wp: Watchpoint) -> Answer:
        if wp.tid is not None and wp.tid in self.exited:
            return Rejected(NO_TASK, f"no such task {wp.tid}: it exited", wp.tid)
        if not self.registers[wp.pool].fits(wp.tid, wp.cpus, wp.weight):
            return NoRoom(Measurement(wp.pool))
        return None

    def _count(self, wp: Watchpoint, sign: int) -> None:
        self.registers[wp.pool].add(wp.tid, wp.cpus, sign * wp.weight)
        self._mine[wp.pool].add(wp, sign)
        if sign > 0:
            self._armed[wp] = None
        else:
            del self._armed[wp]

    def _measure_for(self, wp: Watchpoint) -> Measurement:
        """What users outside debugregd hold where `wp` was refused."""
        (measured,) = self.measure({wp.pool: Targets.refused(wp)})
        return measured
