"""Fan-out of committed events to stream subscribers, without ever slowing the arbiter.

Each subscriber has a bounded queue. Publishing never waits: a subscriber whose queue is full is
marked overflowed and its stream ends; the client reconnects with Last-Event-ID and catches up from
the journal. So a slow or stalled consumer costs the arbiter one failed `put_nowait`, nothing more.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from debugregd.store.journal import StoredEvent


class Subscriber:
    __slots__ = ("closed", "overflowed", "queue", "session")

    def __init__(self, session: str | None, buffer: int) -> None:
        self.session = session  # None: every event (admin); else only that session's
        self.queue: asyncio.Queue[StoredEvent | None] = asyncio.Queue(buffer)
        self.overflowed = False
        self.closed = False


class EventHub:
    """Subscribers and a window of recent events (the journal holds the rest)."""

    def __init__(self, buffer: int = 1024, recent: int = 4096) -> None:
        self.buffer = buffer
        self.recent: deque[StoredEvent] = deque(maxlen=recent)
        self.subscribers: set[Subscriber] = set()
        # Streams by the session they follow (None: every event), so one event costs the
        # streams that want it, not every open stream.
        self.by_session: dict[str | None, set[Subscriber]] = {}
        self.published_id = 0
        self.disconnected_slow = 0

    def subscribe(self, session: str | None) -> Subscriber:
        sub = Subscriber(session, self.buffer)
        self.subscribers.add(sub)
        self.by_session.setdefault(session, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        group = self.by_session.get(sub.session)
        if group is not None:
            group.discard(sub)
            if not group:
                del self.by_session[sub.session]

    def publish(self, events: Iterable[StoredEvent]) -> None:
        everyone = self.by_session.get(None, ())
        for ev in events:
            self.recent.append(ev)
            self.published_id = ev.id
            own = self.by_session.get(ev.session, ()) if ev.session is not None else ()
            for group in (everyone, own):
                for sub in group:
                    if sub.overflowed:
                        continue
                    try:
                        sub.queue.put_nowait(ev)
                    except asyncio.QueueFull:
                        sub.overflowed = True
                        self.disconnected_slow += 1

    def recent_after(self, event_id: int) -> list[StoredEvent] | None:
        """Events after `event_id` if the in-memory window still covers them, else None."""
        if not self.recent or self.recent[0].id > event_id + 1:
            return None if event_id < self.published_id else []
        return [e for e in self.recent if e.id > event_id]

    def close(self) -> None:
        """End every stream (graceful shutdown)."""
        for sub in self.subscribers:
            sub.closed = True
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:
                sub.overflowed = True
