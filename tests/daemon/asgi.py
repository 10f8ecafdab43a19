"""One request at a time through the daemon's ASGI app, in process: no server, no sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from debugregd.api.app import create_app
from debugregd.api.context import DaemonApp
from debugregd.config import Settings
from debugregd.runtime import Runtime

Message = dict[str, Any]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[DaemonApp]:
    """The app with its lifespan running (journal in `tmp_path`, admin key 'admin')."""
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
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, Any, list[Message]]:
    """One request through the ASGI app: its status, its JSON body (None if none) and every
    message sent, each also given to `on_send` as it goes. The client goes once the response has
    started, which ends a stream."""
    sent_headers = [(b"content-type", b"application/json"), (b"host", b"127.0.0.1:8765")]
    if token is not None:
        sent_headers.append((b"authorization", f"Bearer {token}".encode()))
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
        "headers": [*sent_headers, *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8765),
    }
    sent: list[Message] = []
    started = asyncio.Event()
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        on_send(message)
        sent.append(message)
        if message["type"] == "http.response.start":
            started.set()

    async with asyncio.timeout(10):  # not wait_for: its task would start a loop tick later
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    is_json = b"json" in dict(start["headers"]).get(b"content-type", b"")
    return start["status"], json.loads(content) if content and is_json else None, sent
