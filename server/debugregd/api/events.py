"""Server-sent event streams: ordered, resumable, and never able to slow the arbiter.

`id:` is the event id, `event:` its type, `data:` the JSON record. `Last-Event-ID` (or `?since=`)
resumes from the journal; an id older than retention gets one `reset` event, after which the
client re-reads state (etcd's "compacted"). Heartbeat comments keep proxies from closing idle
streams. A subscriber that falls a whole buffer behind is cut off; it reconnects and resumes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from starlette.types import Receive, Scope, Send

from debugregd import wire
from debugregd.api import inputs
from debugregd.api.context import Daemon, admin_of, daemon_of, owner_of
from debugregd.api.document import problems
from debugregd.core import EventType
from debugregd.core.errors import LimitReached
from debugregd.hub import EventHub, Subscriber
from debugregd.store.journal import StoredEvent

router = APIRouter(prefix="/v1", tags=["events"])
PAGE = 1000


def resume_from(since: int | None, last_event_id: str | None) -> int | None:
    """Where a stream resumes: `?since=` or the `Last-Event-ID` header (checked before the
    stream starts, so a bad value is a 4xx problem, not a broken stream)."""
    if since is not None:
        return since
    if last_event_id is None or not last_event_id.strip():
        return None
    return inputs.number(last_event_id, "Last-Event-ID (an event id)")


def _sse(ev: StoredEvent, reader: str | None) -> bytes:
    """An event as `reader` (a session; None: the admin) may see it (`wire.event_for`)."""
    body = wire.event_for(ev.type, ev.body, reader)
    return format_sse_event(data_str=body, event=ev.type, id=str(ev.id))


async def stream(
    d: Daemon, since: int | None, session: str | None, sub: Subscriber, reader: str | None
) -> AsyncIterator[bytes]:
    """Replay what the client missed, then follow live; ends on shutdown or when cut off.
    `sub` was subscribed before the history is read, so nothing falls in between; events are
    shown as `reader` may see them (a session; None: the admin). `StreamResponse` ends `sub`."""
    rt = d.rt
    hub = rt.hub
    last = hub.published_id if since is None else since
    if since is not None and since != hub.published_id:
        earliest = rt.journal.earliest_event()
        # Older than retention, or newer than anything here (a wiped or foreign journal):
        # the client cannot catch up event by event and must re-read state.
        if earliest == 0 or since < earliest - 1 or since > hub.published_id:
            last = hub.published_id
            reset = {
                "id": last,
                "type": EventType.RESET,
                "at": time.time(),
                "since": since,
                "earliest": earliest,
            }
            yield format_sse_event(data_str=wire.dumps(reset), event=EventType.RESET, id=str(last))
        else:
            while last < hub.published_id:
                page = hub.recent_after(last)
                if page is None:
                    page = rt.journal.events_after(last, PAGE)
                if not page:
                    break
                for ev in page:
                    if ev.id > last and (session is None or ev.session == session):
                        yield _sse(ev, reader)
                        if session is not None and ev.type == EventType.SESSION_CLOSED:
                            return
                    last = max(last, ev.id)
    heartbeat = d.settings.heartbeat_s
    delivery = rt.metrics.notices
    while not sub.overflowed:
        if not sub.pending:
            if sub.closed:
                return
            if not await sub.wait(heartbeat):
                yield KEEPALIVE_COMMENT
            continue
        live = sub.pending.popleft()
        if live.id > last:
            last = live.id
            yield _sse(live, reader)
            # Resumed here once the server has sent the bytes on: the event is delivered.
            published = hub.published_at(live.id)
            if published is not None:
                delivery.observe(time.perf_counter() - published)
            if session is not None and live.type == EventType.SESSION_CLOSED:
                return  # the session is over: so is its stream


class StreamResponse(EventSourceResponse):
    """An event stream that ends its subscription when the response ends, whether or not its
    body ever started (a client gone before the first byte never starts it)."""

    def __init__(self, body: AsyncIterator[bytes], hub: EventHub, sub: Subscriber) -> None:
        super().__init__(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.hub, self.sub = hub, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.unsubscribe(self.sub)


def respond(
    d: Daemon, since: int | None, session: str | None, *, reader: str | None = None
) -> EventSourceResponse:
    # The routes return FastAPI's EventSourceResponse over events encoded by its
    # `format_sse_event` rather than yield from the route: the generator form runs a task
    # group, two tasks and two memory streams per stream (about 25 KB), which 10,000 idle
    # subscribers cannot afford, and would need the checks to be dependencies to fail before
    # the stream starts. The heartbeat is the stream's own. The subscription is taken here,
    # as the route answers, so that the per-session limit counts it at once.
    hub = d.rt.hub
    # A stream the session's own token opened counts toward its limit.
    sub = hub.subscribe(session, counted=reader is not None)
    return StreamResponse(stream(d, since, session, sub, reader), hub, sub)


SINCE = Query(ge=0, le=inputs.NUMBER_MAX, description="resume after this event id")
# What the generator form of a FastAPI SSE route documents: one item per event (OpenAPI 3.2).
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "string"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        }
    }
}


@router.get(
    "/events",
    response_class=Response,
    responses={**STREAM, **problems(401, 422)},
    summary="Every event (admin); resume with Last-Event-ID or ?since=",
)
async def all_events(
    request: Request,
    since: Annotated[int | None, SINCE] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    admin_of(request)
    return respond(daemon_of(request), resume_from(since, last_event_id), None)


@router.get(
    "/sessions/{session_id}/events",
    response_class=Response,
    responses={**STREAM, **problems(401, 403, 404, 422, 429)},
    tags=["sessions"],
    summary="This session's notices (evicted, moved, reinstalled, hit...); resumable",
)
async def session_events(
    session_id: str,
    request: Request,
    since: Annotated[int | None, SINCE] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    who, d = owner_of(request, session_id), daemon_of(request)
    d.arbiter.session(session_id)  # NotFound: a closed session's stream would have nothing to say
    resume = resume_from(since, last_event_id)
    limit = d.settings.max_streams_per_session
    if not who.admin and limit and d.rt.hub.streams_held(session_id) >= limit:
        raise LimitReached(
            f"session {session_id} holds {limit} event streams open, as many as a session may "
            "(--max-streams-per-session); close one (one stream carries all of a session's "
            "events), or retry after Retry-After seconds, by when a stream whose client is "
            "gone has been noticed and closed",
            "streams",
            limit,
        )
    return respond(d, resume, session_id, reader=None if who.admin else session_id)
