"""Read-only views of the arbiter's state: register files, tasks, outside holders, blockers.

Nothing here changes state. The API renders these as they are; the naming of blockers and the
detail of a refusal are here too, so every answer names a holder the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from debugreg.limits import MAX_BLOCKERS
from debugreg.priorities import OUTSIDE_PRIORITY
from debugregd.core.model import OutsideTarget, Request, ScopeKind, Watchpoint

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter


def cpu_view(arb: Arbiter, cpu: int) -> dict[str, Any]:
    """One CPU's register files, index by index: CPU holders and every task's view."""
    arb.check_cpu(cpu)
    pools: dict[str, Any] = {}
    for key, budget in arb.budgets.items():
        cpu_regs: list[dict[str, Any] | None] = [None] * budget.slots
        for wp in budget.cpu_holders(cpu):
            for index in wp.indices.get(cpu, ()):
                cpu_regs[index] = _cell(wp)
        tasks = {}
        for tid in budget.tasks_above(cpu, 0):
            if tid < 0:
                continue  # tasks outside debugregd: in "outside" below
            tasks[str(tid)] = [
                {"index": i, **_cell(wp)}
                for wp in budget.task_holders(tid, cpu)
                for i in wp.indices.get(cpu, ())
            ]
        pools[key] = {
            "slots": budget.slots,
            "cpu_held": budget.cpu_count(cpu),
            "max_task_held": budget.max_task(cpu),
            "registers": cpu_regs,
            "tasks": tasks,
            "outside": {
                "cpu": _held_outside(arb, key, ("cpu", cpu)),
                "others": _held_outside(arb, key, ("others", cpu)),
            },
        }
    return {"cpu": cpu, "pools": pools}


def task_view(arb: Arbiter, tid: int) -> dict[str, Any]:
    """A task's live allocations and the indices they hold."""
    allocs = [
        a.to_dict()
        for a in arb.allocations.values()
        if a.scope.kind is ScopeKind.TASK and a.scope.tid == tid
    ]
    outside = {
        budget: holder.held
        for (budget, kind, n), holder in arb.outside.items()
        if kind == "task" and n == tid
    }
    return {"tid": tid, "allocations": allocs, "outside": outside}


def outside_records(arb: Arbiter) -> list[dict[str, Any]]:
    """What users outside debugregd hold, target by target, as last measured."""
    return [
        {
            "pool": budget,
            "target": target_of(holder.target),
            "registers": holder.held,
            "measured": holder.measured,
            "since": holder.since,
        }
        for (budget, _, _), holder in sorted(
            arb.outside.items(), key=lambda item: (item[1].since, item[0])
        )
    ]


def outside_targets(arb: Arbiter) -> dict[str, dict[str, set[int]]]:
    """Per budget, the targets whose outside holders are worth measuring again: the tasks and
    the CPUs (for users CPU-wide, or on tasks debugregd does not manage) that have one."""
    out: dict[str, dict[str, set[int]]] = {}
    for budget, kind, n in arb.outside:
        out.setdefault(budget, {"cpus": set(), "tasks": set(), "others": set()})
        out[budget]["tasks" if kind == "task" else "cpus" if kind == "cpu" else "others"].add(n)
    return out


def tasks_in_use(arb: Arbiter) -> set[int]:
    """Every task with a live task-scope allocation or an outside record: the tasks whose exit
    the daemon watches."""
    tids = {
        a.scope.tid
        for a in arb.allocations.values()
        if a.scope.kind is ScopeKind.TASK and a.scope.tid is not None
    }
    tids.update(n for (_, kind, n) in arb.outside if kind == "task")
    return tids


def name_blockers(blockers: Iterable[Watchpoint]) -> list[dict[str, Any]]:
    """The holders in the way, as a refusal and a `waiting` event list them (at most
    MAX_BLOCKERS)."""
    out: list[dict[str, Any]] = []
    for wp in blockers:
        if wp.outside is not None:
            out.append(
                {
                    "allocation": None,
                    "session": None,
                    "priority": OUTSIDE_PRIORITY,
                    "evictable": False,
                    "scope": target_of(wp.outside),
                    "label": _outside_phrase(wp),
                    "outside": True,
                    "registers": wp.weight,
                }
            )
            if len(out) >= MAX_BLOCKERS:
                return out
        for alloc in wp.holders:
            out.append(
                {
                    "allocation": alloc.id,
                    "session": alloc.session,
                    "priority": alloc.priority,
                    "evictable": alloc.evictable,
                    "scope": alloc.scope.to_dict(),
                    "label": alloc.label,
                    "outside": False,
                }
            )
            if len(out) >= MAX_BLOCKERS:
                return out
    return out


def refusal_detail(request: Request, blockers: list[Watchpoint]) -> str:
    """Why `request` does not fit, in words (the blockers name who, for readers who may see)."""
    # Counted, not named: a refusal goes to sessions that may not see other sessions' ids (the
    # blockers list them, for the reader who may).
    held = sum(len(wp.holders) for wp in blockers if wp.outside is None)
    allocations = "allocation" if held == 1 else "allocations"
    why = (
        f"held by {held} {allocations} that priority {request.priority} may not evict "
        "(see blockers)"
        if held
        else ""
    )
    outside = "; ".join(
        dict.fromkeys(_outside_phrase(wp) for wp in blockers if wp.outside is not None)
    )
    if outside:
        why = f"{why}; {outside}" if why else outside
    return (
        f"no room for 0x{request.address:x}+{request.length} at priority {request.priority}"
        + (f": {why}" if why else "")
        + "; retry later, ask with wait: true, or with a higher priority"
    )


def target_of(target: OutsideTarget) -> dict[str, Any]:
    """An outside holder's target as the API shows it."""
    kind, n = target
    return {"kind": kind, "tid": n} if kind in ("task", "tracer") else {"kind": kind, "cpu": n}


def _held_outside(arb: Arbiter, budget: str, target: OutsideTarget) -> int:
    holder = arb.outside.get((budget, *target))
    return 0 if holder is None else holder.held


def _outside_phrase(wp: Watchpoint) -> str:
    """How a refusal names an outside holder: "outside debugregd: 2 registers on CPU 1"."""
    assert wp.outside is not None
    kind, n = wp.outside
    if kind == "tracer":
        return f"task {n} is being debugged by {wp.key[2]}"
    where = {"cpu": f"on CPU {n}", "task": f"on task {n}"}.get(kind, f"on another task on CPU {n}")
    plural = "register" if wp.weight == 1 else "registers"
    return f"outside debugregd: {wp.weight} {plural} {where}"


def _cell(wp: Watchpoint) -> dict[str, Any]:
    """One register of a CPU's view: who holds it."""
    if wp.outside is not None:
        return {"allocations": [], "outside": target_of(wp.outside)}
    cell: dict[str, Any] = {"allocations": [a.id for a in wp.holders]}
    if not wp.armed:
        cell["reservation"] = True
    return cell


__all__ = [
    "cpu_view",
    "name_blockers",
    "outside_records",
    "outside_targets",
    "refusal_detail",
    "target_of",
    "task_view",
    "tasks_in_use",
]
