"""Debuggers that do not ask, and the host settings that decide admission (DESIGN section 12).

A debugger writes debug registers through ptrace without asking debugregd. Two host rules keep
it from failing because a newcomer squats on a register: `reserved_for_ptrace` registers per CPU
stay out of reach of requests below ptrace, and a task a debugger traces gets nothing below ptrace
while it stays (its holders below ptrace are evicted when the debugger attaches). Both enter
admission through `plan_for`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from debugreg.priorities import Priority
from debugregd.core import eviction
from debugregd.core.admission import PoolBudget
from debugregd.core.errors import InvalidRequest
from debugregd.core.model import Event, ScopeKind, Watchpoint
from debugregd.core.states import State

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter


def configure(
    arb: Arbiter,
    now: float,
    *,
    reserved_for_ptrace: int | None = None,
    max_allocations_per_session: int | None = None,
    max_waiting_per_session: int | None = None,
) -> list[Event]:
    """Change host settings that decide admission (each one given; None leaves it):

    - `reserved_for_ptrace` registers per CPU are kept out of reach of requests below ptrace, so
      a debugger that does not ask (ptrace) always finds that many. Holders already above the
      line stay; fewer kept back serves waiters.
    - `max_allocations_per_session` live (installed or waiting) allocations, and
      `max_waiting_per_session` waiting ones its requests may queue, per session (0: no limit).
      What a session holds already stays; only new requests are refused.
    """
    smallest = min(b.slots for b in arb.budgets.values())
    if reserved_for_ptrace is not None and not 0 <= reserved_for_ptrace < smallest:
        raise InvalidRequest(
            f"reserve_for_ptrace must be from 0 to {smallest - 1} (this host's pools have "
            f"{smallest} registers), got {reserved_for_ptrace}"
        )
    for name, limit in (
        ("max_allocations_per_session", max_allocations_per_session),
        ("max_waiting_per_session", max_waiting_per_session),
    ):
        if limit is not None and limit < 0:
            raise InvalidRequest(f"{name} must be 0 (no limit) or more, got {limit}")
    op = arb.begin(now)
    if reserved_for_ptrace is not None:
        if reserved_for_ptrace < arb.reserved_for_ptrace:
            op.free_budgets(arb.budgets)
        arb.reserved_for_ptrace = reserved_for_ptrace
    if max_allocations_per_session is not None:
        arb.max_allocations_per_session = max_allocations_per_session
    if max_waiting_per_session is not None:
        arb.max_waiting_per_session = max_waiting_per_session
    return op.end()


def trace(arb: Arbiter, tid: int, tracer: str, now: float) -> list[Event]:
    """A debugger (`tracer`, e.g. "PID 77 (gdb)") attached to task `tid`: its allocations below
    ptrace are evicted (on_evict: wait ones wait until it detaches), and requests below ptrace for
    the task get nothing while it stays."""
    arb.check_tid(tid)
    op = arb.begin(now)
    arb.traced[tid] = tracer
    reason = f"task {tid} is being debugged by {tracer}"
    for alloc in [
        a
        for a in arb.allocations.values()
        if a.state is State.INSTALLED
        and a.scope.kind is ScopeKind.TASK
        and a.scope.tid == tid
        and a.priority < Priority.PTRACE
    ]:
        op.evict(alloc, reason, admin=False)
    return op.end()


def untrace(arb: Arbiter, tid: int, now: float) -> list[Event]:
    """The debugger of task `tid` detached: what waited for it may come back."""
    if arb.traced.pop(tid, None) is None:
        return []
    op = arb.begin(now)
    op.free_budgets(arb.budgets)
    return op.end()


def plan_for(
    arb: Arbiter,
    budget: PoolBudget,
    tid: int | None,
    cpus: tuple[int, ...],
    weight: int,
    priority: int,
) -> eviction.Plan:
    """What admitting `weight` registers at `priority` takes, with the host's rules for
    debuggers that do not ask: below ptrace, a task a debugger traces gets nothing, and
    `reserved_for_ptrace` registers per CPU stay free (asked for as extra weight: the request
    must leave them)."""
    if priority >= Priority.PTRACE:
        return plan(budget, tid, cpus, weight, priority)
    if tid is not None and tid in arb.traced:
        return eviction.Plan(False, blockers=[_tracer(arb, budget, tid)])
    return plan(budget, tid, cpus, weight + arb.reserved_for_ptrace, priority)


def plan(
    budget: PoolBudget, tid: int | None, cpus: tuple[int, ...], weight: int, priority: int
) -> eviction.Plan:
    """What admitting `weight` registers at `priority` takes by the counts alone."""
    if budget.fits(tid, cpus, weight):
        return eviction.FIT
    if tid is None:
        return eviction.plan_cpu(budget, cpus, weight, priority)
    return eviction.plan_task(budget, tid, cpus, weight, priority)


def _tracer(arb: Arbiter, budget: PoolBudget, tid: int) -> Watchpoint:
    """A stand-in holder that names the debugger tracing `tid` in refusals."""
    target = ("tracer", tid)
    key = ("tracer", tid, arb.traced[tid])
    return Watchpoint(key, budget.name, tid, arb.all_cpus, 0, False, 0, outside=target)


__all__ = ["configure", "plan", "plan_for", "trace", "untrace"]
