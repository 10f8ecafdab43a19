"""The `debugreg` command line, run as subprocesses: documented output and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from debugreg import Client, NotFound
from debugreg.cli import AUTH, CONFLICT, NOT_FOUND, OK, UNREACHABLE, USAGE
from tests.support.daemon import Daemon, free_port

CLI_TIMEOUT_S = 60


def run(daemon: Daemon, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`debugreg ARGS` against `daemon`, with only the credentials given in `env`."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DEBUGREG_TOKEN", "DEBUGREG_SESSION", "DEBUGREGD_ADMIN_KEY")
    }
    environ["DEBUGREG_URL"] = daemon.url
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "debugreg.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def run_all(
    daemon: Daemon, *commands: tuple[tuple[str, ...], dict[str, str]]
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once (each is a fresh interpreter: mostly start-up time)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda c: run(daemon, *c[0], **c[1]), commands))


def allocate_args(tid: int, address: str = "0x7f0000001000", *extra: str) -> list[str]:
    return ["allocate", "--tid", str(tid), "--address", address, "--length", "8", *extra]


def test_a_session_across_cli_calls(shared_daemon: Daemon, tid: int) -> None:
    opened = run(shared_daemon, "session", "open", "--name", "cli-test", "--ttl", "60", "--json")
    assert opened.returncode == OK, opened.stderr
    session = json.loads(opened.stdout)
    env = {"DEBUGREG_TOKEN": session["token"], "DEBUGREG_SESSION": session["id"]}

    made = run(shared_daemon, *allocate_args(tid), **env)
    assert made.returncode == OK, made.stderr
    line = made.stdout.strip()
    assert re.fullmatch(
        r"a\d+ installed generation=\d+ registers=cpu0/dr\d,cpu1/dr\d priority=300 "
        rf"scope=task:{tid} address=0x7f0000001000 length=8 access=write session={session['id']}",
        line,
    ), line
    alloc_id = line.split()[0]

    # Needs all four registers of the task, one of which the first allocation holds at the
    # same priority: refused, naming it.
    refused, listed, shown, kept = run_all(
        shared_daemon,
        (tuple(allocate_args(tid, "0x7f0000002001")), env),
        (("ls",), env),
        (("show", alloc_id), env),
        (("session", "keepalive"), env),
    )
    assert refused.returncode == CONFLICT
    assert refused.stdout == ""
    assert refused.stderr.startswith("debugreg: refused: ")
    assert f"[blockers: {alloc_id} (session {session['id']}, priority 300, evictable" in (
        refused.stderr
    )
    assert len(refused.stderr.strip().splitlines()) == 1

    assert listed.returncode == OK
    header, *rows = [r for r in listed.stdout.splitlines() if r.strip() and "──" not in r]
    assert header.split() == [
        "ID", "SESSION", "STATE", "PRIO", "SCOPE", "ADDRESS", "LEN", "ACCESS", "GEN", "REGISTERS",
        "LABEL",
    ]  # fmt: skip
    assert [r.split()[:3] for r in rows] == [[alloc_id, session["id"], "installed"]]
    assert "state: installed" in shown.stdout.splitlines()
    assert kept.returncode == OK and kept.stdout.startswith(f"{session['id']} expires_at=")

    released = run(shared_daemon, "release", alloc_id, "--json", **env)
    assert released.returncode == OK
    assert json.loads(released.stdout)["state"] == "released"

    closed = run(shared_daemon, "session", "close", **env)
    assert closed.returncode == OK and closed.stdout.strip() == f"{session['id']} closed"
    with (
        Client(shared_daemon.url, admin_key=shared_daemon.admin_key) as admin,
        pytest.raises(NotFound),
    ):
        admin.session_info(session["id"])


def test_exit_codes_say_what_went_wrong(shared_daemon: Daemon, tid: int) -> None:
    admin = {"DEBUGREGD_ADMIN_KEY": shared_daemon.admin_key}
    results = run_all(
        shared_daemon,
        # 64 bytes need eight registers; the pool has four.
        (("allocate", "--cpu", "0", "--address", "0x7f0000001000", "--length", "64"), {}),
        (tuple(allocate_args(tid, "not-an-address")), {}),
        (("allocate", "--address", "0x1000"), {}),
        (("state",), {}),
        (("show", "a999999"), admin),
        (("--url", f"http://127.0.0.1:{free_port()}", "host"), {}),
    )
    daemon_invalid, local_invalid, usage, unauthorized, missing, unreachable = results
    assert daemon_invalid.returncode == USAGE
    assert daemon_invalid.stderr.startswith("debugreg: invalid request: ")
    assert local_invalid.returncode == USAGE
    assert "address" in local_invalid.stderr
    assert usage.returncode == USAGE and "one of the arguments" in usage.stderr
    assert unauthorized.returncode == AUTH
    assert unauthorized.stderr.startswith("debugreg: unauthorized: ")
    assert missing.returncode == NOT_FOUND and missing.stderr.startswith("debugreg: not found: ")
    assert unreachable.returncode == UNREACHABLE
    assert unreachable.stderr.startswith("debugreg: unreachable: ")
    for result in results:
        assert result.stdout == "", result.args


def test_allocate_reservation_is_counted_but_left_to_its_debugger(
    shared_daemon: Daemon, tid: int
) -> None:
    admin = {"DEBUGREGD_ADMIN_KEY": shared_daemon.admin_key}
    reserved, cpu_wide = run_all(
        shared_daemon,
        (("allocate", *allocate_args(tid)[1:], "--reservation", "--priority", "ptrace"), admin),
        (("allocate", "--cpu", "0", "--address", "0x7f0000001000", "--reservation"), admin),
    )
    assert reserved.returncode == OK, reserved.stderr
    line = reserved.stdout.splitlines()[-1]
    assert re.match(
        rf"a\d+ installed reservation generation=\d+ .* priority=700 scope=task:{tid}", line
    )
    alloc_id = line.split()[0]
    shown = run(shared_daemon, "show", alloc_id, "--json", **admin)
    assert json.loads(shown.stdout)["arm"] is False
    # The daemon arms CPU-wide allocations itself: a reservation is for a task's debugger.
    assert cpu_wide.returncode == USAGE
    assert "a reservation (arm: false) is for a task" in cpu_wide.stderr


def test_admin_commands_and_watch(shared_daemon: Daemon, tid: int) -> None:
    admin = {"DEBUGREGD_ADMIN_KEY": shared_daemon.admin_key}
    since = run(shared_daemon, "state", "--json", **admin)
    assert since.returncode == OK
    start = json.loads(since.stdout)["event_id"]

    # Without a token, allocate opens a session of its own (and says so).
    made = json.loads(
        run(shared_daemon, *allocate_args(tid), "--json", "--label", "x", **admin).stdout
    )
    assert made["session"]["name"] == "cli" and made["session"]["token"]
    assert made["allocation"]["session"] == made["session"]["id"]
    assert made["allocation"]["label"] == "x"
    alloc_id = made["allocation"]["id"]
    evicted = run(shared_daemon, "evict", alloc_id, "--reason", "cli test", **admin)
    assert evicted.returncode == OK and evicted.stdout.startswith(f"{alloc_id} evicted ")

    # session_opened, installed, evicted: replayed from `start`, then the command exits.
    lines, texts, host, regs = run_all(
        shared_daemon,
        (("watch", "--since", str(start), "--count", "3", "--json"), admin),
        (("watch", "--since", str(start), "--count", "3"), admin),
        (("host", "--json"), {}),
        (("debugregs", "set", str(tid), "--dr0", "0x7f0000003000", "--dr7", "0xd0001"), admin),
    )
    assert lines.returncode == OK, lines.stderr
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [e["type"] for e in events] == ["session_opened", "installed", "evicted"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert events[2]["allocation"]["id"] == alloc_id and events[2]["reason"] == "cli test"
    last = texts.stdout.splitlines()[-1]
    assert re.match(rf"#{events[2]['id']} \S+Z evicted {alloc_id} session=", last), last
    assert 'reason="cli test"' in last

    assert json.loads(host.stdout)["pools"] == {"dr": 4}
    assert regs.returncode == OK, regs.stderr
    assert "dr0: 0x7f0000003000" in regs.stdout.splitlines()
    assert "dr7: 0xd0001" in regs.stdout.splitlines()
    with Client(shared_daemon.url, admin_key=shared_daemon.admin_key) as client:
        client.close_session(made["session"]["id"])


def test_hits_follows_an_allocations_call_sites(shared_daemon: Daemon, tid: int) -> None:
    admin = {"DEBUGREGD_ADMIN_KEY": shared_daemon.admin_key}
    made = json.loads(run(shared_daemon, *allocate_args(tid), "--json", **admin).stdout)
    alloc_id = made["allocation"]["id"]
    start = json.loads(run(shared_daemon, "state", "--json", **admin).stdout)["event_id"]
    with Client(shared_daemon.url, admin_key=shared_daemon.admin_key) as client:
        for ip, who in ((0x401136, tid), (0x401200, tid), (0x401136, tid)):
            client.sim_access(
                cpu=0, tid=who, address=0x7F0000001000, length=8, access="write", ip=ip
            )
    lines, table = run_all(
        shared_daemon,
        (("hits", alloc_id, "--since", str(start), "--count", "3", "--json"), admin),
        (("hits", alloc_id, "--since", str(start), "--count", "3"), admin),
    )
    assert lines.returncode == OK, lines.stderr
    reports = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["sites"][0]["ip"] for r in reports] == ["0x401136", "0x401200", "0x401136"]
    assert [r["total"] for r in reports] == [1, 2, 3]
    assert table.returncode == OK, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if "0x4" in line]
    assert [(row[0], row[1]) for row in rows] == [("2", "0x401136"), ("1", "0x401200")]
    assert table.stdout.splitlines()[0].startswith(f"{alloc_id} 0x7f0000001000+8 write: 3 hits")
    with Client(shared_daemon.url, admin_key=shared_daemon.admin_key) as client:
        client.close_session(made["session"]["id"])
