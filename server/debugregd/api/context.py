"""What every route needs: the runtime, the settings and the caller's identity."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import NamedTuple

from fastapi import FastAPI, Request
from starlette.types import Receive, Scope, Send

from debugregd.api import commit, inputs
from debugregd.api.errors import CALLER, Problem, journal_failed, unauthorized
from debugregd.api.hosts import ANY_NAME, HostAllowlist, host_header
from debugregd.config import Settings
from debugregd.core import Arbiter, Forbidden, Session
from debugregd.runtime import Runtime

COOKIE = "debugregd_admin"
COOKIE_TTL_S = 12 * 3600


@dataclass
class Daemon:
    """The objects one daemon process owns, hung on the app (`DaemonApp.daemon`)."""

    settings: Settings
    admin_key: str
    runtime: Runtime | None = None
    stopping: bool = False  # shutdown has begun: /healthz says so

    def __post_init__(self) -> None:
        self.admin_key_bytes = self.admin_key.encode()
        self.hosts = HostAllowlist.for_bind(self.settings.host, self.settings.allowed_hosts)

    @property
    def rt(self) -> Runtime:
        if self.runtime is None:
            raise Problem(503, "starting", "Starting", "the daemon is still starting; retry")
        return self.runtime

    @property
    def arbiter(self) -> Arbiter:
        return self.rt.arbiter

    def cookie_for(self, issued: int) -> str:
        """A dashboard cookie: stateless, so it survives restarts while the key is unchanged."""
        mac = hmac.new(self.admin_key.encode(), f"dashboard:{issued}".encode(), hashlib.sha256)
        return f"{issued}.{mac.hexdigest()}"

    def cookie_valid(self, value: str, now: float) -> bool:
        """Whether `value` is a dashboard cookie this key issued less than COOKIE_TTL_S ago;
        a 400 problem when it is not even shaped like one."""
        issued_text, _, _ = value.partition(".")
        issued = inputs.number(issued_text, f"the time in the {COOKIE} cookie (sign in again)")
        if now - issued > COOKIE_TTL_S:
            return False
        return hmac.compare_digest(value, self.cookie_for(issued))


class DaemonApp(FastAPI):
    """The daemon's FastAPI app. Routes find the daemon as a plain attribute (cheaper on every
    request than Starlette's `app.state`, a `__getattr__` in Python), and a response waits here,
    at the edge, until what it may show is committed (`commit.answer_after_commit`)."""

    daemon: Daemon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = self.daemon.hosts
            host = host_header(scope["headers"])
            if not hosts.allows(host) and scope["path"] not in ANY_NAME:
                assert host is not None
                await hosts.refusal(host)(scope, receive, send)
                return
            runtime = self.daemon.runtime
            if runtime is not None and runtime.failed is not None:
                await journal_failed()(scope, receive, send)
                return
            await commit.answer_after_commit(super().__call__, scope, receive, send, runtime)
        else:
            await super().__call__(scope, receive, send)


class Caller(NamedTuple):
    """Who is asking: the admin, a session, or nobody in particular."""

    admin: bool = False
    session: Session | None = None

    def sees_kernel(self) -> bool:
        return self.admin or (self.session is not None and self.session.allow_kernel)

    def owns(self, session_id: str | None) -> bool:
        """Whether the caller may see what session `session_id` holds: its own, or the admin
        everything. (What a session may change, the core decides.)"""
        return self.admin or (session_id is not None and session_id == self.session_id)

    @property
    def session_id(self) -> str | None:
        return None if self.session is None else self.session.id


ADMIN = Caller(admin=True)
ANYONE = Caller()


def daemon_of(request: Request) -> Daemon:
    """The daemon serving this request."""
    d: Daemon = request.scope["app"].daemon
    return d


def caller_of(request: Request) -> Caller:
    """Who is asking, from the bearer token or the dashboard cookie; anyone when neither.
    Noted in the request's scope, where the error mapping reads who an answer is for."""
    who = _identify(request)
    request.scope[CALLER] = who
    return who


def _identify(request: Request) -> Caller:
    d: Daemon = request.scope["app"].daemon
    header = inputs.header(request, b"authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("use 'Authorization: Bearer <admin key or session token>'")
        if hmac.compare_digest(token.encode(), d.admin_key_bytes):
            return ADMIN
        session = d.rt.session_of_token(token)
        if session is None:
            raise unauthorized(
                "unknown token, or its session was closed or expired; open a new session"
            )
        return Caller(session=session)
    cookie = request.cookies.get(COOKIE)
    if cookie and d.cookie_valid(cookie, time.time()):
        return ADMIN
    return ANYONE


def admin_of(request: Request) -> Caller:
    """The caller, who must hold the admin key."""
    who = caller_of(request)
    if not who.admin:
        raise unauthorized("this needs the admin key: 'Authorization: Bearer <admin key>'")
    return who


def session_of(request: Request) -> Caller:
    """The caller, who must hold a session token or the admin key."""
    who = caller_of(request)
    if who.session is None and not who.admin:
        raise unauthorized("this needs a session token: open one with POST /v1/sessions")
    return who


def owner_of(request: Request, session_id: str) -> Caller:
    """The caller, who must be session `session_id` itself or the admin."""
    who = session_of(request)
    if not who.owns(session_id):
        raise Forbidden(f"this token belongs to session {who.session_id}, not {session_id}")
    return who
