"""Client test fixtures: one daemon shared by the tests that do not restart it.

Each test works on its own thread ids (task scopes), so tests on the shared daemon never compete
for registers; tests that kill and restart the daemon use `make_daemon` for their own.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from debugreg import Backoff, Event
from tests.support.daemon import Daemon

WAIT_S = 20.0  # upper bound for an awaited condition; reaching it is a failure, not a pass

_tids = itertools.count(10_000)


@pytest.fixture(scope="package")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon (x86_64, 2 CPUs, sim backend) for every client test that does not restart it."""
    daemon = Daemon(tmp_path_factory.mktemp("client-shared"), "--cpus", "2").start()
    yield daemon
    daemon.kill()


@pytest.fixture
def tid() -> int:
    """A thread id no other test uses: task-scoped allocations on it compete with nothing."""
    return next(_tids)


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll an observable condition until it holds; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)  # polling a condition, bounded by the deadline


class Recorder:
    """A handler that records the events it is given, thread-safely."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, event_type: str, allocation: str | None = None) -> list[Event]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.type == event_type
                and (allocation is None or (e.allocation and e.allocation.id == allocation))
            ]


class GatedBackoff(Backoff):
    """Reconnects only while the gate is open: a test holds a client off a restarted daemon
    until it has changed things the client must then learn about. `disconnected` is set once
    the client noticed the daemon was gone."""

    def __init__(self) -> None:
        super().__init__(initial=0.05, maximum=0.5)
        self.gate = threading.Event()
        self.gate.set()
        self.disconnected = threading.Event()

    def delay(self, attempt: int) -> float:
        self.disconnected.set()
        self.gate.wait(WAIT_S)
        return 0.0
