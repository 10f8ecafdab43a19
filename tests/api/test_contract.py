"""The API v1 contract of DESIGN section 14, path by path, with the roles each path gives.

These tests share one daemon: they use only task-scoped allocations on thread ids no other test
uses, so they never compete for registers.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import (
    Api,
    assert_problem,
    fresh_address,
    fresh_tid,
    media_type,
    task_request,
)

RECORD_FIELDS = {
    "id",
    "session",
    "state",
    "scope",
    "address",
    "length",
    "access",
    "priority",
    "evictable",
    "on_evict",
    "generation",
    "registers",
    "label",
    "created_at",
    "updated_at",
}

# --------------------------------------------------------------------------- roles


def admin_only_requests(allocation_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", "/v1/cpus", None),
        ("GET", "/v1/cpus/0", None),
        ("GET", "/v1/tasks/1", None),
        ("GET", "/v1/state", None),
        ("GET", "/v1/stats", None),
        ("GET", "/v1/events", None),
        ("POST", f"/v1/allocations/{allocation_id}/evict", {"reason": "test"}),
        ("POST", "/v1/evictions", {"reason": "test"}),
        ("POST", "/v1/sim/accesses", {"cpu": 0, "address": 4096, "access": "write"}),
    ]


def test_admin_only_paths_refuse_anyone_without_the_admin_key(api: Api) -> None:
    holder = api.open_session()
    record = holder.installed(task_request())
    other = api.open_session()
    before = api.state()
    for method, path, body in admin_only_requests(record["id"]):
        anonymous = api.anon.request(method, path, json=body)
        problem = assert_problem(anonymous, 401)
        assert "admin key" in problem["detail"], problem
        assert anonymous.headers.get("www-authenticate", "").lower().startswith("bearer")
        with_session = other.http.request(method, path, json=body)
        assert with_session.status_code in (401, 403), (method, path, with_session.text)
        assert_problem(with_session)
    assert api.state() == before
    assert holder.get(record["id"])["state"] == "installed"


def test_session_paths_refuse_anonymous_callers_with_401(api: Api) -> None:
    session = api.open_session()
    record = session.installed(task_request())
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/allocations", task_request()),
        ("GET", "/v1/allocations", None),
        ("GET", f"/v1/allocations/{record['id']}", None),
        ("DELETE", f"/v1/allocations/{record['id']}", None),
        ("POST", f"/v1/sessions/{session.id}/keepalive", None),
        ("DELETE", f"/v1/sessions/{session.id}", None),
        ("GET", f"/v1/sessions/{session.id}/events", None),
        ("GET", "/v1/tasks/1/debugregs", None),
        ("PUT", "/v1/tasks/1/debugregs", {"dr7": 0}),
    ]
    before = api.state()
    for method, path, body in requests:
        assert_problem(api.anon.request(method, path, json=body), 401)
    assert api.state() == before


def test_an_unknown_or_malformed_credential_is_401(api: Api) -> None:
    for header in ("Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer"):
        response = api.anon.get("/v1/allocations", headers={"Authorization": header})
        assert_problem(response, 401)


def test_public_paths_answer_anyone(api: Api) -> None:
    assert api.anon.get("/healthz").status_code == 200
    assert api.anon.get("/v1/host").status_code == 200
    assert api.anon.get("/metrics").status_code == 200
    assert api.anon.get("/").status_code == 200


# --------------------------------------------------------------------------- host and health


def test_host_describes_profile_cpus_pools_mode_switching_and_backend(api: Api) -> None:
    host = api.anon.get("/v1/host").json()
    assert host["profile"] == "x86_64"
    assert host["cpus"] == 2
    assert host["pools"] == {"dr": 4}
    assert host["mode_switching"] is False
    assert host["backend"] == "sim"


def test_healthz_says_only_ok(api: Api) -> None:
    api.open_session().installed(task_request())
    response = api.anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}  # no journal path, no event id


def test_metrics_are_prometheus_text_with_the_daemons_metrics(api: Api) -> None:
    session = api.open_session()
    session.installed(task_request())
    response = api.anon.get("/metrics")
    assert media_type(response) == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "debugregd_allocations",  # live allocations by state
        "debugregd_evictions",
        "debugregd_refusals",
        "debugregd_decision_seconds",  # decision latency histogram
        "debugregd_journal_commit_seconds",
        "debugregd_sse_subscribers",
    ):
        assert name in families, f"{name} missing from /metrics: {sorted(families)}"
    by_state = {
        s.labels["state"]: s.value for s in families["debugregd_allocations"].samples if s.labels
    }
    assert by_state["installed"] >= 1
    assert families["debugregd_decision_seconds"].type == "histogram"


def test_the_dashboard_is_served_at_the_root(api: Api) -> None:
    response = api.anon.get("/")
    assert response.status_code == 200
    assert media_type(response) == "text/html"
    assert "<html" in response.text.lower()


# --------------------------------------------------------------------------- sessions


def test_opening_a_session_returns_its_token_lease_and_default_grants(api: Api) -> None:
    response = api.anon.post("/v1/sessions", json={"name": "tracer"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] and body["token"]
    assert body["ttl_s"] == 30
    assert body["expires_at"] > 0
    assert body["max_priority"] == 300
    assert body["allow_non_evictable"] is False
    assert body["allow_kernel"] is False
    api.admin.delete(f"/v1/sessions/{body['id']}")


def test_keepalive_renews_the_lease_and_only_for_the_session_itself(api: Api) -> None:
    session = api.open_session(ttl_s=600)
    other = api.open_session()
    first = session.http.post(f"/v1/sessions/{session.id}/keepalive")
    assert first.status_code == 200, first.text
    assert first.json()["expires_at"] >= session.info["expires_at"]
    assert_problem(other.http.post(f"/v1/sessions/{session.id}/keepalive"), 403)
    by_admin = api.admin.post(f"/v1/sessions/{session.id}/keepalive")
    assert by_admin.status_code == 200
    assert by_admin.json()["expires_at"] >= first.json()["expires_at"]


def test_a_session_reads_itself_but_not_another_session(api: Api) -> None:
    session = api.open_session(name="reader")
    other = api.open_session()
    mine = session.http.get(f"/v1/sessions/{session.id}")
    assert mine.status_code == 200
    assert mine.json()["name"] == "reader"
    assert_problem(other.http.get(f"/v1/sessions/{session.id}"), 403)


def test_closing_a_session_releases_everything_it_held_and_revokes_its_token(api: Api) -> None:
    session = api.open_session()
    installed = [session.installed(task_request()) for _ in range(3)]
    other = api.open_session()
    assert_problem(other.http.delete(f"/v1/sessions/{session.id}"), 403)
    since = api.event_id()

    response = session.http.delete(f"/v1/sessions/{session.id}")
    assert response.status_code == 204
    for record in installed:
        assert api.record(record["id"])["state"] == "released"
    assert session.id not in {s["id"] for s in api.state()["sessions"]}
    events = api.replay(since, api.event_id())
    released = sorted(str(e.allocation) for e in events if e.type == "released")
    assert released == sorted(r["id"] for r in installed)
    assert [e.type for e in events][-1] == "session_closed"
    assert_problem(session.http.get("/v1/allocations"), 401)
    assert_problem(api.admin.delete(f"/v1/sessions/{session.id}"), 404)


def test_the_admin_may_close_any_session(api: Api) -> None:
    session = api.open_session()
    record = session.installed(task_request())
    assert api.admin.delete(f"/v1/sessions/{session.id}").status_code == 204
    assert api.record(record["id"])["state"] == "released"


def test_a_lease_that_runs_out_expires_the_session_and_its_allocations(api: Api) -> None:
    since = api.event_id()
    session = api.open_session(ttl_s=1.5)
    record = session.installed(task_request())
    with api.events(since=since) as stream:  # waits on the daemon's expiry sweeper, no sleep
        events = stream.until(
            lambda e: e.type == "session_closed" and e.data.get("session") == session.id
        )
    assert any(e.type == "expired" and e.allocation == record["id"] for e in events), events
    assert api.record(record["id"])["state"] == "expired"
    assert_problem(session.http.get("/v1/allocations"), 401)


# --------------------------------------------------------------------------- allocations


def test_an_allocation_that_fits_is_201_installed_with_the_full_record(api: Api) -> None:
    session = api.open_session()
    tid = fresh_tid()
    address = fresh_address()
    response = session.allocate(
        {
            "scope": {"kind": "task", "tid": tid, "cpus": [0, 1]},
            "address": address,  # an integer in, a hex string out
            "length": 8,
            "access": "rw",
            "priority": "normal",
            "evictable": True,
            "on_evict": "release",
            "wait": False,
            "label": "my-tracer",
        }
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert set(record) >= RECORD_FIELDS
    assert record["session"] == session.id
    assert record["state"] == "installed"
    assert record["scope"] == {"kind": "task", "tid": tid, "cpus": [0, 1]}
    assert record["address"] == hex(address)
    assert (record["length"], record["access"], record["priority"]) == (8, "rw", 300)
    assert (record["evictable"], record["on_evict"], record["label"]) == (
        True,
        "release",
        "my-tracer",
    )
    assert record["generation"] > 0
    assert sorted((r["cpu"], r["pool"]) for r in record["registers"]) == [(0, "dr"), (1, "dr")]
    assert all(0 <= r["index"] < 4 for r in record["registers"])
    assert session.get(record["id"]) == record


def test_a_range_wider_than_one_register_takes_several_all_or_none(api: Api) -> None:
    session = api.open_session()
    address = fresh_address()  # 64-byte aligned
    record = session.installed(
        task_request(
            address=hex(address), length=16, scope={"kind": "task", "tid": fresh_tid(), "cpus": [0]}
        )
    )
    assert len(record["registers"]) == 2
    assert {r["cpu"] for r in record["registers"]} == {0}


def test_every_generation_is_new_and_increasing(api: Api) -> None:
    session = api.open_session()
    generations = [session.installed(task_request())["generation"] for _ in range(3)]
    assert generations == sorted(set(generations))


def test_listing_shows_a_session_its_own_and_the_admin_everything(api: Api) -> None:
    mine = api.open_session()
    theirs = api.open_session()
    a = mine.installed(task_request())
    b = theirs.installed(task_request())
    own = mine.http.get("/v1/allocations").json()["allocations"]
    assert [r["id"] for r in own] == [a["id"]]
    everything = {r["id"] for r in api.admin.get("/v1/allocations").json()["allocations"]}
    assert {a["id"], b["id"]} <= everything
    assert_problem(mine.http.get("/v1/allocations", params={"session": theirs.id}), 403)


def test_listing_filters_by_state_session_cpu_and_tid(api: Api) -> None:
    session = api.open_session()
    tid = fresh_tid()
    on_cpu1 = session.installed(
        task_request(scope={"kind": "task", "tid": tid, "cpus": [1]}, label="cpu1")
    )
    on_both = session.installed(task_request(scope={"kind": "task", "tid": tid}, label="both"))
    gone = session.installed(task_request(label="gone"))
    session.release(gone["id"])

    def ids(**params: Any) -> set[str]:
        params.setdefault("session", session.id)
        response = api.admin.get("/v1/allocations", params=params)
        assert response.status_code == 200, response.text
        return {r["id"] for r in response.json()["allocations"]}

    assert ids() == {on_cpu1["id"], on_both["id"]}  # live ones unless `state` is given
    assert ids(state="installed") == {on_cpu1["id"], on_both["id"]}
    assert ids(state="released") == {gone["id"]}
    assert ids(state="waiting") == set()
    assert ids(cpu=0) == {on_both["id"]}
    assert ids(cpu=1) == {on_cpu1["id"], on_both["id"]}
    assert ids(tid=tid) == {on_cpu1["id"], on_both["id"]}
    assert ids(tid=fresh_tid()) == set()
    everyone_on_tid = api.admin.get("/v1/allocations", params={"tid": tid}).json()
    assert {r["id"] for r in everyone_on_tid["allocations"]} == {on_cpu1["id"], on_both["id"]}
    assert_problem(api.admin.get("/v1/allocations", params={"state": "bogus"}), 422)


def test_reading_one_allocation_is_for_its_owner_and_the_admin(api: Api) -> None:
    owner = api.open_session()
    other = api.open_session()
    record = owner.installed(task_request())
    assert owner.get(record["id"]) == record
    assert api.record(record["id"]) == record
    assert_problem(other.http.get(f"/v1/allocations/{record['id']}"), 403)
    assert_problem(owner.http.get("/v1/allocations/a999999999"), 404)


def test_release_is_idempotent_and_announced_once(api: Api) -> None:
    session = api.open_session()
    record = session.installed(task_request())
    since = api.event_id()
    first = session.release(record["id"])
    second = session.release(record["id"])
    assert first["state"] == second["state"] == "released"
    assert first == second
    marker = session.installed(task_request())
    events = api.replay(since, api.event_id())
    assert [e.type for e in events if e.allocation == record["id"]] == ["released"]
    assert events[-1].allocation == marker["id"]


def test_only_the_owner_or_the_admin_may_release(api: Api) -> None:
    owner = api.open_session()
    other = api.open_session()
    first = owner.installed(task_request())
    second = owner.installed(task_request())
    problem = assert_problem(other.http.delete(f"/v1/allocations/{first['id']}"), 403)
    assert first["id"] in problem["detail"]
    assert owner.get(first["id"])["state"] == "installed"
    assert owner.release(first["id"])["state"] == "released"
    by_admin = api.admin.delete(f"/v1/allocations/{second['id']}")
    assert by_admin.status_code == 200
    assert by_admin.json()["state"] == "released"


def test_releasing_an_unknown_allocation_is_404(api: Api) -> None:
    session = api.open_session()
    assert_problem(session.http.delete("/v1/allocations/a999999999"), 404)


def test_the_admin_holds_no_allocations_itself(api: Api) -> None:
    problem = assert_problem(api.admin.post("/v1/allocations", json=task_request()))
    assert "session" in problem["detail"]


# --------------------------------------------------------------------------- admin actions


def test_admin_evicts_one_allocation_with_a_reason(api: Api) -> None:
    session = api.open_session()
    record = session.installed(task_request())
    response = api.admin.post(
        f"/v1/allocations/{record['id']}/evict", json={"reason": "maintenance"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "evicted"
    assert response.json()["reason"] == "maintenance"
    assert session.get(record["id"])["state"] == "evicted"
    again = api.admin.post(f"/v1/allocations/{record['id']}/evict", json={"reason": "again"})
    assert_problem(again, 409)
    assert_problem(api.admin.post("/v1/allocations/a999999999/evict", json={}), 404)


def test_bulk_eviction_takes_exactly_the_matching_installed_allocations(api: Api) -> None:
    session = api.open_session()
    tid = fresh_tid()
    low = session.installed(task_request(tid, priority="background"))
    normal = session.installed(task_request(tid))
    elsewhere = session.installed(task_request())
    response = api.admin.post(
        "/v1/evictions", json={"tid": tid, "below_priority": "normal", "reason": "drain"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"evicted": [low["id"]]}
    response = api.admin.post("/v1/evictions", json={"tid": tid, "reason": "drain"})
    assert response.json() == {"evicted": [normal["id"]]}
    assert session.get(low["id"])["state"] == "evicted"
    assert session.get(normal["id"])["state"] == "evicted"
    assert session.get(elsewhere["id"])["state"] == "installed"


# --------------------------------------------------------------------------- views


def test_cpu_views_show_the_register_files_index_by_index(api: Api) -> None:
    session = api.open_session()
    tid = fresh_tid()
    record = session.installed(task_request(scope={"kind": "task", "tid": tid, "cpus": [1]}))
    index = record["registers"][0]["index"]
    cpus = api.admin.get("/v1/cpus").json()
    assert [c["cpu"] for c in cpus] == [0, 1]
    one = api.admin.get("/v1/cpus/1").json()
    assert one == cpus[1]
    dr = one["pools"]["dr"]
    assert dr["slots"] == 4 and len(dr["registers"]) == 4
    assert dr["tasks"][str(tid)] == [{"index": index, "allocations": [record["id"]]}]
    assert str(tid) not in api.admin.get("/v1/cpus/0").json()["pools"]["dr"]["tasks"]
    assert_problem(api.admin.get("/v1/cpus/2"))


def test_task_view_lists_the_tasks_allocations_and_indices(api: Api) -> None:
    session = api.open_session()
    tid = fresh_tid()
    record = session.installed(task_request(tid))
    view = api.admin.get(f"/v1/tasks/{tid}").json()
    assert view["tid"] == tid
    assert [r["id"] for r in view["allocations"]] == [record["id"]]
    assert view["allocations"][0]["registers"] == record["registers"]


def test_state_is_a_whole_snapshot_with_the_event_id_it_is_consistent_with(api: Api) -> None:
    since = api.event_id()
    session = api.open_session()
    record = session.installed(task_request())
    state = api.state()
    assert set(state) >= {"event_id", "host", "sessions", "allocations", "waiting", "cpus"}
    assert state["host"] == api.anon.get("/v1/host").json()
    assert record in state["allocations"]
    assert session.id in {s["id"] for s in state["sessions"]}
    events = api.replay(since, state["event_id"])
    assert events[-1].id == state["event_id"]
    assert any(e.type == "installed" and e.allocation == record["id"] for e in events)


def test_stats_count_allocations_evictions_and_refusals(api: Api) -> None:
    before = api.admin.get("/v1/stats").json()
    session = api.open_session()
    record = session.installed(task_request())
    api.admin.post(f"/v1/allocations/{record['id']}/evict", json={"reason": "stats"})
    after = api.admin.get("/v1/stats").json()
    assert after["allocations_total"] == before["allocations_total"] + 1
    assert after["evictions_total"] == before["evictions_total"] + 1
    assert after["refusals_total"] == before["refusals_total"]
    assert after["event_id"] > before["event_id"]


# --------------------------------------------------------------------------- raw x86 ABI


DR7_DR0_WRITE_4 = 0b01 | (0b01 << 16) | (0b11 << 18)  # L0, R/W0=01 (write), LEN0=11 (4 bytes)


def test_raw_debug_registers_need_the_ptrace_grant_or_the_admin_key(api: Api) -> None:
    plain = api.open_session()
    tid = fresh_tid()
    assert_problem(plain.http.get(f"/v1/tasks/{tid}/debugregs"), 403)
    put = plain.http.put(f"/v1/tasks/{tid}/debugregs", json={"dr0": 4096, "dr7": DR7_DR0_WRITE_4})
    assert_problem(put, 403)
    assert api.admin.get(f"/v1/tasks/{tid}/debugregs").status_code == 200


def test_raw_debug_registers_are_applied_at_ptrace_priority_and_read_back_as_written(
    api: Api,
) -> None:
    tracer = api.open_session(max_priority="ptrace")
    tid = fresh_tid()
    address = fresh_address()
    written = {"dr0": hex(address), "dr7": DR7_DR0_WRITE_4}
    response = tracer.http.put(f"/v1/tasks/{tid}/debugregs", json=written)
    assert response.status_code == 200, response.text
    regs = response.json()
    assert (regs["dr0"], regs["dr1"], regs["dr2"], regs["dr3"]) == (
        hex(address),
        "0x0",
        "0x0",
        "0x0",
    )
    assert regs["dr7"] == DR7_DR0_WRITE_4
    assert tracer.http.get(f"/v1/tasks/{tid}/debugregs").json() == regs
    allocation = api.record(regs["allocations"]["dr0"])
    assert allocation["priority"] == 700
    assert (allocation["address"], allocation["length"], allocation["access"]) == (
        hex(address),
        4,
        "write",
    )
    cleared = tracer.http.put(f"/v1/tasks/{tid}/debugregs", json={"dr7": 0})
    assert cleared.status_code == 200
    assert cleared.json()["allocations"] == {}
    assert api.record(allocation["id"])["state"] == "released"


def test_a_rewrite_keeps_unchanged_registers_and_replaces_changed_ones(api: Api) -> None:
    tracer = api.open_session(max_priority="ptrace")
    tid = fresh_tid()
    a, b, c = (hex(fresh_address()) for _ in range(3))
    both = DR7_DR0_WRITE_4 | (0b01 << 2) | (0b01 << 20) | (0b11 << 22)  # DR1 too, same fields
    first = tracer.http.put(f"/v1/tasks/{tid}/debugregs", json={"dr0": a, "dr1": b, "dr7": both})
    assert first.status_code == 200, first.text
    second = tracer.http.put(f"/v1/tasks/{tid}/debugregs", json={"dr0": a, "dr1": c, "dr7": both})
    assert second.status_code == 200, second.text
    before, after = first.json()["allocations"], second.json()["allocations"]
    assert after["dr0"] == before["dr0"]
    assert after["dr1"] != before["dr1"]
    assert api.record(before["dr1"])["state"] == "released"
    assert api.record(after["dr1"])["address"] == c


def test_a_tasks_raw_registers_belong_to_the_session_that_wrote_them(api: Api) -> None:
    owner = api.open_session(max_priority="ptrace")
    rival = api.open_session(max_priority="ptrace")
    tid = fresh_tid()
    written = {"dr0": hex(fresh_address()), "dr7": DR7_DR0_WRITE_4}
    regs = owner.http.put(f"/v1/tasks/{tid}/debugregs", json=written).json()
    assert_problem(rival.http.put(f"/v1/tasks/{tid}/debugregs", json={"dr7": 0}), 403)
    assert api.admin.get(f"/v1/tasks/{tid}/debugregs").json() == regs

    assert owner.http.delete(f"/v1/sessions/{owner.id}").status_code == 204
    cleared = api.admin.get(f"/v1/tasks/{tid}/debugregs").json()
    assert (cleared["dr0"], cleared["dr7"], cleared["allocations"]) == ("0x0", 0, {})
    assert api.record(regs["allocations"]["dr0"])["state"] == "released"
    assert rival.http.put(f"/v1/tasks/{tid}/debugregs", json=written).status_code == 200


# --------------------------------------------------------------------------- simulated accesses


def test_a_simulated_access_reports_hits_and_each_is_a_hit_event(api: Api) -> None:
    session = api.open_session()
    tid = fresh_tid()
    address = fresh_address()
    watched = session.installed(task_request(tid, address=hex(address), length=8))
    since = api.event_id()
    access = {"cpu": 0, "tid": tid, "address": hex(address + 4), "length": 2, "access": "write"}
    response = api.admin.post("/v1/sim/accesses", json=access)
    assert response.status_code == 200, response.text
    assert response.json() == {"hits": [watched["id"]]}
    with session.stream(since=since) as stream:
        (hit,) = stream.take(1)
    assert hit.type == "hit" and hit.allocation == watched["id"]
    assert (hit.data["cpu"], hit.data["tid"], hit.data["access"]) == (0, tid, "write")
    assert hit.data["address"] == hex(address + 4)

    misses = [
        {**access, "address": hex(address + 8)},  # next to the range
        {**access, "access": "read"},  # a write watch ignores reads
        {**access, "tid": fresh_tid()},  # another task
    ]
    for miss in misses:
        assert api.admin.post("/v1/sim/accesses", json=miss).json() == {"hits": []}


# --------------------------------------------------------------------------- dashboard sign-in


def test_dashboard_sign_in_trades_the_admin_key_for_a_cookie(api: Api) -> None:
    with httpx.Client(base_url=api.daemon.url, timeout=10) as browser:
        assert browser.get("/v1/auth/me").json() == {"admin": False}
        assert_problem(browser.post("/v1/auth/login", json={"key": "wrong"}), 401)
        assert_problem(browser.get("/v1/state"), 401)
        login = browser.post("/v1/auth/login", json={"key": api.daemon.admin_key})
        assert login.status_code == 204
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/v1/auth/me").json() == {"admin": True}
        assert browser.get("/v1/state").status_code == 200
        assert browser.post("/v1/auth/logout").status_code == 204
        assert browser.get("/v1/auth/me").json() == {"admin": False}
        assert_problem(browser.get("/v1/state"), 401)


@pytest.mark.parametrize("path", ["/no/such/path", "/v1/allocations/a1/nothing"])
def test_unknown_paths_are_404_problems(api: Api, path: str) -> None:
    assert_problem(api.admin.get(path), 404)
