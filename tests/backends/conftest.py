"""Fixtures for backend tests; the perf ones run only where the kernel permits a breakpoint."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator

import pytest

from debugregd.backends import perf_event
from debugregd.backends.perf import PerfBackend
from debugregd.core import Arbiter


@pytest.fixture(scope="session")
def perf_permitted() -> None:
    """Skip unless this machine lets this process open a hardware write breakpoint, found by
    opening one on a word of our own."""
    word = ctypes.c_uint64(0)
    try:
        fd = perf_event.open_breakpoint(
            perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, threading.get_native_id()
        )
    except perf_event.PerfEventError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        pytest.skip(
            f"perf_event_open of a hardware breakpoint is not permitted on this machine: "
            f"{exc.strerror} ({name}); check kernel.perf_event_paranoid, seccomp or the VM"
        )
    os.close(fd)


@pytest.fixture
def arbiter() -> Arbiter:
    """An x86_64 arbiter with this machine's CPUs, so scopes match what the kernel sees."""
    return Arbiter(ncpus=os.cpu_count() or 1)


@pytest.fixture
def perf(perf_permitted: None, arbiter: Arbiter) -> Iterator[PerfBackend]:
    """A perf backend for the arbiter's host, which it arms through; closed after the test."""
    backend = PerfBackend(arbiter.profile, arbiter.ncpus)
    arbiter.kernel = backend
    yield backend
    backend.close()


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))
