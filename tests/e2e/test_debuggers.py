"""Debuggers that do not ask (DESIGN sections 12 and 15), on real hardware with the real gdb: with
registers kept back for ptrace, plain gdb always finds one; with --yield-to-tracers, a task's
holders below ptrace make room the moment gdb attaches, are told why, and come back only when the
room really returns (Linux keeps gdb's breakpoint slot on the thread until it exits or execs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import (
    CTarget,
    debug_until_the_write,
    events,
    first,
    last_event_id,
    perf_daemon,
    session,
    watch,
)
from tests.support.daemon import Daemon
from tests.support.gdb import debugreg_gdb, environment

pytestmark = pytest.mark.perf


def plain_gdb(gdb: str, pid: int) -> list[str]:
    return [gdb, "-nx", "-batch", "-p", str(pid), "-ex", "watch -l counter", "-ex", "continue"]


def test_with_a_register_kept_for_ptrace_plain_gdb_sets_its_watchpoint(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    c_target: CTarget,
    gdb_path: str,
) -> None:
    daemon = perf_daemon(make_daemon, "--reserve-for-ptrace", "1")
    _, auth = session(daemon)
    taken = [
        watch(daemon, auth, c_target.tid, c_target.address + 8 * (n + 1), priority="background")
        for n in range(4)
    ]
    assert [r.status_code for r in taken] == [201, 201, 201, 409]  # the fourth is kept back
    cpu_wide = {"scope": {"kind": "cpus", "cpus": "all"}, "address": c_target.address + 64}
    with daemon.anon() as http:
        body = {**cpu_wide, "length": 8, "access": "write", "priority": "background"}
        refused = http.post("/v1/allocations", headers=auth, json=body)
        assert refused.status_code == 409, refused.text
    out = debug_until_the_write(plain_gdb(gdb_path, c_target.tid), c_target)
    assert "Hardware watchpoint 1: -location counter" in out, out
    assert "Old value = 0" in out and "New value = 1" in out, out


def test_with_yield_to_tracers_plain_gdb_displaces_the_squatters_who_come_back_later(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    c_target: CTarget,
    gdb_path: str,
) -> None:
    daemon = perf_daemon(make_daemon, "--yield-to-tracers")
    sid, auth = session(daemon)
    squatters = [
        watch(daemon, auth, c_target.tid, c_target.address, on_evict="wait").json()["id"],
        *(
            watch(daemon, auth, c_target.tid, c_target.address + 8 * n, on_evict="wait").json()[
                "id"
            ]
            for n in (1, 2, 3)
        ),
    ]
    since = last_event_id(daemon)
    out = debug_until_the_write(plain_gdb(gdb_path, c_target.tid), c_target)
    assert "Old value = 0" in out and "New value = 1" in out, out

    with daemon.admin() as http:
        seen = http.get("/v1/state").json()
    evicted = [
        e
        for e in events(daemon, since, seen["event_id"])
        if e["type"] == "evicted" and e["session"] == sid
    ]
    assert sorted(e["allocation"]["id"] for e in evicted) == sorted(squatters)  # once each
    for e in evicted:
        assert e["reason"].startswith(f"task {c_target.tid} is being debugged by PID ")
        assert e["reason"].endswith("(gdb)")

    # gdb detached: three come back; the kernel keeps gdb's slot on the thread, which the daemon
    # shows as held outside it, and the fourth waits for it.
    outside = first(
        daemon,
        since,
        lambda e: e["type"] == "outside" and e["target"] == {"kind": "task", "tid": c_target.tid},
    )
    assert outside["registers"] == 1
    with daemon.admin() as http:
        states = {a: http.get(f"/v1/allocations/{a}").json()["state"] for a in squatters}
    assert sorted(states.values()) == ["installed", "installed", "installed", "waiting"]

    # Room really returns when the thread execs (or exits): the fourth is reinstalled and counts.
    since = last_event_id(daemon)
    c_target.exec()
    back = first(daemon, since, lambda e: e["type"] == "reinstalled", within=3)
    assert back["allocation"]["id"] in squatters
    c_target.poke()
    hit = first(daemon, back["id"], lambda e: e["type"] == "hit")
    assert hit["allocation"]["id"] == squatters[0]  # the one on `counter` itself


def debugreg_gdb_until_the_write(daemon: Daemon, target: CTarget) -> str:
    argv = debugreg_gdb(
        "-nx", "-batch", "-p", str(target.tid), "-ex", "watch -l counter", "-ex", "continue"
    )
    env = environment(DEBUGREG_URL=daemon.url, DEBUGREGD_ADMIN_KEY=daemon.admin_key)
    return debug_until_the_write(argv, target, env)


def squatters_on(daemon: Daemon, scope: dict[str, Any], address: int) -> list[str]:
    """Four background holders that wait to come back when evicted; the first on `counter`."""
    _, auth = session(daemon)
    made = []
    for n in range(4):
        body = {"scope": scope, "address": address + 8 * n, "length": 8, "access": "write"}
        with daemon.anon() as http:
            answer = http.post(
                "/v1/allocations",
                headers=auth,
                json=body | {"priority": "background", "on_evict": "wait"},
            )
        assert answer.status_code == 201 and answer.json()["state"] == "installed", answer.text
        made.append(answer.json()["id"])
    return made


def state_of(daemon: Daemon, allocation: str) -> str:
    with daemon.admin() as http:
        state: str = http.get(f"/v1/allocations/{allocation}").json()["state"]
    return state


def test_a_task_holder_displaced_for_gdb_comes_back_when_its_thread_execs(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    c_target: CTarget,
    gdb_path: str,
) -> None:
    daemon = perf_daemon(make_daemon)
    squatters = squatters_on(daemon, {"kind": "task", "tid": c_target.tid}, c_target.address)
    since = last_event_id(daemon)
    out = debugreg_gdb_until_the_write(daemon, c_target)
    assert "Old value = 0" in out and "New value = 1" in out, out
    seen = events(daemon, since, last_event_id(daemon))
    (displaced,) = [
        e["allocation"]["id"]
        for e in seen
        if e["type"] == "evicted" and e["allocation"]["id"] in squatters
    ]
    assert [e["label"] for e in _reservations(seen)] == [f"gdb watchpoint 1 (pid {c_target.tid})"]

    # gdb is gone, but Linux keeps its breakpoint slot on the thread: the daemon shows it held
    # outside debugregd, and the displaced holder waits for it instead of failing again and again.
    outside = first(
        daemon,
        since,
        lambda e: e["type"] == "outside" and e["target"] == {"kind": "task", "tid": c_target.tid},
    )
    assert outside["registers"] == 1
    assert state_of(daemon, displaced) == "waiting"

    since = last_event_id(daemon)
    c_target.exec()  # the slot goes with the old image
    back = first(daemon, since, lambda e: e["type"] == "reinstalled", within=3)
    assert back["allocation"]["id"] == displaced
    c_target.poke()
    hit = first(daemon, back["id"], lambda e: e["type"] == "hit" and not e.get("unknown"))
    assert hit["allocation"]["id"] == squatters[0]  # the one on `counter` counts again


def test_cpu_wide_holders_displaced_for_gdb_come_back_when_the_debugged_task_exits(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    c_target: CTarget,
    c_program: str,
    gdb_path: str,
) -> None:
    daemon = perf_daemon(make_daemon)
    squatters = squatters_on(daemon, {"kind": "cpus", "cpus": "all"}, c_target.address)
    since = last_event_id(daemon)
    out = debugreg_gdb_until_the_write(daemon, c_target)
    assert "Old value = 0" in out and "New value = 1" in out, out
    seen = events(daemon, since, last_event_id(daemon))
    (displaced,) = [
        e["allocation"]["id"]
        for e in seen
        if e["type"] == "evicted" and e["allocation"]["id"] in squatters
    ]
    # A CPU-wide holder competes with the fullest task: the debugged one, which still holds gdb's
    # slot, is "another task" on each CPU to the daemon.
    first(daemon, since, lambda e: e["type"] == "outside" and e["target"]["kind"] == "others")
    assert state_of(daemon, displaced) == "waiting"

    since = last_event_id(daemon)
    c_target.end()
    back = first(daemon, since, lambda e: e["type"] == "reinstalled", within=3)
    assert back["allocation"]["id"] == displaced
    with CTarget(c_program) as again:  # the same program again: `counter` at the same address
        again.poke()
        hit = first(daemon, back["id"], lambda e: e["type"] == "hit" and not e.get("unknown"))
    assert hit["allocation"]["id"] == squatters[0]


def _reservations(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["allocation"] for e in seen if e["type"] == "installed" and not e["allocation"]["arm"]
    ]
