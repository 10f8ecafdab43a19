"""One change to the arbiter's state, from its start to the events it returns.

Every public method of `Arbiter` that changes anything first decides (validates, plans, asks the
kernel: a refusal changes nothing), then opens an `Operation` and makes the change through it:
only an operation installs, queues, detaches, finishes, evicts and retires allocations, so every
change is numbered as events in the order it happened. The operation also keeps what the change
needs until it ends: the registers it freed (their waiters are served before it ends), the index
baselines that become `moved` events, and the waiters an admin eviction holds back.

    op = arb.begin(now)  # an Operation
    op.install(alloc, wp, budget, Trigger.ADMIT)
    return op.end()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from debugregd.core import registers, views, waiting
from debugregd.core.admission import PoolBudget
from debugregd.core.model import Allocation, Event, OnEvict, Session, Watchpoint
from debugregd.core.states import LIVE, EventType, State, Trigger, transition

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter

# Enum members bound once: on Python 3.11 each `State.INSTALLED` lookup costs ~200 ns, and the hot
# path takes several per operation.
INSTALLED = State.INSTALLED
MOVED_TO, MOVED = transition(INSTALLED, Trigger.MOVE)


class Operation:
    """The scratch state of one change and the only way to make one (see the module)."""

    __slots__ = (
        "announced",
        "arb",
        "baseline",
        "events",
        "freed",
        "held_back",
        "now",
        "released",
        "reserved",
    )

    def __init__(self, arb: Arbiter, now: float) -> None:
        self.arb = arb
        self.now = now
        self.events: list[Event] = []
        # Each watchpoint's indices before this operation first changed them (for `moved`).
        self.baseline: dict[Watchpoint, dict[int, tuple[int, ...]]] = {}
        # The indices an allocation installed in this operation was announced with.
        self.announced: dict[str, dict[int, tuple[int, ...]]] = {}
        # The keys of the waiting queue whose waiters may fit now (see `waiting.note_freed`),
        # and the registers released whose keys are not in it yet: most operations end with
        # nobody waiting, so a release only notes what it freed (`collect` makes the keys).
        self.freed: set[tuple[Any, ...]] = set()
        self.released: list[tuple[str, int | None, tuple[int, ...]]] = []
        # Waiters an admin evicted in this operation: not reinstalled by it.
        self.held_back: set[str] = set()
        # Reservations admitted in this operation: their debugger cannot have written them yet,
        # so the kernel, which holds nothing of them, would give their room to a waiter.
        self.reserved: list[Watchpoint] = []
        if arb.recheck:
            # An admin requeued waiters there in the previous operation: reconsider them now.
            self.free_budgets(arb.recheck)
            arb.recheck.clear()

    # ------------------------------------------------------------------ events

    def emit(
        self,
        type_: EventType,
        session: str | None,
        alloc: Allocation | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Number and record one event."""
        arb = self.arb
        arb.event_id += 1
        self.events.append(Event(arb.event_id, type_, self.now, session, None, data, alloc))

    def note_change(self, wp: Watchpoint) -> None:
        """`wp`'s indices are about to change (index assignment calls this first)."""
        # A watchpoint placed for the first time has nothing to move from: its holders learn
        # its indices from their `installed` event (see `announced`).
        if wp.indices and wp not in self.baseline:
            self.baseline[wp] = dict(wp.indices)

    def end(self) -> list[Event]:
        """Serve the waiters of what was freed, announce every index that changed, and hand
        back the events in order. The operation is over."""
        if (self.freed or self.released) and self.arb.queue:
            waiting.serve(self)
        announced = self.announced
        for wp, before in self.baseline.items():
            for alloc in wp.holders:
                # An allocation installed in this operation was announced with the indices it
                # had then; every other holder last heard of `before`.
                seen = announced.get(alloc.id, before)
                if wp.indices != seen:
                    alloc.state = MOVED_TO
                    previous = [
                        {"cpu": c, "pool": alloc.pool, "index": i}
                        for c, held in seen.items()
                        for i in held
                    ]
                    self.emit(MOVED, alloc.session, alloc, {"previous": previous})
        return self.events

    # ------------------------------------------------------------------ room for waiters

    def free(self, budget: str, tid: int | None, cpus: tuple[int, ...]) -> None:
        """Registers of `budget` held CPU-wide (`tid` None) or by task `tid` on `cpus` were
        freed, or their holders weakened: the waiters they competed with may fit now."""
        self.released.append((budget, tid, cpus))

    def collect(self) -> set[tuple[Any, ...]]:
        """`freed`, with the keys of every release noted since the last call added."""
        for budget, tid, cpus in self.released:
            waiting.note_freed(self.freed, budget, tid, cpus)
        self.released.clear()
        return self.freed

    def free_budgets(self, budgets: Iterable[str]) -> None:
        """Every waiter of these budgets may fit now (a host setting changed)."""
        self.freed.update(("budget", b) for b in budgets)

    # ------------------------------------------------------------------ transitions

    def install(
        self, alloc: Allocation, wp: Watchpoint, budget: PoolBudget, trigger: Trigger
    ) -> None:
        """Put `alloc` on `wp` (admitted or reinstalled): a watchpoint it shares, or a new one
        the kernel armed."""
        arb = self.arb
        alloc.state, event = transition(alloc.state, trigger)
        arb.generation += 1
        alloc.generation = arb.generation
        alloc.updated_at = self.now
        alloc.reason = None
        if not wp.holders:
            arb.seq += 1
            wp.seq = arb.seq
            arb.shared[wp.key] = wp
            budget.add(wp)
            if not wp.key[5]:  # `arm: false`: a reservation
                self.reserved.append(wp)
            wp.holders.append(alloc)
            alloc.watchpoint = wp
            if wp.tid is None:
                note = self.note_change
                for c in wp.cpus:
                    registers.assign_cpu(budget, c, note)
            else:
                registers.place_task(budget, wp)
        else:
            wp.holders.append(alloc)
            alloc.watchpoint = wp
        self.emit(event, alloc.session, alloc)
        self.announced[alloc.id] = dict(wp.indices)  # what the event just told its owner

    def queue(self, alloc: Allocation, blockers: list[Watchpoint]) -> None:
        """A new request that does not fit waits (it asked to)."""
        alloc.state, event = transition(alloc.state, Trigger.QUEUE)
        alloc.updated_at = self.now
        self.arb.queue.add(alloc, self.arb.budget_key(alloc.pool, alloc.space))
        self.emit(event, alloc.session, alloc, {"blockers": views.name_blockers(blockers)})

    def finish(
        self, alloc: Allocation, trigger: Trigger, reason: str, data: dict[str, Any] | None = None
    ) -> None:
        """Move a live allocation to a terminal state (released, expired or rejected)."""
        state = alloc.state
        alloc.state, event = transition(state, trigger)
        if state is INSTALLED:
            self._detach(alloc)
        else:
            self.arb.queue.remove(alloc, self.arb.budget_key(alloc.pool, alloc.space))
        alloc.updated_at = self.now
        alloc.reason = reason
        self.retire(alloc)
        self.emit(event, alloc.session, alloc, data)

    def reject(self, alloc: Allocation, reason: str) -> None:
        """The kernel will never take waiting `alloc` (not for lack of room): it ends."""
        self.finish(alloc, Trigger.REJECT, reason, {"reason": reason})

    def evict_all(
        self, victims: list[Watchpoint], reason: str, evictor: dict[str, Any] | None = None
    ) -> None:
        """Evict every holder of `victims` to make room (a decision, not an admin's)."""
        for wp in victims:
            for alloc in list(wp.holders):
                self.evict(alloc, reason, admin=False, evictor=evictor)

    def evict(
        self,
        alloc: Allocation,
        reason: str,
        *,
        admin: bool,
        evictor: dict[str, Any] | None = None,
    ) -> None:
        """Take installed `alloc` away: it ends, or with on_evict: wait it waits (not served
        again by this operation when an admin asked)."""
        requeue = alloc.on_evict is OnEvict.WAIT
        alloc.state, event = transition(
            alloc.state, Trigger.EVICT_TO_WAIT if requeue else Trigger.EVICT
        )
        self._detach(alloc)
        alloc.updated_at = self.now
        alloc.reason = reason
        if requeue:
            key = self.arb.budget_key(alloc.pool, alloc.space)
            self.arb.queue.add(alloc, key)
            if admin:
                self.held_back.add(alloc.id)
                self.arb.recheck.add(key)
        else:
            self.retire(alloc)
        data: dict[str, Any] = {"reason": reason}
        if evictor is not None:
            data["evictor"] = evictor
        self.emit(event, alloc.session, alloc, data)

    def end_session(self, session: Session, trigger: Trigger, why: str) -> None:
        """End every live allocation of `session` by `trigger`, then the session."""
        arb = self.arb
        for aid in list(session.allocations):
            alloc = arb.allocations.get(aid)
            if alloc is not None and alloc.state in LIVE:
                self.finish(alloc, trigger, f"session {why}")
        del arb.sessions[session.id]
        for raw in [r for r in arb.raw.values() if r.session == session.id]:
            del arb.raw[raw.tid]
        self.emit(EventType.SESSION_CLOSED, session.id, data={"reason": why})

    def retire(self, alloc: Allocation) -> None:
        """A terminal allocation leaves the live ones for the bounded history."""
        arb = self.arb
        del arb.allocations[alloc.id]
        if alloc.session is not None:
            session = arb.sessions.get(alloc.session)
            if session is not None:
                session.allocations.pop(alloc.id, None)
        arb.history[alloc.id] = alloc
        while len(arb.history) > arb.history_limit:
            arb.history.popitem(last=False)

    def _detach(self, alloc: Allocation) -> None:
        """Take an installed allocation off its watchpoint, freeing the registers if it was the
        last holder."""
        wp = alloc.watchpoint
        assert wp is not None
        arb = self.arb
        alloc.watchpoint = None
        if wp.armed and wp.holders == [alloc]:
            # Disarmed while its last holder is still on it: the hardware's last report (hits
            # since the previous one) is told to that holder.
            arb.kernel.disarm(wp)
        wp.holders.remove(alloc)
        # Even when others still hold it, the register may now be weaker (lower priority, or
        # evictable), so the waiters it competes with are reconsidered.
        self.free(wp.pool, wp.tid, wp.cpus)
        if wp.holders:
            return
        budget = arb.budgets[wp.pool]
        del arb.shared[wp.key]
        budget.remove(wp)
        self.baseline.pop(wp, None)
        registers.assign(budget, wp, self.note_change)
        wp.indices = {}


__all__ = ["Operation"]
