"""Event handling as pure logic: resuming, deduplicating, reconciling after `reset`, dispatching.

Two pieces, neither of which does I/O:

- `Feed` turns raw SSE messages into the events a reader should see, exactly once: it remembers
  the last event id (the `Last-Event-ID` to resume with), drops repeats, and when the daemon says
  `reset` (the id we asked for is older than its retention) it compares a fresh read of the state
  with what it knew and synthesizes the events that were lost (`reconciled: true`).
- `Dispatcher` decides which handlers hear an event: per allocation and per session, in stream
  order, including events that arrived before the allocation's handle existed.

The transports (`Client`, `AsyncClient`) only fetch bytes, sleep between reconnects and call the
handlers this module names.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

from pydantic import ValidationError

from debugreg.api import Baseline
from debugreg.schema import Allocation, Event

Handler = Callable[[Event], Any]
"""A callback given one event; an async client also awaits what it returns, if awaitable."""


class Handlers(TypedDict, total=False):
    """The handler keywords of `session(...)` (every allocation of the session) and of
    `allocate(...)` (that allocation), for `Client` and `AsyncClient` alike: `on_<type>` hears
    the events of that type."""

    on_evicted: Handler | None
    on_moved: Handler | None
    on_reinstalled: Handler | None
    on_hit: Handler | None
    on_expired: Handler | None


Notice = tuple[Handler, Event]

LIVE = frozenset({"installed", "waiting"})
TERMINAL = frozenset({"released", "evicted", "expired"})

# A reader forgets the oldest finished allocations beyond this many; only stale repeats of their
# terminal events could still arrive, right after a reset.
_REMEMBER = 4096
# Events of allocations nobody holds a handle for yet, kept for a handle created a moment later.
_EARLY = 256


@dataclass
class Backoff:
    """Delays between reconnects and retries: exponential from `initial` to `maximum`, with
    jitter so many clients do not reconnect to a restarted daemon in lockstep. Subclass and
    override `delay` for another policy."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        return base * (1 + self.jitter * (2 * random.random() - 1))


@dataclass(slots=True)
class Step:
    """What one SSE message means for the reader: events to deliver, or a `reset` after which
    the state must be re-read (`Feed.reconcile`) before anything else."""

    events: list[Event] = field(default_factory=list)
    reset: Event | None = None


def _placement(a: Allocation) -> tuple[str, int, list[tuple[int, str, int]]]:
    return a.state, a.generation, sorted((r.cpu, r.pool, r.index) for r in a.registers)


class Feed:
    """One resumable event stream, deduplicated by event id and reconciled after a `reset`.

    `since` is the last event already seen (None: follow from now). The feed mirrors the live
    allocations its stream is about, which is what lets it tell, after a reset, what was lost.
    """

    def __init__(self, since: int | None = None) -> None:
        self.last_event_id = since
        self.resets = 0
        self._live: dict[str, Allocation] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        # After a reset, state was read as of this event id: later copies of earlier events
        # are already reflected in the mirror and in what the reader was told.
        self._reflected_upto: int | None = None

    def seed(self, baseline: Baseline) -> None:
        """Start from a state read (e.g. GET /v1/state) instead of an empty mirror."""
        self._live = {a.id: a for a in baseline.allocations if a.state in LIVE}
        if baseline.event_id is not None and self.last_event_id is None:
            self.last_event_id = baseline.event_id

    def receive(self, event_id: str, event_type: str, data: str) -> Step:
        """One SSE message (`id:`, `event:`, `data:`); heartbeats and repeats yield nothing."""
        if not data:
            return Step()  # a heartbeat comment, or a message without a payload
        try:
            number = int(event_id) if event_id else int(json.loads(data)["id"])
        except (ValueError, KeyError, TypeError):
            return Step()
        if self.last_event_id is not None and number <= self.last_event_id:
            return Step()
        try:
            event = Event.model_validate_json(data)
        except ValidationError:
            # A type this client does not know (a newer daemon): skip it, but do not ask again.
            self.last_event_id = number
            return Step()
        if event.type == "reset" or event_type == "reset":
            # last_event_id stays put until reconcile() succeeds: if re-reading the state fails,
            # the reconnect asks from the same point and gets the reset again.
            return Step(reset=event)
        self.last_event_id = number
        if self._reflected(event):
            return Step()
        self._apply(event)
        return Step(events=[event])

    def reconcile(self, reset: Event, baseline: Baseline) -> list[Event]:
        """After `reset`: the events that bring a reader from what it knew to `baseline`.

        Returns the reset event itself first, then one synthesized event per change (each has
        `reconciled: true` and the reset's id): an allocation hit meanwhile gets a `hit` with the
        count it missed (no call sites: those were in the events lost), one that is gone or
        terminal its terminal event (`evicted` when the daemon no longer knows it), one that was
        evicted and reinstalled both, one whose registers changed `moved`, a new one `installed`
        or `waiting`.
        """
        now = {a.id: a for a in baseline.allocations}
        out: list[Event] = [reset]
        for aid, old in self._live.items():
            out.extend(_lost_changes(reset, old, now.get(aid)))
        for aid, new in now.items():
            if aid not in self._live and aid not in self._finished and new.state in LIVE:
                out.append(_synthesize(reset, new.state, new))
        self._live = {aid: a for aid, a in now.items() if a.state in LIVE}
        for aid, a in now.items():
            if a.state in TERMINAL:
                self._finish(aid)
        for ev in out[1:]:
            if ev.type in TERMINAL and ev.allocation is not None:
                self._finish(ev.allocation.id)
        self.last_event_id = reset.id
        self.resets += 1
        self._reflected_upto = baseline.event_id if baseline.event_id is not None else None
        return out

    def _reflected(self, event: Event) -> bool:
        """Whether a state event is already known: only possible just after a reconcile, when
        events that happened between the reset and the state read arrive live."""
        alloc = event.allocation
        if alloc is None or event.type == "hit":
            return False  # hits change no state, so a state read cannot have reflected them
        if self._reflected_upto is not None and event.id <= self._reflected_upto:
            return True
        if alloc.id in self._finished:
            return True
        known = self._live.get(alloc.id)
        if known is None:
            return False
        # Without an event id on the state read, compare records: generations only grow, and
        # every real change alters the state, the generation or the registers.
        return alloc.generation < known.generation or _placement(alloc) == _placement(known)

    def _apply(self, event: Event) -> None:
        alloc = event.allocation
        if alloc is None:
            return
        if alloc.state in LIVE:
            self._live[alloc.id] = alloc
        else:
            self._live.pop(alloc.id, None)
            self._finish(alloc.id)

    def _finish(self, aid: str) -> None:
        self._finished[aid] = None
        self._finished.move_to_end(aid)
        while len(self._finished) > _REMEMBER:
            self._finished.popitem(last=False)


def _synthesize(reset: Event, type_: str, alloc: Allocation, **extra: Any) -> Event:
    data: dict[str, Any] = {
        "id": reset.id,
        "type": type_,
        "at": reset.at,
        "session": alloc.session,
        "allocation": alloc.model_dump(mode="json"),
        "reconciled": True,
    }
    data.update(extra)
    return Event.model_validate(data)


def _lost_changes(reset: Event, old: Allocation, new: Allocation | None) -> list[Event]:
    """What happened to `old` while the reader was away, as events: the hits it missed (from
    the records' totals) first, then the changes of state."""
    if new is not None and (new.hits > old.hits or new.hits_lost > old.hits_lost):
        missed = _synthesize(
            reset,
            "hit",
            new,
            count=new.hits - old.hits,
            lost=new.hits_lost - old.hits_lost,
            total=new.hits,
            sites=[],
        )
        return [missed, *_changes(reset, old, new)]
    return _changes(reset, old, new)


def _changes(reset: Event, old: Allocation, new: Allocation | None) -> list[Event]:
    if new is None:
        gone = old.model_copy(
            update={
                "state": "evicted",
                "registers": [],
                "reason": "no longer held: the daemon forgot it while the event stream was away",
            }
        )
        return [_synthesize(reset, "evicted", gone, reason=gone.reason)]
    if new.state in TERMINAL:
        return [_synthesize(reset, new.state, new, reason=new.reason)]
    reinstalled = new.generation != old.generation
    if old.state == "installed" and new.state == "waiting":
        return [_synthesize(reset, "evicted", new, reason=new.reason)]
    if old.state == "installed" and reinstalled:
        return [
            _synthesize(reset, "evicted", new, reason=new.reason),
            _synthesize(reset, "reinstalled", new),
        ]
    if old.state == "waiting" and new.state == "installed":
        return [_synthesize(reset, "reinstalled", new)]
    if old.state == "waiting" and reinstalled:
        return [
            _synthesize(reset, "reinstalled", new),
            _synthesize(reset, "evicted", new, reason=new.reason),
        ]
    if _placement(old) != _placement(new):
        previous = [r.model_dump() for r in old.registers]
        return [_synthesize(reset, "moved", new, previous=previous)]
    return []


class Tracked:
    """An allocation a handle follows: its latest record and its own handlers."""

    __slots__ = ("followed", "handlers", "record")

    def __init__(self, record: Allocation, *, followed: bool) -> None:
        self.record = record
        self.handlers: dict[str, list[Handler]] = {}
        # False for a handle without a session stream: nothing could ever call its handlers.
        self.followed = followed

    def update(self, record: Allocation) -> None:
        # Generations only grow; an older record (a late read) must not roll the handle back.
        if record.generation >= self.record.generation:
            self.record = record

    def add(self, event_type: str, handler: Handler) -> None:
        if not self.followed:
            raise RuntimeError(
                "this allocation has no event stream; allocate through a session "
                "(client.session(...)) to be notified"
            )
        self.handlers.setdefault(event_type, []).append(handler)


class Dispatcher:
    """Which handlers hear which event: per allocation first, then per session, in the order
    the stream delivers them."""

    def __init__(self) -> None:
        self._session: dict[str, list[Handler]] = {}
        self._tracked: dict[str, Tracked] = {}
        self._early: OrderedDict[str, list[Event]] = OrderedDict()

    def on(self, event_type: str, handler: Handler) -> None:
        """Call `handler` for every event of `event_type` on this session's stream."""
        self._session.setdefault(event_type, []).append(handler)

    def track(
        self, record: Allocation, handlers: Mapping[str, Handler] | None = None
    ) -> tuple[Tracked, list[Notice]]:
        """Follow an allocation from `record` on (the answer that created or listed it).

        Returns the tracked entry and the notices for events that reached the stream before
        the answer did (an eviction can beat the 201 to the client).
        """
        tracked = self._tracked.get(record.id)
        if tracked is None:
            tracked = Tracked(record, followed=True)
            if record.state in LIVE:
                self._tracked[record.id] = tracked
        else:
            tracked.update(record)
        for event_type, handler in (handlers or {}).items():
            tracked.add(event_type, handler)
        notices: list[Notice] = []
        for event in self._early.pop(record.id, []):
            if event.type in LIVE:
                continue  # the creation itself, which `record` already shows
            notices.extend(self._to_allocation(tracked, event))
        return tracked, notices

    def settle(self, record: Allocation) -> None:
        """A record read by the client itself (release, refresh)."""
        tracked = self._tracked.get(record.id)
        if tracked is not None:
            tracked.update(record)
            if record.state in TERMINAL:
                del self._tracked[record.id]

    def route(self, event: Event) -> list[Notice]:
        """The notices one event causes."""
        notices: list[Notice] = []
        alloc = event.allocation
        if alloc is not None:
            tracked = self._tracked.get(alloc.id)
            if tracked is not None:
                notices.extend(self._to_allocation(tracked, event))
            else:
                self._early.setdefault(alloc.id, []).append(event)
                self._early.move_to_end(alloc.id)
                while len(self._early) > _EARLY:
                    self._early.popitem(last=False)
        notices.extend((h, event) for h in self._session.get(event.type, ()))
        return notices

    def _to_allocation(self, tracked: Tracked, event: Event) -> list[Notice]:
        assert event.allocation is not None
        tracked.update(event.allocation)
        if event.allocation.state in TERMINAL:
            self._tracked.pop(event.allocation.id, None)
        return [(h, event) for h in list(tracked.handlers.get(event.type, ()))]


def handler_map(handlers: Handlers) -> dict[str, Handler]:
    """The handlers given (not None) by the event type they hear."""
    given = cast(Mapping[str, Handler | None], handlers)  # every value of `Handlers` is one
    return {key.removeprefix("on_"): h for key, h in given.items() if h is not None}


def take_handlers(fields: dict[str, Any]) -> Handlers:
    """Remove the `Handlers` keywords from `fields` (those of `allocate`, whose other keywords
    are the request's) and return them."""
    return cast(Handlers, {k: fields.pop(k) for k in Handlers.__annotations__ if k in fields})
