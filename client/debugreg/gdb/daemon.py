"""debugregd as the gdb extension reaches it: the few API v1 calls it makes, over the standard
library's `http.client`, since gdb's Python has no httpx.

Every call has a short timeout and is made once: gdb waits for it, and a daemon that is away must
cost gdb a warning, not a hang.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from debugreg.gdb.settings import Settings

TIMEOUT_S = 3.0


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
        parts = urlsplit(self.url)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._prefix = parts.path.rstrip("/")
        try:
            self._port = parts.port
        except ValueError:  # told when the first call finds no daemon there
            self._port = -1

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
        headers = {"Accept": "application/json"}
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection = self._connect()
            try:
                connection.request(method, self._prefix + path, body=data, headers=headers)
                answer = connection.getresponse()
                status, content = answer.status, answer.read()
            finally:
                connection.close()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # OSError covers refused connections, timeouts and failed TLS handshakes; ValueError
            # TLS settings that cannot be used.
            reason = str(exc) or type(exc).__name__
            raise Unreachable(0, f"no answer from {self.url}: {reason}") from None
        if 200 <= status < 300:
            return json.loads(content) if content else None
        raise _error(status, content)

    def _connect(self) -> http.client.HTTPConnection:
        if self._port == -1:
            raise ValueError("the URL's port is not a number")
        if not self._https:
            return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        # Only an https:// daemon pays for ssl and the CA bundle (DEBUGREG_CA, DEBUGREG_CERT,
        # DEBUGREG_KEY), read by the module the CLI uses.
        from debugreg.tls import TLSSettings

        context = TLSSettings.resolve().context()
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self.timeout, context=context
        )


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
