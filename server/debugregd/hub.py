"""Fan-out of committed events to stream subscribers, without ever slowing the arbiter.

Each subscriber has a bounded buffer. Publishing never waits: a subscriber whose buffer is full is
marked overflowed and its stream ends; the client reconnects with Last-Event-ID and catches up from
the journal. So a slow or stalled consumer costs the arbiter one length check, nothing more.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Iterable

from debugregd.store.journal import StoredEvent

PUBLISH_TIMES = 4096  # publishes whose time is remembered, for the notice latency


class Subscriber:
    """One stream's buffer: a deque and at most one waiter. Lighter than an `asyncio.Queue`
    (three deques and an Event), which counts at 10,000 idle streams."""

    __slots__ = ("_waiter", "buffer", "closed", "counted", "overflowed", "pending", "session")

    def __init__(self, session: str | None, buffer: int, *, counted: bool = False) -> None:
        self.session = session  # None: every event (admin); else only that session's
        self.counted = counted  # opened with the session's own token: counts toward its limit
        self.buffer = buffer
        self.pending: deque[StoredEvent] = deque()
        self.overflowed = False  # fell a whole buffer behind: the stream ends
        self.closed = False  # the daemon is stopping: the stream ends once drained
        self._waiter: asyncio.Future[None] | None = None

    def push(self, ev: StoredEvent) -> None:
        if len(self.pending) >= self.buffer:
            self.overflowed = True
        else:
            self.pending.append(ev)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def wait(self, timeout: float) -> bool:
        """Wait until there is something to do (an event, or the end); False after `timeout`
        seconds of nothing, when the stream sends a heartbeat."""
        if self.pending or self.closed or self.overflowed:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self.pending) or self.closed or self.overflowed

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventHub:
    """Subscribers and a window of recent events (the journal holds the rest)."""

    def __init__(self, buffer: int = 1024, recent: int = 4096) -> None:
        self.buffer = buffer
        self.recent: deque[StoredEvent] = deque(maxlen=recent)
        self.subscribers: set[Subscriber] = set()
        # Streams by the session they follow (None: every event), so one event costs the
        # streams that want it, not every open stream.
        self.by_session: dict[str | None, set[Subscriber]] = {}
        # Streams each session's own token holds open (the admin's are not counted).
        self.held: dict[str, int] = {}
        self.published_id = 0
        self.disconnected_slow = 0
        # (last event id, perf_counter) of each publish, oldest first: one pair per commit
        # rather than a time per event per subscriber, which 10,000 streams would pay for.
        self._published_ids: list[int] = []
        self._published_at: list[float] = []
        self._forgot = False

    def subscribe(self, session: str | None, *, counted: bool = False) -> Subscriber:
        """A new stream of `session`'s events (None: every event); `counted` when the session's
        own token opened it (`held`)."""
        counted = counted and session is not None
        sub = Subscriber(session, self.buffer, counted=counted)
        self.subscribers.add(sub)
        self.by_session.setdefault(session, set()).add(sub)
        if counted:
            assert session is not None
            self.held[session] = self.held.get(session, 0) + 1
        return sub

    def streams_held(self, session: str) -> int:
        """How many streams `session`'s own token holds open."""
        return self.held.get(session, 0)

    def unsubscribe(self, sub: Subscriber) -> None:
        """End a subscription (once: a second call does nothing)."""
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        if sub.counted:
            assert sub.session is not None
            left = self.held[sub.session] - 1
            if left:
                self.held[sub.session] = left
            else:
                del self.held[sub.session]
        group = self.by_session.get(sub.session)
        if group is not None:
            group.discard(sub)
            if not group:
                del self.by_session[sub.session]

    def publish(self, events: Iterable[StoredEvent]) -> None:
        before = self.published_id
        everyone = self.by_session.get(None, ())
        for ev in events:
            self.recent.append(ev)
            self.published_id = ev.id
            own = self.by_session.get(ev.session, ()) if ev.session is not None else ()
            for group in (everyone, own):
                for sub in group:
                    if not sub.overflowed:
                        sub.push(ev)
                        self.disconnected_slow += sub.overflowed
        if self.published_id != before:
            self._stamp()

    def _stamp(self) -> None:
        ids, at = self._published_ids, self._published_at
        ids.append(self.published_id)
        at.append(time.perf_counter())
        if len(ids) > 2 * PUBLISH_TIMES:  # trimmed in halves: amortized O(1) per publish
            del ids[:PUBLISH_TIMES], at[:PUBLISH_TIMES]
            self._forgot = True

    def published_at(self, event_id: int) -> float | None:
        """When `event_id` was published (time.perf_counter(): right after its commit), or None
        when that is no longer remembered."""
        ids = self._published_ids
        i = bisect.bisect_left(ids, event_id)
        if i == len(ids) or (i == 0 and self._forgot):
            return None
        return self._published_at[i]

    def recent_after(self, event_id: int) -> list[StoredEvent] | None:
        """Events after `event_id` if the in-memory window still covers them, else None."""
        if not self.recent or self.recent[0].id > event_id + 1:
            return None if event_id < self.published_id else []
        return [e for e in self.recent if e.id > event_id]

    def close(self) -> None:
        """End every stream (graceful shutdown)."""
        for sub in self.subscribers:
            sub.close()
