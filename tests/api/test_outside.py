"""Users outside debugregd, through the API on the sim backend's fake kernel (DESIGN section 12):
they are found (by the scan, or by the kernel's refusal), counted, shown and named; nothing the
kernel refused is answered 201; they leave, and the waiters get their room back; a task that exits
takes its allocations with it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.helpers import Api, assert_problem, fresh_address, start_daemon, task_request


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # The scan is off: outside users are found only by a kernel refusal or an asked measurement.
    daemon = start_daemon(tmp_path_factory, "outside", "--outside-scan", "0")
    handle = Api(daemon)
    yield handle
    handle.close()
    daemon.kill()


@pytest.fixture(autouse=True)
def nobody_outside(api: Api) -> Iterator[None]:
    yield
    for injected in api.admin.get("/v1/sim/outside").json():
        api.admin.delete(f"/v1/sim/outside/{injected['id']}")
    assert api.admin.post("/v1/outside/measure").json() == {"outside": []}
    api.close_all_sessions()


def inject(api: Api, scope: dict[str, Any], registers: int) -> str:
    response = api.admin.post("/v1/sim/outside", json={"scope": scope, "registers": registers})
    assert response.status_code == 201, response.text
    injected: str = response.json()["id"]
    return injected


def types_since(api: Api, since: int) -> list[str]:
    return [e.type for e in api.replay(since, api.event_id())]


def test_a_kernel_refusal_is_never_answered_201_and_names_the_outside_users(api: Api) -> None:
    inject(api, {"kind": "cpus", "cpus": "all"}, 2)  # perf record -a with two watchpoints
    session = api.open_session()
    since = api.event_id()
    tid = 4242
    answers = [session.allocate(task_request(tid, priority="background")) for _ in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 409, 409]
    for refused in answers[2:]:
        problem = assert_problem(refused, 409)
        assert "outside debugregd: 2 registers on CPU 0" in problem["detail"]
        (outside,) = [b for b in problem["blockers"] if b["outside"]]
        assert outside["registers"] == 2 and outside["allocation"] is None
    seen = types_since(api, since)
    assert "evicted" not in seen
    assert seen.count("outside") == 2  # found once, on each CPU, by the kernel's refusal
    records = api.admin.get("/v1/outside").json()["outside"]
    assert {(r["target"]["kind"], r["target"]["cpu"], r["registers"]) for r in records} == {
        ("cpu", 0, 2),
        ("cpu", 1, 2),
    }
    assert api.admin.get("/v1/host").json()["outside"] == records


def test_ptrace_evicts_debugregds_own_background_holders_not_the_outside_users(api: Api) -> None:
    squatters = api.open_session("squatter")
    tid = 4243
    low = [squatters.installed(task_request(tid, priority="background")) for _ in range(2)]
    inject(api, {"kind": "task", "tid": tid}, 2)  # a debugger on that task, unannounced
    debugger = api.open_session("debugger", max_priority="ptrace")
    with squatters.stream(since=api.event_id()) as notices:
        high = debugger.installed(task_request(tid, priority="ptrace"))
        evicted = notices.until(lambda e: e.type == "evicted")[-1]
    assert evicted.allocation in {a["id"] for a in low}
    # The evictor is another session's: its stream names no allocation of it.
    assert evicted.data["reason"] == "evicted to make room for a request at priority 700"
    assert high["id"] not in str(evicted.data)
    (record,) = api.admin.get("/v1/outside").json()["outside"]
    assert record["target"] == {"kind": "task", "tid": tid, "cpu": None}
    assert api.admin.get(f"/v1/tasks/{tid}").json()["outside"] == {"dr": 2}


def test_when_the_outside_users_leave_the_waiters_are_reinstalled(api: Api) -> None:
    user = inject(api, {"kind": "cpus", "cpus": "all"}, 4)
    session = api.open_session()
    waiter = session.allocate(task_request(wait=True))
    assert waiter.json()["state"] == "waiting", waiter.text
    api.admin.delete(f"/v1/sim/outside/{user}")
    since = api.event_id()
    assert api.admin.post("/v1/outside/measure").json() == {"outside": []}
    events = api.replay(since, api.event_id())
    assert [e.type for e in events if e.type != "outside"] == ["reinstalled"]
    assert session.get(waiter.json()["id"])["state"] == "installed"


def test_the_scan_finds_users_cpu_wide_before_anyone_is_refused(api: Api) -> None:
    inject(api, {"kind": "cpu", "cpu": 1}, 3)
    records = api.admin.post("/v1/outside/measure").json()["outside"]
    assert [(r["target"], r["registers"]) for r in records] == [
        ({"kind": "cpu", "cpu": 1, "tid": None}, 3)
    ]
    cpu1 = api.admin.get("/v1/cpus/1").json()["pools"]["dr"]
    assert cpu1["outside"] == {"cpu": 3, "others": 0}
    assert [(cell or {}).get("outside") for cell in cpu1["registers"]] == [
        None,
        {"kind": "cpu", "cpu": 1},
        {"kind": "cpu", "cpu": 1},
        {"kind": "cpu", "cpu": 1},
    ]
    metrics = api.anon.get("/metrics").text
    assert 'debugregd_outside_registers{cpu="1",kind="cpu",pool="dr"} 3.0' in metrics


def test_an_outside_user_the_kernel_has_no_room_for_is_refused(api: Api) -> None:
    session = api.open_session()
    for _ in range(4):
        session.installed({**task_request(), "scope": {"kind": "cpu", "cpu": 0}})
    refused = api.admin.post(
        "/v1/sim/outside", json={"scope": {"kind": "cpu", "cpu": 0}, "registers": 1}
    )
    assert "the fake kernel refuses the outside user" in assert_problem(refused, 409)["detail"]


def test_a_task_that_exits_takes_its_allocations_with_it(api: Api) -> None:
    session = api.open_session()
    tid = 4244
    mine = [session.installed(task_request(tid)) for _ in range(2)]
    waiting = session.allocate(task_request(tid, wait=True, address=hex(fresh_address())))
    assert waiting.status_code == 201
    since = api.event_id()
    assert api.admin.post(f"/v1/sim/tasks/{tid}/exit").status_code == 204
    events = api.replay(since, api.event_id())
    assert sorted(e.allocation for e in events if e.type == "expired") == sorted(
        [m["id"] for m in mine] + [waiting.json()["id"]]
    )
    assert {session.get(m["id"])["reason"] for m in mine} == {f"task {tid} exited"}
    gone = session.allocate(task_request(tid))
    assert assert_problem(gone, 404)["detail"].startswith(f"no such task {tid}")


def test_outside_views_and_simulation_need_the_admin_key(api: Api) -> None:
    session = api.open_session()
    for method, path in [
        ("GET", "/v1/outside"),
        ("POST", "/v1/outside/measure"),
        ("GET", "/v1/sim/outside"),
        ("POST", "/v1/sim/tasks/1/exit"),
    ]:
        assert_problem(api.anon.request(method, path), 401)
        assert_problem(session.http.request(method, path), 401)


def test_a_reservation_is_only_for_a_task(api: Api) -> None:
    session = api.open_session()
    body = {**task_request(), "scope": {"kind": "cpu", "cpu": 0}, "arm": False}
    assert (
        "a reservation (arm: false) is for a task"
        in assert_problem(session.allocate(body), 422)["detail"]
    )


def test_after_a_restart_what_was_held_outside_is_measured_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    daemon = start_daemon(tmp_path_factory, "outside-restart", "--outside-scan", "0")
    api = Api(daemon)
    try:
        inject(api, {"kind": "cpus", "cpus": "all"}, 4)
        session = api.open_session()
        installed_before = session.allocate(task_request(wait=True))
        assert installed_before.json()["state"] == "waiting"
        assert len(api.admin.get("/v1/outside").json()["outside"]) == 2
        # The fake kernel lives in the daemon: killed, it comes back with nobody outside.
        daemon.restart(kill=True)
        assert api.admin.get("/v1/outside").json() == {"outside": []}
        assert session.get(installed_before.json()["id"])["state"] == "installed"
    finally:
        api.close()
        daemon.kill()
