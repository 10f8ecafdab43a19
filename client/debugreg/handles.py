"""What the sync and async handles share: the record, the handlers and the session's bookkeeping.

`Allocation`/`AsyncAllocation` and `Session`/`AsyncSession` subclass these and add only the
methods that wait (release, refresh, allocate, close...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast

from debugreg import api, schema
from debugreg.errors import DebugregError, NotFound, Unauthorized
from debugreg.events import (
    Dispatcher,
    Feed,
    Handler,
    Handlers,
    Tracked,
    handler_map,
    take_handlers,
)

H = TypeVar("H", bound=Handler)
log = logging.getLogger("debugreg")


def allocation_request(
    request: schema.AllocationRequest | None, fields: Mapping[str, Any]
) -> schema.AllocationRequest:
    """The request of `allocate(request)` or `allocate(**fields)`."""
    if request is None:
        return api.build(schema.AllocationRequest, fields)
    if fields:
        raise TypeError("give either an AllocationRequest or its fields as keywords, not both")
    return request


class SessionOptions(api.Grants, Handlers, total=False):
    """The keywords of `session(...)`, for `Client` and `AsyncClient` alike: the session's grants
    and the handlers that hear every allocation of the session."""


def session_arguments(
    name: str, ttl_s: float, options: SessionOptions
) -> tuple[schema.SessionRequest, dict[str, Handler]]:
    """The request of `session(name, ttl_s, **options)`, and the handlers it gives."""
    grants: dict[str, Any] = dict(options)
    handlers = handler_map(take_handlers(grants))
    return api.session_request(name, ttl_s, cast(api.Grants, grants)), handlers


def registers_text(record: schema.Allocation) -> str:
    """'cpu0/dr3 cpu1/dr3': where an allocation sits, compactly."""
    return " ".join(f"cpu{r.cpu}/{r.pool}{r.index}" for r in record.registers) or "-"


class Listener:
    """The `on_<type>` decorators, one per `Handlers` keyword, for a handle that follows
    allocations: an allocation follows itself, a session every allocation it holds."""

    def on(self, event_type: str, handler: H) -> H:
        """Call `handler(event)` for each `event_type` event this handle follows; returns it."""
        raise NotImplementedError

    def on_evicted(self, handler: H) -> H:
        """Call `handler(event)` when an allocation it follows is evicted."""
        return self.on("evicted", handler)

    def on_moved(self, handler: H) -> H:
        """Call `handler(event)` when an allocation it follows changes register index (the
        event's `previous` says from where)."""
        return self.on("moved", handler)

    def on_reinstalled(self, handler: H) -> H:
        """Call `handler(event)` when a waiting allocation it follows is installed again."""
        return self.on("reinstalled", handler)

    def on_hit(self, handler: H) -> H:
        """Call `handler(event)` when a range it watches is accessed."""
        return self.on("hit", handler)

    def on_expired(self, handler: H) -> H:
        """Call `handler(event)` when the session's lease ran out and took an allocation it
        follows."""
        return self.on("expired", handler)


class AllocationHandle(Listener):
    """An allocation you hold: its latest record, and handlers for what happens to it.

    The record follows the session's event stream; `release()` is how it ends.
    """

    def __init__(
        self,
        tracked: Tracked,
        guard: AbstractContextManager[Any],
        token: str | None,
        dispatcher: Dispatcher | None,
    ) -> None:
        self._tracked = tracked
        self._guard = guard
        self._token = token
        self._dispatcher = dispatcher  # None: no session stream follows this allocation

    @property
    def id(self) -> str:
        """The allocation's id (`a7`)."""
        return self._tracked.record.id

    @property
    def record(self) -> schema.Allocation:
        """The latest record known: from the answer that created it, events, or `refresh()`."""
        return self._tracked.record

    @property
    def state(self) -> schema.State:
        """Its state as last known: installed, waiting, released, evicted or expired."""
        return self._tracked.record.state

    @property
    def registers(self) -> list[schema.Register]:
        """The registers it holds as last known (none unless installed)."""
        return self._tracked.record.registers

    @property
    def generation(self) -> int:
        """The fencing token of the current installation (strictly increasing host-wide)."""
        return self._tracked.record.generation

    @property
    def installed(self) -> bool:
        """Whether it holds its registers now, as last known."""
        return self._tracked.record.state == "installed"

    def on(self, event_type: str, handler: H) -> H:
        """Call `handler(event)` for each `event_type` event of this allocation; returns it, so
        it also works as a decorator."""
        with self._guard:
            self._tracked.add(event_type, handler)
        return handler

    def _settle(self, record: schema.Allocation) -> schema.Allocation:
        """Take a record the client read itself (release, refresh)."""
        with self._guard:
            self._tracked.update(record)
            if self._dispatcher is not None:
                self._dispatcher.settle(record)
        return record

    def __repr__(self) -> str:
        r = self.record
        return (
            f"<{type(self).__name__} {r.id} {r.state} generation={r.generation} "
            f"{registers_text(r)}>"
        )


class SessionHandle(Listener):
    """A session you opened: its lease, its event stream's position and its handlers."""

    def __init__(
        self,
        request: schema.SessionRequest,
        handlers: Mapping[str, Handler],
        *,
        keepalive: bool,
        guard: AbstractContextManager[Any],
    ) -> None:
        self.request = request
        self.opened: schema.Session | None = None
        self.expires_at: float | None = None
        self.keepalives = 0
        """Successful keepalives so far."""
        self.closed = False
        self.close_reason: str | None = None
        self._keepalive = keepalive
        self._closing = False
        self._guard = guard
        self._feed = Feed()
        self._dispatcher = Dispatcher()
        for event_type, handler in handlers.items():
            self._dispatcher.on(event_type, handler)

    @property
    def id(self) -> str:
        """The session's id (`s3`)."""
        return self._info().id

    @property
    def token(self) -> str:
        """The session's secret: `Authorization: Bearer <token>` acts as this session."""
        token = self._info().token
        assert token is not None, "a session's token is shown when it opens"
        return token

    @property
    def name(self) -> str:
        """The name it was opened with."""
        return self.request.name

    @property
    def ttl_s(self) -> float:
        """Its lease, in seconds: it expires unless renewed within that time."""
        return self.request.ttl_s

    @property
    def last_event_id(self) -> int | None:
        """The last event of this session's stream handled (what a reconnect resumes after)."""
        return self._feed.last_event_id

    @property
    def resets(self) -> int:
        """How often the daemon said `reset` and the state was re-read instead."""
        return self._feed.resets

    def on(self, event_type: str, handler: H) -> H:
        """Call `handler(event)` for each `event_type` event of any allocation of this session
        (also `session_closed` and `reset`); returns it, so it works as a decorator."""
        with self._guard:
            self._dispatcher.on(event_type, handler)
        return handler

    def _info(self) -> schema.Session:
        if self.opened is None:
            raise RuntimeError("the session is not open yet: use it as a context manager")
        return self.opened

    def _started(self, opened: schema.Session, baseline: api.Baseline) -> None:
        self.opened = opened
        self.expires_at = opened.expires_at
        # The session's own allocations, read once it is open, and the event id they are
        # consistent with: the stream resumes after it, so nothing is missed even if it
        # connects after the first allocation.
        self._feed.seed(baseline)

    def _allocation(
        self,
        request: schema.AllocationRequest | None,
        idempotency_key: str | None,
        fields: dict[str, Any],
    ) -> tuple[api.Call[schema.Allocation], dict[str, Handler]]:
        """What `allocate(request, idempotency_key=..., **fields)` sends, and the handlers of
        the allocation it makes."""
        handlers = handler_map(take_handlers(fields))
        req = allocation_request(request, fields)
        return api.allocate(req, self.token, idempotency_key), handlers

    def _keepalive_interval(self) -> float:
        # A third of the TTL leaves two more tries before the lease runs out.
        return self.request.ttl_s / 3

    def _kept(self, keepalive: schema.Keepalive) -> float:
        """Take a renewed lease; returns how long to wait before the next keepalive."""
        self.expires_at = keepalive.expires_at
        self.keepalives += 1
        return self._keepalive_interval()

    def _keepalive_failed(self, exc: DebugregError) -> float | None:
        """How long to wait before trying a failed keepalive again; None when the lease is gone
        (the stream still delivers the `expired` events)."""
        if isinstance(exc, NotFound | Unauthorized):
            self._ended(f"lease lost: {exc.detail}")
            return None
        log.debug("keepalive of %s failed, retrying: %s", self.id, exc)
        # Sooner than after a success: the daemon may be restarting, and the lease runs on.
        return self.request.ttl_s / 6

    def _closed_by(self, event: schema.Event) -> bool:
        """Whether `event` is this session's end (then taken as the reason it ended)."""
        if event.type != "session_closed" or event.session != self.id:
            return False
        self._ended(event.reason or "closed")
        return True

    def _stream_refused(self, exc: DebugregError) -> None:
        # Refused for good (token revoked, session gone): nothing more will come.
        self._ended(f"event stream refused: {exc.detail}")

    def _closing_now(self) -> bool:
        """Whether `close()` has anything to do (then it is under way from here on)."""
        if self.opened is None or self._closing:
            return False
        self._closing = True
        return True

    def _ended(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason

    def _stream(self) -> api.Stream:
        return api.session_events(self.id, self.token)

    def __repr__(self) -> str:
        if self.opened is None:
            return f"<{type(self).__name__} {self.request.name!r} (not open)>"
        state = f"closed ({self.close_reason})" if self.closed else "open"
        return f"<{type(self).__name__} {self.id} {self.name!r} {state}>"
