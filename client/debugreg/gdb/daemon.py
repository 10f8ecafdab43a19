"""debugregd as the gdb extension reaches it: the few API v1 calls it makes.

gdb runs the system's Python, without httpx, and every millisecond spent here is gdb's: so the
calls are HTTP/1.1 spoken over a socket (one connection per call, `Connection: close`, answers
read by their Content-Length), which costs gdb 3 ms of imports where `http.client` (with the
email package) costs 20. Every call has a short timeout and is made once: a daemon that is away
must cost gdb a warning, not a hang.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from debugreg.gdb.settings import Settings

if TYPE_CHECKING:
    import ssl

TIMEOUT_S = 3.0
MAX_ANSWER = 1 << 20  # bytes: the daemon's answers to these calls are a few hundred


class DaemonError(Exception):
    """A call that failed: `status` 0 when nothing answered, else the HTTP status and the
    daemon's problem (`detail`, and `blockers` for a refusal)."""

    def __init__(self, status: int, detail: str, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problem: Mapping[str, Any] = problem or {}


class Unreachable(DaemonError):
    """No answer: connection refused, timed out, or the TLS handshake failed."""


class Refused(DaemonError):
    """409: no room, and the holders in the way may not be evicted at `ptrace` priority."""

    @property
    def blockers(self) -> list[Mapping[str, Any]]:
        found = self.problem.get("blockers")
        return list(found) if isinstance(found, list) else []


class Daemon:
    """The calls the extension makes. Each opens its own connection, so the keepalive thread and
    gdb's thread never share one."""

    def __init__(self, settings: Settings, timeout: float = TIMEOUT_S) -> None:
        self.settings = settings
        self.url = settings.url
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None

    # -- the calls

    def open_session(self, name: str, ttl_s: float) -> tuple[str, str]:
        """Open a session that may reserve at `ptrace` priority (admin key); its id and token."""
        body = {"name": name, "ttl_s": ttl_s, "max_priority": "ptrace"}
        opened = self.call("POST", "/v1/sessions", body, self.settings.admin_key)
        return str(opened["id"]), str(opened["token"])

    def keepalive(self, session_id: str, token: str) -> None:
        self.call("POST", f"/v1/sessions/{session_id}/keepalive", None, token)

    def close_session(self, session_id: str, token: str) -> None:
        """Close it: the daemon releases everything it held."""
        self.call("DELETE", f"/v1/sessions/{session_id}", None, token)

    def reserve(
        self, token: str, tid: int, address: int, length: int, access: str, label: str
    ) -> Mapping[str, Any]:
        """Reserve registers on thread `tid` at `ptrace` priority, for a debugger that writes
        them itself (`arm: false`); the allocation record."""
        body = {
            "scope": {"kind": "task", "tid": tid},
            "address": address,
            "length": length,
            "access": access,
            "priority": "ptrace",
            "arm": False,
            "label": label,
        }
        record: Mapping[str, Any] = self.call("POST", "/v1/allocations", body, token)
        return record

    def release(self, allocation_id: str, token: str) -> None:
        self.call("DELETE", f"/v1/allocations/{allocation_id}", None, token)

    # -- the transport

    def call(self, method: str, path: str, body: Any, credential: str | None) -> Any:
        """Send one request; the decoded JSON answer, or raise `DaemonError`."""
        headers = {"Accept": "application/json", "Connection": "close"}
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            status, content = self._exchange(method, path, headers, data)
        except (OSError, ValueError) as exc:
            # OSError: refused, timed out, reset, or a failed TLS handshake; ValueError: a URL
            # or TLS settings that cannot be used, or an answer that is not HTTP.
            reason = str(exc) or type(exc).__name__
            raise Unreachable(0, f"no answer from {self.url}: {reason}") from None
        if 200 <= status < 300:
            return json.loads(content) if content else None
        raise _error(status, content)

    def _tls(self) -> ssl.SSLContext:
        """The TLS context for an https:// daemon, built on first use and kept: loading the CA
        bundle costs tens of milliseconds, on gdb's thread. Only an https:// daemon pays for
        ssl (DEBUGREG_CA, DEBUGREG_CERT, DEBUGREG_KEY, read by the module the CLI uses)."""
        if self._context is None:
            from debugreg.tls import TLSSettings

            self._context = TLSSettings.resolve().context()
        return self._context

    def _exchange(
        self, method: str, path: str, headers: dict[str, str], data: bytes
    ) -> tuple[int, bytes]:
        """One request on a connection of its own: the answer's status and body."""
        url = urlsplit(self.url)
        https = url.scheme.lower() == "https"
        host = url.hostname or "127.0.0.1"
        connection = socket.create_connection(
            (host, url.port or (443 if https else 80)), self.timeout
        )
        try:
            if https:
                connection = self._tls().wrap_socket(connection, server_hostname=host)
            lines = [f"{method} {url.path.rstrip('/')}{path} HTTP/1.1", f"Host: {url.netloc}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            lines.append(f"Content-Length: {len(data)}")
            connection.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + data)
            return _answer(connection)
        finally:
            connection.close()


def _answer(connection: socket.socket) -> tuple[int, bytes]:
    """Read an HTTP/1.1 answer: its status and its body (by Content-Length, or to the end)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += _more(connection, received)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if "chunked" in fields.get("transfer-encoding", "").lower():
        while not body.endswith(b"0\r\n\r\n"):
            body += _more(connection, body)
        return int(rest[:3]), _unchunk(body)
    length = int(fields.get("content-length", "0"))
    while len(body) < length:
        body += _more(connection, body)
    return int(rest[:3]), body[:length]


def _more(connection: socket.socket, received: bytes) -> bytes:
    chunk = connection.recv(65536)
    if not chunk:
        raise ValueError("the daemon closed the connection before its answer was complete")
    if len(received) + len(chunk) > MAX_ANSWER:
        raise ValueError(f"an answer longer than {MAX_ANSWER} bytes")
    return chunk


def _unchunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


def _error(status: int, content: bytes) -> DaemonError:
    try:
        problem = json.loads(content) if content else None
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = content.decode("utf-8", "replace").strip()[:300]
        return DaemonError(status, text or f"the daemon answered {status}")
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    kind = Refused if status == 409 and "blockers" in problem else DaemonError
    return kind(status, detail, problem)
