"""The world outside: users outside debugregd, tasks that exit, a kernel that forgot (DESIGN 12).

gdb through ptrace, perf and bpftrace hold registers without asking. What the kernel was measured
to hold beyond debugregd's own watchpoints is recorded as an outside holder per target (a CPU, a
task debugregd manages, or "others": the fullest task it does not manage, per CPU), counted by
admission like any holder, ranked above every priority and never evicted. These facts enter as
commands (`observe`, `task_exited`, `rearm`), so a replay of the journal is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from debugregd.core import registers, views
from debugregd.core.admission import PoolBudget
from debugregd.core.errors import InvalidRequest
from debugregd.core.kernel import NO_TASK, Measurement, NoRoom
from debugregd.core.model import Event, OutsideHolder, OutsideTarget, ScopeKind, Watchpoint
from debugregd.core.states import EventType, State, Trigger

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter
    from debugregd.core.operation import Operation


def observe(arb: Arbiter, measured: Measurement, now: float) -> list[Event]:
    """Record what users outside debugregd were measured to hold (DESIGN section 12).

    Each measured target's outside holder is set to what the kernel holds there beyond
    debugregd's own watchpoints and reservations (never more than leaves the register files
    consistent); a change is an `outside` event, and room that came back serves waiters.
    """
    if measured.budget not in arb.budgets:
        raise InvalidRequest(f"no budget {measured.budget!r} on this host")
    op = arb.begin(now)
    apply_measurement(op, measured)
    return op.end()


def outside_after(arb: Arbiter, measured: Measurement) -> bool:
    """Whether `observe(measured)` would change anything (so that a re-measurement that found
    the same is not journaled)."""
    budget = arb.budgets.get(measured.budget)
    if budget is None:
        return False
    return any(
        (n, held) != outside_of(arb, budget.name, target)
        for target, n, held in _counts(arb, budget, measured)
    )


def task_exited(arb: Arbiter, tid: int, now: float) -> list[Event]:
    """Task `tid` is gone: its allocations expire and what was held outside on it goes."""
    arb.check_tid(tid)
    op = arb.begin(now)
    end_task(op, tid)
    return op.end()


def rearm(arb: Arbiter, now: float) -> list[Event]:
    """Arm again everything installed, in install order (after a restart: the journal says what
    was installed, the kernel has nothing of it). What the kernel refuses is evicted (requeued
    with on_evict: wait) and who holds the room is recorded."""
    op = arb.begin(now)
    measured: dict[str, Measurement] = {}
    reason = "the kernel refused it when debugregd restarted"
    wps = sorted(
        {
            id(a.watchpoint): a.watchpoint
            for a in arb.allocations.values()
            if a.watchpoint is not None
        }.values(),
        key=lambda w: w.seq,
    )
    for wp in wps:
        if not wp.armed or not wp.holders:
            continue
        answer = arb.kernel.arm((wp,), ())
        if answer is None:
            continue
        if isinstance(answer, NoRoom):
            m = answer.measured
            into = measured.setdefault(m.budget, Measurement(m.budget))
            into.cpus.update(m.cpus)
            into.tasks.update(m.tasks)
            into.others.update(m.others)
            why = f"{reason}: users outside debugregd hold the registers"
        elif answer.why == NO_TASK and wp.tid is not None:
            end_task(op, wp.tid)
            continue
        else:
            why = f"{reason}: {answer.detail}"
        for alloc in list(wp.holders):
            op.evict(alloc, why, admin=False)
    # Recorded once every refused holder is off the register files, so they stay consistent.
    for m in measured.values():
        apply_measurement(op, m)
    # Hits since a watch's last report before the stop (a crash loses up to an interval's) and
    # while nothing watched are unknown: said, not hidden.
    for alloc in sorted(arb.allocations.values(), key=lambda a: a.seq):
        if alloc.state is State.INSTALLED and alloc.arm:
            op.emit(
                EventType.HIT,
                alloc.session,
                alloc,
                {
                    "count": 0,
                    "unknown": True,
                    "total": alloc.hits,
                    "reason": "debugregd restarted: hits after its last report before it "
                    "stopped, and while it was down, are unknown",
                },
            )
    return op.end()


def apply_measurement(op: Operation, measured: Measurement) -> None:
    """Set every outside holder `measured` covers (within an operation)."""
    budget = op.arb.budgets[measured.budget]
    for target, n, held in _counts(op.arb, budget, measured):
        _set(op, budget, target, n, held)


def end_task(op: Operation, tid: int) -> None:
    """Expire every live allocation of task `tid` and forget what was held on it."""
    arb = op.arb
    reason = f"task {tid} exited"
    for alloc in [
        a for a in arb.allocations.values() if a.scope.kind is ScopeKind.TASK and a.scope.tid == tid
    ]:
        op.finish(alloc, Trigger.EXPIRE, reason)
    for budget in arb.budgets.values():
        if (budget.name, "task", tid) in arb.outside:
            _set(op, budget, ("task", tid), 0, 0)
    arb.raw.pop(tid, None)
    arb.traced.pop(tid, None)


def outside_of(arb: Arbiter, budget: str, target: OutsideTarget) -> tuple[int, int]:
    """(measured, held) of the outside holder of `target`; (0, 0) where there is none."""
    holder = arb.outside.get((budget, *target))
    return (0, 0) if holder is None else (holder.measured, holder.held)


def outside_watchpoint(arb: Arbiter, budget: str, target: OutsideTarget, weight: int) -> Watchpoint:
    """The holder that counts `weight` registers held outside on `target`."""
    kind, n = target
    tid, cpus = _place(arb, target)
    key = ("outside", budget, kind, n)
    return Watchpoint(key, budget, tid, cpus, weight, False, 0, outside=target)


def _place(arb: Arbiter, target: OutsideTarget) -> tuple[int | None, tuple[int, ...]]:
    """Where an outside holder of `target` counts: (task or None for CPU-wide, CPUs)."""
    kind, n = target
    if kind == "cpu":
        return None, (n,)
    if kind == "task":
        return n, arb.all_cpus
    return -(n + 1), (n,)  # a task debugregd does not manage, seen on CPU n: runs only there


def _counts(
    arb: Arbiter, budget: PoolBudget, measured: Measurement
) -> list[tuple[OutsideTarget, int, int]]:
    """Each measured target's outside holder: (target, measured, held). Measured is what users
    outside hold there; held is as much of it as keeps every CPU's register file within its
    slots.

    A reservation's debugger arms its registers through ptrace, so once it has, the kernel shows
    them as held outside too: they are counted twice while it holds them, and the cap absorbs
    what does not fit. Subtracting them instead would count too few whenever the debugger has not
    written them yet, and give its room away before it takes it."""
    slots = budget.slots
    out: list[tuple[OutsideTarget, int, int]] = []
    held = {
        c: budget.cpu_count(c) - outside_of(arb, budget.name, ("cpu", c))[1] for c in measured.cpus
    }
    cpu_held = [budget.cpu_count(c) for c in arb.all_cpus]
    for c, n in sorted(measured.cpus.items()):
        counted = max(0, min(n, slots - held[c] - budget.max_task(c)))
        out.append((("cpu", c), n, counted))
        cpu_held[c] = held[c] + counted  # the CPU holders just measured count for tasks
    for tid, n in sorted(measured.tasks.items()):
        mine = outside_of(arb, budget.name, ("task", tid))[1]
        room = slots - max(cpu_held[c] + budget.task_count(tid, c) - mine for c in arb.all_cpus)
        out.append((("task", tid), n, max(0, min(n, room))))
    for c, n in sorted(measured.others.items()):
        out.append((("others", c), n, max(0, min(n, slots - cpu_held[c]))))
    return out


def _set(
    op: Operation, budget: PoolBudget, target: OutsideTarget, measured: int, held: int
) -> None:
    """Make the outside holder of `target` what was `measured`, `held` of it counted."""
    arb = op.arb
    key = (budget.name, *target)
    holder = arb.outside.get(key)
    before = (0, 0) if holder is None else (holder.measured, holder.held)
    if (measured, held) == before:
        return
    note = op.note_change
    if holder is not None and holder.wp is not None and held != holder.held:
        old = holder.wp
        holder.wp = None
        budget.remove(old)
        op.baseline.pop(old, None)
        registers.assign(budget, old, note)  # what stays packs down
        old.indices = {}
    if measured < before[0] or held < before[1]:
        op.free(budget.name, *_place(arb, target))  # room came back, or less held
    if not measured:
        arb.outside.pop(key, None)
    else:
        if holder is None:
            holder = arb.outside[key] = OutsideHolder(target, measured, op.now)
        holder.measured = measured
        if held and holder.wp is None:
            wp = holder.wp = outside_watchpoint(arb, budget.name, target, held)
            arb.seq += 1
            wp.seq = arb.seq
            budget.add(wp)
            if wp.tid is None:
                for c in wp.cpus:
                    registers.assign_cpu(budget, c, note)
            else:
                registers.place_task(budget, wp)
    data = {"pool": budget.name, "target": views.target_of(target), "registers": held}
    data.update(previous=before[1], measured=measured)
    op.emit(EventType.OUTSIDE, None, data=data)


__all__ = [
    "apply_measurement",
    "end_task",
    "observe",
    "outside_after",
    "outside_of",
    "outside_watchpoint",
    "rearm",
    "task_exited",
]
