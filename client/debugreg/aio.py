"""The asynchronous client: the same `api` calls and `events` logic as `Client`, awaited.

Sessions keep themselves alive and follow their stream from asyncio tasks. Handlers may be plain
functions or coroutine functions (their result is awaited).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx
from httpx_sse import EventSource

from debugreg import api, schema
from debugreg.api import Call, StreamInterrupted
from debugreg.client import CLOSE_WAIT_S, RECONNECT_ERRORS, ClientBase, reply_of
from debugreg.errors import DebugregError, NotFound, Unauthorized, unreachable
from debugreg.events import Feed, Handler, Notice, Tracked
from debugreg.handles import (
    AllocationHandle,
    SessionHandle,
    SessionOptions,
    allocation_request,
    session_arguments,
)

T = TypeVar("T")
log = logging.getLogger("debugreg")


class AsyncAllocation(AllocationHandle):
    """An allocation you hold; `await release()` ends it."""

    # The async twin of client.Allocation: the same calls, awaited.

    def __init__(
        self,
        client: AsyncClient,
        tracked: Tracked,
        token: str | None,
        session: AsyncSession | None = None,
    ) -> None:
        dispatcher = None if session is None else session._dispatcher
        super().__init__(tracked, contextlib.nullcontext(), token, dispatcher)
        self._client = client

    async def release(self) -> schema.Allocation:
        """Release it (idempotent); returns the final record."""
        return self._settle(await self._client._run(api.release(self.id, self._token)))

    async def refresh(self) -> schema.Allocation:
        """Read the record again from the daemon."""
        return self._settle(await self._client._run(api.allocation(self.id, self._token)))


class AsyncSession(SessionHandle):
    """A session as an async context manager: keepalive and the event stream run as tasks."""

    # The async twin of client.Session, method for method: only the waiting differs (tasks and
    # awaits here, threads and blocking calls there); what they decide is `SessionHandle`'s.

    def __init__(
        self,
        client: AsyncClient,
        request: schema.SessionRequest,
        handlers: Mapping[str, Handler],
        *,
        keepalive: bool = True,
    ) -> None:
        # One event loop: nothing to lock.
        super().__init__(request, handlers, keepalive=keepalive, guard=contextlib.nullcontext())
        self._client = client
        self._keeper: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    async def open(self) -> AsyncSession:
        """Open the lease and start the keepalive and event tasks (`async with` does this)."""
        if self.opened is not None:
            return self
        opened = await self._client._run(api.open_session(self.request, self._client.admin_key))
        baseline = await self._client._run(api.session_baseline(opened.id, opened.token))
        self._started(opened, baseline)
        self._client._sessions.add(self)
        self._listener = asyncio.create_task(self._listen(), name=f"debugreg-events-{self.id}")
        if self._keepalive:
            self._keeper = asyncio.create_task(
                self._keep_alive(), name=f"debugreg-keepalive-{self.id}"
            )
        return self

    async def allocate(
        self,
        request: schema.AllocationRequest | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AsyncAllocation:
        """Request debug registers; see `Session.allocate`."""
        call, handlers = self._allocation(request, idempotency_key, fields)
        record = await self._client._run(call)
        tracked, notices = self._dispatcher.track(record, handlers)
        await _deliver(notices)
        return AsyncAllocation(self._client, tracked, self.token, self)

    async def allocations(self) -> list[AsyncAllocation]:
        """Handles for this session's live allocations."""
        listing = await self._client._run(api.allocations(self.token, session=self.id))
        out = []
        for record in listing.allocations:
            tracked, notices = self._dispatcher.track(record)
            await _deliver(notices)
            out.append(AsyncAllocation(self._client, tracked, self.token, self))
        return out

    async def keepalive(self) -> float:
        """Renew the lease now; returns the new expiry (Unix seconds)."""
        keepalive = await self._client._run(api.keepalive(self.id, self.token))
        self._kept(keepalive)
        return keepalive.expires_at

    async def info(self) -> schema.SessionInfo:
        """The session as the daemon sees it."""
        return await self._client._run(api.session_info(self.id, self.token))

    async def close(self) -> None:
        """Close the session (releasing all it holds) and stop its tasks. Idempotent."""
        if not self._closing_now():
            return
        await _cancel(self._keeper)
        graceful = False
        try:
            if not self.closed:
                with contextlib.suppress(NotFound, Unauthorized):  # already expired or closed
                    await self._client._run(api.close_session(self.id, self.token))
                    graceful = True
                self._ended("closed by the client")
        finally:
            listener = self._listener
            if graceful and listener is not None and listener is not asyncio.current_task():
                # The stream carries `session_closed` right after the DELETE: let the handlers
                # hear everything up to it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(listener), CLOSE_WAIT_S)
            await _cancel(listener)
            self._client._sessions.discard(self)

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    # The async twin of Session.__exit__.
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        # Do not let a failed close (daemon unreachable) hide the error that ended the block.
        with contextlib.suppress(DebugregError):
            await self.close()

    async def _keep_alive(self) -> None:
        delay: float | None = self._keepalive_interval()
        while delay is not None:
            await asyncio.sleep(delay)
            try:
                delay = self._kept(
                    await self._client._run(api.keepalive(self.id, self.token), retries=0)
                )
            except DebugregError as exc:
                delay = self._keepalive_failed(exc)

    async def _listen(self) -> None:
        try:
            async for event in self._client._follow(self._stream(), self._feed):
                await _deliver(self._dispatcher.route(event))
                if self._closed_by(event):
                    if self._keeper is not asyncio.current_task():
                        await _cancel(self._keeper)
                    return
        except DebugregError as exc:
            self._stream_refused(exc)
            await _cancel(self._keeper)
        except Exception:
            log.exception("event stream of session %s failed", self.id)


async def _deliver(notices: list[Notice]) -> None:
    # The async twin of client._deliver: a handler may be a coroutine function.
    for handler, event in notices:
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # One failing handler must not stop the stream or the handlers after it.
            log.exception("handler %r failed on event %s (%s)", handler, event.id, event.type)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done() or task is asyncio.current_task():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class AsyncClient(ClientBase[httpx.AsyncBaseTransport]):
    """An asyncio debugregd client; the same calls (and TLS settings) as `Client`, awaited."""

    # The async twin of client.Client, method for method: only the waiting differs. What to
    # send and how to read the answer is `api`'s, written once for both.

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout, transport=transport, verify=self._verify()
        )
        self._sessions: weakref.WeakSet[AsyncSession] = weakref.WeakSet()

    # -- transport: the only place the async client waits

    # The async twin of Client._run: whether to retry and how to read the answer are the
    # call's (`api.Call`).

    async def _run(self, call: Call[T], *, retries: int | None = None) -> T:
        limit = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.body, headers=call.headers
                )
            except httpx.TransportError as exc:
                if not call.retry(attempt, limit, None):
                    raise unreachable(self.url, exc) from exc
            else:
                reply = reply_of(response)
                if not call.retry(attempt, limit, reply.status):
                    return call.parse(reply)
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1

    # The async twin of Client._follow, which stops when told to (`stop`) instead of by being
    # cancelled; what the stream's messages mean is the feed's (`events.Feed`).
    async def _follow(self, stream: api.Stream, feed: Feed) -> AsyncIterator[schema.Event]:
        """Events of `stream` after `feed`'s position, exactly once, until cancelled;
        reconnects with backoff and resumes with Last-Event-ID."""
        attempt = 0
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    stream.path,
                    headers=stream.headers(feed.last_event_id),
                    timeout=self._stream_timeout(),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise api.stream_failure(reply_of(response))
                    attempt = 0
                    async for sse in EventSource(response).aiter_sse():
                        step = feed.receive(sse.id, sse.event, sse.data)
                        if step.reset is not None:
                            baseline = await self._run(stream.baseline)
                            for event in feed.reconcile(step.reset, baseline):
                                yield event
                        else:
                            for event in step.events:
                                yield event
            except (*RECONNECT_ERRORS, StreamInterrupted) as exc:
                log.debug("event stream %s interrupted: %s", stream.path, exc)
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1

    # -- lifecycle

    async def aclose(self) -> None:
        """Close every session opened through this client, then the connections."""
        for session in list(self._sessions):
            with contextlib.suppress(DebugregError):
                await session.close()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sessions: the async twins of Client's

    def session(
        self,
        name: str,
        ttl_s: float = 30,
        *,
        keepalive: bool = True,
        **options: Unpack[SessionOptions],
    ) -> AsyncSession:
        """A session to open with `async with`; see `Client.session`."""
        request, handlers = session_arguments(name, ttl_s, options)
        return AsyncSession(self, request, handlers, keepalive=keepalive)

    async def open_session(
        self,
        name: str,
        ttl_s: float = 30,
        *,
        idempotency_key: str | None = None,
        **grants: Unpack[api.Grants],
    ) -> schema.Session:
        """Open a session and return it as data; see `Client.open_session`."""
        request = api.session_request(name, ttl_s, grants)
        return await self._run(api.open_session(request, self.admin_key, idempotency_key))

    async def keepalive(self, session_id: str) -> schema.Keepalive:
        """`Client.keepalive`, awaited."""
        return await self._run(api.keepalive(session_id, self._own))

    async def close_session(self, session_id: str) -> None:
        """`Client.close_session`, awaited."""
        await self._run(api.close_session(session_id, self._own))

    async def session_info(self, session_id: str) -> schema.SessionInfo:
        """`Client.session_info`, awaited."""
        return await self._run(api.session_info(session_id, self._own))

    # -- allocations: the async twins of Client's

    async def allocate(
        self,
        request: schema.AllocationRequest | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AsyncAllocation:
        """Allocate in the session whose `token` this client holds; see `Client.allocate`."""
        req = allocation_request(request, fields)
        record = await self._run(api.allocate(req, self.token, idempotency_key))
        return AsyncAllocation(self, Tracked(record, followed=False), self.token)

    async def allocations(
        self,
        *,
        state: schema.State | None = None,
        session: str | None = None,
        cpu: int | None = None,
        tid: int | None = None,
    ) -> list[schema.Allocation]:
        """`Client.allocations`, awaited."""
        call = api.allocations(self._own, state=state, session=session, cpu=cpu, tid=tid)
        return (await self._run(call)).allocations

    async def allocation(self, allocation_id: str) -> schema.Allocation:
        """`Client.allocation`, awaited."""
        return await self._run(api.allocation(allocation_id, self._own))

    async def release(self, allocation_id: str) -> schema.Allocation:
        """`Client.release`, awaited."""
        return await self._run(api.release(allocation_id, self._own))

    # -- admin: the async twins of Client's

    async def evict(
        self, allocation_id: str, reason: str = "evicted by admin"
    ) -> schema.Allocation:
        """`Client.evict`, awaited."""
        return await self._run(api.evict(allocation_id, reason, self._admin))

    async def evict_matching(
        self,
        *,
        cpu: int | None = None,
        tid: int | None = None,
        below_priority: int | str | None = None,
        reason: str = "evicted by admin",
    ) -> list[str]:
        """`Client.evict_matching`, awaited."""
        call = api.evict_matching(
            self._admin, cpu=cpu, tid=tid, below_priority=below_priority, reason=reason
        )
        return (await self._run(call)).evicted

    async def state(self) -> schema.Snapshot:
        """`Client.state`, awaited."""
        return await self._run(api.state(self._admin))

    async def health(self) -> schema.Health:
        """`Client.health`, awaited."""
        return await self._run(api.health())

    async def host(self) -> schema.Host:
        """`Client.host`, awaited."""
        return await self._run(api.host())

    async def cpus(self) -> list[dict[str, Any]]:
        """`Client.cpus`, awaited."""
        return await self._run(api.cpus(self._admin))

    async def cpu(self, number: int) -> dict[str, Any]:
        """`Client.cpu`, awaited."""
        return await self._run(api.cpu(number, self._admin))

    async def task(self, tid: int) -> dict[str, Any]:
        """`Client.task`, awaited."""
        return await self._run(api.task(tid, self._admin))

    async def debugregs(self, tid: int) -> schema.DebugRegsState:
        """`Client.debugregs`, awaited."""
        return await self._run(api.debugregs(tid, self._own))

    async def set_debugregs(
        self, tid: int, regs: schema.DebugRegs | None = None, /, **fields: Any
    ) -> schema.DebugRegsState:
        """`Client.set_debugregs`, awaited."""
        return await self._run(api.set_debugregs(tid, regs, self._own, **fields))

    async def sim_access(
        self,
        cpu: int,
        address: int | str,
        length: int = 1,
        access: str = "write",
        *,
        tid: int | None = None,
        ip: int | str | None = None,
    ) -> list[str]:
        """`Client.sim_access`, awaited."""
        call = api.sim_access(
            self._admin, cpu=cpu, address=address, length=length, access=access, tid=tid, ip=ip
        )
        return (await self._run(call)).hits

    async def events(
        self, since: int | None = None, *, session: str | None = None
    ) -> AsyncIterator[schema.Event]:
        """Follow events live; see `Client.events`."""
        stream = self._events(session)
        feed = Feed(since)
        if since is None:
            feed.seed(await self._run(stream.baseline))
        async for event in self._follow(stream, feed):
            yield event
