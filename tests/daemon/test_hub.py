"""The event hub: publishing never waits, a subscriber a whole buffer behind is cut off, and an
idle stream wakes for an event, for the end, or for its heartbeat."""

from __future__ import annotations

import asyncio

import pytest

import debugregd.hub
from debugregd.hub import EventHub
from debugregd.store.journal import StoredEvent


def event(id_: int, session: str | None) -> StoredEvent:
    return StoredEvent(id_, "installed", session, f'{{"id":{id_}}}')


def test_a_subscriber_sees_its_sessions_events_and_the_admin_sees_all() -> None:
    hub = EventHub(buffer=10)
    mine, other, admin = hub.subscribe("s1"), hub.subscribe("s2"), hub.subscribe(None)
    hub.publish([event(1, "s1"), event(2, "s2"), event(3, None)])
    assert [e.id for e in mine.pending] == [1]
    assert [e.id for e in other.pending] == [2]
    assert [e.id for e in admin.pending] == [1, 2, 3]
    assert hub.published_id == 3


def test_a_full_buffer_cuts_off_that_subscriber_only_and_counts_it_once() -> None:
    hub = EventHub(buffer=2)
    slow, fine = hub.subscribe("s1"), hub.subscribe("s2")
    hub.publish([event(i, "s1") for i in range(1, 6)] + [event(6, "s2")])
    assert slow.overflowed
    assert [e.id for e in slow.pending] == [1, 2]  # bounded: nothing past the buffer is kept
    assert not fine.overflowed and [e.id for e in fine.pending] == [6]
    assert hub.disconnected_slow == 1
    hub.unsubscribe(slow)
    hub.publish([event(7, "s1")])
    assert hub.subscribers == {fine}


async def test_a_waiting_stream_wakes_when_its_event_is_published() -> None:
    hub = EventHub()
    sub = hub.subscribe("s1")
    waiting = asyncio.create_task(sub.wait(timeout=3600))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiting.done()
    hub.publish([event(1, "s2")])  # not its session: it keeps waiting
    await asyncio.sleep(0)
    assert not waiting.done()
    hub.publish([event(2, "s1")])
    assert await waiting is True
    assert [e.id for e in sub.pending] == [2]


async def test_an_idle_wait_ends_false_so_the_stream_sends_a_heartbeat() -> None:
    hub = EventHub()
    sub = hub.subscribe(None)
    assert await sub.wait(timeout=0) is False
    assert not sub.pending and not sub.closed


async def test_close_wakes_every_waiting_stream() -> None:
    hub = EventHub()
    subs = [hub.subscribe(None), hub.subscribe("s1")]
    waiting = [asyncio.create_task(s.wait(timeout=3600)) for s in subs]
    await asyncio.sleep(0)
    hub.close()
    assert await asyncio.gather(*waiting) == [True, True]
    assert all(s.closed for s in subs)


def test_an_event_is_timed_from_the_publish_that_carried_it() -> None:
    hub = EventHub()
    assert hub.published_at(1) is None  # not published yet
    hub.publish([event(1, "s1"), event(2, "s1")])
    hub.publish([])  # an empty commit publishes nothing
    hub.publish([event(3, None)])
    first, second = hub.published_at(1), hub.published_at(3)
    assert first is not None and second is not None
    assert hub.published_at(2) == first < second
    assert hub.published_at(4) is None


def test_only_the_latest_publishes_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debugregd.hub, "PUBLISH_TIMES", 2)
    hub = EventHub()
    for id_ in range(1, 6):
        hub.publish([event(id_, None)])
    # Past twice the bound the older half goes: 1 and 2. The oldest publish kept (3) cannot
    # be told apart from the forgotten ones before it, so it is not timed either.
    assert [hub.published_at(i) is not None for i in range(1, 6)] == [
        False,
        False,
        False,
        True,
        True,
    ]
