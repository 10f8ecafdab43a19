"""End to end on real hardware: `debugreg gdb` against a daemon arming real breakpoints (perf
backend), with holders through the daemon squatting on the registers gdb needs (DESIGN section
15). gdb's `watch` stops on the write where it would otherwise fail with ENOSPC, the holder it
displaced is told once and by whom, and a holder that may not be displaced is named in gdb."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import events, first, last_event_id, perf_daemon, session, watch
from tests.support.daemon import Daemon
from tests.support.gdb import Lines, Target, debugreg_gdb, environment, target_binary

pytestmark = [pytest.mark.perf, pytest.mark.gdb, pytest.mark.timeout(180)]

__all__ = ["target_binary"]


@pytest.fixture
def program(target_binary: Path) -> Iterator[Target]:
    """The C program gdb debugs (the Python `target` of the other tests cannot be watched by
    `watch -l counter`)."""
    with Target(target_binary) as running:
        yield running


def watch_and_continue(daemon: Daemon, program: Target, *, write: bool = True) -> str:
    """`debugreg gdb -batch -p PID -ex 'watch -l counter' -ex continue`, the program writing its
    counter once gdb has resumed it; what gdb said."""
    argv = debugreg_gdb(
        "-batch", "-p", str(program.pid), "-ex", "watch -l counter", "-ex", "continue"
    )
    env = environment(DEBUGREG_URL=daemon.url, DEBUGREGD_ADMIN_KEY=daemon.admin_key)
    with Lines(argv, env) as gdb:
        gdb.expect(r"^Hardware watchpoint 1: -location counter")
        if write:
            program.send("w")  # read once gdb resumes the program, its watchpoint inserted
        return gdb.finish()


def reservation_of(daemon: Daemon, since: int, pid: int) -> dict[str, Any]:
    def gdbs(event: dict[str, Any]) -> bool:
        record = event.get("allocation") or {}
        return event["type"] == "installed" and record.get("label", "").startswith("gdb ")

    found: dict[str, Any] = first(daemon, since, gdbs)["allocation"]
    assert found["label"] == f"gdb watchpoint 1 (pid {pid})"
    assert (found["priority"], found["arm"]) == (700, False)
    return found


def assert_displaced_once(
    daemon: Daemon, since: int, holders: list[str], reservation: dict[str, Any]
) -> None:
    """Exactly one holder was evicted for gdb, told once, with a reason naming the reservation
    (whose label names the debugger)."""
    seen = events(daemon, since, last_event_id(daemon))
    evicted = [e for e in seen if e["type"] == "evicted" and e["allocation"]["id"] in holders]
    assert len(evicted) == 1, [(e["type"], e.get("reason")) for e in seen]
    assert Counter(e["allocation"]["id"] for e in evicted).most_common(1)[0][1] == 1
    assert evicted[0]["reason"] == (
        f"evicted to make room for a request at priority 700: {reservation['label']}"
    )  # a reservation's label names the debugger: "gdb watchpoint 1 (pid N)"
    assert evicted[0]["evictor"]["allocation"] == reservation["id"]  # the admin's stream


def background_holders(
    daemon: Daemon, scope: Callable[[int], dict[str, Any]], n: int = 4
) -> list[str]:
    """`n` background holders through the daemon that wait to come back when evicted."""
    _, auth = session(daemon)
    made = []
    for index in range(n):
        with daemon.anon() as http:
            answer = http.post(
                "/v1/allocations",
                headers=auth,
                json={**scope(index), "length": 8, "access": "write", "priority": "background"}
                | {"on_evict": "wait", "label": f"squatter {index}"},
            )
        assert answer.status_code == 201 and answer.json()["state"] == "installed", answer.text
        made.append(answer.json()["id"])
    return made


def test_with_four_holders_on_the_task_gdbs_watch_stops_on_the_write(
    make_daemon: Callable[..., Daemon], program: Target, perf_permitted: None
) -> None:
    daemon = perf_daemon(make_daemon)
    holders = background_holders(
        daemon,
        lambda n: {
            "scope": {"kind": "task", "tid": program.pid},
            "address": program.address + 8 * (n + 1),
        },
    )
    since = last_event_id(daemon)
    said = watch_and_continue(daemon, program)
    assert "Hardware watchpoint 1: -location counter" in said
    assert "Old value = 0" in said and "New value = 1" in said, said
    assert "debugreg:" not in said
    assert_displaced_once(daemon, since, holders, reservation_of(daemon, since, program.pid))


def test_with_four_holders_on_every_cpu_gdbs_watch_stops_on_the_write(
    make_daemon: Callable[..., Daemon], program: Target, perf_permitted: None
) -> None:
    daemon = perf_daemon(make_daemon)
    holders = background_holders(
        daemon,
        lambda n: {
            "scope": {"kind": "cpus", "cpus": "all"},
            "address": program.address + 8 * (n + 1),
        },
    )
    since = last_event_id(daemon)
    said = watch_and_continue(daemon, program)
    assert "Old value = 0" in said and "New value = 1" in said, said
    assert "debugreg:" not in said
    assert_displaced_once(daemon, since, holders, reservation_of(daemon, since, program.pid))


def test_a_critical_holder_is_named_in_gdb_and_gdb_fails_as_it_would(
    make_daemon: Callable[..., Daemon], program: Target, perf_permitted: None
) -> None:
    daemon = perf_daemon(make_daemon)
    with daemon.admin() as http:  # non-evictable is a grant of its own
        opened = http.post(
            "/v1/sessions",
            json={"name": "critical", "ttl_s": 120, "max_priority": "critical"}
            | {"allow_non_evictable": True},
        ).json()
    auth = {"Authorization": f"Bearer {opened['token']}"}
    holders = []
    for n in range(4):
        answer = watch(
            daemon,
            auth,
            program.pid,
            program.address + 8 * (n + 1),
            priority="critical",
            evictable=False,
        )
        assert answer.status_code == 201, answer.text
        holders.append(answer.json()["id"])
    said = watch_and_continue(daemon, program, write=False)
    refusals = [line for line in said.splitlines() if line.startswith("debugreg:")]
    assert refusals == [  # another session's: the daemon names no other session's allocations
        "debugreg: no debug register for watchpoint 1: held by another session's "
        f"{len(holders)} (priority 900, non-evictable)"
    ]
    # gdb's own behaviour is unchanged: the kernel has no room, and gdb says so.
    assert "No space left on device" in said or "Could not insert" in said, said
    assert "New value" not in said
