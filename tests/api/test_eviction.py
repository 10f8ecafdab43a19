"""Priorities, eviction, notices, waiting and reinstatement (DESIGN sections 4 and 5).

These tests fill CPU 0's four debug registers, so the module has its own daemon and every test
starts from empty register files (each test's sessions are closed afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.helpers import (
    Api,
    Event,
    Session,
    assert_problem,
    cpu_request,
    fresh_address,
    fresh_tid,
    start_daemon,
    task_request,
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    daemon = start_daemon(tmp_path_factory, "eviction")
    handle = Api(daemon)
    yield handle
    handle.close()
    daemon.kill()


@pytest.fixture(autouse=True)
def empty_registers(api: Api) -> Iterator[None]:
    api.close_all_sessions()
    yield
    api.close_all_sessions()


def fill_cpu0(session: Session, n: int, **fields: Any) -> list[dict[str, Any]]:
    return [session.installed(cpu_request(0, **fields)) for _ in range(n)]


def states(api: Api, records: list[dict[str, Any]]) -> list[str]:
    return [api.record(r["id"])["state"] for r in records]


def session_notices(session: Session, since: int) -> list[Event]:
    """Everything `session`'s own stream carries after `since`, read up to a marker event made
    for the purpose (an allocation on CPU 1, which these tests leave free), so that "exactly
    one" is exact."""
    marker = session.installed(
        task_request(scope={"kind": "task", "tid": fresh_tid(), "cpus": [1]})
    )
    with session.stream(since=since) as stream:
        events = stream.until(lambda e: e.type == "installed" and e.allocation == marker["id"])
    assert all(e.data.get("session") == session.id for e in events), events
    return events[:-1]


def test_a_higher_priority_request_evicts_one_lower_holder_which_gets_exactly_one_notice(
    api: Api,
) -> None:
    victim_owner = api.open_session()
    held = fill_cpu0(victim_owner, 4)
    tracer = api.open_session(max_priority="ptrace")
    since = api.event_id()

    response = tracer.allocate(cpu_request(0, priority="ptrace"))
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "installed"
    # Fewest victims, then lowest priority, then the most recently installed.
    assert states(api, held) == ["installed", "installed", "installed", "evicted"]
    victim = api.record(held[3]["id"])
    # The evictor is another session's: the reason gives its priority, not its id.
    assert victim["reason"] == "evicted to make room for a request at priority 700"

    notices = session_notices(victim_owner, since)
    evicted = [e for e in notices if e.type == "evicted"]
    assert len(evicted) == 1, notices
    assert evicted[0].allocation == held[3]["id"]
    assert evicted[0].data["allocation"]["state"] == "evicted"
    assert evicted[0].data["reason"] == victim["reason"]
    assert not any(e.type == "evicted" for e in session_notices(tracer, since))


def test_equal_priority_never_evicts_and_the_refusal_names_the_holders(api: Api) -> None:
    holder = api.open_session()
    held = fill_cpu0(holder, 4)
    newcomer = api.open_session()
    before = api.state()

    problem = assert_problem(newcomer.allocate(cpu_request(0)), 409)
    # Another session's holders are named to a session by their priority alone.
    named = [(b["allocation"], b["priority"], b["evictable"]) for b in problem["blockers"]]
    assert named == [(None, 300, True)] * len(held)
    assert api.state() == before  # refused: nothing stored, nothing evicted


def test_a_ptrace_request_evicts_background_and_normal_holders(api: Api) -> None:
    background = api.open_session()
    normal = api.open_session()
    low = fill_cpu0(background, 1, priority="background")
    mid = fill_cpu0(normal, 3)
    tracer = api.open_session(max_priority="ptrace")
    since = api.event_id()

    address = fresh_address()  # 64-byte aligned: 16 bytes are two 8-byte registers
    response = tracer.allocate(cpu_request(0, address=hex(address), length=16, priority="ptrace"))
    assert response.status_code == 201, response.text
    assert len(response.json()["registers"]) == 2
    # Two registers: the background holder and the most recently installed normal one.
    assert states(api, low) == ["evicted"]
    assert states(api, mid) == ["installed", "installed", "evicted"]
    for owner, victim in ((background, low[0]), (normal, mid[2])):
        evicted = [e for e in session_notices(owner, since) if e.type == "evicted"]
        assert [e.allocation for e in evicted] == [victim["id"]]


def test_a_ptrace_request_may_evict_every_lower_holder_at_once(api: Api) -> None:
    background = api.open_session()
    normal = api.open_session()
    held = fill_cpu0(background, 2, priority="background") + fill_cpu0(normal, 2)
    tracer = api.open_session(max_priority="ptrace")
    address = fresh_address()  # 32 bytes, 64-byte aligned: all four registers
    response = tracer.allocate(cpu_request(0, address=hex(address), length=32, priority="ptrace"))
    assert response.status_code == 201, response.text
    assert states(api, held) == ["evicted"] * 4


def test_a_non_evictable_holder_makes_a_ptrace_request_fail_naming_it(api: Api) -> None:
    stubborn = api.open_session(allow_non_evictable=True)
    background = api.open_session()
    pinned = fill_cpu0(stubborn, 1, evictable=False)
    low = fill_cpu0(background, 3, priority="background")
    tracer = api.open_session(max_priority="ptrace")
    before = api.state()

    address = fresh_address()  # four registers: only three could be taken
    response = tracer.allocate(cpu_request(0, address=hex(address), length=32, priority="ptrace"))
    problem = assert_problem(response, 409)
    # Named as another session's holder: by its priority and that it is not evictable.
    (blocker,) = problem["blockers"]
    assert (blocker["allocation"], blocker["priority"], blocker["evictable"]) == (None, 300, False)
    assert pinned[0]["id"] not in problem["detail"]
    assert "held by 1 allocation" in problem["detail"]
    assert api.state() == before  # no background holder was evicted for nothing
    assert states(api, low) == ["installed"] * 3


def test_non_evictable_holders_filling_a_cpu_refuse_a_one_register_ptrace_request(
    api: Api,
) -> None:
    stubborn = api.open_session(allow_non_evictable=True)
    pinned = fill_cpu0(stubborn, 4, evictable=False)
    tracer = api.open_session(max_priority="ptrace")
    problem = assert_problem(tracer.allocate(cpu_request(0, priority="ptrace")), 409)
    named = [(b["allocation"], b["evictable"]) for b in problem["blockers"]]
    assert named == [(None, False)] * len(pinned)


def test_a_ptrace_request_is_refused_by_equal_priority_holders_naming_them(api: Api) -> None:
    first = api.open_session(max_priority="ptrace")
    held = fill_cpu0(first, 4, priority="ptrace")
    second = api.open_session(max_priority="critical")
    problem = assert_problem(second.allocate(cpu_request(0, priority="ptrace")), 409)
    named = [(b["allocation"], b["priority"]) for b in problem["blockers"]]
    assert named == [(None, 700)] * len(held)
    critical = second.allocate(cpu_request(0, priority="critical"))
    assert critical.status_code == 201, critical.text


def test_wait_true_queues_instead_of_refusing_and_reinstalls_when_room_frees(api: Api) -> None:
    holder = api.open_session()
    held = fill_cpu0(holder, 4)
    patient = api.open_session()
    since = api.event_id()

    response = patient.allocate(cpu_request(0, wait=True))
    assert response.status_code == 201, response.text
    queued = response.json()
    assert queued["state"] == "waiting"
    assert queued["registers"] == []
    assert api.state()["waiting"] == [queued["id"]]

    holder.release(held[0]["id"])
    record = patient.get(queued["id"])
    assert record["state"] == "installed"
    assert record["generation"] > max(r["generation"] for r in held)
    with patient.stream(since=since) as stream:
        events = stream.until(lambda e: e.type == "reinstalled")
    assert [e.type for e in events] == ["waiting", "reinstalled"]
    assert events[1].allocation == queued["id"]
    assert events[1].data["allocation"]["generation"] == record["generation"]


def test_on_evict_wait_requeues_the_victim_and_reinstalls_it_with_a_higher_generation(
    api: Api,
) -> None:
    holder = api.open_session()
    held = fill_cpu0(holder, 4, on_evict="wait")
    tracer = api.open_session(max_priority="ptrace")
    since = api.event_id()

    taker = tracer.installed(cpu_request(0, priority="ptrace"))
    victim = api.record(held[3]["id"])
    assert victim["state"] == "waiting"
    assert victim["registers"] == []

    tracer.release(taker["id"])
    back = api.record(held[3]["id"])
    assert back["state"] == "installed"
    assert back["generation"] > taker["generation"] > held[3]["generation"]
    notices = [e for e in session_notices(holder, since) if e.allocation == held[3]["id"]]
    assert [e.type for e in notices] == ["evicted", "reinstalled"]
    assert notices[0].data["allocation"]["state"] == "waiting"
    assert notices[1].data["allocation"]["generation"] == back["generation"]


def test_waiting_allocations_are_served_by_priority_then_first_come(api: Api) -> None:
    holder = api.open_session(max_priority="ptrace")
    held = fill_cpu0(holder, 4, priority="ptrace")
    early = api.open_session()
    late = api.open_session()
    first_low = early.allocate(cpu_request(0, wait=True, priority="background")).json()
    first_normal = early.allocate(cpu_request(0, wait=True)).json()
    second_normal = late.allocate(cpu_request(0, wait=True)).json()
    assert api.state()["waiting"] == [first_normal["id"], second_normal["id"], first_low["id"]]

    holder.release(held[0]["id"])
    assert api.record(first_normal["id"])["state"] == "installed"
    assert api.record(second_normal["id"])["state"] == "waiting"
    holder.release(held[1]["id"])
    assert api.record(second_normal["id"])["state"] == "installed"
    assert api.record(first_low["id"])["state"] == "waiting"


def test_an_admin_eviction_notifies_the_owner_once(api: Api) -> None:
    owner = api.open_session()
    held = fill_cpu0(owner, 2)
    since = api.event_id()
    response = api.admin.post(f"/v1/allocations/{held[1]['id']}/evict", json={"reason": "ops"})
    assert response.status_code == 200, response.text
    evicted = [e for e in session_notices(owner, since) if e.type == "evicted"]
    assert [(e.allocation, e.data["reason"]) for e in evicted] == [(held[1]["id"], "ops")]


def test_bulk_eviction_by_cpu_and_priority(api: Api) -> None:
    owner = api.open_session()
    low = fill_cpu0(owner, 2, priority="background")
    normal = fill_cpu0(owner, 1)
    other_cpu = owner.installed(cpu_request(1, priority="background"))
    response = api.admin.post(
        "/v1/evictions", json={"cpu": 0, "below_priority": "normal", "reason": "drain"}
    )
    assert response.status_code == 200, response.text
    assert sorted(response.json()["evicted"]) == sorted(r["id"] for r in low)
    assert states(api, [*normal, other_cpu]) == ["installed", "installed"]


def test_releasing_a_waiting_allocation_takes_it_off_the_queue(api: Api) -> None:
    holder = api.open_session()
    fill_cpu0(holder, 4)
    patient = api.open_session()
    queued = patient.allocate(cpu_request(0, wait=True)).json()
    released = patient.release(queued["id"])
    assert released["state"] == "released"
    assert api.state()["waiting"] == []


def test_closing_a_holders_session_lets_the_queue_in(api: Api) -> None:
    holder = api.open_session()
    fill_cpu0(holder, 4)
    patient = api.open_session()
    queued = patient.allocate(cpu_request(0, wait=True)).json()
    assert holder.http.delete(f"/v1/sessions/{holder.id}").status_code == 204
    assert patient.get(queued["id"])["state"] == "installed"


def test_a_lease_that_runs_out_expires_waiting_allocations_too(api: Api) -> None:
    holder = api.open_session()
    fill_cpu0(holder, 4)
    since = api.event_id()
    patient = api.open_session(ttl_s=1.5)
    queued = patient.allocate(cpu_request(0, wait=True)).json()
    with api.events(since=since) as stream:  # the expiry sweeper ends it; no sleeping here
        stream.until(lambda e: e.type == "session_closed" and e.data["session"] == patient.id)
    assert api.record(queued["id"])["state"] == "expired"
    assert api.state()["waiting"] == []
