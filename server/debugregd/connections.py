"""Connections: a bound on how many are open, and timeouts for the idle and the slow.

uvicorn closes a kept-alive connection that stays idle (`timeout_keep_alive`) and nothing else: a
connection that never sends a byte, or sends its request a byte at a time, stays open for good,
and a few hundred of them exhaust the file descriptors, after which the daemon answers no one
and clients that cannot renew their leases lose their registers. So the daemon serves HTTP with
uvicorn's httptools protocol plus these rules:

- a connection with no request in progress, new or kept alive, is closed after `idle_timeout_s`;
- a request must arrive whole, head and body, within `request_timeout_s` of its first byte, or
  it is answered 408 and its connection closed; a head larger than MAX_HEAD is answered 431;
- at most `max_connections` are open: past that, a new connection takes the place of the one that
  has waited longest without a request in progress (nginx reuses idle keep-alive connections
  the same way), or, when every one is serving a request or a stream, it is answered 503.

A stream is never cut by these: once its request has arrived whole, no timer runs on it. On
shutdown a connection with nothing in progress gets DRAIN_S to deliver a request its client may
already have sent, which is answered (with `Connection: close`) rather than reset.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from debugregd import wire

log = logging.getLogger("debugregd")

MAX_HEAD = 64 * 1024  # bytes of request line and headers; h11 allows 16 KiB, nginx 8 KiB lines
DRAIN_S = 0.1  # at shutdown, how long a connection with nothing in progress may still deliver
MAX_CONNECTIONS = 16_384  # the default's ceiling: 10,000 streams and their clients' requests
WARN_EVERY_S = 60.0


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (systemd and Go do the
    same); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS * 2


def default_max_connections(open_files: int) -> int:
    """The open-file limit less a quarter (at least 64) kept for the journal, the backend's
    breakpoints and the process itself, and at most MAX_CONNECTIONS."""
    return max(16, min(MAX_CONNECTIONS, open_files - max(64, open_files // 4)))


@dataclass
class ConnectionLimits:
    """What every connection of one server shares: the bound, the timeouts, and the
    connections with no request in progress, longest waiting first (the first to go)."""

    max_connections: int
    idle_timeout_s: float
    request_timeout_s: float
    open: int = 0
    waiting: OrderedDict[GuardedHttpProtocol, None] = field(default_factory=OrderedDict)
    replaced: int = 0  # connections closed to make room, since the last warning
    refused: int = 0
    _warned_at: float = 0.0

    def crowded(self) -> None:
        """Say, at most once a minute, that the bound is being hit."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "%d connections open, as many as --max-connections allows: making room by "
                "closing those waiting longest with no request in progress (%d closed, %d "
                "refused since the last such warning)",
                self.open,
                self.replaced,
                self.refused,
            )
            self.replaced = self.refused = 0


def protocol_for(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """The HTTP protocol class for uvicorn's `http=`, bound to `limits`."""
    return type("DaemonHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})


def _response(status: int, phrase: str, kind: str, title: str, detail: str) -> bytes:
    body = wire.encode(
        {"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail}
    )
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


TIMED_OUT = _response(
    408,
    "Request Timeout",
    "request-timeout",
    "Request timeout",
    "the request did not arrive whole within --request-timeout seconds of its first byte; send "
    "it at once",
)
HEAD_TOO_LARGE = _response(
    431,
    "Request Header Fields Too Large",
    "request-head-too-large",
    "Request head too large",
    f"the request line and headers are larger than {MAX_HEAD} bytes; send less",
)
FULL = _response(
    503,
    "Service Unavailable",
    "too-many-connections",
    "Too many connections",
    "every connection the daemon allows (--max-connections) is serving a request or a stream; "
    "retry shortly",
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection bound, an idle timeout for new
    connections, a whole-request timeout and a head size limit (see the module)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.idle_timeout_s  # type: ignore[assignment]
        self._counted = False  # in `limits.open`
        self._reading = False  # a request has begun and not yet arrived whole
        self._head_bytes = -1  # bytes of the head received before this chunk; -1: head done
        self._deadline: asyncio.TimerHandle | None = None
        self._draining = False

    # -- uvicorn's protocol, extended

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if limits.open >= limits.max_connections:
            if not limits.waiting:
                limits.refused += 1
                limits.crowded()
                transport.write(FULL)
                transport.close()
                return
            oldest, _ = limits.waiting.popitem(last=False)
            limits.replaced += 1
            limits.crowded()
            oldest._give_up()
        limits.open += 1
        self._counted = True
        limits.waiting[self] = None
        # Nothing has arrived yet: idle, like a kept-alive connection between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        if self._head_bytes >= 0:
            if self._head_bytes > MAX_HEAD:
                self._close_with(HEAD_TOO_LARGE)
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = True
        self._head_bytes = 0
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.request_timeout_s, self._give_up)

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        self.limits.waiting.pop(self, None)  # serving: never closed to make room
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._reading = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        idle = not self.pipeline
        super().on_response_complete()
        if idle and self._counted and not self.transport.is_closing():
            self.limits.waiting[self] = None  # at the end: it has waited the least

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()
            return
        # Its client may have sent a request already: read it, and answer it with
        # Connection: close, rather than reset the connection under it.
        self._draining = True
        self._unset_keepalive_if_required()
        self.loop.call_later(DRAIN_S, self._close_if_idle)

    # -- closing

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.limits.open -= 1
        self.limits.waiting.pop(self, None)

    def _give_up(self) -> None:
        """Close the connection: its request is late (408), or it had none in progress."""
        self._deadline = None
        if self._reading:
            self._close_with(TIMED_OUT)
        elif not self.transport.is_closing():
            self._uncount()
            self.transport.close()

    def _close_with(self, response: bytes) -> None:
        if self.transport.is_closing():
            return
        self._uncount()
        cycle = self.cycle  # the request being served, or the last one answered
        answering = cycle is not None and not cycle.response_complete
        if cycle is not None and answering:
            # The route still waiting for this request's body gets a disconnect, and whatever
            # it answers is dropped instead of following this response.
            cycle.disconnected = True
            cycle.message_event.set()
        if not (cycle is not None and answering and cycle.response_started):
            self.transport.write(response)
        self.transport.close()

    def _close_if_idle(self) -> None:
        busy = self._reading or (self.cycle is not None and not self.cycle.response_complete)
        if not busy and not self.transport.is_closing():
            self.transport.close()
