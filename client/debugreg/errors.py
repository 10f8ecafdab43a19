"""Typed errors: every failed call raises one, carrying the daemon's RFC 9457 problem.

The mapping from an HTTP answer to an exception lives here once (`from_reply`), so the sync and
async clients, and the CLI's exit codes, agree on what each failure is.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from debugreg.schema import Blocker, Problem


class DebugregError(Exception):
    """Base of every client error; `.problem` says what was wrong (status, title, detail)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"{problem.title}: {problem.detail}")
        self.problem = problem

    @property
    def status(self) -> int:
        """The HTTP status, or 0 when the daemon gave no answer at all."""
        return self.problem.status

    @property
    def detail(self) -> str:
        return self.problem.detail


class InvalidRequest(DebugregError):
    """400/413/422: the request is malformed or cannot be satisfied as written; `.errors` lists
    the fields at fault when the daemon (or local validation) named them."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.problem.errors or []


class Unauthorized(DebugregError):
    """401: no credential, an unknown one, or the token of a closed or expired session."""


class Forbidden(DebugregError):
    """403: the credential is valid but lacks the ownership or grant the call needs."""


class NotFound(DebugregError):
    """404: no such session, allocation or task (or it left the daemon's bounded history)."""


class Conflict(DebugregError):
    """409: the operation is not allowed in the current state."""


class LimitReached(Conflict):
    """429: a per-session limit (live or waiting allocations, open streams) is reached; the
    problem's `limit` and `maximum` say which. Let something go first."""


class Refused(Conflict):
    """409: the allocation does not fit; `.blockers` names the holders that could not be
    evicted (equal or higher priority, or non-evictable)."""

    @property
    def blockers(self) -> list[Blocker]:
        return self.problem.blockers or []


class ServerError(DebugregError):
    """5xx: the daemon failed or is still starting."""


class Unreachable(DebugregError):
    """No HTTP answer: connection refused, reset or timed out (`.status` is 0)."""


_BY_STATUS: dict[int, type[DebugregError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    429: LimitReached,
    422: InvalidRequest,
}


def problem_of(status: int, content: bytes) -> Problem:
    """The problem a failed answer carries; a body that is not problem+json becomes one."""
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        try:
            return Problem.model_validate(data)
        except ValidationError:
            pass
    text = content.decode("utf-8", "replace").strip()[:300]
    return Problem(
        type="about:blank",
        title=f"HTTP {status}",
        status=status,
        detail=text or f"the daemon answered {status} without a problem body",
    )


def from_reply(status: int, content: bytes) -> DebugregError:
    """The typed error for a non-2xx answer."""
    problem = problem_of(status, content)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else DebugregError
    if cls is Conflict and (problem.blockers is not None or problem.type.endswith("refused")):
        cls = Refused
    return cls(problem)


def unreachable(url: str, exc: BaseException) -> Unreachable:
    """The daemon could not be reached at all."""
    reason = str(exc) or type(exc).__name__
    return Unreachable(
        Problem(
            type="about:blank",
            title="Daemon unreachable",
            status=0,
            detail=f"no answer from {url}: {reason}",
        )
    )


def invalid_tls(detail: str) -> InvalidRequest:
    """TLS settings the client cannot use (a CA bundle or certificate it cannot read), rejected
    before anything is sent, like an invalid request (422)."""
    return InvalidRequest(
        Problem(type="about:blank", title="Invalid TLS setting", status=422, detail=detail)
    )


def invalid_locally(exc: ValidationError) -> InvalidRequest:
    """A request the client already knows is invalid, reported as the daemon would (422)."""
    errors = [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "body",
            "message": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return InvalidRequest(
        Problem(
            type="about:blank",
            title="Invalid request",
            status=422,
            detail=f"fix these fields: {summary}",
            errors=errors,
        )
    )
