"""Event streams (DESIGN section 10): ordered, resumable with Last-Event-ID or ?since=, per-session
notices, and an explicit `reset` for an id older than retention."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.helpers import Api, assert_problem, fresh_tid, open_stream, task_request
from tests.support.daemon import Daemon


def test_stream_ids_are_event_ids_and_the_event_field_is_the_type(api: Api) -> None:
    since = api.event_id()
    session = api.open_session()
    record = session.installed(task_request())
    session.release(record["id"])
    with api.events(since=since) as stream:
        events = stream.take(3)
    assert [e.type for e in events] == ["session_opened", "installed", "released"]
    assert [e.id for e in events] == [since + 1, since + 2, since + 3]
    for event in events:
        assert event.data["id"] == event.id
        assert event.data["type"] == event.type
        assert isinstance(event.data["at"], float)
        assert event.data["session"] == session.id
    assert events[1].data["allocation"]["id"] == record["id"]
    assert events[1].data["allocation"]["address"] == record["address"]


def test_a_stream_replays_history_then_follows_live_without_a_gap(api: Api) -> None:
    since = api.event_id()
    session = api.open_session()
    with api.events(since=since) as stream:
        (opened,) = stream.take(1)
        assert opened.type == "session_opened"
        live = [session.installed(task_request()) for _ in range(3)]
        events = stream.take(3)
    assert [e.id for e in events] == [opened.id + 1, opened.id + 2, opened.id + 3]
    assert [e.allocation for e in events] == [r["id"] for r in live]


def test_last_event_id_resumes_with_exactly_the_missed_events_in_order(api: Api) -> None:
    session = api.open_session()
    since = api.event_id()
    for _ in range(2):
        session.installed(task_request())
    with api.events(since=since) as stream:
        seen = stream.take(2)
    last_seen = seen[-1].id

    missed = [session.installed(task_request()) for _ in range(3)]
    session.release(missed[0]["id"])
    last = api.event_id()
    with api.events(last_event_id=last_seen) as stream:
        resumed = stream.until_id(last)
        assert [e.id for e in resumed] == list(range(last_seen + 1, last + 1))
        assert [e.type for e in resumed] == ["installed"] * 3 + ["released"]
        assert [e.allocation for e in resumed] == [r["id"] for r in missed] + [missed[0]["id"]]
        marker = session.installed(task_request())
        (after,) = stream.take(1)  # and then nothing but what happens next
    assert (after.id, after.allocation) == (last + 1, marker["id"])
    assert resumed == api.replay(last_seen, last)


def test_since_resumes_like_last_event_id(api: Api) -> None:
    session = api.open_session()
    since = api.event_id()
    made = [session.installed(task_request()) for _ in range(3)]
    last = api.event_id()
    with api.events(since=since + 1) as stream:
        events = stream.until_id(last)
    assert [e.id for e in events] == list(range(since + 2, last + 1))
    assert [e.allocation for e in events] == [r["id"] for r in made[1:]]
    with api.events(since=since + 1) as a, api.events(last_event_id=since + 1) as b:
        assert a.until_id(last) == b.until_id(last)


def test_since_wins_over_last_event_id(api: Api) -> None:
    session = api.open_session()
    since = api.event_id()
    made = [session.installed(task_request()) for _ in range(2)]
    with api.events(since=since + 1, last_event_id=since) as stream:
        (first,) = stream.take(1)
    assert first.allocation == made[1]["id"]


def test_a_session_stream_carries_only_that_sessions_notices(api: Api) -> None:
    since = api.event_id()
    mine = api.open_session()
    theirs = api.open_session()
    a = mine.installed(task_request())
    theirs.installed(task_request())
    b = mine.installed(task_request())
    theirs.installed(task_request())
    mine.release(a["id"])
    with mine.stream(since=since) as stream:
        events = stream.until(lambda e: e.type == "released")
    assert all(e.data["session"] == mine.id for e in events)
    assert [(e.type, e.allocation) for e in events] == [
        ("session_opened", None),
        ("installed", a["id"]),
        ("installed", b["id"]),
        ("released", a["id"]),
    ]
    assert [e.id for e in events] == sorted({e.id for e in events})
    assert_problem(theirs.http.get(f"/v1/sessions/{mine.id}/events"), 403)


def test_a_session_stream_resumes_with_last_event_id(api: Api) -> None:
    session = api.open_session()
    other = api.open_session()
    since = api.event_id()
    first = session.installed(task_request())
    with session.stream(since=since) as stream:
        (seen,) = stream.take(1)
    assert seen.allocation == first["id"]
    other.installed(task_request())
    missed = session.installed(task_request())
    other.installed(task_request())
    session.release(first["id"])
    with session.stream(last_event_id=seen.id) as stream:
        resumed = stream.until(lambda e: e.type == "released")
    assert [(e.type, e.allocation) for e in resumed] == [
        ("installed", missed["id"]),
        ("released", first["id"]),
    ]


def test_the_admin_may_read_any_sessions_stream(api: Api) -> None:
    since = api.event_id()
    session = api.open_session()
    record = session.installed(task_request())
    path = f"/v1/sessions/{session.id}/events"
    with open_stream(api.admin, path, since=since) as stream:
        events = stream.take(2)
    assert [(e.type, e.allocation) for e in events] == [
        ("session_opened", None),
        ("installed", record["id"]),
    ]


def test_a_streams_content_type_is_event_stream(api: Api) -> None:
    with api.events(since=api.event_id()) as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers.get("cache-control") == "no-cache"


def test_a_last_event_id_from_the_future_is_never_silently_trusted(api: Api) -> None:
    session = api.open_session()
    ahead = api.event_id() + 1  # an id this daemon has not issued
    with api.admin.stream("GET", "/v1/events", headers={"Last-Event-ID": str(ahead)}) as response:
        if response.status_code != 200:
            response.read()
            assert_problem(response)
            return
    with api.events(last_event_id=ahead) as stream:
        skipped = session.installed(task_request())  # this one gets the id `ahead`
        session.installed(task_request())
        first = next(stream)
    assert first.type == "reset" or first.allocation == skipped["id"], first


# --------------------------------------------------------------------------- retention


def test_an_id_older_than_retention_gets_a_reset_then_live_events(
    make_daemon: Callable[..., Daemon],
) -> None:
    """With --retention 5, once more than 1,000 events have passed (the journal prunes every
    1,000), resuming from id 1 cannot be served: the stream says `reset` and carries on live."""
    handle = Api(make_daemon("--retention", "5"))
    try:
        session = handle.open_session()
        tid = fresh_tid()
        same = task_request(tid, address="0x7ffd1000", length=8)
        shared = [session.installed(same) for _ in range(50)]  # identical: one shared register
        assert {str(r["registers"]) for r in shared} == {str(shared[0]["registers"])}
        access = {"cpu": 0, "tid": tid, "address": "0x7ffd1000", "access": "write"}
        for _ in range(20):  # 50 hits each: 1,000 hit events
            hits = handle.admin.post("/v1/sim/accesses", json=access).json()["hits"]
            assert len(hits) == 50
        last = handle.event_id()
        assert last > 1_000

        with handle.events(last_event_id=1) as stream:
            (reset,) = stream.take(1)
            assert reset.type == "reset"
            assert reset.data["type"] == "reset"
            assert reset.id == last  # the client re-reads state, which is consistent with it
            assert reset.data["since"] == 1
            assert reset.data["earliest"] > 1
            marker = session.installed(task_request())
            (after,) = stream.take(1)
        assert (after.type, after.allocation) == ("installed", marker["id"])
        assert after.id == last + 1

        with handle.events(since=1) as stream:
            assert next(stream).type == "reset"

        recent = last - 2  # still within retention: resumed normally
        with handle.events(last_event_id=recent) as stream:
            events = stream.until_id(last + 1)
        assert [e.id for e in events] == [last - 1, last, last + 1]
        assert [e.type for e in events] == ["hit", "hit", "installed"]

        with session.stream(last_event_id=1) as stream:
            assert next(stream).type == "reset"
    finally:
        handle.close()
