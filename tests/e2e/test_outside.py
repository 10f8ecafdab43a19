"""End to end on real hardware, with users outside debugregd holding breakpoints through
perf_event_open (as perf record, bpftrace or gdb do): the daemon answers only what the kernel
armed, names the outside holders in its refusals, evicts its own lower holders (never the outside
ones) for a higher priority, gives waiters their room back when the outside users leave, never
storms, expires the allocations of a task that exits, and refuses to start on a machine its
settings contradict (DESIGN section 12)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import (
    NCPUS,
    Outside,
    Target,
    events,
    first,
    last_event_id,
    perf_daemon,
    session,
    stream,
    watch,
)
from tests.support.daemon import Daemon

pytestmark = pytest.mark.perf


@pytest.mark.parametrize("wait", [False, True], ids=["refused", "waiting"])
def test_with_two_held_outside_on_every_cpu_two_of_four_requests_are_armed(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    target: Target,
    outside: Callable[..., Outside],
    wait: bool,
) -> None:
    outside(cpu_wide=2)
    daemon = perf_daemon(make_daemon)
    _, auth = session(daemon)
    since = last_event_id(daemon)
    answers = [
        watch(daemon, auth, target.tid, target.address + 8 * n, priority="background", wait=wait)
        for n in range(4)
    ]
    assert [r.status_code for r in answers] == [
        201,
        201,
        409 if not wait else 201,
        409 if not wait else 201,
    ]
    states = [r.json().get("state") for r in answers]
    if wait:
        assert states == ["installed", "installed", "waiting", "waiting"]
        named = answers[2].json()["id"]
        waiting = events(daemon, since, last_event_id(daemon))
        blockers = [e for e in waiting if e["type"] == "waiting" and e["allocation"]["id"] == named]
        assert any(b.get("outside") for b in blockers[0]["blockers"])
    else:
        for refused in answers[2:]:
            assert "outside debugregd: 2 registers on CPU" in refused.json()["detail"]
            assert any(b["outside"] for b in refused.json()["blockers"])
    seen = events(daemon, since, last_event_id(daemon))
    assert "evicted" not in [e["type"] for e in seen]  # nothing was answered 201 and then taken
    with daemon.admin() as http:
        host = http.get("/v1/host").json()
    assert {(o["target"]["kind"], o["registers"]) for o in host["outside"]} == {("cpu", 2)}
    assert host["probe"]["slots"] == {"dr": 4}


def test_a_ptrace_request_evicts_a_background_holder_not_the_outside_users(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    target: Target,
    outside: Callable[..., Outside],
) -> None:
    # No scan: the daemon learns of the outside users only when the kernel refuses.
    daemon = perf_daemon(make_daemon, "--outside-scan", "0")
    sid, auth = session(daemon)
    low = [
        watch(daemon, auth, target.tid, target.address + 8 * n, priority="background")
        for n in (1, 2)
    ]
    assert [r.status_code for r in low] == [201, 201]
    outside(cpu_wide=2)
    since = last_event_id(daemon)
    _, debugger = session(daemon, grant="ptrace")
    high = watch(daemon, debugger, target.tid, target.address, priority="ptrace")
    assert high.status_code == 201, high.text
    assert high.json()["state"] == "installed"
    seen = events(daemon, since, last_event_id(daemon))
    evicted = [e for e in seen if e["type"] == "evicted"]
    assert len(evicted) == 1
    assert evicted[0]["session"] == sid
    assert evicted[0]["allocation"]["id"] in {r.json()["id"] for r in low}
    assert evicted[0]["reason"] == "evicted to make room for a request at priority 700"
    assert evicted[0]["evictor"]["allocation"] == high.json()["id"]
    assert "outside" in [e["type"] for e in seen]  # the kernel's refusal, recorded first
    target.poke()  # armed for real: the write is a hit of the ptrace watchpoint
    hit = first(daemon, since, lambda e: e["type"] == "hit")
    assert hit["allocation"]["id"] == high.json()["id"]


def test_when_the_outside_user_leaves_a_waiter_is_reinstalled_and_armed(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    target: Target,
    outside: Callable[..., Outside],
) -> None:
    user = outside(task=target.tid, n=4)  # a debugger on that task holds all four
    daemon = perf_daemon(make_daemon)
    _, auth = session(daemon)
    waiter = watch(daemon, auth, target.tid, target.address, wait=True)
    assert waiter.json()["state"] == "waiting", waiter.text
    since = last_event_id(daemon)
    user.leave()
    reinstalled = first(daemon, since, lambda e: e["type"] == "reinstalled", within=3)
    assert reinstalled["allocation"]["id"] == waiter.json()["id"]
    target.poke()
    hit = first(daemon, reinstalled["id"], lambda e: e["type"] == "hit")
    assert hit["allocation"]["id"] == waiter.json()["id"]


def test_holders_that_wait_when_evicted_do_not_storm_with_outside_users(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    target: Target,
    outside: Callable[..., Outside],
) -> None:
    outside(cpu_wide=2)
    daemon = perf_daemon(make_daemon, "--outside-scan", "0")  # found by the kernel's refusals
    _, auth = session(daemon)
    since = last_event_id(daemon)
    for n in range(4):
        answer = watch(daemon, auth, target.tid, target.address + 8 * n, on_evict="wait", wait=True)
        assert answer.status_code == 201, answer.text
    _, debugger = session(daemon, grant="ptrace")  # evicts one, which waits to come back
    assert watch(daemon, debugger, target.tid, target.address + 32, priority="ptrace").is_success
    counted: list[str] = []
    deadline = time.monotonic() + 5
    with contextlib.suppress(httpx.ReadTimeout):  # a quiet stream: the five seconds are over
        for event in stream(daemon, since, read_timeout=5):
            counted.append(event["type"])
            if time.monotonic() > deadline or len(counted) >= 50:
                break
    assert len(counted) < 50, counted
    assert "reinstalled" not in counted  # the evicted one waits: the outside users are there


def test_the_allocations_of_a_task_that_exits_expire(
    perf_permitted: None, make_daemon: Callable[..., Daemon], target: Target
) -> None:
    daemon = perf_daemon(make_daemon)
    _, auth = session(daemon)
    alloc = watch(daemon, auth, target.tid, target.address)
    assert alloc.status_code == 201, alloc.text
    since = last_event_id(daemon)
    target.end()
    expired = first(daemon, since, lambda e: e["type"] == "expired", within=2)
    assert expired["allocation"]["id"] == alloc.json()["id"]
    assert expired["allocation"]["reason"] == f"task {target.tid} exited"


def test_a_task_that_does_not_exist_is_a_404(
    perf_permitted: None, make_daemon: Callable[..., Daemon], target: Target
) -> None:
    daemon = perf_daemon(make_daemon)
    _, auth = session(daemon)
    target.end()
    answer = watch(daemon, auth, target.tid, target.address)
    assert answer.status_code == 404
    assert answer.json()["detail"].startswith(f"no such task {target.tid}")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--profile", "arm64"], "--profile arm64 does not describe this"),
        (["--cpus", str(NCPUS + 1)], "which are not online here"),
        (["--pools", "dr=3"], "--pools dr=3 is fewer than the 4 registers"),
    ],
)
def test_settings_that_contradict_the_machine_refuse_to_start_with_one_line(
    perf_permitted: None, tmp_path: object, args: list[str], says: str
) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "debugregd", "serve", "--backend", "perf", "--port", "1", *args],
        env={"DEBUGREGD_ADMIN_KEY": "k", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("debugregd: ") and says in lines[0], lines
