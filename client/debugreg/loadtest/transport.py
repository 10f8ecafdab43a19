"""How the load tester's bytes travel: a lean HTTP/1.1 engine of its own, or httpx.

Measured on the 2-core benchmark machine, an httpx.AsyncClient request costs about 2 ms of the
tester's CPU, twelve times what a plain asyncio exchange costs and more than the daemon spends
answering it. A load tester that saturates before the daemon measures itself, so the default
engine (`raw`) speaks just enough HTTP/1.1 for API v1: keep-alive connections from one shared
pool, Content-Length or chunked bodies, and server-sent event streams. `--engine httpx` runs the
same load through httpx and httpx-sse instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from httpx_sse import aconnect_sse

# httpcore runs `import sniffio` on every request. Without sniffio installed (anyio 4 no longer
# needs it) each failed import searches sys.path again: a sixth of the httpx engine's CPU. A None
# entry fails the import at once, and httpcore then assumes asyncio, which is what runs here.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

IDLE_EXPIRY_S = 3.0  # uvicorn closes a connection idle for 5 s: drop it before it does
MAX_LINE = 65_536


class TransportError(Exception):
    """No HTTP answer: refused, reset, or closed mid-response. The message names the kind."""


class StreamRefused(Exception):
    """An event stream answered with something other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class SseEvent:
    id: str
    event: str
    data: str


class Engine(Protocol):
    """What the tester needs of HTTP: one request, one event stream."""

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]: ...

    def events(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[SseEvent | None]:
        """Yields None once connected (the subscription is in place), then each event."""
        ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------- raw HTTP/1.1


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing was processed, send again."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    line = await reader.readline()
    if not line:
        raise _Stale
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise TransportError(f"not an HTTP response: {line[:40]!r}")
    headers: dict[bytes, bytes] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise TransportError("connection closed in the response headers")
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" at its end."""
    size_line = await reader.readline()
    if not size_line:
        raise TransportError("connection closed in a chunked body")
    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
    if size == 0:
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b""
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


class RawEngine:
    """HTTP/1.1 over asyncio streams, with one shared pool of keep-alive connections."""

    def __init__(self, url: str, max_connections: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the raw engine speaks plain http:// only, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.authority = f"{self.host}:{self.port}".encode()
        self.idle: deque[_Connection] = deque()
        self.gate = asyncio.Semaphore(max_connections)
        self.streams: set[_Connection] = set()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
        except OSError as exc:
            raise TransportError(type(exc).__name__) from exc
        return _Connection(reader, writer)

    def _head(self, method: str, path: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1".encode(), b"Host: " + self.authority]
        lines += [f"{k}: {v}".encode() for k, v in headers.items()]
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}".encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        payload = body or b""
        head = self._head(method, path, headers, len(payload))
        async with self.gate:
            for _ in range(2):
                conn, reused = self._take()
                if conn is None:
                    conn = await self._connect()
                try:
                    status, content, keep = await self._exchange(conn, method, head + payload)
                except _Stale:
                    conn.close()
                    if reused:
                        continue  # the server closed it as we sent: it processed nothing
                    raise TransportError("connection closed before a response") from None
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    conn.close()
                    raise TransportError(type(exc).__name__) from exc
                except BaseException:
                    conn.close()  # cancelled mid-exchange: the connection is in an unknown state
                    raise
                if keep:
                    conn.idle_since = time.monotonic()
                    self.idle.append(conn)
                else:
                    conn.close()
                return status, content
        raise TransportError("connection closed before a response")

    def _take(self) -> tuple[_Connection | None, bool]:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the least likely to have expired
            if now - conn.idle_since < IDLE_EXPIRY_S and not conn.writer.is_closing():
                return conn, True
            conn.close()
        return None, False

    async def _exchange(
        self, conn: _Connection, method: str, data: bytes
    ) -> tuple[int, bytes, bool]:
        conn.writer.write(data)
        status, headers = await _read_head(conn.reader)
        keep = headers.get(b"connection", b"").lower() != b"close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status, b"", keep
        length = headers.get(b"content-length")
        if length is not None:
            return status, await conn.reader.readexactly(int(length)), keep
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            parts = []
            while chunk := await _read_chunk(conn.reader):
                parts.append(chunk)
            return status, b"".join(parts), keep
        return status, await conn.reader.read(), False

    async def events(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[SseEvent | None]:
        conn = await self._connect()
        self.streams.add(conn)
        try:
            wanted = {**headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
            conn.writer.write(self._head("GET", path, wanted, 0))
            try:
                status, head = await _read_head(conn.reader)
            except _Stale:
                raise TransportError("connection closed before a response") from None
            if status != 200:
                raise StreamRefused(status)
            yield None
            chunked = b"chunked" in head.get(b"transfer-encoding", b"").lower()
            decoder = _SseDecoder()
            while True:
                try:
                    data = await (_read_chunk(conn.reader) if chunked else conn.reader.read(65536))
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    raise TransportError(type(exc).__name__) from exc
                if not data:
                    return  # the daemon ended the stream
                for event in decoder.feed(data):
                    yield event
        finally:
            self.streams.discard(conn)
            conn.close()

    async def aclose(self) -> None:
        while self.idle:
            self.idle.pop().close()
        for conn in list(self.streams):
            conn.close()


class _SseDecoder:
    """Server-sent events from bytes as they arrive (the WHATWG rules this daemon needs)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.id = ""
        self.event = ""
        self.data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        out: list[SseEvent] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if not line:
                if self.data:
                    out.append(SseEvent(self.id, self.event or "message", "\n".join(self.data)))
                self.event, self.data = "", []
                continue
            if line.startswith(":"):
                continue  # a heartbeat comment
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self.data.append(value)
            elif name == "event":
                self.event = value
            elif name == "id":
                self.id = value
        return out


# ---------------------------------------------------------------------------- httpx


class HttpxEngine:
    """The same through httpx (requests) and httpx-sse (streams)."""

    def __init__(self, requests: httpx.AsyncClient, streams: httpx.AsyncClient) -> None:
        self.requests = requests
        self.streams_client = streams

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        try:
            response = await self.requests.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransportError(type(exc).__name__) from exc
        return response.status_code, response.content

    async def events(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[SseEvent | None]:
        try:
            async with aconnect_sse(self.streams_client, "GET", path, headers=headers) as source:
                if source.response.status_code != 200:
                    await source.response.aread()
                    raise StreamRefused(source.response.status_code)
                yield None
                async for sse in source.aiter_sse():
                    yield SseEvent(sse.id, sse.event, sse.data)
        except httpx.HTTPError as exc:
            raise TransportError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self.requests.aclose()
        await self.streams_client.aclose()
