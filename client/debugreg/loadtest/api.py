"""A thin, timed layer over API v1 for the load tester, and resumable event streams.

The load tester measures the daemon, so it talks HTTP with as little in between as it can (see
`transport`). Every request is timed and classified as a success (2xx), a refusal (409
`refused`, whose blockers the audit checks) or an error (anything else, transport failures too).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from debugreg.loadtest.audit import Refusal
from debugreg.loadtest.stats import Outcome, Recorder
from debugreg.loadtest.transport import Engine, StreamRefused, TransportError

REFUSED = "/problems/refused"
OnEvent = Callable[[dict[str, Any], float], None]


@dataclass(slots=True)
class Reply:
    """One answered (or failed) request."""

    outcome: Outcome
    status: int  # 0 when no HTTP answer came back
    body: Any
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS


def _headers(token: str | None, body: bytes | None) -> dict[str, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return headers


@dataclass
class Api:
    """Timed calls: each is recorded under an operation name; refusals are kept for the audit."""

    engine: Engine
    recorder: Recorder
    refusals: list[Refusal] = field(default_factory=list)
    max_refusals: int = 200_000  # a bounded memory for very long runs; the counts stay exact

    async def call(
        self,
        op: str,
        method: str,
        path: str,
        token: str | None,
        *,
        body: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> Reply:
        """Send one request; `priority` marks a request whose 409 refusal the audit checks."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        started = time.perf_counter()
        try:
            status, content = await self.engine.request(method, path, _headers(token, data), data)
        except TransportError as exc:
            latency = time.perf_counter() - started
            self.recorder.record(op, latency, Outcome.ERROR, str(exc))
            return Reply(Outcome.ERROR, 0, None, latency)
        latency = time.perf_counter() - started
        parsed: Any = None
        if content:
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None
        if 200 <= status < 300:
            outcome = Outcome.SUCCESS
        elif status == 409 and isinstance(parsed, dict) and parsed.get("type") == REFUSED:
            outcome = Outcome.REFUSAL
            if priority is not None and len(self.refusals) < self.max_refusals:
                self.refusals.append(
                    Refusal(
                        op,
                        priority,
                        tuple(parsed.get("blockers") or ()),
                        time.time(),
                        str(parsed.get("detail", "")),
                    )
                )
        else:
            outcome = Outcome.ERROR
        kind = ""
        if outcome is Outcome.ERROR:
            kind = str(status)
            if isinstance(parsed, dict) and parsed.get("type"):
                kind += f" {str(parsed['type']).rsplit('/', 1)[-1]}"
        self.recorder.record(op, latency, outcome, kind)
        return Reply(outcome, status, parsed, latency)


class Stream:
    """One SSE subscription that reconnects with `Last-Event-ID` when the daemon cuts it.

    `on_event` gets each event's parsed `data:` and the time (time.time()) it was read. `ready`
    is set once the first connection has answered, so the caller knows it is subscribed.
    """

    RECONNECTS = 50  # a stream cut off more often than this in one run has a problem to report

    def __init__(
        self,
        engine: Engine,
        path: str,
        token: str,
        on_event: OnEvent,
        *,
        since: int | None = None,
    ) -> None:
        self.engine = engine
        self.path = path
        self.token = token
        self.on_event = on_event
        self.last_id = since
        self.ready = asyncio.Event()
        self.reconnects = 0
        self.failure: str | None = None
        self.events = 0
        self.finished = False  # set by the owner once the stream has said all it will say

    async def run(self) -> None:
        """Follow the stream until cancelled (or until reconnecting keeps failing)."""
        attempts = 0
        while True:
            headers = _headers(self.token, None)
            if self.last_id is not None:
                headers["Last-Event-ID"] = str(self.last_id)
            try:
                async for sse in self.engine.events(self.path, headers):
                    if sse is None:
                        self.ready.set()
                        attempts = 0
                        continue
                    received = time.time()
                    if not sse.data:
                        continue
                    data = json.loads(sse.data)
                    if sse.id:
                        self.last_id = int(sse.id)
                    self.events += 1
                    self.on_event(data, received)
            except StreamRefused as exc:
                self.failure = str(exc)
                return
            except (TransportError, ValueError) as exc:
                if self.finished:
                    return
                self.failure = str(exc) or type(exc).__name__
            if self.finished:
                return  # a session's stream ends after its session_closed
            # The daemon ends a stream that fell a whole buffer behind, and on shutdown.
            attempts += 1
            self.reconnects += 1
            if attempts > 3 or self.reconnects > self.RECONNECTS:
                self.failure = self.failure or "the stream kept ending"
                return
            await asyncio.sleep(0.05 * attempts)  # back off before resuming, bounded
