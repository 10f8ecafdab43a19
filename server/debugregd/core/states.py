"""The allocation state machine. Everything that decides a state change lives in this table.

Like h11's `_state.py`, the transitions are data: `TRANSITIONS[(state, trigger)]` is the next state
and `EVENT_OF[trigger]` the event type published for it, and the core changes an allocation's state
only through `transition`, which reads both. Every event type the core publishes is an `EventType`;
the README's diagram is drawn from the table.
"""

from __future__ import annotations

from enum import StrEnum

from debugregd.core.errors import InvalidTransition


class State(StrEnum):
    INSTALLED = "installed"
    WAITING = "waiting"
    RELEASED = "released"
    EVICTED = "evicted"
    EXPIRED = "expired"


class EventType(StrEnum):
    """Every event type of API v1 (the wire schema's `EventType` lists the same names)."""

    # An allocation's transitions (`EVENT_OF`).
    INSTALLED = "installed"
    WAITING = "waiting"
    EVICTED = "evicted"
    MOVED = "moved"
    REINSTALLED = "reinstalled"
    RELEASED = "released"
    EXPIRED = "expired"
    # Everything else the core publishes.
    HIT = "hit"  # an allocation's watchpoint was hit (no state change)
    SESSION_OPENED = "session_opened"
    SESSION_CLOSED = "session_closed"
    OUTSIDE = "outside"  # users outside debugregd hold more or fewer registers
    # The daemon's, not the core's: a stream resumed from before its retained history.
    RESET = "reset"


class Trigger(StrEnum):
    ADMIT = "admit"  # fits, or fits after evicting/moving lower priority
    QUEUE = "queue"  # does not fit and the request said wait: true
    RELEASE = "release"  # the owner (or an admin) lets go
    EVICT = "evict"  # taken by priority or by an admin, on_evict: release
    EVICT_TO_WAIT = "evict_to_wait"  # taken, on_evict: wait
    MOVE = "move"  # register index changed by juggling or compaction
    REINSTALL = "reinstall"  # a waiting allocation fits again
    EXPIRE = "expire"  # the owning session's lease ran out, or its task exited
    REJECT = "reject"  # the kernel will never take a waiting allocation (not for room)


NEW = None  # the state of a request before the arbiter has decided on it

TRANSITIONS: dict[tuple[State | None, Trigger], State] = {
    (NEW, Trigger.ADMIT): State.INSTALLED,
    (NEW, Trigger.QUEUE): State.WAITING,
    (State.INSTALLED, Trigger.RELEASE): State.RELEASED,
    (State.INSTALLED, Trigger.EVICT): State.EVICTED,
    (State.INSTALLED, Trigger.EVICT_TO_WAIT): State.WAITING,
    (State.INSTALLED, Trigger.MOVE): State.INSTALLED,
    (State.INSTALLED, Trigger.EXPIRE): State.EXPIRED,
    (State.WAITING, Trigger.REINSTALL): State.INSTALLED,
    (State.WAITING, Trigger.EXPIRE): State.EXPIRED,
    (State.WAITING, Trigger.RELEASE): State.RELEASED,
    (State.WAITING, Trigger.REJECT): State.EVICTED,
}

EVENT_OF: dict[Trigger, EventType] = {
    Trigger.ADMIT: EventType.INSTALLED,
    Trigger.QUEUE: EventType.WAITING,
    Trigger.RELEASE: EventType.RELEASED,
    Trigger.EVICT: EventType.EVICTED,
    Trigger.EVICT_TO_WAIT: EventType.EVICTED,
    Trigger.MOVE: EventType.MOVED,
    Trigger.REINSTALL: EventType.REINSTALLED,
    Trigger.EXPIRE: EventType.EXPIRED,
    Trigger.REJECT: EventType.EVICTED,
}

TERMINAL: frozenset[State] = frozenset({State.RELEASED, State.EVICTED, State.EXPIRED})
LIVE: frozenset[State] = frozenset({State.INSTALLED, State.WAITING})


def transition(state: State | None, trigger: Trigger) -> tuple[State, EventType]:
    """The state after `trigger` and the event that announces it, or InvalidTransition when the
    table has no such edge."""
    try:
        return TRANSITIONS[(state, trigger)], EVENT_OF[trigger]
    except KeyError:
        shown = "new" if state is None else state.value
        raise InvalidTransition(
            f"an allocation that is {shown} does not allow {trigger.value!r}", state=shown
        ) from None


def mermaid() -> str:
    """The state diagram, drawn from TRANSITIONS (the README embeds exactly this)."""
    lines = ["stateDiagram-v2"]
    for (state, trigger), target in TRANSITIONS.items():
        source = "[*]" if state is None else state.value
        lines.append(f"    {source} --> {target.value}: {trigger.value} ({EVENT_OF[trigger]})")
    for state in sorted(TERMINAL):
        lines.append(f"    {state.value} --> [*]")
    return "\n".join(lines)
