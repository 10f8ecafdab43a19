"""The one commit path (`api/commit.py`): a change is answered only once the journal holds it, a
response shows only committed state, and a failed commit answers 503 instead.

Two checks keep every route on that path, because each catches what the other cannot:
- behavioural: every route that changes state, with the journal's commits made to fail, answers
  503 rather than 2xx (every non-GET route must be listed as a change or as no change, and no GET
  stages anything). It catches a route that changes the arbiter without a journaled command, or
  stages it only after answering: the change a crash would lose.
- static: no API module but commit.py applies a command, stages, or waits for a commit. Since
  the edge holds any response while something is staged, a route that applied a command itself
  would still pass the behavioural check; this one keeps it to the single helper.
"""

from __future__ import annotations

import ast
import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

import debugregd.api
from debugreg import schema
from debugregd.api.allocations import core_request
from debugregd.api.app import create_app
from debugregd.api.context import DaemonApp
from debugregd.commands import Command
from debugregd.config import Settings
from debugregd.runtime import Runtime
from debugregd.store.journal import Batch
from tests.daemon.asgi import Message, call, runtime

ADMIN = "admin"
TID = 7  # the task of the allocation every case starts with
BODY = (
    b'{"scope":{"kind":"task","tid":7},"address":"0x7ffd1000","length":8,"access":"write",'
    b'"label":"commit"}'
)


def settings(state_dir: Path) -> Settings:
    # No watcher measures outside holders on its own: only the routes under test stage changes.
    return Settings(state_dir=state_dir, cpus=2, outside_interval_s=3600.0, outside_scan_s=0.0)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[DaemonApp]:
    daemon = create_app(settings(tmp_path), admin_key=ADMIN)
    async with daemon.router.lifespan_context(daemon):
        yield daemon


def journaled(app: DaemonApp, op: str) -> int:
    """How many `op` commands the journal holds."""
    return sum(1 for _, c in runtime(app).journal.commands_after(0) if c["op"] == op)


def fail_commits(app: DaemonApp, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make every commit from now on fail, as a full disk would; returns the list the runtime's
    call to stop the daemon appends to (this test process is not sent SIGTERM)."""
    rt = runtime(app)
    stopped: list[bool] = []
    rt.on_fatal = lambda: stopped.append(True)

    def fail(batch: Batch) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(rt.journal, "write", fail)
    return stopped


def assert_journal_failed(status: int, problem: Any, sent: list[Message]) -> None:
    assert (status, problem["type"]) == (503, "/problems/journal-failed"), problem
    assert [m["type"] for m in sent].count("http.response.start") == 1


def staged_by(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ops of the commands staged from now on."""
    ops: list[str] = []
    stage = rt.stage

    def spy(command: Command, events: Any = None) -> asyncio.Future[None]:
        ops.append(command["op"])
        return stage(command, events)

    monkeypatch.setattr(rt, "stage", spy)
    return ops


# -- a change is answered once committed


async def test_a_change_is_answered_only_once_the_journal_holds_it(app: DaemonApp) -> None:
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201
    token = session["token"]
    seen: dict[str, int] = {}

    def at_start(op: str) -> Callable[[Message], None]:
        def check(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen[op] = journaled(app, op)

        return check

    status, alloc, _ = await call(
        app, "POST", "/v1/allocations", BODY, token, on_send=at_start("allocate")
    )
    assert status == 201, alloc
    path = f"/v1/sessions/{session['id']}/keepalive"
    status, renewed, _ = await call(app, "POST", path, token=token, on_send=at_start("keepalive"))
    assert status == 200, renewed
    status, released, _ = await call(
        app, "DELETE", f"/v1/allocations/{alloc['id']}", token=token, on_send=at_start("release")
    )
    assert status == 200, released
    assert released["state"] == "released"
    assert seen == {"allocate": 1, "keepalive": 1, "release": 1}


async def test_a_failed_commit_answers_503_and_nothing_else(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201
    stopped = fail_commits(app, monkeypatch)
    status, problem, sent = await call(app, "POST", "/v1/allocations", BODY, session["token"])
    assert_journal_failed(status, problem, sent)
    assert "not made" in problem["detail"]
    assert stopped == [True]
    monkeypatch.undo()
    assert journaled(app, "allocate") == 0


# -- a response shows only committed state


async def open_and_stage_allocation(app: DaemonApp) -> tuple[str, str]:
    """A session, committed, and an allocation of it applied but not committed yet: the session's
    token and the allocation's id."""
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201
    request = core_request(schema.AllocationRequest.model_validate_json(BODY))
    alloc, _ = runtime(app).apply({"op": "allocate", "session": session["id"], "request": request})
    return session["token"], alloc.id


async def test_a_read_after_an_uncommitted_change_is_answered_only_once_it_commits(
    app: DaemonApp,
) -> None:
    token, alloc_id = await open_and_stage_allocation(app)
    at_start: list[int] = []

    def check(message: Message) -> None:
        if message["type"] == "http.response.start":
            at_start.append(journaled(app, "allocate"))

    status, alloc, _ = await call(
        app, "GET", f"/v1/allocations/{alloc_id}", token=token, on_send=check
    )
    assert (status, alloc["state"]) == (200, "installed")
    assert at_start == [1]


async def test_a_read_of_a_change_whose_commit_fails_answers_503(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, alloc_id = await open_and_stage_allocation(app)
    fail_commits(app, monkeypatch)
    status, problem, sent = await call(app, "GET", f"/v1/allocations/{alloc_id}", token=token)
    assert_journal_failed(status, problem, sent)


async def test_a_stream_of_an_uncommitted_session_answers_503_when_its_commit_fails(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, _ = runtime(app).apply(
        {
            "op": "open_session",
            "name": "s",
            "ttl_s": 60,
            "max_priority": 200,
            "allow_non_evictable": False,
            "allow_kernel": False,
        }
    )
    fail_commits(app, monkeypatch)
    status, problem, sent = await call(app, "GET", f"/v1/sessions/{session.id}/events", token=ADMIN)
    assert_journal_failed(status, problem, sent)


async def test_a_read_with_nothing_staged_is_answered_without_waiting(app: DaemonApp) -> None:
    await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert runtime(app).uncommitted() is None
    turned: list[bool] = []
    started_in: list[list[bool]] = []
    asyncio.get_running_loop().call_soon(turned.append, True)  # runs once the loop turns

    def check(message: Message) -> None:
        if message["type"] == "http.response.start":
            started_in.append(list(turned))

    status, _, _ = await call(app, "GET", "/v1/sessions", token=ADMIN, on_send=check)
    assert status == 200
    assert started_in == [[]]  # answered before the loop turned: it waited for nothing


# -- every route that changes state is on the commit path


@dataclass
class Setup:
    """What every case starts from, all committed: a session, its allocation on task TID, and
    a simulated user outside debugregd holding a register on CPU 1 (not measured yet)."""

    token: str
    session: str
    allocation: str
    injected: str

    def path(self, template: str) -> str:
        return template.format(
            allocation_id=self.allocation,
            session_id=self.session,
            injected_id=self.injected,
            tid=TID,
            cpu=0,
        )


async def set_up(app: DaemonApp) -> Setup:
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201, session
    status, alloc, _ = await call(app, "POST", "/v1/allocations", BODY, session["token"])
    assert status == 201, alloc
    outside = b'{"scope":{"kind":"cpu","cpu":1},"registers":1}'
    status, injected, _ = await call(app, "POST", "/v1/sim/outside", outside, ADMIN)
    assert status == 201, injected
    await runtime(app).barrier()
    return Setup(session["token"], session["id"], alloc["id"], injected["id"])


@dataclass
class Ask:
    """A request: "session" for the setup's token, else a literal credential (None: none)."""

    token: str | None = "session"
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


# Every route that changes state, asked so that it makes a change.
CHANGES: dict[tuple[str, str], Ask] = {
    ("POST", "/v1/allocations"): Ask(body=BODY.replace(b'"tid":7', b'"tid":8')),
    ("DELETE", "/v1/allocations/{allocation_id}"): Ask(),
    ("POST", "/v1/allocations/{allocation_id}/evict"): Ask(ADMIN, b"{}"),
    ("POST", "/v1/evictions"): Ask(ADMIN, b"{}"),
    ("POST", "/v1/sessions"): Ask(None, b'{"name":"t","ttl_s":60}'),
    ("POST", "/v1/sessions/{session_id}/keepalive"): Ask(),
    ("DELETE", "/v1/sessions/{session_id}"): Ask(),
    ("PUT", "/v1/tasks/{tid}/debugregs"): Ask(ADMIN, b'{"dr0":"0x7ffd2000","dr7":1}'),
    ("POST", "/v1/sim/accesses"): Ask(
        ADMIN, b'{"cpu":0,"tid":7,"address":"0x7ffd1000","access":"write"}'
    ),
    ("POST", "/v1/outside/measure"): Ask(ADMIN),
    ("POST", "/v1/sim/tasks/{tid}/exit"): Ask(ADMIN),
}
# Routes other than GET that change nothing the journal keeps, and why.
NO_CHANGE: dict[tuple[str, str], tuple[Ask, str]] = {
    ("POST", "/v1/auth/login"): (Ask(None, b'{"key":"admin"}'), "a stateless signed cookie"),
    ("POST", "/v1/auth/logout"): (Ask(None), "deletes the cookie in the browser"),
    ("POST", "/v1/sim/outside"): (
        Ask(ADMIN, b'{"scope":{"kind":"cpu","cpu":0},"registers":1}'),
        "the simulated kernel, outside debugregd, which learns of it by measuring",
    ),
    ("DELETE", "/v1/sim/outside/{injected_id}"): (Ask(ADMIN), "as POST /v1/sim/outside"),
}
# A retried session open (`Idempotency-Key`) issues a new token: a change of its own.
RETRIED_OPEN = Ask(ADMIN, b'{"name":"r","ttl_s":60}', ((b"idempotency-key", b"k1"),))


def routes() -> list[tuple[str, str]]:
    app = create_app(Settings(cpus=2), admin_key=ADMIN)
    return sorted(
        (method, route.path)
        for route in app.router.routes
        if isinstance(route, Route) and route.methods
        for method in route.methods
        if method != "HEAD"
    )


def test_every_route_other_than_get_is_known_to_change_state_or_not() -> None:
    others = {r for r in routes() if r[0] != "GET"}
    assert others - CHANGES.keys() - NO_CHANGE.keys() == set(), "add each to CHANGES or NO_CHANGE"
    assert (CHANGES.keys() | NO_CHANGE.keys()) - others == set()


async def ask(app: DaemonApp, setup: Setup, method: str, path: str, asked: Ask) -> Any:
    token = setup.token if asked.token == "session" else asked.token
    return await call(app, method, setup.path(path), asked.body, token, headers=asked.headers)


@pytest.mark.parametrize(("method", "path"), sorted(CHANGES))
async def test_a_change_whose_commit_fails_is_answered_503(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch, method: str, path: str
) -> None:
    setup = await set_up(app)
    staged = staged_by(runtime(app), monkeypatch)
    fail_commits(app, monkeypatch)
    assert_journal_failed(*await ask(app, setup, method, path, CHANGES[method, path]))
    assert staged, f"{method} {path} changed nothing: ask it differently"


async def test_a_retried_session_open_whose_commit_fails_is_answered_503(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = await set_up(app)
    status, first, _ = await ask(app, setup, "POST", "/v1/sessions", RETRIED_OPEN)
    assert status == 201, first
    await runtime(app).barrier()
    fail_commits(app, monkeypatch)
    assert_journal_failed(*await ask(app, setup, "POST", "/v1/sessions", RETRIED_OPEN))


@pytest.mark.parametrize(("method", "path"), sorted(NO_CHANGE))
async def test_a_route_that_changes_nothing_journaled_stages_nothing(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch, method: str, path: str
) -> None:
    setup = await set_up(app)
    staged = staged_by(runtime(app), monkeypatch)
    fail_commits(app, monkeypatch)
    status, answer, _ = await ask(app, setup, method, path, NO_CHANGE[method, path][0])
    assert 200 <= status < 300, answer
    assert staged == []


async def test_no_read_changes_state(app: DaemonApp, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = await set_up(app)
    staged = staged_by(runtime(app), monkeypatch)
    for method, path in routes():
        if method == "GET" and (method, path) not in CHANGES:
            status, answer, _ = await call(app, "GET", setup.path(path), token=ADMIN)
            assert status == 200, (path, answer)
            assert staged == [], f"GET {path} changes state: add it to CHANGES"


# What the API may call on the runtime only in commit.py: applying a command, staging one, or
# waiting for a commit.
COMMIT_CALLS = {"apply", "run", "stage", "barrier", "uncommitted", "_commit_soon"}


def test_only_commit_py_applies_commands_or_waits_for_commits() -> None:
    found = []
    for module in sorted(Path(debugregd.api.__file__).parent.glob("*.py")):
        if module.name == "commit.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr in COMMIT_CALLS:
                found.append(f"{module.name}:{node.lineno} .{called.attr}()")
            if isinstance(node, ast.Name | ast.Attribute) and "COMMITS" in ast.unparse(node):
                found.append(f"{module.name}:{node.lineno} COMMITS")
    assert found == [], "use commit.change(request, command)"
