"""What a session may see of other sessions (issue 17, point 7): a non-admin caller never sees
another session's ids, labels or scopes. A blocker held by another session says only "held by
another session at priority P" (its priority and whether it is evictable), in a 409's
`blockers` and on the `waiting` event of the caller's stream; an eviction names no evictor of
another session. The admin still sees everything, and the journal keeps events whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.api.helpers import (
    Api,
    Session,
    assert_problem,
    cpu_request,
    open_stream,
    task_request,
)
from tests.support.daemon import Daemon

SECRET = "secret-label-of-a"


@pytest.fixture
def api(make_daemon: Callable[..., Daemon]) -> Iterator[Api]:
    handle = Api(make_daemon())
    yield handle
    handle.close()


def fill_cpu1(owner: Session) -> list[dict[str, Any]]:
    return [owner.installed(cpu_request(1, label=f"{SECRET}-{n}")) for n in range(4)]


def assert_anonymous(blocker: dict[str, Any], priority: int = 300) -> None:
    assert blocker == {
        "allocation": None,
        "session": None,
        "priority": priority,
        "evictable": True,
        "scope": None,
        "label": None,
        "outside": False,
    }


def test_a_refusal_names_no_other_session_to_a_session(api: Api) -> None:
    owner, asker = api.open_session("a"), api.open_session("b")
    held = fill_cpu1(owner)
    body = assert_problem(asker.allocate(cpu_request(1)), 409)
    assert len(body["blockers"]) == 4
    for blocker in body["blockers"]:
        assert_anonymous(blocker)
    text = str(body)
    for secret in [owner.id, SECRET, *(a["id"] for a in held)]:
        assert secret not in text, f"{secret} leaked: {text}"


def test_a_session_sees_its_own_blockers_whole(api: Api) -> None:
    owner = api.open_session("a")
    held = fill_cpu1(owner)
    body = assert_problem(owner.allocate(cpu_request(1)), 409)
    assert sorted(b["allocation"] for b in body["blockers"]) == sorted(a["id"] for a in held)
    assert {b["session"] for b in body["blockers"]} == {owner.id}


def test_a_waiting_event_names_no_other_session_on_the_session_stream_but_does_to_the_admin(
    api: Api,
) -> None:
    owner, waiter = api.open_session("a"), api.open_session("b")
    held = fill_cpu1(owner)
    since = api.event_id()
    queued = waiter.allocate(cpu_request(1, wait=True)).json()
    assert queued["state"] == "waiting"
    with waiter.stream(since=since) as stream:
        (event,) = stream.until(lambda e: e.type == "waiting")
    assert event.allocation == queued["id"]
    for blocker in event.data["blockers"]:
        assert_anonymous(blocker)
    assert owner.id not in str(event.data) and SECRET not in str(event.data)
    for admin_path in ("/v1/events", f"/v1/sessions/{waiter.id}/events"):
        with open_stream(api.admin, admin_path, since=since) as stream:
            (whole,) = stream.until(lambda e: e.type == "waiting")
        assert sorted(b["allocation"] for b in whole.data["blockers"]) == sorted(
            a["id"] for a in held
        )
        assert {b["session"] for b in whole.data["blockers"]} == {owner.id}


def test_an_eviction_names_no_evictor_of_another_session(api: Api) -> None:
    victim = api.open_session("a")
    taker = api.open_session("b", max_priority="ptrace")
    tid = task_request()["scope"]["tid"]
    held = victim.installed(task_request(tid, length=32, label=SECRET))
    since = api.event_id()
    mine = taker.installed(task_request(tid, priority="ptrace"))
    with victim.stream(since=since) as stream:
        (evicted,) = stream.until(lambda e: e.type == "evicted")
    assert evicted.allocation == held["id"]
    assert "evictor" not in evicted.data
    assert mine["id"] not in str(evicted.data) and taker.id not in str(evicted.data)
    assert evicted.data["reason"] == "evicted to make room for a request at priority 700"
    assert mine["id"] not in str(victim.get(held["id"]))
    with api.events(since=since) as stream:
        (whole,) = [e for e in stream.until(lambda e: e.type == "evicted")]
    assert whole.data["evictor"] == {"allocation": mine["id"], "session": taker.id}


def test_the_admin_sees_blockers_whole_in_a_refusal(api: Api) -> None:
    owner = api.open_session("a", max_priority="critical")
    tid = task_request()["scope"]["tid"]
    held = [owner.installed(task_request(tid, priority="critical", label=SECRET)) for _ in range(4)]
    refused = api.admin.put(f"/v1/tasks/{tid}/debugregs", json={"dr0": "0x1000", "dr7": 0x10001})
    body = assert_problem(refused, 409)
    assert sorted(b["allocation"] for b in body["blockers"]) == sorted(a["id"] for a in held)
    assert {b["label"] for b in body["blockers"]} == {SECRET}


def test_raw_debug_registers_of_another_sessions_task_name_no_session(api: Api) -> None:
    writer = api.open_session("a", max_priority="ptrace")
    reader = api.open_session("b", max_priority="ptrace")
    tid = task_request()["scope"]["tid"]
    written = writer.http.put(f"/v1/tasks/{tid}/debugregs", json={"dr0": "0x1000", "dr7": 0x10001})
    assert written.status_code == 200, written.text
    assert written.json()["session"] == writer.id
    seen = reader.http.get(f"/v1/tasks/{tid}/debugregs").json()
    assert (seen["session"], seen["allocations"], seen["dr0"]) == (None, {}, "0x1000")
    assert api.admin.get(f"/v1/tasks/{tid}/debugregs").json()["session"] == writer.id
