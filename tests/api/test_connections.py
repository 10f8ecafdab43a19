"""Connections (server/debugregd/connections.py): the daemon stays answerable when connections
flood it, sit silent or send their request a byte at a time; event streams are never cut.

Every wait is bounded by a socket or client timeout; nothing sleeps to synchronise. The only
pause is the pace of the byte-at-a-time client, which is the attack itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api.helpers import Api, client, task_request
from tests.support.daemon import Daemon

WAIT_S = 60.0  # the bound on every wait below
FLOOD = 300
OPEN_FILES = 256


@pytest.fixture
def limited_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(*args: str, open_files: int | None = None) -> Daemon:
        state_dir = tmp_path / f"state{len(started)}"
        state_dir.mkdir()
        daemon = Daemon(state_dir, "--cpus", "2", *args, open_files=open_files)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.kill()


def connect(daemon: Daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


class Slowloris:
    """A request sent a byte at a time, with a header that never ends, until the daemon closes
    the connection; what the daemon sent back is kept."""

    def __init__(self, daemon: Daemon, pace_s: float = 0.05) -> None:
        self.sock = connect(daemon)
        self.pace_s = pace_s
        self.stop = threading.Event()
        self.received = b""
        self.sent = 0
        self.thread = threading.Thread(target=self.run, name="slowloris", daemon=True)
        self.thread.start()

    def run(self) -> None:
        head = b"GET /v1/host HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        try:
            for n in range(1_000_000):
                byte = head[n : n + 1] or b"a"
                self.sock.send(byte)
                self.sent += 1
                if self.stop.wait(self.pace_s):  # the attack's pace, not a synchronisation
                    return
        except OSError:
            pass  # closed by the daemon

    def closed_by_daemon(self) -> bool:
        """Whether the daemon closed the connection (waits for it, at most WAIT_S)."""
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
        except ConnectionResetError:
            pass  # closed while bytes were still arriving: the kernel resets
        except TimeoutError:
            return False
        finally:
            self.stop.set()
            self.thread.join(WAIT_S)
        return True

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def closed_by_daemon(sock: socket.socket) -> bytes | None:
    """What the daemon sent before closing `sock` (waiting at most WAIT_S); None if it did not."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return received


def test_a_flood_of_silent_connections_under_a_low_file_limit_locks_no_one_out(
    limited_daemon: Callable[..., Daemon],
) -> None:
    daemon = limited_daemon(open_files=OPEN_FILES)
    api = Api(daemon)
    silent: list[socket.socket] = []
    slow = Slowloris(daemon)
    try:
        for _ in range(FLOOD):
            silent.append(connect(daemon))
        # More connections than the daemon may have files: it must still answer, at once
        # (the flood is not waited out: the timeouts are the defaults, 5 and 10 s).
        with client(daemon) as anyone:
            assert anyone.get("/healthz").status_code == 200
        session = api.open_session("through-the-flood")
        session.installed(task_request())
        silent += [connect(daemon) for _ in range(FLOOD)]  # and again, with those open
        with client(daemon) as anyone:
            assert anyone.get("/healthz").json() == {"status": "ok"}
        session.installed(task_request())
        assert slow.closed_by_daemon()
        assert "Traceback" not in daemon.log()
    finally:
        slow.close()
        for sock in silent:
            sock.close()
        api.close()


def test_silent_and_slow_connections_are_closed_but_an_event_stream_is_not(
    limited_daemon: Callable[..., Daemon],
) -> None:
    daemon = limited_daemon("--idle-timeout", "1", "--request-timeout", "2")
    api = Api(daemon)
    try:
        session = api.open_session("streams-survive")
        with session.stream() as stream:
            silent = connect(daemon)
            partial = connect(daemon)
            partial.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            body = connect(daemon)  # a body that stops short, on the route that reads its own
            body.sendall(
                b"POST /v1/allocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: Bearer {session.token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            slow = Slowloris(daemon)
            try:
                assert closed_by_daemon(silent) == b""  # idle: closed without a word
                for late in (partial, body):  # a request not whole in time: a 408 problem
                    answer = closed_by_daemon(late)
                    assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answer
                    assert b"application/problem+json" in answer
                assert slow.closed_by_daemon()  # each byte in time, the request never whole
                assert slow.received == b"" or slow.received.startswith(b"HTTP/1.1 408 ")
            finally:
                slow.close()
                for sock in (silent, partial, body):
                    sock.close()
            # The stream began before those connections and outlived their timeouts.
            record = session.installed(task_request())
            assert next(stream).allocation == record["id"]
        assert "Traceback" not in daemon.log()
    finally:
        api.close()


def test_a_request_head_larger_than_the_limit_is_refused_without_reading_it_all(
    limited_daemon: Callable[..., Daemon],
) -> None:
    daemon = limited_daemon()
    sock = connect(daemon)
    sent = 0
    with contextlib.suppress(OSError):  # the daemon closes while this is still sending
        sock.sendall(b"GET /v1/host HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        for _ in range(256):  # 16 MiB, far more than the limit, unless the daemon stops it
            sock.sendall(b"a" * 65536)
            sent += 1
    answer = closed_by_daemon(sock)
    sock.close()
    assert sent < 256, "the daemon read a 16 MiB request head"
    assert answer is not None
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
    with client(daemon) as anyone:
        assert anyone.get("/healthz").status_code == 200
