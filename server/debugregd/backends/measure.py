"""From free room to outside holders: what users outside debugregd hold (DESIGN section 12).

No kernel interface lists who holds the debug registers. What a backend can learn is the free room
of a target: how many more breakpoints the kernel admits there, found by opening them until it
refuses (ENOSPC) and closing them at once. Linux's rule (`kernel/events/hw_breakpoint.c`) makes
three kinds of room worth measuring, each telling one kind of holder apart:

- a task that holds nothing (the daemon's own thread) on CPU c has `slots - cpu_pinned(c)`: the
  CPU-wide holders of c, and nothing else;
- task t on CPU c has `slots - cpu_pinned(c) - task_pinned(t, c)`: its own holders there, once
  the CPU-wide ones are known (a task's record counts where it holds the most);
- one more CPU-wide breakpoint on c has `slots - cpu_pinned(c) - max over tasks of
  task_pinned(task, c)`: the fullest task there.

Subtracting what the daemon itself armed (`Armed`) from what the kernel holds leaves what users
outside debugregd hold: a `Measurement`, the fact the core records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from debugregd.core.kernel import Measurement
from debugregd.core.model import Watchpoint


class Armed:
    """What the daemon armed in one budget, counted as the kernel counts it: per CPU for CPU-wide
    watchpoints, per task and CPU for task ones."""

    __slots__ = ("cpu", "ncpus", "task")

    def __init__(self, ncpus: int) -> None:
        self.ncpus = ncpus
        self.cpu = [0] * ncpus
        self.task: dict[int, list[int]] = {}

    def add(self, wp: Watchpoint, sign: int = 1) -> None:
        weight = wp.weight * sign
        if wp.tid is None:
            for c in wp.cpus:
                self.cpu[c] += weight
            return
        counts = self.task.get(wp.tid)
        if counts is None:
            counts = self.task[wp.tid] = [0] * self.ncpus
        for c in wp.cpus:
            counts[c] += weight
        if sign < 0 and not any(counts):
            del self.task[wp.tid]

    def remove(self, wp: Watchpoint) -> None:
        self.add(wp, -1)

    def task_on(self, tid: int, cpu: int) -> int:
        counts = self.task.get(tid)
        return 0 if counts is None else counts[cpu]

    def fullest_task(self, cpu: int) -> int:
        return max((counts[cpu] for counts in self.task.values()), default=0)


@dataclass(slots=True)
class FreeRoom:
    """Free room found on one budget's targets (see the module docstring), by the kernel's
    answers: `idle[c]` for a task holding nothing on CPU c, `tasks[t][c]` for task t on CPU c,
    `cpu_wide[c]` for one more CPU-wide watchpoint."""

    idle: dict[int, int] = field(default_factory=dict)
    tasks: dict[int, dict[int, int]] = field(default_factory=dict)
    cpu_wide: dict[int, int] = field(default_factory=dict)


def outside_holders(
    budget: str, slots: int, armed: Armed, free: FreeRoom, me: int | None = None
) -> Measurement:
    """What users outside debugregd hold on the targets of `free`: the kernel's holders there
    less the daemon's own. `me` is the thread that measured `idle` room (its own breakpoints, if
    any were armed on it, are the daemon's)."""
    measured = Measurement(budget)
    # Registers held CPU-wide on each CPU, by anyone; known exactly where `idle` was measured.
    pinned = list(armed.cpu)
    for c, room in free.idle.items():
        mine = armed.cpu[c] + (0 if me is None else armed.task_on(me, c))
        outside = max(0, slots - room - mine)
        measured.cpus[c] = outside
        pinned[c] = armed.cpu[c] + outside
    for tid, rooms in free.tasks.items():
        outside = max(slots - room - pinned[c] - armed.task_on(tid, c) for c, room in rooms.items())
        measured.tasks[tid] = max(0, outside)
    for c, room in free.cpu_wide.items():
        fullest = slots - room - pinned[c]  # the fullest task on c, whoever's it is
        measured.others[c] = fullest if fullest > armed.fullest_task(c) else 0
    return measured
