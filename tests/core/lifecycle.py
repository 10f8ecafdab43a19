"""Following allocations through the events an operation returns (DESIGN sections 4, 5 and 10).

`Ledger` keeps, for every allocation it has seen, the state and the registers the events last
announced. Every event's type is an `EventType`; each operation's events must walk the state table
(`TRANSITIONS`, `EVENT_OF`) from the state before to the state after, one event per transition;
ids and generations only grow; and a `moved` event must exist exactly when an allocation's
registers changed, naming what it had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from debugregd.core import (
    EVENT_OF,
    TRANSITIONS,
    Arbiter,
    Event,
    EventType,
    OnEvict,
    State,
    Trigger,
)
from tests.core.oracle import normalise_registers

Registers = list[tuple[int, str, int]]
TRANSITION_EVENTS = frozenset(EVENT_OF.values())


class Ledger:
    """The outside view of every allocation, kept only from events."""

    def __init__(self, arb: Arbiter) -> None:
        self.last_event_id = arb.event_id
        self.last_generation = arb.generation
        self.states: dict[str, State] = {a.id: a.state for a in arb.allocations.values() if a.state}
        self.announced: dict[str, Registers] = {
            a.id: normalise_registers(a.registers()) for a in arb.allocations.values()
        }
        self.finished: set[str] = set()

    def follow(
        self, arb: Arbiter, events: Sequence[Event], admin_reason: str | None = None
    ) -> None:
        """Check one operation's events and advance the view; `admin_reason` marks evictions an
        admin asked for (any other eviction must have been made by a higher priority)."""
        touched: set[str] = set()
        for n, event in enumerate(events):
            assert event.id > self.last_event_id, f"event id {event.id} after {self.last_event_id}"
            self.last_event_id = event.id
            assert type(event.type) is EventType, f"event type {event.type!r} is not an EventType"
            record = event.allocation
            if record is None or event.type not in TRANSITION_EVENTS:
                continue  # a hit: no transition
            touched.add(record["id"])
            self._step(event, record)
            if event.type == "evicted":
                self._check_evictor(events, n, record, admin_reason)
        assert self.last_event_id == arb.event_id, "the arbiter numbered events it did not return"
        for aid in touched | set(self.states):
            actual = arb.allocation(aid).state
            expected = self.states.get(aid)
            if aid in self.finished:
                assert actual in (State.RELEASED, State.EVICTED, State.EXPIRED)
                continue
            assert actual is expected, f"{aid} is {actual} but its events say {expected}"
        for alloc in arb.allocations.values():
            assert alloc.id in self.states, f"{alloc.id} is live without an event"
            if alloc.state is State.INSTALLED:
                now_at = normalise_registers(alloc.registers())
                assert self.announced[alloc.id] == now_at, (
                    f"{alloc.id} holds {alloc.registers()} but events announced "
                    f"{self.announced[alloc.id]}: a `moved` event is missing"
                )
        for aid in list(self.states):
            if self.states[aid] not in (State.INSTALLED, State.WAITING):
                del self.states[aid]
                self.announced.pop(aid, None)
                self.finished.add(aid)

    def _step(self, event: Event, record: dict[str, Any]) -> None:
        aid = record["id"]
        assert aid not in self.finished, f"event {event.type} for finished allocation {aid}"
        before = self.states.get(aid)
        after = State(record["state"])
        registers = normalise_registers(record["registers"])
        triggers = [
            t
            for t in Trigger
            if EVENT_OF[t] == event.type and TRANSITIONS.get((before, t)) == after
        ]
        assert triggers, f"{aid}: no transition {before} --{event.type}--> {after}"
        if event.type == "moved":
            assert event.data is not None
            previous = normalise_registers(event.data["previous"])
            assert previous == self.announced[aid], (
                f"{aid} moved from {previous} but was last announced at {self.announced[aid]}"
            )
            assert registers != previous, f"{aid} 'moved' to the registers it already had"
            self.announced[aid] = registers
            return
        if event.type in ("installed", "reinstalled"):
            assert registers, f"{aid} {event.type} without registers"
            generation = record["generation"]
            assert generation > self.last_generation, (
                f"{aid} {event.type} with generation {generation} after {self.last_generation}"
            )
            self.last_generation = generation
        else:
            assert not registers, f"{aid} {event.type} still holding {registers}"
        if event.type == "evicted":
            waits = record["on_evict"] == OnEvict.WAIT.value
            assert after is (State.WAITING if waits else State.EVICTED)
            assert before is State.INSTALLED
        self.states[aid] = after
        self.announced[aid] = registers

    @staticmethod
    def _check_evictor(
        events: Sequence[Event], n: int, victim: dict[str, Any], admin_reason: str | None
    ) -> None:
        data = events[n].data
        reason = data["reason"] if data else None
        if admin_reason is not None and reason == admin_reason:
            return
        evictor = next(
            (
                e.allocation
                for e in events[n + 1 :]
                if e.type in ("installed", "reinstalled") and e.allocation is not None
            ),
            None,
        )
        assert evictor is not None, f"{victim['id']} evicted with nothing installed after it"
        assert victim["evictable"], f"non-evictable {victim['id']} was evicted by {evictor['id']}"
        assert victim["priority"] < evictor["priority"], (
            f"{victim['id']} (priority {victim['priority']}) evicted by {evictor['id']} "
            f"(priority {evictor['priority']}): only a strictly higher priority may evict"
        )
