"""Server-sent event streams: ordered, resumable, and never able to slow the arbiter.

`id:` is the event id, `event:` its type, `data:` the JSON record. `Last-Event-ID` (or `?since=`)
resumes from the journal; an id older than retention gets one `reset` event, after which the
client re-reads state (etcd's "compacted"). Heartbeat comments keep proxies from closing idle
streams. A subscriber that falls a whole buffer behind is cut off; it reconnects and resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from debugregd import wire
from debugregd.api.context import AdminDep, Caller, Daemon, daemon_of, session_of
from debugregd.api.errors import Problem
from debugregd.api.sessions import owned
from debugregd.store.journal import StoredEvent

router = APIRouter(prefix="/v1", tags=["events"])
PAGE = 1000


async def resume_from(
    since: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> int | None:
    """Where a stream resumes: `?since=` or the `Last-Event-ID` header (checked before the
    stream starts, so a bad value is a 422, not a broken stream)."""
    if since is not None:
        return since
    if last_event_id is None or not last_event_id.strip():
        return None
    if not last_event_id.strip().isdigit():
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            "Last-Event-ID must be an event id (an integer)",
        )
    return int(last_event_id)


def _sse(ev: StoredEvent) -> ServerSentEvent:
    return ServerSentEvent(raw_data=ev.body, event=ev.type, id=str(ev.id))


async def stream(
    d: Daemon, request: Request, since: int | None, session: str | None
) -> AsyncIterator[ServerSentEvent]:
    """Replay what the client missed, then follow live; ends on shutdown or when cut off."""
    rt = d.rt
    hub = rt.hub
    sub = hub.subscribe(session)  # before reading history, so nothing falls in between
    try:
        last = hub.published_id if since is None else since
        if since is not None and since != hub.published_id:
            earliest = rt.journal.earliest_event()
            # Older than retention, or newer than anything here (a wiped or foreign journal):
            # the client cannot catch up event by event and must re-read state.
            if earliest == 0 or since < earliest - 1 or since > hub.published_id:
                last = hub.published_id
                reset = {
                    "id": last,
                    "type": "reset",
                    "at": time.time(),
                    "since": since,
                    "earliest": earliest,
                }
                yield ServerSentEvent(raw_data=wire.dumps(reset), event="reset", id=str(last))
            else:
                while last < hub.published_id:
                    page = hub.recent_after(last)
                    if page is None:
                        page = rt.journal.events_after(last, PAGE)
                    if not page:
                        break
                    for ev in page:
                        if ev.id > last and (session is None or ev.session == session):
                            yield _sse(ev)
                            if session is not None and ev.type == "session_closed":
                                return
                        last = max(last, ev.id)
        while True:
            if sub.overflowed or sub.closed:
                return
            try:
                async with asyncio.timeout(d.settings.heartbeat_s):
                    live = await sub.queue.get()
            except TimeoutError:
                yield ServerSentEvent(comment="ping")
                continue
            if live is None or sub.overflowed:
                return
            if live.id > last:
                last = live.id
                yield _sse(live)
                if session is not None and live.type == "session_closed":
                    return  # the session is over: so is its stream
    finally:
        hub.unsubscribe(sub)


async def session_owner(session_id: str, request: Request) -> Caller:
    who = session_of(request)
    owned(who, session_id)
    return who


@router.get(
    "/events",
    response_class=EventSourceResponse,
    summary="Every event (admin); resume with Last-Event-ID or ?since=",
)
async def all_events(
    request: Request,
    who: AdminDep,
    since: Annotated[int | None, Depends(resume_from)],
) -> AsyncIterator[ServerSentEvent]:
    async for item in stream(daemon_of(request), request, since, None):
        yield item


@router.get(
    "/sessions/{session_id}/events",
    response_class=EventSourceResponse,
    tags=["sessions"],
    summary="This session's notices (evicted, moved, reinstalled, hit...); resumable",
)
async def session_events(
    session_id: str,
    request: Request,
    who: Annotated[Caller, Depends(session_owner)],
    since: Annotated[int | None, Depends(resume_from)],
) -> AsyncIterator[ServerSentEvent]:
    async for item in stream(daemon_of(request), request, since, session_id):
        yield item
