"""Helpers for the API tests: clients with roles, sessions, problem checks and SSE readers.

Everything talks to a real `debugregd serve` process over loopback HTTP (tests/support/daemon.py).
Streams are read with the client's read timeout as the only bound: no sleeps, no timing thresholds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.support.daemon import Daemon

PROBLEM_JSON = "application/problem+json"
LONG_TTL_S = 3600.0  # sessions outlive the whole run, so no lease expires under a test
READ_TIMEOUT_S = 10.0
KERNEL_ADDRESS = 0xFFFFFFFF81000000

_tids = itertools.count(100_000)
_addresses = itertools.count(0x10000, 0x40)


def start_daemon(factory: pytest.TempPathFactory, name: str, *args: str) -> Daemon:
    """A daemon with 2 CPUs (x86_64, sim backend) on a fresh state directory."""
    return Daemon(factory.mktemp(name), "--cpus", "2", *args).start()


def fresh_tid() -> int:
    """A thread id no other test uses, so task allocations never compete across tests."""
    return next(_tids)


def fresh_address() -> int:
    """A 64-byte aligned user-space address no other test watches."""
    return next(_addresses)


def task_request(tid: int | None = None, **fields: Any) -> dict[str, Any]:
    """A valid request: an 8-byte write watch for a task on every CPU."""
    body: dict[str, Any] = {
        "scope": {"kind": "task", "tid": fresh_tid() if tid is None else tid},
        "address": hex(fresh_address()),
        "length": 8,
        "access": "write",
    }
    body.update(fields)
    return body


def cpu_request(cpu: int, **fields: Any) -> dict[str, Any]:
    """A valid request: an 8-byte write watch held by one CPU."""
    return task_request(**{"scope": {"kind": "cpu", "cpu": cpu}, **fields})


def media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";")[0].strip()


def assert_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx RFC 9457 problem: the media type, the members, and a `detail` worth reading."""
    shown = f"{response.request.method} {response.request.url} -> {response.status_code}"
    assert 400 <= response.status_code < 500, f"{shown}: {response.text[:500]}"
    if status is not None:
        assert response.status_code == status, f"{shown}, expected {status}: {response.text}"
    assert media_type(response) == PROBLEM_JSON, f"{shown}: Content-Type {media_type(response)!r}"
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code, body
    assert isinstance(body["type"], str) and body["type"], body
    assert isinstance(body["title"], str) and body["title"], body
    detail = body["detail"]
    assert isinstance(detail, str) and len(detail) >= 15, f"unhelpful detail: {body}"
    return body


@dataclass(frozen=True)
class Event:
    """One SSE event: `id:` and `event:` from the stream, `data:` decoded."""

    id: int
    type: str
    data: dict[str, Any]

    @property
    def allocation(self) -> str | None:
        record = self.data.get("allocation")
        return None if record is None else str(record["id"])


class Stream:
    """An open SSE response; iterate it for events (heartbeat comments are skipped)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.response: httpx.Response = source.response
        self._events = source.iter_sse()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while True:
            sse = next(self._events)
            if not sse.event and not sse.data:
                continue  # a heartbeat comment (httpx-sse yields it once an id was seen)
            return Event(int(sse.id), sse.event, json.loads(sse.data))

    def take(self, n: int) -> list[Event]:
        return [next(self) for _ in range(n)]

    def until(self, done: Callable[[Event], bool]) -> list[Event]:
        """Events up to and including the first for which `done` holds."""
        out: list[Event] = []
        for event in self:
            out.append(event)
            if done(event):
                return out
        raise AssertionError(f"the stream ended before the awaited event; got {out}")

    def until_id(self, last: int) -> list[Event]:
        return self.until(lambda e: e.id >= last)


@contextmanager
def open_stream(
    client: httpx.Client,
    path: str,
    *,
    since: int | None = None,
    last_event_id: int | str | None = None,
) -> Iterator[Stream]:
    """An SSE stream that must open with 200 text/event-stream."""
    params = {} if since is None else {"since": since}
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    with connect_sse(client, "GET", path, params=params, headers=headers) as source:
        response = source.response
        if response.status_code != 200:
            response.read()
            raise AssertionError(f"GET {path}: {response.status_code} {response.text}")
        yield Stream(source)


def client(daemon: Daemon, token: str | None = None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=daemon.url, headers=headers, timeout=httpx.Timeout(READ_TIMEOUT_S))


@dataclass
class Session:
    """An open session and a client carrying its token."""

    id: str
    token: str
    info: dict[str, Any]
    http: httpx.Client

    def allocate(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post("/v1/allocations", json=body, headers=headers)

    def installed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Allocate and insist on 201 installed."""
        response = self.allocate(body)
        assert response.status_code == 201, response.text
        record: dict[str, Any] = response.json()
        assert record["state"] == "installed", record
        return record

    def get(self, allocation_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/allocations/{allocation_id}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record

    def release(self, allocation_id: str) -> dict[str, Any]:
        response = self.http.delete(f"/v1/allocations/{allocation_id}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record

    @contextmanager
    def stream(
        self, *, since: int | None = None, last_event_id: int | None = None
    ) -> Iterator[Stream]:
        with open_stream(
            self.http, f"/v1/sessions/{self.id}/events", since=since, last_event_id=last_event_id
        ) as s:
            yield s


@dataclass
class Api:
    """One daemon seen through its three roles: the admin key, session tokens, and anyone."""

    daemon: Daemon
    admin: httpx.Client = field(init=False)
    anon: httpx.Client = field(init=False)
    _clients: list[httpx.Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = self.client(self.daemon.admin_key)
        self.anon = self.client()

    def client(self, token: str | None = None) -> httpx.Client:
        made = client(self.daemon, token)
        self._clients.append(made)
        return made

    def open_session(
        self, name: str = "test", *, ttl_s: float = LONG_TTL_S, **grants: Any
    ) -> Session:
        """A session; grants (max_priority, allow_*) are asked for with the admin key."""
        opener = self.admin if grants else self.anon
        response = opener.post("/v1/sessions", json={"name": name, "ttl_s": ttl_s, **grants})
        assert response.status_code == 201, response.text
        info: dict[str, Any] = response.json()
        return Session(info["id"], info["token"], info, self.client(info["token"]))

    def state(self) -> dict[str, Any]:
        response = self.admin.get("/v1/state")
        assert response.status_code == 200, response.text
        snapshot: dict[str, Any] = response.json()
        return snapshot

    def event_id(self) -> int:
        """The last committed event id."""
        return int(self.state()["event_id"])

    def record(self, allocation_id: str) -> dict[str, Any]:
        response = self.admin.get(f"/v1/allocations/{allocation_id}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record

    @contextmanager
    def events(
        self, *, since: int | None = None, last_event_id: int | str | None = None
    ) -> Iterator[Stream]:
        """The admin stream of every event."""
        with open_stream(self.admin, "/v1/events", since=since, last_event_id=last_event_id) as s:
            yield s

    def replay(self, since: int, last: int) -> list[Event]:
        """The admin stream's events after `since` up to `last`."""
        if last <= since:
            return []
        with self.events(since=since) as stream:
            return stream.until_id(last)

    def close_all_sessions(self) -> None:
        """End every open session (so every register is free again)."""
        for session in self.state()["sessions"]:
            response = self.admin.delete(f"/v1/sessions/{session['id']}")
            assert response.status_code in (204, 404), response.text
        state = self.state()
        assert state["allocations"] == [] and state["sessions"] == [], state

    def close(self) -> None:
        for made in self._clients:
            made.close()
