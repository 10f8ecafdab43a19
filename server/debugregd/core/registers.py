"""Concrete register indices: which DRn each installed watchpoint occupies on each CPU.

The counts decide admission; indices follow from them. A task's watchpoints are kept compact at
the bottom (n registers use DR0..DRn-1), CPU watchpoints at the top, kernel-space ones topmost,
so an assignment exists exactly when the count rule admits. Indices are a pure function of what is
installed and in which order, so compaction after a release, and a restore from a snapshot, give
the same answer. The caller turns every changed index into a `moved` event.
"""

from __future__ import annotations

from collections.abc import Callable

from debugregd.core.admission import PoolBudget
from debugregd.core.model import Watchpoint

OnChange = Callable[[Watchpoint], None]


def assign_task(budget: PoolBudget, tid: int, cpu: int, on_change: OnChange) -> None:
    """Pack task `tid`'s watchpoints on `cpu` from DR0 upwards in install order."""
    index = 0
    for wp in budget.task_holders(tid, cpu):
        weight = wp.weight
        new = (index,) if weight == 1 else tuple(range(index, index + weight))
        if wp.indices.get(cpu) != new:
            on_change(wp)
            wp.indices[cpu] = new
        index += weight


def place_task(budget: PoolBudget, wp: Watchpoint) -> None:
    """Indices for a task watchpoint just added: it is the last installed on each of its CPUs,
    so it goes right above the task's others (which are packed already), and nothing moves."""
    assert wp.tid is not None
    tid, weight = wp.tid, wp.weight
    for c in wp.cpus:
        start = budget.task_count(tid, c) - weight
        wp.indices[c] = (start,) if weight == 1 else tuple(range(start, start + weight))


def assign_cpu(budget: PoolBudget, cpu: int, on_change: OnChange) -> None:
    """Pack CPU-held watchpoints on `cpu` from the top register down, kernel-space first."""
    top = budget.slots
    wps = budget.cpu_holders(cpu)
    for kernel in (True, False):
        for wp in wps:
            if wp.kernel is not kernel:
                continue
            weight = wp.weight
            new = tuple(range(top - 1, top - 1 - weight, -1))
            if wp.indices.get(cpu) != new:
                on_change(wp)
                wp.indices[cpu] = new
            top -= weight


def assign(budget: PoolBudget, wp: Watchpoint, on_change: OnChange) -> None:
    """Reassign every block `wp` belongs to (after it was added or removed)."""
    if wp.tid is None:
        for c in wp.cpus:
            assign_cpu(budget, c, on_change)
    elif budget.holds(wp.tid):  # else the task holds nothing more here
        for c in wp.cpus:
            assign_task(budget, wp.tid, c, on_change)
