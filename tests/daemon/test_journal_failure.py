"""A journal that stops committing (a full disk, an I/O error): every change in flight and every
request after is a 503 problem with `Connection: close`, never a 500; nothing uncommitted is
read back; the cause is logged once and the daemon is told to stop."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from debugregd.api.context import DaemonApp
from debugregd.store.journal import Batch
from tests.daemon.asgi import app, call, runtime

__all__ = ["app"]

BODY = (
    b'{"scope":{"kind":"task","tid":7},"address":"0x7ffd1000","length":8,"access":"write",'
    b'"label":"failure"}'
)


async def test_after_a_failed_commit_every_request_is_a_503_and_the_cause_is_logged_once(
    app: DaemonApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201
    rt = runtime(app)
    stopped: list[bool] = []
    rt.on_fatal = lambda: stopped.append(True)  # instead of SIGTERM to this test process

    def full(batch: Batch) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(rt.journal, "write", full)
    token = session["token"]
    requests = [
        ("POST", "/v1/allocations", BODY),  # the change that meets the full disk
        ("POST", "/v1/allocations", BODY),  # and those after it
        ("POST", f"/v1/sessions/{session['id']}/keepalive", b""),
        ("GET", "/v1/allocations", b""),  # nothing uncommitted is read back
        ("GET", "/healthz", b""),
    ]
    with caplog.at_level(logging.INFO, logger="debugregd"):
        for method, path, body in requests:
            status, problem, sent = await call(app, method, path, body, token)
            assert status == 503, (path, problem)
            assert problem["type"] == "/problems/journal-failed"
            start = next(m for m in sent if m["type"] == "http.response.start")
            assert (b"connection", b"close") in start["headers"]
    assert stopped == [True]
    causes = [r for r in caplog.records if "disk is full" in r.getMessage()]
    assert len(causes) == 1 and causes[0].levelno == logging.CRITICAL
    assert "SQLITE_FULL" in causes[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert not any(c["op"] == "allocate" for _, c in rt.journal.commands_after(0))
