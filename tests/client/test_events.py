"""The client's event logic without a network: resume, dedupe, reset reconciliation, dispatch."""

from __future__ import annotations

import json
from typing import Any

from debugreg import api
from debugreg.events import Backoff, Dispatcher, Feed, Handlers, handler_map, take_handlers
from debugreg.handles import AllocationHandle, SessionHandle
from debugreg.schema import Allocation, Event
from tests.client.conftest import Recorder


def record(aid: str, state: str = "installed", generation: int = 1, index: int = 3) -> Allocation:
    registers = [{"cpu": 0, "pool": "dr", "index": index}] if state == "installed" else []
    return Allocation.model_validate(
        {
            "id": aid,
            "session": "s1",
            "state": state,
            "scope": {"kind": "cpu", "cpu": 0},
            "address": "0x1000",
            "length": 8,
            "access": "write",
            "priority": 100,
            "evictable": True,
            "on_evict": "release",
            "generation": generation,
            "registers": registers,
            "space": "user",
            "label": "",
            "created_at": 1.0,
            "updated_at": 1.0,
        }
    )


def sse(event_id: int, event_type: str, alloc: Allocation | None = None, **extra: Any) -> tuple:
    data: dict[str, Any] = {"id": event_id, "type": event_type, "at": 2.0, "session": "s1"}
    if alloc is not None:
        data["allocation"] = alloc.model_dump(mode="json")
    data.update(extra)
    return str(event_id), event_type, json.dumps(data)


def reset(event_id: int, since: int) -> tuple:
    return sse(event_id, "reset", since=since, earliest=event_id - 5)


def types(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e.type, e.allocation.id if e.allocation else None) for e in events]


def test_repeated_event_ids_are_delivered_once() -> None:
    feed = Feed(since=0)
    first = feed.receive(*sse(1, "installed", record("a1")))
    again = feed.receive(*sse(1, "installed", record("a1")))
    assert types(first.events) == [("installed", "a1")]
    assert again.events == [] and again.reset is None
    assert feed.last_event_id == 1


def test_heartbeats_are_not_events() -> None:
    feed = Feed(since=4)
    assert feed.receive("4", "", "").events == []
    assert feed.last_event_id == 4


def test_unknown_event_types_are_skipped_but_not_asked_for_again() -> None:
    feed = Feed(since=0)
    step = feed.receive("7", "teleported", json.dumps({"id": 7, "type": "teleported", "at": 1}))
    assert step.events == [] and feed.last_event_id == 7


def test_reset_waits_for_the_state_read_before_moving_on() -> None:
    feed = Feed(since=3)
    step = feed.receive(*reset(40, since=3))
    assert step.reset is not None and step.events == []
    assert feed.last_event_id == 3, "a failed re-read must be able to ask from 3 again"


def test_reset_reports_a_held_allocation_that_is_gone_as_evicted_once() -> None:
    feed = Feed(since=0)
    feed.receive(*sse(1, "installed", record("a1")))
    step = feed.receive(*reset(40, since=1))
    assert step.reset is not None
    out = feed.reconcile(step.reset, api.Baseline([], event_id=40))
    assert types(out) == [("reset", None), ("evicted", "a1")]
    assert (out[1].model_extra or {}).get("reconciled") is True
    assert feed.last_event_id == 40
    # The daemon's own eviction event, arriving late, is not a second notice.
    late = feed.receive(*sse(41, "evicted", record("a1", "evicted")))
    assert late.events == []


def test_reset_reports_eviction_and_reinstallation_from_a_new_generation() -> None:
    feed = Feed(since=0)
    feed.receive(*sse(1, "installed", record("a1", generation=1)))
    step = feed.receive(*reset(40, since=1))
    assert step.reset is not None
    out = feed.reconcile(step.reset, api.Baseline([record("a1", generation=9)], event_id=40))
    assert types(out)[1:] == [("evicted", "a1"), ("reinstalled", "a1")]


def test_reset_reports_moves_and_new_allocations_and_nothing_for_the_unchanged() -> None:
    feed = Feed(since=0)
    feed.receive(*sse(1, "installed", record("a1", index=3)))
    feed.receive(*sse(2, "installed", record("a2", index=2)))
    step = feed.receive(*reset(40, since=2))
    assert step.reset is not None
    now = [record("a1", index=1), record("a2", index=2), record("a3", "waiting")]
    out = feed.reconcile(step.reset, api.Baseline(now, event_id=40))
    assert types(out)[1:] == [("moved", "a1"), ("waiting", "a3")]
    assert (out[1].model_extra or {})["previous"] == [{"cpu": 0, "pool": "dr", "index": 3}]


def test_events_already_reflected_by_the_state_read_are_skipped() -> None:
    feed = Feed(since=0)
    feed.receive(*sse(1, "installed", record("a1", index=3)))
    step = feed.receive(*reset(40, since=1))
    assert step.reset is not None
    # The state was read after event 41 (a move) happened; 41 then arrives on the stream.
    feed.reconcile(step.reset, api.Baseline([record("a1", index=0)], event_id=41))
    assert feed.receive(*sse(41, "moved", record("a1", index=0))).events == []
    assert types(feed.receive(*sse(42, "moved", record("a1", index=2))).events) == [("moved", "a1")]


def test_without_an_event_id_on_the_state_read_records_decide_what_is_stale() -> None:
    feed = Feed(since=0)
    feed.receive(*sse(1, "installed", record("a1", index=3)))
    step = feed.receive(*reset(40, since=1))
    assert step.reset is not None
    feed.reconcile(step.reset, api.Baseline([record("a1", index=0)], event_id=None))
    assert feed.receive(*sse(41, "moved", record("a1", index=0))).events == []


def test_hits_are_never_taken_for_reflected_state() -> None:
    feed = Feed(since=0)
    feed.receive(*sse(1, "installed", record("a1")))
    step = feed.receive(*reset(40, since=1))
    assert step.reset is not None
    feed.reconcile(step.reset, api.Baseline([record("a1")], event_id=41))
    assert types(feed.receive(*sse(41, "hit", record("a1"), cpu=0)).events) == [("hit", "a1")]


def test_an_event_that_beats_the_allocation_answer_still_reaches_its_handler() -> None:
    dispatcher = Dispatcher()
    session_evicted = Recorder()
    dispatcher.on("evicted", session_evicted)
    early = [
        Event.model_validate({"id": 5, "type": "installed", "at": 1, "allocation": record("a1")}),
        Event.model_validate(
            {"id": 6, "type": "evicted", "at": 1, "allocation": record("a1", "evicted")}
        ),
    ]
    notices = [n for e in early for n in dispatcher.route(e)]
    assert [e.id for _, e in notices] == [6]  # the session handler heard it as it came
    own = Recorder()
    tracked, replay = dispatcher.track(record("a1"), {"evicted": own})
    for handler, event in replay:
        handler(event)
    assert [e.id for e in own.events] == [6]
    assert tracked.record.state == "evicted"


def test_allocation_handlers_hear_only_their_allocation() -> None:
    dispatcher = Dispatcher()
    mine = Recorder()
    dispatcher.track(record("a1"), {"evicted": mine})
    dispatcher.track(record("a2"))
    evicted = Event.model_validate(
        {"id": 9, "type": "evicted", "at": 1, "allocation": record("a2", "evicted")}
    )
    assert dispatcher.route(evicted) == []


def test_backoff_grows_to_its_maximum() -> None:
    backoff = Backoff(initial=0.1, factor=2, maximum=1.0, jitter=0)
    assert [backoff.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_released_allocation_stops_being_followed() -> None:
    dispatcher = Dispatcher()
    mine = Recorder()
    tracked, _ = dispatcher.track(record("a1"), {"evicted": mine})
    dispatcher.settle(record("a1", "released"))
    assert tracked.record.state == "released"
    late = Event.model_validate(
        {"id": 9, "type": "evicted", "at": 1, "allocation": record("a1", "evicted")}
    )
    assert dispatcher.route(late) == []


def test_a_reset_tells_the_hits_missed_from_the_records_totals() -> None:
    feed = Feed(since=0)
    seen = record("a1").model_copy(update={"hits": 10})
    feed.receive(*sse(1, "hit", seen, count=10, total=10, sites=[]))
    step = feed.receive(*reset(40, since=1))
    assert step.reset is not None
    now = record("a1").model_copy(update={"hits": 25, "hits_lost": 3})
    out = feed.reconcile(step.reset, api.Baseline([now], event_id=40))
    assert types(out) == [("reset", None), ("hit", "a1")]
    missed = out[1].hit
    assert missed is not None
    assert (missed.count, missed.lost, missed.total, missed.sites) == (15, 3, 25, [])
    assert (out[1].model_extra or {}).get("reconciled") is True


def test_a_hit_event_gives_its_call_sites() -> None:
    site = {"ip": "0x401136", "pid": 7, "symbol": "writer_a+0x11", "mapping": None}
    site |= {"first": 1.0, "last": 2.0, "count": 3, "tids": [7], "threads": 1, "cpus": [0]}
    step = Feed(since=0).receive(*sse(1, "hit", record("a1"), count=3, lost=0, sites=[site]))
    (event,) = step.events
    assert event.hit is not None and [s.symbol for s in event.hit.sites] == ["writer_a+0x11"]
    assert Feed(since=0).receive(*sse(1, "installed", record("a1"))).events[0].hit is None


def test_every_handler_keyword_is_also_a_decorator_of_allocations_and_sessions() -> None:
    keywords = set(Handlers.__annotations__)
    for handle in (AllocationHandle, SessionHandle):
        assert {name for name in dir(handle) if name.startswith("on_")} == keywords


def test_allocate_takes_its_handlers_out_of_the_request_fields() -> None:
    fields: dict[str, Any] = {"on_evict": "wait", "on_evicted": print, "on_hit": None}
    assert handler_map(take_handlers(fields)) == {"evicted": print}
    assert fields == {"on_evict": "wait"}  # the request's own field, not a handler
