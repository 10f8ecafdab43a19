"""End to end on real hardware: the daemon with `--backend perf` arms breakpoints through
perf_event_open on a live process and reports its writes as hits (users outside the daemon:
test_outside.py)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from debugregd.backends import perf_event
from tests.support.daemon import Daemon

pytestmark = pytest.mark.perf

# A process with one 8-byte word: prints its tid and the word's address, then writes the word
# whenever it reads a line, and answers "wrote" (the test waits on that, not on time).
TARGET = """
import ctypes, sys, threading
word = ctypes.c_uint64(0)
print(threading.get_native_id(), ctypes.addressof(word), flush=True)
for line in sys.stdin:
    word.value += 1
    print("wrote", flush=True)
"""


@pytest.fixture(scope="module")
def perf_permitted() -> None:
    word = ctypes.c_uint64(0)
    try:
        fd = perf_event.open_breakpoint(
            perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, threading.get_native_id()
        )
    except perf_event.PerfEventError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        pytest.skip(f"perf_event_open of a hardware breakpoint is not permitted here: {name}")
    os.close(fd)


@pytest.fixture
def target() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    tid, address = (int(x) for x in proc.stdout.readline().split())
    yield proc, tid, address
    proc.kill()
    proc.wait(timeout=10)


def poke(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "wrote"


def open_session(daemon: Daemon) -> tuple[str, str]:
    with daemon.anon() as http:
        body = http.post("/v1/sessions", json={"name": "e2e", "ttl_s": 120}).json()
    return body["id"], body["token"]


def first_event(
    daemon: Daemon, session: str, token: str, since: int, match: Callable[[dict[str, object]], bool]
) -> dict[str, object]:
    """The first event after `since` on the session's stream that `match`es (bounded by the
    read timeout: no sleeping)."""
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(since)}
    with (
        httpx.Client(base_url=daemon.url, timeout=httpx.Timeout(10, read=30)) as http,
        connect_sse(http, "GET", f"/v1/sessions/{session}/events", headers=headers) as source,
    ):
        for sse in source.iter_sse():
            event: dict[str, object] = json.loads(sse.data)
            if match(event):
                return event
    raise AssertionError("the stream ended before the expected event")


def test_a_write_to_a_watched_word_is_reported_as_a_hit(
    perf_permitted: None,
    make_daemon: Callable[..., Daemon],
    target: tuple[subprocess.Popen[str], int, int],
) -> None:
    proc, tid, address = target
    daemon = make_daemon("--backend", "perf", "--cpus", str(os.cpu_count() or 1))
    session, token = open_session(daemon)
    with daemon.anon() as http:
        response = http.post(
            "/v1/allocations",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "scope": {"kind": "task", "tid": tid},
                "address": address,
                "length": 8,
                "access": "write",
                "label": "e2e-hit",
            },
        )
        assert response.status_code == 201, response.text
        alloc = response.json()
        since = http.get("/v1/allocations", headers={"Authorization": f"Bearer {token}"}).json()[
            "event_id"
        ]
    poke(proc)
    hit = first_event(daemon, session, token, since, lambda e: e["type"] == "hit")
    assert hit["allocation"]["id"] == alloc["id"]  # type: ignore[index]
