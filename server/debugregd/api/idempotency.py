"""`Idempotency-Key`: a retried POST returns the first answer and changes nothing twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from debugregd import wire
from debugregd.api.commit import after_commit
from debugregd.api.context import Caller, daemon_of
from debugregd.api.errors import Problem
from debugregd.api.responses import Json

Produce = Callable[[], tuple[int, dict[str, Any], asyncio.Future[None]]]


def fingerprint(body: BaseModel) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _scope(who: Caller, path: str, key: str) -> str:
    identity = "admin" if who.admin else (who.session_id or "anonymous")
    return f"{identity}:{path}:{key}"


async def respond(
    request: Request, who: Caller, path: str, key: str | None, body: BaseModel, produce: Produce
) -> Json:
    """Run `produce` once per key; its status and body are journaled with the change itself,
    and sent once that is committed.

    A key reused with a different `body` is a 422, so a key can never hand one request's
    answer (a session token, say) to a different request.
    """
    if key is None:
        status, answer, committed = produce()
        after_commit(request, committed)
        return Json(answer, status_code=status)
    if len(key) > 200:
        raise Problem(
            422, "invalid-request", "Invalid request", "Idempotency-Key is at most 200 characters"
        )
    scoped = _scope(who, path, key)
    print_ = fingerprint(body)
    rt = daemon_of(request).rt
    stored = rt.idempotency.get(scoped)
    if stored is not None:
        first = json.loads(stored[1])
        if first["fingerprint"] != print_:
            raise Problem(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request body; use a new "
                "key for a new request",
            )
        await rt.barrier()  # the first request's change may still be committing
        return Json(
            first["response"], status_code=stored[0], headers={"Idempotent-Replayed": "true"}
        )
    status, answer, committed = produce()
    record = {"fingerprint": print_, "response": answer}
    rt.remember(scoped, status, wire.dumps(record))
    after_commit(request, committed)
    return Json(answer, status_code=status)
