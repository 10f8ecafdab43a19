"""The one mapping from typed errors to RFC 9457 problem+json responses.

Routes raise `CoreError`s (from the arbiter) or `Problem`s (for HTTP-only conditions such as a
missing token); nothing else in the API layer knows about status codes of errors.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from debugregd import wire
from debugregd.api.responses import Json
from debugregd.core import errors as core
from debugregd.runtime import JournalFailed

log = logging.getLogger("debugregd.api")

PROBLEM = "application/problem+json"
CALLER = "debugregd.caller"  # the scope key where `context.caller_of` notes who asked
STATUS: dict[type[core.CoreError], int] = {
    core.InvalidRequest: 422,
    core.NotFound: 404,
    core.Forbidden: 403,
    core.InvalidTransition: 409,
    core.Refused: 409,
    core.KernelRefused: 409,  # the runtime records and retries these; one that escapes is a refusal
    core.LimitReached: 429,
    core.Unavailable: 503,
}


class Problem(Exception):
    """An HTTP-level problem (authentication, idempotency conflicts, unavailable)."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.headers = headers
        self.extra = extra


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Json:
    body = {"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail}
    body.update(extra)
    return Json(body, status_code=status, media_type=PROBLEM, headers=headers)


def journal_failed() -> Json:
    """The answer to every request once the journal could not commit: the daemon is stopping,
    and its state holds changes that were never journaled, so nothing is read from it either.
    `Connection: close`, so no client sends another request down a connection about to go."""
    return problem(
        503,
        "journal-failed",
        "Journal failed",
        "the journal could not commit, so this change was not made (nor any since its last "
        "commit); the daemon is stopping (its log says why), and a restart recovers everything "
        "committed before",
        {"Connection": "close"},
    )


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", "Unauthorized", detail, {"WWW-Authenticate": "Bearer"})


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    return {
        "field": ".".join(loc) or "body",
        "message": error.get("msg", ""),
        "type": error["type"],
    }


def _reader(request: Request) -> str | None:
    """Who reads this answer, as `context.caller_of` found (and noted): None for the admin,
    else a session id ("" for no session: whoever was not told apart sees the least)."""
    who = request.scope.get(CALLER)
    if who is None:
        return ""
    return None if who.admin else who.session_id or ""


async def _core(request: Request, exc: Exception) -> Json:
    assert isinstance(exc, core.CoreError)
    status = STATUS.get(type(exc), 422)
    extra = exc.extra
    if isinstance(exc, core.Refused):
        extra = {**extra, "blockers": wire.blockers_for(exc.blockers, _reader(request))}
    headers = {"Retry-After": "1"} if status == 503 else None
    if isinstance(exc, core.LimitReached) and exc.limit == "streams":
        # A stream whose client vanished without closing is noticed at its next heartbeat.
        heartbeat = request.scope["app"].daemon.settings.heartbeat_s
        headers = {"Retry-After": str(max(1, math.ceil(heartbeat)))}
    return problem(status, exc.kind, exc.title, exc.detail, headers, **extra)


async def _problem(request: Request, exc: Exception) -> Json:
    assert isinstance(exc, Problem)
    return problem(exc.status, exc.kind, exc.title, exc.detail, exc.headers, **exc.extra)


async def _validation(request: Request, exc: Exception) -> Json:
    assert isinstance(exc, RequestValidationError)
    errors = [_describe(e) for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(
            400,
            "malformed-json",
            "Malformed JSON",
            "the request body is not valid JSON",
            errors=errors,
        )
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem(
        422, "invalid-request", "Invalid request", f"fix these fields: {summary}", errors=errors
    )


def _allowed(request: Request) -> list[str]:
    """Every method some route answers on this path: Starlette's 405 names only those of the
    first route that matched the path, and each method of a path is a route of its own."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods.update(route.methods)
    return sorted(methods)


async def _http(request: Request, exc: Exception) -> Json:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    titles = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}
    hints = {404: f"no route {request.url.path}; see /docs for the API"}
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        allowed = _allowed(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        hints[405] = f"{request.url.path} answers {', '.join(allowed)}, not {request.method}"
    return problem(
        exc.status_code,
        titles.get(exc.status_code, "HTTP error").lower().replace(" ", "-"),
        titles.get(exc.status_code, "HTTP error"),
        hints.get(exc.status_code, detail),
        headers,
    )


async def _disconnected(request: Request, exc: Exception) -> Json:
    # The client went, or its request body was too late (connections.py): nobody reads this.
    return problem(400, "client-disconnected", "Client disconnected", "the request body was cut")


async def _journal_failed(request: Request, exc: Exception) -> Json:
    return journal_failed()


async def _unexpected(request: Request, exc: Exception) -> Json:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "internal", "Internal error", "the daemon failed; see its log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(core.CoreError, _core)
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(JournalFailed, _journal_failed)
    app.add_exception_handler(ClientDisconnect, _disconnected)
    app.add_exception_handler(Exception, _unexpected)
