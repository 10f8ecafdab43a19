"""Grants and kernel-address redaction (DESIGN section 9).

Grants (`max_priority` above normal, `allow_non_evictable`, `allow_kernel`) are given only with the
admin key when a session opens; kernel-space addresses are shown only to readers allowed to see
them (the admin, and a session holding `allow_kernel` for its own records).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.helpers import (
    KERNEL_ADDRESS,
    Api,
    assert_problem,
    cpu_request,
    fresh_tid,
    task_request,
)

GRANTS: list[dict[str, Any]] = [
    {"max_priority": "ptrace"},
    {"max_priority": "critical"},
    {"max_priority": 301},
    {"max_priority": 1000},
    {"allow_non_evictable": True},
    {"allow_kernel": True},
]


@pytest.mark.parametrize("grant", GRANTS, ids=lambda g: json.dumps(g))
def test_a_grant_without_the_admin_key_is_403_and_opens_nothing(
    api: Api, grant: dict[str, Any]
) -> None:
    someone = api.open_session()
    before = api.state()
    for caller in (api.anon, someone.http):
        response = caller.post("/v1/sessions", json={"name": "greedy", **grant})
        problem = assert_problem(response, 403)
        assert "admin key" in problem["detail"]
    assert api.state() == before


@pytest.mark.parametrize("grant", GRANTS, ids=lambda g: json.dumps(g))
def test_a_grant_with_the_admin_key_is_201_and_recorded(api: Api, grant: dict[str, Any]) -> None:
    response = api.admin.post("/v1/sessions", json={"name": "granted", **grant})
    assert response.status_code == 201, response.text
    body = response.json()
    expected = {
        "max_priority": {"ptrace": 700, "critical": 900}.get(
            grant.get("max_priority", 300), grant.get("max_priority", 300)
        ),
        "allow_non_evictable": grant.get("allow_non_evictable", False),
        "allow_kernel": grant.get("allow_kernel", False),
    }
    assert {k: body[k] for k in expected} == expected
    api.admin.delete(f"/v1/sessions/{body['id']}")


@pytest.mark.parametrize("ceiling", ["normal", "background", 300, 0])
def test_a_ceiling_at_or_below_normal_needs_no_grant(api: Api, ceiling: str | int) -> None:
    response = api.anon.post("/v1/sessions", json={"name": "modest", "max_priority": ceiling})
    assert response.status_code == 201, response.text
    assert api.admin.delete(f"/v1/sessions/{response.json()['id']}").status_code == 204


def test_a_session_cannot_exceed_its_grants_when_allocating(api: Api) -> None:
    plain = api.open_session()
    before = api.state()
    refused = [
        task_request(priority="ptrace"),
        task_request(priority=301),
        task_request(evictable=False),
        task_request(address=hex(KERNEL_ADDRESS)),
    ]
    for body in refused:
        assert_problem(plain.allocate(body), 403)
    assert api.state() == before
    low = api.open_session(max_priority="background")
    assert_problem(low.allocate(task_request(priority="normal")), 403)
    assert low.allocate(task_request(priority="background")).status_code == 201


def test_granted_sessions_may_use_their_grants(api: Api) -> None:
    tracer = api.open_session(max_priority="ptrace")
    assert tracer.installed(task_request(priority="ptrace"))["priority"] == 700
    stubborn = api.open_session(allow_non_evictable=True)
    assert stubborn.installed(task_request(evictable=False))["evictable"] is False
    kernel = api.open_session(allow_kernel=True)
    record = kernel.installed(task_request(address=hex(KERNEL_ADDRESS)))
    assert record["space"] == "kernel"


def test_a_reservation_arm_false_reaches_the_core_and_every_view(api: Api) -> None:
    tracer = api.open_session(max_priority="ptrace")
    tid = fresh_tid()
    record = tracer.installed(task_request(tid, priority="ptrace", arm=False))
    assert record["arm"] is False
    assert api.record(record["id"])["arm"] is False
    (cpu0,) = api.state()["cpus"][:1]
    (held,) = cpu0["pools"]["dr"]["tasks"][str(tid)]
    assert held == {"index": 0, "allocations": [record["id"]], "reservation": True}
    # The debugger behind a reservation writes a task's registers: never a CPU's.
    assert_problem(tracer.allocate(cpu_request(0, priority="ptrace", arm=False)), 422)


def test_kernel_addresses_are_shown_to_the_admin_and_to_the_owning_kernel_session(
    api: Api,
) -> None:
    since = api.event_id()
    kernel = api.open_session(allow_kernel=True)
    tid = fresh_tid()
    record = kernel.installed(task_request(tid, address=hex(KERNEL_ADDRESS), length=8))
    shown = hex(KERNEL_ADDRESS)
    assert record["address"] == shown
    assert kernel.get(record["id"])["address"] == shown
    own = kernel.http.get("/v1/allocations").json()["allocations"]
    assert [r["address"] for r in own] == [shown]

    assert api.record(record["id"])["address"] == shown
    in_state = {r["id"]: r for r in api.state()["allocations"]}
    assert in_state[record["id"]]["address"] == shown
    listed = api.admin.get("/v1/allocations", params={"tid": tid}).json()["allocations"]
    assert [r["address"] for r in listed] == [shown]
    task = api.admin.get(f"/v1/tasks/{tid}").json()
    assert [r["address"] for r in task["allocations"]] == [shown]
    with kernel.stream(since=since) as stream:
        installed = stream.until(lambda e: e.type == "installed")[-1]
    assert installed.data["allocation"]["address"] == shown


def test_a_session_without_allow_kernel_never_sees_a_kernel_address(api: Api) -> None:
    """No path shows another session's records to a session, so the one way a kernel address
    could reach it is a refusal naming a kernel-space blocker; blockers carry no address."""
    kernel = api.open_session(allow_kernel=True)
    tid = fresh_tid()
    record = kernel.installed(task_request(tid, address=hex(KERNEL_ADDRESS), length=32))
    assert len(record["registers"]) == 8  # four registers on each of the two CPUs
    nosy = api.open_session()
    since = api.event_id()

    seen: list[str] = []
    refused = nosy.allocate(task_request(tid))  # the same task: its registers are all taken
    problem = assert_problem(refused, 409)
    assert [(b["allocation"], b["scope"]) for b in problem["blockers"]] == [(None, None)]
    seen.append(refused.text)
    for response in (
        nosy.http.get(f"/v1/allocations/{record['id']}"),
        nosy.http.get("/v1/allocations", params={"session": kernel.id}),
        nosy.http.delete(f"/v1/allocations/{record['id']}"),
        nosy.http.get(f"/v1/sessions/{kernel.id}"),
    ):
        assert_problem(response, 403)
        seen.append(response.text)
    for path in (f"/v1/sessions/{kernel.id}/events", f"/v1/tasks/{tid}", "/v1/state"):
        response = nosy.http.get(path)
        assert response.status_code in (401, 403), (path, response.status_code)
        seen.append(response.text)
    for path in ("/v1/allocations", "/v1/sessions", f"/v1/sessions/{nosy.id}"):
        response = nosy.http.get(path)
        assert response.status_code == 200, response.text
        seen.append(response.text)
    marker = nosy.installed(task_request())
    with nosy.stream(since=since) as stream:
        events = stream.until(lambda e: e.allocation == marker["id"])
    seen.extend(json.dumps(e.data) for e in events)

    for text in seen:
        assert "ffffffff81" not in text.lower(), text
        assert str(KERNEL_ADDRESS) not in text, text
    assert kernel.get(record["id"])["state"] == "installed"
