"""The gdb extension in a real gdb, against the sim backend (DESIGN section 15): gdb's hardware
watchpoints and hbreaks are reserved at ptrace priority, for every thread, before gdb inserts
them; released when deleted; everything is released when gdb detaches or exits; a refusal is one
line naming the holders; and without a daemon gdb works as if the extension were not there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import first, last_event_id, stream
from tests.support.certs import make_pki
from tests.support.daemon import Daemon, free_port
from tests.support.gdb import Lines, Target, debugreg_gdb, environment

pytestmark = [pytest.mark.gdb, pytest.mark.timeout(120)]


def settings(daemon: Daemon) -> dict[str, str]:
    """gdb's environment: the daemon, and its admin key (the extension opens its own session)."""
    return environment(DEBUGREG_URL=daemon.url, DEBUGREGD_ADMIN_KEY=daemon.admin_key)


def attach(target: Target, *commands: str) -> list[str]:
    """`debugreg gdb -batch -p PID -ex COMMAND...`."""
    return debugreg_gdb("-batch", "-p", str(target.pid), *_ex(commands))


def _ex(commands: tuple[str, ...]) -> list[str]:
    return [word for command in commands for word in ("-ex", command)]


def record(daemon: Daemon, allocation: str) -> dict[str, Any]:
    with daemon.admin() as http:
        answer = http.get(f"/v1/allocations/{allocation}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def installed(tid: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "installed" and e["allocation"]["scope"].get("tid") == tid


def test_watch_reserves_the_thread_at_ptrace_priority_and_gdb_stops_on_the_write(
    daemon: Daemon, target: Target
) -> None:
    since = last_event_id(daemon)
    with Lines(attach(target, "watch -l counter", "continue"), settings(daemon)) as gdb:
        gdb.expect(r"^Hardware watchpoint 1: -location counter")
        reserved = first(daemon, since, installed(target.pid))["allocation"]
        target.send("w")  # read once gdb resumes the program, the watchpoint inserted
        said = gdb.finish()
    assert reserved["priority"] == 700
    assert reserved["arm"] is False
    assert reserved["scope"] == {"kind": "task", "tid": target.pid}
    assert (int(reserved["address"], 16), reserved["length"]) == (target.address, 8)
    assert reserved["access"] == "write"
    assert reserved["label"] == f"gdb watchpoint 1 (pid {target.pid})"
    assert "Old value = 0" in said and "New value = 1" in said
    assert "debugreg:" not in said
    # gdb exited: the extension closed its session, which released the reservation.
    first(daemon, since, lambda e: e["type"] == "session_closed")
    final = record(daemon, reserved["id"])
    assert (final["state"], final["reason"]) == ("released", "session closed")


def test_deleting_a_watchpoint_releases_its_reservation(daemon: Daemon, target: Target) -> None:
    since = last_event_id(daemon)
    commands = ("watch -l counter", "delete 1", "info debugreg")
    with Lines(attach(target, *commands), settings(daemon)) as gdb:
        said = gdb.finish()
    reserved = first(daemon, since, installed(target.pid))["allocation"]
    released = first(daemon, since, lambda e: e["type"] == "released")
    assert released["allocation"]["id"] == reserved["id"]
    assert (
        released["allocation"]["reason"] == "released by owner"
    )  # by the extension, while gdb still ran
    assert "watchpoint 1 on thread" not in said


def test_detaching_releases_everything_and_closes_the_session(
    daemon: Daemon, target: Target
) -> None:
    since = last_event_id(daemon)
    commands = ("watch -l counter", "hbreak main", "info debugreg", "detach", "info debugreg")
    with Lines(attach(target, *commands), settings(daemon)) as gdb:
        gdb.expect(rf"^watchpoint 1 on thread {target.pid}: a\d+$")
        gdb.expect(rf"^hbreak 2 on thread {target.pid}: a\d+$")
        gdb.expect(r"detached")
        gdb.expect(r"^debugregd http://\S+: session -$")  # nothing held once detached
        gdb.finish()
    closed = first(daemon, since, lambda e: e["type"] == "session_closed")
    with daemon.admin() as http:
        live = http.get("/v1/allocations", params={"session": closed["session"]}).json()
    assert live["allocations"] == []


def test_a_watchpoint_set_before_run_is_reserved_when_the_program_starts(
    daemon: Daemon, target_binary: Path
) -> None:
    since = last_event_id(daemon)
    argv = debugreg_gdb("-batch", *_ex(("watch counter", "run")), "--args", str(target_binary))
    with Lines(argv, settings(daemon)) as gdb:
        gdb.expect(r"^Hardware watchpoint 1: counter")
        pid, address = gdb.ready()  # the program runs: gdb has inserted the watchpoint
        gdb.send("w")  # gdb's stdin is the program's
        said = gdb.finish()
    assert "Old value = 0" in said and "New value = 1" in said
    # Reserved at the address the program really has (a PIE, relocated when it started).
    reserved = first(
        daemon, since, lambda e: installed(pid)(e) and e["allocation"]["address"] == hex(address)
    )
    assert reserved["allocation"]["label"] == f"gdb watchpoint 1 (pid {pid})"
    assert "debugreg:" not in said


def test_a_thread_started_later_is_reserved_too(daemon: Daemon, target: Target) -> None:
    since = last_event_id(daemon)
    with Lines(attach(target, "watch -l counter", "continue"), settings(daemon)) as gdb:
        gdb.expect(r"^Hardware watchpoint 1")
        target.send("t")
        tid = int(target.expect(r"^thread (\d+)$")[1])
        target.send("w")
        said = gdb.finish()
    assert "New value = 1" in said
    second = first(daemon, since, installed(tid))["allocation"]
    assert second["label"] == f"gdb watchpoint 1 (pid {target.pid})"
    assert (second["priority"], second["arm"]) == (700, False)


def test_rwatch_awatch_and_hbreak_reserve_what_x86_arms_for_them(
    daemon: Daemon, target: Target
) -> None:
    since = last_event_id(daemon)
    commands = ("rwatch -l counter", "awatch -l counter", "hbreak main")
    with Lines(attach(target, *commands), settings(daemon)) as gdb:
        main = int(gdb.expect(r"^Hardware assisted breakpoint 3 at (0x[0-9a-f]+)")[1], 16)
        gdb.finish()
    seen = {}
    for event in stream(daemon, since):
        if installed(target.pid)(event):
            seen[event["allocation"]["label"]] = event["allocation"]
        if len(seen) == 3:
            break
    pid = target.pid
    read, access, hbreak = (
        seen[f"gdb read watchpoint 1 (pid {pid})"],
        seen[f"gdb access watchpoint 2 (pid {pid})"],
        seen[f"gdb hbreak 3 (pid {pid})"],
    )
    # x86 has no read-only watch: gdb arms an rwatch as read/write, and so it is reserved.
    assert (read["access"], read["length"]) == ("rw", 8)
    assert (access["access"], access["length"]) == ("rw", 8)
    assert (hbreak["access"], hbreak["length"], int(hbreak["address"], 16)) == ("exec", 1, main)


def test_a_refusal_is_one_line_naming_the_holders_and_gdb_goes_on(
    daemon: Daemon, target: Target
) -> None:
    with daemon.admin() as http:
        opened = http.post(
            "/v1/sessions",
            json={
                "name": "critical",
                "ttl_s": 120,
                "max_priority": "critical",
                "allow_non_evictable": True,
            },
        ).json()
    holders = []
    with daemon.anon() as http:
        for n in range(4):  # every register of the task, none of them evictable
            answer = http.post(
                "/v1/allocations",
                headers={"Authorization": f"Bearer {opened['token']}"},
                json={
                    "scope": {"kind": "task", "tid": target.pid},
                    "address": target.address + 8 * (n + 1),
                    "length": 8,
                    "access": "write",
                    "priority": "critical",
                    "evictable": False,
                },
            )
            assert answer.status_code == 201, answer.text
            holders.append(answer.json()["id"])
    with Lines(attach(target, "watch -l counter", "continue"), settings(daemon)) as gdb:
        refusal = gdb.expect(r"^debugreg: ").string
        target.send("w")
        said = gdb.finish()
    # Another session's holders: the daemon names no other session's allocations to this one.
    assert refusal == (
        "debugreg: no debug register for watchpoint 1: held by another session's "
        f"{len(holders)} (priority 900, non-evictable)"
    )
    assert [line for line in said.splitlines() if "debugreg" in line] == [refusal]
    # The sim's holders take no real register, so gdb's own insertion works here: it stops.
    assert "New value = 1" in said


def test_an_unreachable_daemon_costs_one_warning_and_nothing_else(target: Target) -> None:
    env = environment(DEBUGREG_URL=f"http://127.0.0.1:{free_port()}", DEBUGREGD_ADMIN_KEY="key")
    commands = ("watch -l counter", "hbreak main", "continue")
    with Lines(attach(target, *commands), env) as gdb:
        gdb.expect(r"^Hardware assisted breakpoint 2")
        target.send("w")
        said = gdb.finish()
    warnings = [line for line in said.splitlines() if "debugreg" in line]
    assert len(warnings) == 1, said
    assert warnings[0].startswith("debugreg: debugregd is unreachable (no answer from http://")
    assert warnings[0].endswith("; gdb goes on without reserving debug registers")
    assert "Old value = 0" in said and "New value = 1" in said


def test_the_session_outlives_its_ttl_while_gdb_waits(daemon: Daemon, target: Target) -> None:
    since = last_event_id(daemon)
    argv = debugreg_gdb(
        "-batch",
        "-p",
        str(target.pid),
        *_ex(("watch -l counter", "continue")),
        options=["--ttl", "1"],
    )
    with Lines(argv, settings(daemon)) as gdb:
        gdb.expect(r"^Hardware watchpoint 1")
        reserved = first(daemon, since, installed(target.pid))
        # Three TTLs while gdb waits for the program: nothing expires (a quiet stream).
        with pytest.raises(httpx.ReadTimeout):
            for event in stream(daemon, reserved["id"], read_timeout=3):
                assert event["type"] not in ("expired", "session_closed"), event
        assert record(daemon, reserved["allocation"]["id"])["state"] == "installed"
        target.send("w")
        assert "New value = 1" in gdb.finish()


def test_over_mutual_tls_with_the_clis_options(
    make_daemon: Callable[..., Daemon], target: Target, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    daemon = make_daemon(tls=pki, mutual=True)
    since = last_event_id(daemon)
    options = ["--url", daemon.url, "--admin-key", daemon.admin_key, "--ca", str(pki.ca)]
    options += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    argv = debugreg_gdb("-batch", "-p", str(target.pid), "-ex", "watch -l counter", options=options)
    with Lines(argv, environment()) as gdb:
        said = gdb.finish()
    assert "debugreg:" not in said
    reserved = first(daemon, since, installed(target.pid))["allocation"]
    assert reserved["label"] == f"gdb watchpoint 1 (pid {target.pid})"


def test_settings_given_as_flags_are_kept_from_the_program_gdb_runs(target_binary: Path) -> None:
    argv = debugreg_gdb(
        "-batch", "-ex", "run", "--args", "/usr/bin/env", options=["--admin-key", "secret"]
    )
    with Lines(argv, environment(DEBUGREG_URL="http://127.0.0.1:9")) as gdb:
        said = gdb.finish()
    assert "exited normally" in said, said
    assert "DEBUGREG_URL=http://127.0.0.1:9" in said  # the user's own environment, as without gdb
    assert "secret" not in said
    assert "DEBUGREG_GDB_ADDED" not in said


def open_session(daemon: Daemon, **grants: Any) -> dict[str, Any]:
    """A session opened as `debugreg session open` would (grants need the admin key)."""
    http = daemon.admin() if grants else daemon.anon()
    with http:
        answer = http.post("/v1/sessions", json={"name": "mine", "ttl_s": 120, **grants})
    assert answer.status_code == 201, answer.text
    opened: dict[str, Any] = answer.json()
    return opened


def test_with_a_token_the_extension_reserves_in_that_session_and_leaves_it_open(
    daemon: Daemon, target: Target
) -> None:
    opened = open_session(daemon, max_priority="ptrace")
    since = last_event_id(daemon)
    env = environment(DEBUGREG_URL=daemon.url, DEBUGREG_TOKEN=opened["token"])
    with Lines(attach(target, "watch -l counter"), env) as gdb:
        said = gdb.finish()
    assert "debugreg:" not in said
    reserved = first(daemon, since, installed(target.pid))["allocation"]
    assert reserved["session"] == opened["id"]
    # gdb released what it reserved; the session is the user's, and stays.
    final = record(daemon, reserved["id"])
    assert (final["state"], final["reason"]) == ("released", "released by owner")
    with daemon.admin() as http:
        assert http.get(f"/v1/sessions/{opened['id']}").status_code == 200


@pytest.mark.parametrize("credential", ["none", "no ptrace grant"])
def test_without_a_usable_credential_gdb_is_told_once_and_goes_on(
    daemon: Daemon, target: Target, credential: str
) -> None:
    env = environment(DEBUGREG_URL=daemon.url)
    if credential == "no ptrace grant":
        env["DEBUGREG_TOKEN"] = open_session(daemon)["token"]
    commands = ("watch -l counter", "hbreak main", "continue")
    with Lines(attach(target, *commands), env) as gdb:
        gdb.expect(r"^Hardware assisted breakpoint 2")
        target.send("w")
        said = gdb.finish()
    warnings = [line for line in said.splitlines() if "debugreg" in line]
    assert len(warnings) == 1, said
    expected = {
        "none": "debugreg: no credential for debugregd: set DEBUGREG_TOKEN (a session with the "
        "ptrace grant) or DEBUGREGD_ADMIN_KEY; ",
        "no ptrace grant": "debugreg: debugregd refused the credentials (",
    }[credential]
    assert warnings[0].startswith(expected)
    assert warnings[0].endswith("; gdb goes on without reserving debug registers")
    assert "New value = 1" in said
