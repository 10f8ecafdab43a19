"""A change's response waits for its commit at the edge of the app (`api/commit.py`): it is
sent only once the journal holds the change, and a failed commit answers 503 instead."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from debugregd.api.app import create_app
from debugregd.api.context import DaemonApp
from debugregd.config import Settings
from debugregd.runtime import Runtime
from debugregd.store.journal import Batch

Message = dict[str, Any]
BODY = (
    b'{"scope":{"kind":"task","tid":7},"address":"0x7ffd1000","length":8,"access":"write",'
    b'"label":"commit"}'
)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[DaemonApp]:
    daemon = create_app(Settings(state_dir=tmp_path, cpus=2), admin_key="admin")
    async with daemon.router.lifespan_context(daemon):
        yield daemon


def runtime(app: DaemonApp) -> Runtime:
    assert app.daemon.runtime is not None
    return app.daemon.runtime


async def call(
    app: DaemonApp,
    method: str,
    path: str,
    body: bytes = b"",
    token: str | None = None,
    on_send: Callable[[Message], None] = lambda message: None,
) -> tuple[int, dict[str, Any], list[Message]]:
    """One request through the ASGI app: its status, its JSON body and every message sent."""
    headers = [(b"content-type", b"application/json"), (b"host", b"127.0.0.1:8765")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        on_send(message)
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(content), sent


def journaled(app: DaemonApp, op: str) -> int:
    """How many `op` commands the journal holds."""
    return sum(1 for _, c in runtime(app).journal.commands_after(0) if c["op"] == op)


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
    status, released, _ = await call(
        app, "DELETE", f"/v1/allocations/{alloc['id']}", token=token, on_send=at_start("release")
    )
    assert status == 200, released
    assert released["state"] == "released"
    assert seen == {"allocate": 1, "release": 1}


async def test_a_failed_commit_answers_503_and_nothing_else(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201
    rt = runtime(app)
    stopped: list[bool] = []
    rt.on_fatal = lambda: stopped.append(True)  # instead of SIGTERM to this test process

    def fail(batch: Batch) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(rt.journal, "write", fail)
    status, problem, sent = await call(app, "POST", "/v1/allocations", BODY, session["token"])
    assert status == 503
    assert problem["type"] == "/problems/journal-failed"
    assert "not made" in problem["detail"]
    assert [m["type"] for m in sent].count("http.response.start") == 1
    assert stopped == [True]
    monkeypatch.undo()
    assert journaled(app, "allocate") == 0
