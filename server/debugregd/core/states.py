"""The allocation state machine. Everything that decides a state change lives in this table.

Like h11's `_state.py`, the transitions are data: `TRANSITIONS[(state, trigger)]` is the next state
and `EVENT_OF[trigger]` the event type published for it. The README's diagram is drawn from them.
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

EVENT_OF: dict[Trigger, str] = {
    Trigger.ADMIT: "installed",
    Trigger.QUEUE: "waiting",
    Trigger.RELEASE: "released",
    Trigger.EVICT: "evicted",
    Trigger.EVICT_TO_WAIT: "evicted",
    Trigger.MOVE: "moved",
    Trigger.REINSTALL: "reinstalled",
    Trigger.EXPIRE: "expired",
    Trigger.REJECT: "evicted",
}

TERMINAL: frozenset[State] = frozenset({State.RELEASED, State.EVICTED, State.EXPIRED})
LIVE: frozenset[State] = frozenset({State.INSTALLED, State.WAITING})


def next_state(state: State | None, trigger: Trigger) -> State:
    """The state after `trigger`, or InvalidTransition when the table has no such edge."""
    try:
        return TRANSITIONS[(state, trigger)]
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
