"""`Idempotency-Key`: a retried POST returns the first answer and changes nothing twice.

Keys are scoped by who asks: the admin, or a session by its id. A caller without a credential
has no identity to scope by (on loopback every local user is 127.0.0.1, and a retry comes over a
new connection from a new port), so its key is not honoured: two such callers could otherwise
be handed one answer. The journal keeps what a route allows at rest (`at_rest`); a retry's
answer is rebuilt from it (`replayed`), so a session token never has to be stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from debugregd import wire
from debugregd.api.context import Caller, daemon_of
from debugregd.api.errors import Problem
from debugregd.api.inputs import HEADER_MAX
from debugregd.api.responses import Json

# The first answer (its status and body), from a change made with `commit.change`.
Produce = Callable[[], tuple[int, dict[str, Any]]]
# What the journal keeps of an answer; a retry's answer, rebuilt from that.
Convert = Callable[[dict[str, Any]], dict[str, Any]]


def _same(answer: dict[str, Any]) -> dict[str, Any]:
    return answer


def fingerprint(body: BaseModel) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _scope(who: Caller, path: str, key: str) -> str | None:
    """Where `who`'s key lives; None for a caller with no credential, whose keys are ignored."""
    identity = "admin" if who.admin else who.session_id
    return None if identity is None else f"{identity}:{path}:{key}"


def respond(
    request: Request,
    who: Caller,
    path: str,
    key: str | None,
    body: BaseModel,
    produce: Produce,
    *,
    at_rest: Convert = _same,
    replayed: Convert = _same,
) -> Json:
    """Run `produce` once per key and caller; `at_rest(answer)` is journaled with the change
    itself, and the answer sent once that is committed. A retry gets `replayed(stored)`, once
    the first request's change is committed (`commit`: a response shows only committed state).

    A key reused with a different `body` is a 409 (it conflicts with the request the key
    already stands for), so a key can never hand one request's answer to a different request.
    """
    if key is not None and len(key) > HEADER_MAX:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            f"Idempotency-Key is at most {HEADER_MAX} characters",
        )
    scoped = None if key is None else _scope(who, path, key)
    if scoped is None:
        status, answer = produce()
        return Json(answer, status_code=status)
    print_ = fingerprint(body)
    rt = daemon_of(request).rt
    stored = rt.idempotency.get(scoped)
    if stored is not None:
        first = json.loads(stored[1])
        if first["fingerprint"] != print_:
            raise Problem(
                409,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request body; use a new "
                "key for a new request",
            )
        answer = replayed(first["response"])
        return Json(answer, status_code=stored[0], headers={"Idempotent-Replayed": "true"})
    status, answer = produce()
    record = {"fingerprint": print_, "response": at_rest(answer)}
    rt.remember(scoped, status, wire.dumps(record))
    return Json(answer, status_code=status)
