"""`Idempotency-Key`: a retried POST returns the first answer and changes nothing twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from debugregd.api.context import Caller, Daemon
from debugregd.api.errors import Problem

Produce = Callable[[], tuple[int, dict[str, Any], asyncio.Future[None]]]


def _scope(who: Caller, path: str, key: str) -> str:
    identity = "admin" if who.admin else (who.session_id or "anonymous")
    return f"{identity}:{path}:{key}"


async def respond(
    d: Daemon, who: Caller, path: str, key: str | None, produce: Produce
) -> JSONResponse:
    """Run `produce` once per key; its status and body are journaled with the change itself."""
    if key is None:
        status, body, committed = produce()
        await committed
        return JSONResponse(body, status_code=status)
    if len(key) > 200:
        raise Problem(
            422, "invalid-request", "Invalid request", "Idempotency-Key is at most 200 characters"
        )
    scoped = _scope(who, path, key)
    rt = d.rt
    stored = rt.idempotency.get(scoped)
    if stored is not None:
        await rt.barrier()  # the first request's change may still be committing
        return JSONResponse(
            json.loads(stored[1]), status_code=stored[0], headers={"Idempotent-Replayed": "true"}
        )
    status, body, committed = produce()
    rt.remember(scoped, status, json.dumps(body, separators=(",", ":")))
    await committed
    return JSONResponse(body, status_code=status)
