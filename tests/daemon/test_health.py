"""`/healthz` says only ok or not: a 503 problem while the daemon stops or after its journal
failed, and never the journal's path or an event id."""

from __future__ import annotations

import sqlite3

from debugregd.api.context import DaemonApp
from tests.daemon.asgi import app, call, runtime

__all__ = ["app"]


async def test_healthz_is_ok_and_says_nothing_else(app: DaemonApp) -> None:
    status, body, _ = await call(app, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})


async def test_healthz_is_a_503_problem_once_the_daemon_is_stopping(app: DaemonApp) -> None:
    app.daemon.stopping = True
    status, body, sent = await call(app, "GET", "/healthz")
    assert status == 503
    assert body["type"] == "/problems/stopping"
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert (b"content-type", b"application/problem+json") in start["headers"]


async def test_healthz_is_a_503_problem_after_the_journal_failed(app: DaemonApp) -> None:
    runtime(app).failed = sqlite3.OperationalError("database or disk is full")
    status, body, _ = await call(app, "GET", "/healthz")
    assert status == 503
    assert body["type"] == "/problems/journal-failed"
    assert str(app.daemon.settings.state_dir) not in str(body)
    runtime(app).failed = None  # lets the lifespan close the journal as usual
