"""Sessions: leases with a TTL, a secret token, and a stream of their own notices."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from debugreg import schema
from debugregd.api import idempotency, inputs
from debugregd.api.commit import change
from debugregd.api.context import Daemon, caller_of, daemon_of, owner_of, session_of
from debugregd.api.document import problems
from debugregd.api.errors import Problem
from debugregd.api.responses import Json
from debugregd.core import Forbidden, Priority, parse_priority
from debugregd.runtime import token_digest

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

RETRY = (
    "honoured with the admin key or a session token: a retry returns the same session with a "
    "new token, which revokes the first (409 once the session closed); ignored without a "
    "credential, when a retry opens another session and the unanswered one expires"
)


def issue_token(d: Daemon, session_id: str) -> str:
    """A new token for an open session; it replaces any earlier one once committed."""
    # The prefix makes tokens recognisable to secret scanners and never starts with "-".
    token = "drt_" + secrets.token_urlsafe(32)
    d.rt.add_token(session_id, token_digest(token))
    return token


def without_token(answer: dict[str, Any]) -> dict[str, Any]:
    """What the journal keeps of a session-open answer: everything but the secret."""
    return {k: v for k, v in answer.items() if k != "token"}


@router.post(
    "",
    status_code=201,
    response_model=schema.Session,
    responses=problems(401, 403, 409, 422),
    summary="Open a session (a lease); grants above the defaults need the admin key",
)
async def open_session(
    body: schema.SessionRequest,
    request: Request,
    idempotency_key: Annotated[
        str | None, Header(description=RETRY, max_length=inputs.HEADER_MAX)
    ] = None,
) -> Json:
    d, who = daemon_of(request), caller_of(request)
    top = (
        parse_priority(body.max_priority) if body.max_priority is not None else int(Priority.NORMAL)
    )
    wants = top > Priority.NORMAL or bool(body.allow_non_evictable) or bool(body.allow_kernel)
    if wants and not who.admin:
        raise Forbidden(
            "max_priority above normal, allow_non_evictable and allow_kernel are grants that only "
            "the admin key can give; send 'Authorization: Bearer <admin key>'"
        )

    def produce() -> tuple[int, dict[str, Any]]:
        session = change(
            request,
            {
                "op": "open_session",
                "name": body.name,
                "ttl_s": body.ttl_s,
                "max_priority": top,
                "allow_non_evictable": bool(body.allow_non_evictable),
                "allow_kernel": bool(body.allow_kernel),
            },
        )
        token = issue_token(d, session.id)
        out = {
            "id": session.id,
            "name": session.name,
            "token": token,
            "ttl_s": session.ttl_s,
            "expires_at": session.expires_at,
            "max_priority": session.max_priority,
            "allow_non_evictable": session.allow_non_evictable,
            "allow_kernel": session.allow_kernel,
        }
        return 201, out

    def reissue(first: dict[str, Any]) -> dict[str, Any]:
        # The journal holds no token to send again, and the first answer may never have
        # arrived: a retry gets the same session with a new token, which revokes the first.
        session_id = first["id"]
        if session_id not in d.arbiter.sessions:
            raise Problem(
                409,
                "session-closed",
                "Session closed",
                f"the session this Idempotency-Key opened ({session_id}) was closed or expired; "
                "open a new session with a new key",
            )
        change(request, {"op": "issue_token", "session": session_id})
        return {**first, "token": issue_token(d, session_id)}

    return idempotency.respond(
        request,
        who,
        "/v1/sessions",
        idempotency_key,
        body,
        produce,
        at_rest=without_token,
        replayed=reissue,
    )


@router.get(
    "",
    response_model=list[schema.SessionInfo],
    responses=problems(401),
    summary="Every open session (admin); a session token sees its own",
)
async def list_sessions(request: Request) -> list[dict[str, Any]]:
    d = daemon_of(request)
    who = session_of(request)
    if not who.admin:
        assert who.session is not None
        return [who.session.to_dict()]
    return [s.to_dict() for s in d.arbiter.sessions.values()]


@router.get(
    "/{session_id}",
    response_model=schema.SessionInfo,
    responses=problems(401, 403, 404),
    summary="One session (itself, or the admin)",
)
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    owner_of(request, session_id)
    return daemon_of(request).arbiter.session(session_id).to_dict()


@router.post(
    "/{session_id}/keepalive",
    response_model=schema.Keepalive,
    responses=problems(401, 403, 404),
    summary="Renew the lease for another TTL",
)
async def keepalive(session_id: str, request: Request) -> dict[str, float]:
    owner_of(request, session_id)
    session = change(request, {"op": "keepalive", "session": session_id})
    return {"expires_at": session.expires_at}


@router.delete(
    "/{session_id}",
    status_code=204,
    responses=problems(401, 403, 404),
    summary="Close the session and release everything it held",
)
async def close_session(session_id: str, request: Request) -> Response:
    owner_of(request, session_id)
    change(request, {"op": "close_session", "session": session_id})
    return Response(status_code=204)
