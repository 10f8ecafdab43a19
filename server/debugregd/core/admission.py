"""Admission: the counts of held registers and the inequality that decides (DESIGN section 3).

This module owns the accounting, as Linux's `kernel/events/hw_breakpoint.c` does. Per pool, on every
CPU c a scope touches:

    cpu_held(c) + max over tasks T that may run on c of task_held(T, c) <= slots

A task request checks only its own task's count against each CPU of its affinity: tasks never
compete with one another, because only one of them runs on a CPU at a time. A CPU request competes
with the fullest task on each of its CPUs. With equal priorities this accepts and refuses exactly
where the kernel's perf_event_open does.

The maximum over tasks must not cost a scan of every task, so each CPU keeps a histogram of task
counts (Linux's `bp_slots_histogram`). Ours keeps the members of each bucket, not only their number,
because eviction has to name the tasks at the top. A decision costs O(slots x CPUs touched).

The counts are private to `PoolBudget`: eviction, index assignment and the views ask it questions
(`cpu_count`, `task_count`, `max_task`, `used`, `fits`, `holds`, `cpu_holders`, `task_holders`,
`holders_on`, `tasks_above`, ...) and only
`add` and `remove` change them, so no other module can let them drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from debugregd.core.model import Watchpoint


class PoolBudget:
    """The counts and holders of one pool (one address space of it, with mode switching) on
    every CPU of the host."""

    __slots__ = (
        "_cpu_held",
        "_cpu_wps",
        "_task_held",
        "_task_wps",
        "_tasks_at",
        "name",
        "ncpus",
        "slots",
    )

    def __init__(self, name: str, slots: int, ncpus: int) -> None:
        self.name = name
        self.slots = slots
        self.ncpus = ncpus
        # Registers held by CPU-scoped watchpoints, per CPU.
        self._cpu_held = [0] * ncpus
        # CPU-scoped watchpoints per CPU, in install order (index assignment walks them).
        self._cpu_wps: list[list[Watchpoint]] = [[] for _ in range(ncpus)]
        # Registers each task holds on each CPU its watchpoints may run on: tid -> cpu -> count.
        self._task_held: dict[int, dict[int, int]] = {}
        # Each task's watchpoints per CPU, in install order.
        self._task_wps: dict[int, dict[int, list[Watchpoint]]] = {}
        # The histogram: tasks_at[cpu][k] is the set of tasks holding exactly k registers there.
        self._tasks_at: list[list[set[int]]] = [
            [set() for _ in range(slots + 1)] for _ in range(ncpus)
        ]

    def max_task(self, cpu: int) -> int:
        """The largest number of registers any one task holds on `cpu`."""
        buckets = self._tasks_at[cpu]
        for k in range(self.slots, 0, -1):
            if buckets[k]:
                return k
        return 0

    def task_count(self, tid: int, cpu: int) -> int:
        """Registers task `tid` holds on `cpu`."""
        held = self._task_held.get(tid)
        return 0 if held is None else held.get(cpu, 0)

    def cpu_count(self, cpu: int) -> int:
        """Registers held CPU-wide on `cpu`."""
        return self._cpu_held[cpu]

    def holds(self, tid: int) -> bool:
        """Whether task `tid` holds any register of this pool."""
        return tid in self._task_held

    def cpu_holders(self, cpu: int) -> Sequence[Watchpoint]:
        """The CPU-wide watchpoints on `cpu`, in install order (read only)."""
        return self._cpu_wps[cpu]

    def task_holders(self, tid: int, cpu: int) -> Sequence[Watchpoint]:
        """Task `tid`'s watchpoints on `cpu`, in install order (read only)."""
        lists = self._task_wps.get(tid)
        return () if lists is None else lists.get(cpu, ())

    def task_fits(self, tid: int, cpus: tuple[int, ...], weight: int) -> bool:
        """Whether `weight` more registers for task `tid` fit on every CPU of `cpus`."""
        held = self._task_held.get(tid)
        room = self.slots - weight
        cpu_held = self._cpu_held
        # Plain loops: this is the hot path of every allocation.
        if held is None:
            for c in cpus:  # noqa: SIM110 (a generator costs more here)
                if cpu_held[c] > room:
                    return False
            return True
        for c in cpus:  # noqa: SIM110 (a generator costs more here)
            if cpu_held[c] + held.get(c, 0) > room:
                return False
        return True

    def cpu_fits(self, cpus: tuple[int, ...], weight: int) -> bool:
        """Whether `weight` more CPU-held registers fit on every CPU of `cpus`."""
        room = self.slots - weight
        return all(self._cpu_held[c] + self.max_task(c) <= room for c in cpus)

    def fits(self, tid: int | None, cpus: tuple[int, ...], weight: int) -> bool:
        """The admission inequality for a task request (`tid`) or a CPU request (None)."""
        if tid is None:
            return self.cpu_fits(cpus, weight)
        return self.task_fits(tid, cpus, weight)

    def used(self, cpu: int) -> int:
        """Registers in use on `cpu` while its fullest task runs."""
        return self._cpu_held[cpu] + self.max_task(cpu)

    def add(self, wp: Watchpoint) -> None:
        """Count an installed watchpoint on each of its CPUs."""
        weight = wp.weight
        tid = wp.tid
        if tid is None:
            for c in wp.cpus:
                self._cpu_held[c] += weight
                self._cpu_wps[c].append(wp)
            return
        held = self._task_held.get(tid)
        if held is None:
            held = self._task_held[tid] = {}
            lists: dict[int, list[Watchpoint]] = {}
            self._task_wps[tid] = lists
        else:
            lists = self._task_wps[tid]
        tasks_at = self._tasks_at
        for c in wp.cpus:
            old = held.get(c, 0)
            new = old + weight
            held[c] = new
            buckets = tasks_at[c]
            if old:
                buckets[old].discard(tid)
            buckets[new].add(tid)
            lst = lists.get(c)
            if lst is None:
                lists[c] = [wp]
            else:
                lst.append(wp)

    def remove(self, wp: Watchpoint) -> None:
        """Stop counting a watchpoint (released or evicted)."""
        weight = wp.weight
        tid = wp.tid
        if tid is None:
            for c in wp.cpus:
                self._cpu_held[c] -= weight
                self._cpu_wps[c].remove(wp)
            return
        held = self._task_held[tid]
        lists = self._task_wps[tid]
        tasks_at = self._tasks_at
        for c in wp.cpus:
            old = held[c]
            new = old - weight
            buckets = tasks_at[c]
            buckets[old].discard(tid)
            lst = lists[c]
            lst.remove(wp)
            if new:
                held[c] = new
                buckets[new].add(tid)
            else:
                del held[c]
                del lists[c]
        if not held:
            del self._task_held[tid]
            del self._task_wps[tid]

    def holders_on(self, cpu: int, tid: int | None) -> list[Watchpoint]:
        """Watchpoints that compete with a request of task `tid` (or a CPU request) on `cpu`:
        the CPU-held ones, plus the task's own (for a CPU request, see `tasks_above`)."""
        out = list(self._cpu_wps[cpu])
        if tid is not None:
            lists = self._task_wps.get(tid)
            if lists is not None:
                out.extend(lists.get(cpu, ()))
        return out

    def tasks_above(self, cpu: int, level: int) -> list[int]:
        """Tasks holding more than `level` registers on `cpu`, fullest first, then by tid."""
        out: list[int] = []
        buckets = self._tasks_at[cpu]
        for k in range(self.slots, level, -1):
            out.extend(sorted(buckets[k]))
        return out
