"""The synchronous client against a real daemon on loopback."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from debugreg import Client, InvalidRequest, NotFound, Refused, Session, Unauthorized, render
from tests.client.conftest import WAIT_S, Recorder, wait_until
from tests.support.daemon import Daemon

USER = 0x7F00_0000_1000


def watch(tid: int, offset: int = 0, **extra: Any) -> dict[str, Any]:
    """An 8-byte aligned write watchpoint of task `tid`: one register."""
    fields: dict[str, Any] = {
        "scope": {"kind": "task", "tid": tid},
        "address": USER + 8 * offset,
        "length": 8,
        "access": "write",
    }
    fields.update(extra)
    return fields


def fill(tid: int, **extra: Any) -> dict[str, Any]:
    """A write watchpoint of task `tid` that takes all four registers (an unaligned 8 bytes
    splits into chunks of 1, 2, 4 and 1)."""
    return watch(tid, **extra) | {"address": USER + 0x101}


def marker(session: Session, tid: int, offset: int) -> None:
    """Allocate and wait until the session's stream delivered that allocation's `installed`:
    streams are ordered, so every earlier event of the session has been handled by then."""
    installed: set[str] = set()
    session.on("installed", lambda e: installed.add(e.allocation.id) if e.allocation else None)
    alloc = session.allocate(**watch(tid, offset))
    wait_until(lambda: alloc.id in installed, f"{alloc.id}'s installed event was handled")


def take_cpu0(daemon: Daemon) -> None:
    """Another session takes all of CPU 0's registers at critical priority (an admin grant),
    evicting whatever holds them."""
    with (
        Client(daemon.url, admin_key=daemon.admin_key) as admin,
        admin.session("rival", max_priority="critical") as rival,
    ):
        winner = rival.allocate(
            scope={"kind": "cpu", "cpu": 0},
            address=USER + 0x101,
            length=8,
            access="write",
            priority="critical",
        )
        assert winner.state == "installed"


def test_the_issue_example_works_verbatim(
    shared_daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    evicted = threading.Event()
    with Client(shared_daemon.url, admin_key=None) as client:  # noqa: SIM117 (as in the issue)
        with client.session("my-tracer", ttl_s=30) as session:
            alloc = session.allocate(scope={"kind": "cpu", "cpu": 0}, address=0x7F00_0000_1000,
                                     length=8, access="write", priority="background",
                                     on_evicted=lambda event: print("lost it:", event))  # fmt: skip
            session.on_evicted(lambda event: evicted.set())  # runs after the allocation's own
            take_cpu0(shared_daemon)
            assert evicted.wait(WAIT_S), "the eviction notice never came"
            alloc.release()
    assert "lost it: " in capsys.readouterr().out
    assert alloc.state == "evicted"


def test_the_readme_example_prints_the_eviction(
    shared_daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    code = code.replace("http://127.0.0.1:8765", shared_daemon.url)
    runner = threading.Thread(target=exec, args=(code, {}), daemon=True)
    runner.start()
    printed: list[str] = []

    def output() -> str:
        printed.append(capsys.readouterr().out)
        return "".join(printed)

    wait_until(lambda: "watching" in output(), "the example holds its watchpoint")
    take_cpu0(shared_daemon)
    runner.join(WAIT_S)
    assert not runner.is_alive(), "the example never heard of its eviction"
    assert "evicted: evicted to make room for a request at priority" in output()


def test_a_handler_hears_its_eviction_exactly_once(shared_daemon: Daemon, tid: int) -> None:
    own, anyone = Recorder(), Recorder()
    with Client(shared_daemon.url) as client, client.session("victim", on_evicted=anyone) as victim:
        alloc = victim.allocate(**watch(tid, priority="background"), on_evicted=own)
        spare = victim.allocate(**watch(tid + 1, priority="background"))
        assert alloc.state == "installed" and alloc.registers

        with client.session("evictor") as evictor:
            winner = evictor.allocate(**fill(tid, priority="normal"))
            assert winner.state == "installed"
            wait_until(lambda: own.of("evicted"), "the victim's handler heard the eviction")
            # Every event before a later one of the same stream has been handled by then.
            marker(victim, tid + 1, offset=1)

        assert [e.allocation.id for e in own.of("evicted") if e.allocation] == [alloc.id]
        assert [e.allocation.id for e in anyone.of("evicted") if e.allocation] == [alloc.id]
        event = own.events[0]
        assert event.allocation is not None and event.allocation.state == "evicted"
        # The evictor is another session's: the reason gives its priority, not its id.
        assert event.reason == "evicted to make room for a request at priority 300"
        assert winner.id not in str(event)
        assert alloc.state == "evicted", "the handle's record follows the stream"
        assert spare.state == "installed"


def test_a_refusal_names_its_blockers(shared_daemon: Daemon, tid: int) -> None:
    with Client(shared_daemon.url) as client, client.session("a") as first:
        holder = first.allocate(**fill(tid))
        with client.session("b") as second, pytest.raises(Refused) as refused:
            second.allocate(**watch(tid, offset=4))
        assert refused.value.status == 409
        # Another session's holder: named by its priority and evictability alone.
        (blocker,) = refused.value.blockers
        assert (blocker.allocation, blocker.session, blocker.scope) == (None, None, None)
        assert (blocker.priority, blocker.evictable) == (300, True)
        assert holder.id not in refused.value.problem.detail
        assert "held by another session at priority 300" in render.error_line(refused.value)


def test_invalid_requests_and_bad_credentials_raise_typed_errors(
    shared_daemon: Daemon, tid: int
) -> None:
    with Client(shared_daemon.url) as client, client.session("c") as session:
        with pytest.raises(InvalidRequest) as local:
            session.allocate(**watch(tid, access="read"))
        assert local.value.errors and local.value.errors[0]["field"] == "access"
        with pytest.raises(InvalidRequest) as remote:
            # 64 bytes need eight registers; the pool has four.
            session.allocate(**watch(tid) | {"address": 0x7F0000001000, "length": 64})
        assert remote.value.status == 422
        with pytest.raises(Unauthorized):
            client.state()
    with Client(shared_daemon.url, admin_key=shared_daemon.admin_key) as admin:
        with pytest.raises(NotFound):
            admin.allocation("a999999")
        assert admin.state().host.cpus == 2


def test_a_session_takes_grants_and_handlers_and_no_other_keyword() -> None:
    with Client("http://127.0.0.1:9") as client:  # nothing is sent before the session opens
        session = client.session("s", max_priority="ptrace", on_evicted=print, on_hit=None)
        assert session.request.max_priority == "ptrace"
        with pytest.raises(TypeError, match="'on_evict'"):
            client.session("s", on_evict=print)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'on_evicted'"):
            client.open_session("s", on_evicted=print)  # type: ignore[call-arg]


def test_keepalive_keeps_a_session_alive_past_several_ttls(shared_daemon: Daemon) -> None:
    with Client(shared_daemon.url) as client, client.session("kept", ttl_s=1) as session:
        wait_until(lambda: session.keepalives >= 10, "ten keepalives went through")
        info = session.info()
        assert not session.closed
        assert info.expires_at - info.created_at > 3 * session.ttl_s


def test_a_session_without_keepalive_expires(shared_daemon: Daemon, tid: int) -> None:
    expired = Recorder()
    with Client(shared_daemon.url) as client:
        session = client.session("forgotten", ttl_s=1, keepalive=False).open()
        alloc = session.allocate(**watch(tid), on_expired=expired)
        wait_until(lambda: expired.of("expired"), "the lease ran out and took the allocation")
        wait_until(lambda: session.closed, "the stream said the session closed")
        assert session.close_reason == "expired"
        assert alloc.state == "expired"
        session.close()  # nothing left to close: no error
    with (
        Client(shared_daemon.url, admin_key=shared_daemon.admin_key) as admin,
        pytest.raises(NotFound),
    ):
        admin.session_info(session.id)
