"""The synchronous client: `api` calls sent with httpx, sessions kept alive and followed by threads.

Only the waiting lives here (blocking sockets, `threading`); what to send and how to read it is
`api`, what the events mean and who hears them is `events`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, Unpack

import httpx
from httpx_sse import EventSource, SSEError

from debugreg import api, schema
from debugreg.api import Call, Reply, StreamInterrupted
from debugreg.errors import (
    DebugregError,
    NotFound,
    ServerError,
    Unauthorized,
    Unreachable,
    invalid_tls,
    unreachable,
)
from debugreg.events import Backoff, Feed, Handler, Notice, Tracked
from debugreg.handles import (
    AllocationHandle,
    SessionHandle,
    SessionOptions,
    allocation_request,
    session_arguments,
)
from debugreg.tls import StrPath, TLSSettings

T = TypeVar("T")
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)
log = logging.getLogger("debugreg")

DEFAULT_URL = "http://127.0.0.1:8765"
CLOSE_WAIT_S = 2.0  # how long close() lets the stream deliver the session's last events

# Failures after which a stream reconnects (with backoff) instead of giving up.
RECONNECT_ERRORS = (httpx.TransportError, httpx.StreamError, SSEError, ServerError, Unreachable)


class ClientBase(ABC, Generic[TransportT]):
    """Where the daemon is, how to trust it, which credentials to show, and how patiently to
    retry: what `Client` and `AsyncClient` share, taken by both as the same arguments."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        admin_key: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: Backoff | None = None,
        stream_timeout: float = 60.0,
        transport: TransportT | None = None,
        ca: StrPath | None = None,
        cert: StrPath | None = None,
        key: StrPath | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff()
        self.stream_timeout = stream_timeout
        self.tls = TLSSettings.resolve(ca, cert, key)
        self._connect(transport)

    @abstractmethod
    def _connect(self, transport: TransportT | None) -> None:
        """Make the httpx client this client waits on (through `transport`, if given)."""

    def _verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for this daemon: the TLS settings' context for an https:// URL
        (files are read only then, so a stale DEBUGREG_CA cannot break a plain-HTTP daemon)."""
        if not self.url.lower().startswith("https://"):
            return True
        try:
            return self.tls.context()
        except ValueError as exc:
            raise invalid_tls(f"cannot use the TLS settings for {self.url}: {exc}") from None

    @property
    def _admin(self) -> str | None:
        """The credential for admin calls (the daemon answers 401/403 if it is not enough)."""
        return self.admin_key or self.token

    @property
    def _own(self) -> str | None:
        """The credential for calls a session makes about its own things."""
        return self.token or self.admin_key

    def _stream_timeout(self) -> httpx.Timeout:
        # The read timeout spans heartbeats (every 15 s by default): a silent peer is dead.
        return httpx.Timeout(self.timeout, read=self.stream_timeout)

    def _events(self, session: str | None) -> api.Stream:
        """The stream `events()` follows: `session`'s, else every event (admin)."""
        if session is not None:
            return api.session_events(session, self._own)
        return api.all_events(self._admin)


def reply_of(response: httpx.Response) -> Reply:
    """An httpx answer, read, as the plain values `api` parses."""
    return Reply(response.status_code, response.content)


class Allocation(AllocationHandle):
    """An allocation you hold; `release()` ends it. Never an integer: this is the handle."""

    # The sync twin of aio.AsyncAllocation: the same calls, waited for by blocking.

    def __init__(
        self,
        client: Client,
        tracked: Tracked,
        token: str | None,
        session: Session | None = None,
    ) -> None:
        if session is None:
            super().__init__(tracked, contextlib.nullcontext(), token, None)
        else:
            super().__init__(tracked, session._guard, token, session._dispatcher)
        self._client = client

    def release(self) -> schema.Allocation:
        """Release it (idempotent); returns the final record."""
        return self._settle(self._client._run(api.release(self.id, self._token)))

    def refresh(self) -> schema.Allocation:
        """Read the record again from the daemon."""
        return self._settle(self._client._run(api.allocation(self.id, self._token)))


class Session(SessionHandle):
    """A session (a lease) as a context manager: opens on enter, keeps itself alive from a
    thread every third of its TTL, follows its event stream from another thread (reconnecting
    and resuming by itself), and closes on exit, releasing everything it held."""

    # The sync twin of aio.AsyncSession, method for method: only the waiting differs (threads
    # and blocking calls here, tasks and awaits there); what they decide is `SessionHandle`'s.

    def __init__(
        self,
        client: Client,
        request: schema.SessionRequest,
        handlers: Mapping[str, Handler],
        *,
        keepalive: bool = True,
    ) -> None:
        # Reentrant: a handler runs under it and may itself allocate or release.
        super().__init__(request, handlers, keepalive=keepalive, guard=threading.RLock())
        self._client = client
        self._stop_keepalive = threading.Event()
        self._stop_listening = threading.Event()
        self._interrupt = _Interrupt()
        self._keeper: threading.Thread | None = None
        self._listener: threading.Thread | None = None

    def open(self) -> Session:
        """Open the lease and start the keepalive and event threads (enter does this)."""
        if self.opened is not None:
            return self
        opened = self._client._run(api.open_session(self.request, self._client.admin_key))
        self._started(opened, self._client._run(api.session_baseline(opened.id, opened.token)))
        self._client._sessions.add(self)
        self._listener = threading.Thread(
            target=self._listen, name=f"debugreg-events-{self.id}", daemon=True
        )
        self._listener.start()
        if self._keepalive:
            self._keeper = threading.Thread(
                target=self._keep_alive, name=f"debugreg-keepalive-{self.id}", daemon=True
            )
            self._keeper.start()
        return self

    def allocate(
        self,
        request: schema.AllocationRequest | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Allocation:
        """Request debug registers (an `AllocationRequest` or its fields as keywords).

        Returns the handle, installed or waiting; raises `Refused` (with `.blockers`) when it
        does not fit and `wait` is false. The handler keywords (`Handlers`: `on_evicted`,
        `on_moved`, `on_reinstalled`, `on_hit`, `on_expired`) hear this allocation's events.
        """
        call, handlers = self._allocation(request, idempotency_key, fields)
        record = self._client._run(call)
        with self._guard:
            tracked, notices = self._dispatcher.track(record, handlers)
            _deliver(notices)
        return Allocation(self._client, tracked, self.token, self)

    def allocations(self) -> list[Allocation]:
        """Handles for this session's live allocations (also those made by another process
        with the same token)."""
        listing = self._client._run(api.allocations(self.token, session=self.id))
        out = []
        with self._guard:
            for record in listing.allocations:
                tracked, notices = self._dispatcher.track(record)
                _deliver(notices)
                out.append(Allocation(self._client, tracked, self.token, self))
        return out

    def keepalive(self) -> float:
        """Renew the lease now; returns the new expiry (Unix seconds)."""
        keepalive = self._client._run(api.keepalive(self.id, self.token))
        self._kept(keepalive)
        return keepalive.expires_at

    def info(self) -> schema.SessionInfo:
        """The session as the daemon sees it."""
        return self._client._run(api.session_info(self.id, self.token))

    def close(self) -> None:
        """Close the session (releasing all it holds) and stop its threads. Idempotent."""
        if not self._closing_now():
            return
        self._stop_keepalive.set()
        graceful = False
        try:
            if not self.closed:
                with contextlib.suppress(NotFound, Unauthorized):  # already expired or closed
                    self._client._run(api.close_session(self.id, self.token))
                    graceful = True
                self._ended("closed by the client")
        finally:
            self._stop(graceful)
            self._client._sessions.discard(self)

    def __enter__(self) -> Session:
        return self.open()

    # The sync twin of AsyncSession.__aexit__.
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # Do not let a failed close (daemon unreachable) hide the error that ended the block.
        with contextlib.suppress(DebugregError):
            self.close()

    def _stop(self, graceful: bool) -> None:
        listener = self._listener
        if listener is None or listener is threading.current_thread():
            self._stop_listening.set()
            return
        if graceful:
            # The stream carries `session_closed` right after the DELETE: let the handlers
            # hear everything up to it.
            listener.join(CLOSE_WAIT_S)
        self._stop_listening.set()
        self._interrupt.trigger()
        listener.join(CLOSE_WAIT_S)
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(CLOSE_WAIT_S)

    def _keep_alive(self) -> None:
        delay: float | None = self._keepalive_interval()
        while delay is not None and not self._stop_keepalive.wait(delay):
            try:
                delay = self._kept(self._client._run(api.keepalive(self.id, self.token), retries=0))
            except DebugregError as exc:
                delay = self._keepalive_failed(exc)

    def _listen(self) -> None:
        try:
            for event in self._client._follow(
                self._stream(), self._feed, self._stop_listening, self._interrupt
            ):
                with self._guard:
                    _deliver(self._dispatcher.route(event))
                if self._closed_by(event):
                    self._stop_keepalive.set()
                    return
        except DebugregError as exc:
            self._stream_refused(exc)
            self._stop_keepalive.set()
        except Exception:
            log.exception("event stream of session %s failed", self.id)


def _deliver(notices: list[Notice]) -> None:
    # The sync twin of aio._deliver, which also awaits what a handler returns.
    for handler, event in notices:
        try:
            handler(event)
        except Exception:
            # One failing handler must not stop the stream or the handlers after it.
            log.exception("handler %r failed on event %s (%s)", handler, event.id, event.type)


class _Interrupt:
    """Wakes a thread blocked reading a stream: closing a socket from another thread does not
    interrupt a blocked recv() on Linux, but shutting it down does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._triggered = False

    def attach(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock if isinstance(sock, socket.socket) else None
            if self._triggered:
                self._shutdown()

    def detach(self) -> None:
        with self._lock:
            self._socket = None

    def trigger(self) -> None:
        with self._lock:
            self._triggered = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)


class Client(ClientBase[httpx.BaseTransport]):
    """A synchronous debugregd client.

    `admin_key` authorizes admin calls and session grants; `token` acts as an existing session
    (e.g. one opened by `debugreg session open`). For an `https://` URL, `ca` is the CA bundle
    that signed the daemon's certificate (default: DEBUGREG_CA, else the system's) and `cert`
    and `key` the client certificate for mutual TLS (DEBUGREG_CERT, DEBUGREG_KEY). Use as a
    context manager, or call `close()`.
    """

    # The sync twin of aio.AsyncClient, method for method: only the waiting differs. What to
    # send and how to read the answer is `api`'s, written once for both.

    def _connect(self, transport: httpx.BaseTransport | None) -> None:
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout, transport=transport, verify=self._verify()
        )
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()

    # -- transport: the only place the sync client waits

    # The sync twin of AsyncClient._run: whether to retry and how to read the answer are the
    # call's (`api.Call`).

    def _run(self, call: Call[T], *, retries: int | None = None) -> T:
        limit = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.body, headers=call.headers
                )
            except httpx.TransportError as exc:
                if not call.retry(attempt, limit, None):
                    raise unreachable(self.url, exc) from exc
            else:
                reply = reply_of(response)
                if not call.retry(attempt, limit, reply.status):
                    return call.parse(reply)
            time.sleep(self.backoff.delay(attempt))
            attempt += 1

    # The sync twin of AsyncClient._follow, which stops by being cancelled instead of by `stop`;
    # what the stream's messages mean is the feed's (`events.Feed`).
    def _follow(
        self, stream: api.Stream, feed: Feed, stop: threading.Event, interrupt: _Interrupt
    ) -> Iterator[schema.Event]:
        """Events of `stream` after `feed`'s position, exactly once, until `stop` is set;
        reconnects with backoff and resumes with Last-Event-ID."""
        attempt = 0
        while not stop.is_set():
            try:
                with self._http.stream(
                    "GET",
                    stream.path,
                    headers=stream.headers(feed.last_event_id),
                    timeout=self._stream_timeout(),
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        raise api.stream_failure(reply_of(response))
                    attempt = 0
                    interrupt.attach(response)
                    for sse in EventSource(response).iter_sse():
                        if stop.is_set():
                            return
                        step = feed.receive(sse.id, sse.event, sse.data)
                        if step.reset is not None:
                            baseline = self._run(stream.baseline)
                            yield from feed.reconcile(step.reset, baseline)
                        else:
                            yield from step.events
            except (*RECONNECT_ERRORS, StreamInterrupted) as exc:
                log.debug("event stream %s interrupted: %s", stream.path, exc)
            finally:
                interrupt.detach()
            if stop.wait(self.backoff.delay(attempt)):
                return
            attempt += 1

    # -- lifecycle

    def close(self) -> None:
        """Close every session opened through this client, then the connections."""
        for session in list(self._sessions):
            with contextlib.suppress(DebugregError):
                session.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sessions: the sync twins of AsyncClient's

    def session(
        self,
        name: str,
        ttl_s: float = 30,
        *,
        keepalive: bool = True,
        **options: Unpack[SessionOptions],
    ) -> Session:
        """A session to open with `with`. Its keywords (`SessionOptions`) are grants, which
        need the admin key (`max_priority` above normal, `allow_non_evictable`,
        `allow_kernel`), and handlers (`Handlers`: `on_evicted`, `on_moved`, `on_reinstalled`,
        `on_hit`, `on_expired`) that hear every allocation of the session. `keepalive=False`
        lets the lease run out after `ttl_s`."""
        request, handlers = session_arguments(name, ttl_s, options)
        return Session(self, request, handlers, keepalive=keepalive)

    def open_session(
        self,
        name: str,
        ttl_s: float = 30,
        *,
        idempotency_key: str | None = None,
        **grants: Unpack[api.Grants],
    ) -> schema.Session:
        """Open a session and return it as data (id and token), without keeping it alive or
        following its events: for handing the token to another process. Grants as for
        `session()`."""
        request = api.session_request(name, ttl_s, grants)
        return self._run(api.open_session(request, self.admin_key, idempotency_key))

    def keepalive(self, session_id: str) -> schema.Keepalive:
        """Renew a session's lease (with its token or the admin key)."""
        return self._run(api.keepalive(session_id, self._own))

    def close_session(self, session_id: str) -> None:
        """Close a session, releasing everything it held."""
        self._run(api.close_session(session_id, self._own))

    def session_info(self, session_id: str) -> schema.SessionInfo:
        """A session as the daemon sees it (its token or the admin key)."""
        return self._run(api.session_info(session_id, self._own))

    # -- allocations: the sync twins of AsyncClient's

    def allocate(
        self,
        request: schema.AllocationRequest | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Allocation:
        """Allocate in the session whose `token` this client holds. The handle has no event
        stream (use `session()` for handlers)."""
        req = allocation_request(request, fields)
        record = self._run(api.allocate(req, self.token, idempotency_key))
        return Allocation(self, Tracked(record, followed=False), self.token)

    def allocations(
        self,
        *,
        state: schema.State | None = None,
        session: str | None = None,
        cpu: int | None = None,
        tid: int | None = None,
    ) -> list[schema.Allocation]:
        """Live allocations (or those in `state`): all with the admin key, own with a token."""
        call = api.allocations(self._own, state=state, session=session, cpu=cpu, tid=tid)
        return self._run(call).allocations

    def allocation(self, allocation_id: str) -> schema.Allocation:
        """One allocation's record (its owner or the admin key)."""
        return self._run(api.allocation(allocation_id, self._own))

    def release(self, allocation_id: str) -> schema.Allocation:
        """Release by id (owner or admin; idempotent). Prefer `Allocation.release()`."""
        return self._run(api.release(allocation_id, self._own))

    # -- admin: the sync twins of AsyncClient's

    def evict(self, allocation_id: str, reason: str = "evicted by admin") -> schema.Allocation:
        """Evict one allocation (admin)."""
        return self._run(api.evict(allocation_id, reason, self._admin))

    def evict_matching(
        self,
        *,
        cpu: int | None = None,
        tid: int | None = None,
        below_priority: int | str | None = None,
        reason: str = "evicted by admin",
    ) -> list[str]:
        """Evict every installed allocation matching all the filters given (admin)."""
        call = api.evict_matching(
            self._admin, cpu=cpu, tid=tid, below_priority=below_priority, reason=reason
        )
        return self._run(call).evicted

    def state(self) -> schema.Snapshot:
        """Everything, consistent with `.event_id` (admin)."""
        return self._run(api.state(self._admin))

    def health(self) -> schema.Health:
        """Whether the daemon serves (a 503 raises `ServerError`)."""
        return self._run(api.health())

    def host(self) -> schema.Host:
        """The host's profile, CPUs, pools and the users outside debugregd."""
        return self._run(api.host())

    def cpus(self) -> list[dict[str, Any]]:
        """Every CPU's register files, index by index (admin)."""
        return self._run(api.cpus(self._admin))

    def cpu(self, number: int) -> dict[str, Any]:
        """One CPU's register files, index by index (admin)."""
        return self._run(api.cpu(number, self._admin))

    def task(self, tid: int) -> dict[str, Any]:
        """A task's allocations and indices (admin)."""
        return self._run(api.task(tid, self._admin))

    def debugregs(self, tid: int) -> schema.DebugRegsState:
        """A task's DR0-DR3 and DR7 as last written (ptrace grant or admin)."""
        return self._run(api.debugregs(tid, self._own))

    def set_debugregs(
        self, tid: int, regs: schema.DebugRegs | None = None, /, **fields: Any
    ) -> schema.DebugRegsState:
        """Write DR0-DR3 and DR7 as ptrace would (all or nothing, at ptrace priority)."""
        return self._run(api.set_debugregs(tid, regs, self._own, **fields))

    def sim_access(
        self,
        cpu: int,
        address: int | str,
        length: int = 1,
        access: str = "write",
        *,
        tid: int | None = None,
        ip: int | str | None = None,
    ) -> list[str]:
        """Simulate a memory access (sim backend, admin), from instruction `ip`; returns the
        allocations hit."""
        call = api.sim_access(
            self._admin, cpu=cpu, address=address, length=length, access=access, tid=tid, ip=ip
        )
        return self._run(call).hits

    def events(
        self, since: int | None = None, *, session: str | None = None
    ) -> Iterator[schema.Event]:
        """Follow events live: every event with the admin key, or `session`'s with its token.

        `since` resumes after that event id; without it the current state is read first and
        the stream follows from there. After a `reset` the iterator yields the reset and then
        one `reconciled` event per change it finds in a fresh read of the state.
        """
        stream = self._events(session)
        feed = Feed(since)
        if since is None:
            feed.seed(self._run(stream.baseline))
        yield from self._follow(stream, feed, threading.Event(), _Interrupt())
