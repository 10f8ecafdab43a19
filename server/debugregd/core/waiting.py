"""The waiting queue and how it is served (DESIGN section 5).

Waiters are served by priority, then first come first served. Each is also filed under what can
serve it (`waiter_keys`): freeing registers (`note_freed`, with the same keys) looks only at the
waiters of the CPUs and tasks it freed, so a release costs the same with 10 or 10,000 waiters.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from debugregd.core import debuggers, outside
from debugregd.core import kernel as hw
from debugregd.core.model import Allocation, ScopeKind, Watchpoint, share_key
from debugregd.core.states import State, Trigger

if TYPE_CHECKING:
    from debugregd.core.operation import Operation

Entry = tuple[int, int, str]  # (-priority, arrival, allocation id): sorts in service order
Key = tuple[Any, ...]

WAITING = State.WAITING
KIND_TASK = ScopeKind.TASK


def waiter_keys(alloc: Allocation, budget: str) -> list[Key]:
    """The keys a waiting allocation of `budget` is filed under: what can serve it.

    A task's request competes with CPU-wide holders on its CPUs and with its own task's holders,
    never with other tasks (only one task runs on a CPU at a time); a CPU-wide one with every
    holder on its CPUs. Waiters on every CPU are filed once per budget."""
    scope = alloc.scope
    if scope.kind is KIND_TASK:
        keys: list[Key] = [("task", budget, scope.tid)]
        if scope.cpus is None:
            keys.append(("tasks*", budget))
        else:
            keys.extend(("tasks", budget, c) for c in scope.cpus)
        return keys
    if scope.cpus is None:
        return [("cpus*", budget)]
    return [("cpus", budget, c) for c in scope.cpus]


def note_freed(freed: set[Key], budget: str, tid: int | None, cpus: Iterable[int]) -> None:
    """Add to `freed` the keys of the waiters that registers of `budget`, held CPU-wide (`tid`
    None) or by task `tid` on `cpus`, competed with (`waiter_keys` in reverse)."""
    if tid is None:
        for c in cpus:
            freed.add(("cpus", budget, c))
            freed.add(("tasks", budget, c))
        freed.add(("tasks*", budget))
    else:
        # Fewer registers for one task: its own waiters, and CPU-wide ones that competed with it
        # as the fullest task of a CPU.
        freed.add(("task", budget, tid))
        for c in cpus:
            freed.add(("cpus", budget, c))
    freed.add(("cpus*", budget))


class WaitingQueue:
    """Every waiting allocation in service order, indexed by `waiter_keys`, counted per session."""

    __slots__ = ("_filed", "_of_session", "_order")

    def __init__(self) -> None:
        self._order: list[Entry] = []
        self._filed: dict[Key, list[Entry]] = {}  # each list in service order
        self._of_session: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._order)

    def ids(self) -> list[str]:
        """The waiting allocations' ids in service order."""
        return [aid for _, _, aid in self._order]

    def count_of(self, session_id: str) -> int:
        """How many of a session's allocations wait."""
        return self._of_session.get(session_id, 0)

    def add(self, alloc: Allocation, budget: str) -> None:
        entry = (-alloc.priority, alloc.seq, alloc.id)
        insort(self._order, entry)
        filed = self._filed
        for key in waiter_keys(alloc, budget):
            queue = filed.get(key)
            if queue is None:
                filed[key] = [entry]
            else:
                insort(queue, entry)
        if alloc.session is not None:
            self._of_session[alloc.session] = self._of_session.get(alloc.session, 0) + 1

    def remove(self, alloc: Allocation, budget: str) -> None:
        entry = (-alloc.priority, alloc.seq, alloc.id)
        _discard(self._order, entry)
        filed = self._filed
        for key in waiter_keys(alloc, budget):
            queue = filed[key]
            _discard(queue, entry)
            if not queue:
                del filed[key]
        if alloc.session is not None:
            left = self._of_session[alloc.session] - 1
            if left:
                self._of_session[alloc.session] = left
            else:
                del self._of_session[alloc.session]

    def filed_under(self, keys: Collection[Key]) -> list[Entry]:
        """The entries filed under `keys` (("budget", name): all of a budget's), in service
        order, each once."""
        found: set[Entry] = set()
        whole = {key[1] for key in keys if key[0] == "budget"}
        if whole:
            for key, queue in self._filed.items():
                if key[1] in whole:
                    found.update(queue)
        for key in keys:
            filed = self._filed.get(key)
            if filed:
                found.update(filed)
        return sorted(found)


def serve(op: Operation) -> None:
    """Install waiting allocations that fit now, by priority then arrival; repeat while a
    reinstallation (which may evict lower holders) frees room for an earlier one.

    Only the waiters filed under what was freed are looked at: any other waiter did not fit when
    the operation began and competes with nothing that changed since. A pass takes them in
    service order; registers an installation frees by eviction bring their waiters into the same
    pass when they come later in that order, and into the next one else.

    The kernel has the last word: a reinstallation it refuses for room leaves the waiter waiting
    and records who holds the registers (so the same waiter is not tried again until they leave:
    no evict/reinstall loop); one whose task is gone ends with its task."""
    arb = op.arb
    queue = arb.queue
    while op.collect() and queue:
        freed, op.freed = op.freed, set()
        taken = set(freed)
        pending = queue.filed_under(freed)  # sorted: a heap already
        listed = set(pending)
        # Refusals seen in this pass, by request shape: whether a request fits is monotone (more
        # weight or a lower priority never fits where the other did not), so a waiter no better
        # placed than one already refused is skipped without planning. Valid until the next
        # installation changes the register files (more outside holders only make it truer).
        refused: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        while pending:
            entry = heapq.heappop(pending)
            aid = entry[2]
            alloc = arb.allocations.get(aid)
            if alloc is None or alloc.state is not WAITING or aid in op.held_back:
                continue
            key = arb.budget_key(alloc.pool, alloc.space)
            budget = arb.budgets[key]
            cpus = arb.cpus_of(alloc.scope)
            tid = alloc.scope.tid if alloc.scope.kind is KIND_TASK else None
            share = share_key(key, tid, cpus, alloc.chunks, alloc.access, alloc.arm)
            wp = arb.shared.get(share)
            if wp is None:
                # A task holding nothing here competes only with CPU holders: which task it is
                # does not matter.
                who = tid if tid is None or budget.holds(tid) else "idle task"
                shape = (key, who, cpus, alloc.arm)
                weight, priority = alloc.weight, alloc.priority
                seen = refused.get(shape)
                if seen and any(w <= weight and p >= priority for w, p in seen):
                    continue
                plan = debuggers.plan_for(arb, budget, tid, cpus, weight, priority)
                if not plan.fits:
                    refused.setdefault(shape, []).append((weight, priority))
                    continue
                wp = arb.new_watchpoint(share, budget, tid, cpus, weight, alloc.space)
                # The kernel must still admit this operation's reservations once `wp` is armed.
                checked = _competing(op.reserved, wp, plan.victims) if op.reserved else ()
                answer = arb.kernel.arm((wp, *checked), plan.victims)
                if answer is not None:
                    _refused_reinstall(op, alloc, answer)
                    refused.setdefault(shape, []).append((weight, priority))
                    continue
                victims = plan.victims
            else:
                victims = []
            refused.clear()
            queue.remove(alloc, key)
            op.evict_all(victims, *arb.evicted_for(alloc))
            op.install(alloc, wp, budget, Trigger.REINSTALL)
            new = op.collect() - taken
            if new:
                taken |= new
                for later in queue.filed_under(new):
                    if later > entry and later not in listed:
                        listed.add(later)
                        heapq.heappush(pending, later)


def _refused_reinstall(op: Operation, alloc: Allocation, answer: hw.NoRoom | hw.Rejected) -> None:
    """The kernel refused to reinstall waiting `alloc`: record who holds the room, or end it (its
    task is gone, or the kernel will never take it)."""
    if isinstance(answer, hw.NoRoom):
        outside.apply_measurement(op, answer.measured)
    elif answer.why == hw.NO_TASK and alloc.scope.kind is KIND_TASK:
        assert alloc.scope.tid is not None
        outside.end_task(op, alloc.scope.tid)
    else:
        op.reject(alloc, f"the kernel rejected it: {answer.detail}")


def _discard(queue: list[Entry], entry: Entry) -> None:
    """Take `entry` out of the sorted `queue` (a bisection, not a scan)."""
    i = bisect_left(queue, entry)
    assert queue[i] == entry, f"{entry} is not queued"
    del queue[i]


def _competing(
    reserved: list[Watchpoint], wp: Watchpoint, freeing: list[Watchpoint]
) -> tuple[Watchpoint, ...]:
    """The reservations whose room arming `wp` could take: those on its CPUs, for a CPU-wide
    one; its task's own, for a task's (`freeing` and released ones aside)."""
    cpus = set(wp.cpus)
    return tuple(
        r
        for r in reserved
        if r.holders
        and (wp.tid is None or r.tid == wp.tid)
        and cpus.intersection(r.cpus)
        and r not in freeing
    )


__all__ = ["WaitingQueue", "note_freed", "serve", "waiter_keys"]
