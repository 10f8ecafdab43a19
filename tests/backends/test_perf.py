"""The perf backend arms real hardware breakpoints: hits are counted, the kernel's refusals become
arm failures, and every perf event is closed when its allocation ends."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from debugregd.backends import perf_event
from debugregd.backends.perf import PerfBackend
from debugregd.core import Access, Arbiter, Request, Scope
from tests.backends.conftest import open_fds

pytestmark = pytest.mark.perf


def this_task(cpus: tuple[int, ...] | None = None) -> Scope:
    """The test's own thread: the hardware watches it while the test writes."""
    return Scope.task(threading.get_native_id(), cpus)


def write_watch(word: ctypes.c_uint64, scope: Scope | None = None, length: int = 8) -> Request:
    return Request(scope or this_task(), ctypes.addressof(word), length, Access.WRITE)


@pytest.fixture
def pinned_to_cpu0() -> Iterator[int]:
    """Run this thread on CPU 0 only for the test, so which CPU sees an access is known."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    yield 0
    os.sched_setaffinity(0, before)


def test_write_to_a_watched_word_is_one_hit(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(0)
    alloc, events = arbiter.allocate(None, write_watch(word), 0.0)
    assert perf.apply(events) == []
    assert perf.poll_hits() == []
    word.value = 42
    (hit,) = perf.poll_hits()
    assert hit.allocation == alloc.id
    assert hit.data["count"] == 1
    assert hit.data["address"] == ctypes.addressof(word)
    assert hit.data["tid"] == threading.get_native_id()
    assert perf.poll_hits() == []  # counted once: a poll reports what is new since the last


def test_reads_do_not_trigger_a_write_watch(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(7)
    perf.apply(arbiter.allocate(None, write_watch(word), 0.0)[1])
    assert word.value == 7
    assert perf.poll_hits() == []


def test_rw_watch_counts_reads(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(7)
    request = Request(this_task(), ctypes.addressof(word), 8, Access.RW)
    perf.apply(arbiter.allocate(None, request, 0.0)[1])
    assert word.value == 7
    (hit,) = perf.poll_hits()
    assert hit.data["count"] >= 1


def test_exec_breakpoint_counts_a_call(arbiter: Arbiter, perf: PerfBackend) -> None:
    libc = ctypes.CDLL(None)
    entry = ctypes.cast(libc.getppid, ctypes.c_void_p).value
    assert entry is not None
    request = Request(this_task(), entry, 1, Access.EXEC)
    perf.apply(arbiter.allocate(None, request, 0.0)[1])
    libc.getppid()
    (hit,) = perf.poll_hits()
    assert hit.data["count"] == 1
    assert hit.data["access"] == "exec"


def test_unaligned_range_is_one_event_per_chunk(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 2)()
    start = ctypes.addressof(words) + 4  # 12 bytes from here: chunks of 4 and 8
    request = Request(this_task(), start, 12, Access.WRITE)
    alloc, events = arbiter.allocate(None, request, 0.0)
    perf.apply(events)
    assert perf.open_events() == {alloc.id: 2}
    words[1] = 1
    (hit,) = perf.poll_hits()
    assert (hit.data["address"], hit.data["length"]) == (start + 4, 8)


def test_affinity_set_is_counted_only_on_its_cpus(
    arbiter: Arbiter, perf: PerfBackend, pinned_to_cpu0: int
) -> None:
    if arbiter.ncpus < 2:
        pytest.skip("needs two CPUs: one the task runs on and one it does not")
    here, elsewhere = ctypes.c_uint64(0), ctypes.c_uint64(0)
    on_cpu0, events = arbiter.allocate(None, write_watch(here, this_task((0,))), 0.0)
    perf.apply(events)
    on_cpu1, events = arbiter.allocate(None, write_watch(elsewhere, this_task((1,))), 0.0)
    perf.apply(events)
    assert perf.open_events() == {on_cpu0.id: 1, on_cpu1.id: 1}
    here.value = elsewhere.value = 1
    (hit,) = perf.poll_hits()
    assert (hit.allocation, hit.data["cpu"]) == (on_cpu0.id, 0)


def test_cpu_wide_watch_is_one_event_per_cpu_and_sees_any_task(
    arbiter: Arbiter, perf: PerfBackend, pinned_to_cpu0: int
) -> None:
    word = ctypes.c_uint64(0)
    alloc, events = arbiter.allocate(None, write_watch(word, Scope.cpu_set(None)), 0.0)
    failures = perf.apply(events)
    if failures and failures[0].errno in (errno.EACCES, errno.EPERM):
        pytest.skip(f"CPU-wide breakpoints need privilege here: {failures[0].reason}")
    assert failures == []
    assert perf.open_events() == {alloc.id: arbiter.ncpus}
    word.value = 1
    (hit,) = perf.poll_hits()
    assert (hit.allocation, hit.data["cpu"], hit.data["tid"]) == (alloc.id, 0, None)


def test_identical_watches_share_their_perf_events(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(0)
    before = open_fds()
    first, events = arbiter.allocate(None, write_watch(word), 0.0)
    perf.apply(events)
    second, events = arbiter.allocate(None, write_watch(word), 0.0)
    perf.apply(events)
    assert open_fds() == before + 1  # one register in the core, one in the kernel
    word.value = 1
    assert sorted(h.allocation for h in perf.poll_hits()) == sorted([first.id, second.id])
    perf.apply(arbiter.release(first.id, 1.0)[1])
    assert open_fds() == before + 1
    word.value = 2
    assert [h.allocation for h in perf.poll_hits()] == [second.id]


def test_fifth_breakpoint_is_refused_when_an_outsider_holds_four(
    arbiter: Arbiter, perf: PerfBackend
) -> None:
    word = ctypes.c_uint64(0)
    tid = threading.get_native_id()
    outsider = [
        perf_event.open_breakpoint(perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, tid)
        for _ in range(4)
    ]
    try:
        before = open_fds()
        alloc, events = arbiter.allocate(None, write_watch(word), 0.0)
        (failure,) = perf.apply(events)
        assert failure.allocation == alloc.id
        assert failure.errno == errno.ENOSPC
        assert failure.reason.startswith(
            "the kernel refused: another user outside debugregd holds the debug registers"
        )
        assert perf.open_events() == {}
        assert open_fds() == before
    finally:
        for fd in outsider:
            os.close(fd)


def test_failed_arm_closes_the_events_it_opened(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 2)()
    tid = threading.get_native_id()
    outsider = [
        perf_event.open_breakpoint(perf_event.HW_BREAKPOINT_W, ctypes.addressof(words), 8, tid)
        for _ in range(3)
    ]
    try:
        before = open_fds()
        request = Request(this_task(), ctypes.addressof(words) + 4, 12, Access.WRITE)
        (failure,) = perf.apply(arbiter.allocate(None, request, 0.0)[1])
        assert failure.errno == errno.ENOSPC
        assert open_fds() == before  # the first chunk's event did not stay behind
    finally:
        for fd in outsider:
            os.close(fd)


def test_task_that_does_not_exist_fails_with_esrch(arbiter: Arbiter, perf: PerfBackend) -> None:
    # A child that has exited and been reaped leaves a tid nobody holds.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    tid = int(gone.stdout)
    word = ctypes.c_uint64(0)
    alloc, events = arbiter.allocate(None, write_watch(word, Scope.task(tid)), 0.0)
    (failure,) = perf.apply(events)
    assert (failure.allocation, failure.errno) == (alloc.id, errno.ESRCH)
    assert failure.reason.startswith(f"no such task {tid}")


def test_release_closes_every_event(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 2)()
    before = open_fds()
    request = Request(this_task(), ctypes.addressof(words) + 4, 12, Access.WRITE)
    alloc, events = arbiter.allocate(None, request, 0.0)
    perf.apply(events)
    assert open_fds() == before + 2
    perf.apply(arbiter.release(alloc.id, 1.0)[1])
    assert open_fds() == before
    assert perf.open_events() == {}


def test_eviction_closes_the_victims_events(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 5)()
    base = ctypes.addressof(words)
    before = open_fds()
    for n in range(4):
        request = Request(this_task(), base + 8 * n, 8, Access.WRITE, priority=100)
        perf.apply(arbiter.allocate(None, request, 0.0)[1])
    assert open_fds() == before + 4
    request = Request(this_task(), base + 32, 8, Access.WRITE, priority=700)
    high, events = arbiter.allocate(None, request, 1.0)
    # The victim's event closes before the evictor's opens, so the kernel has room.
    assert perf.apply(events) == []
    assert open_fds() == before + 4
    assert high.id in perf.open_events()


def test_close_closes_every_event(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(0)
    before = open_fds()
    perf.apply(arbiter.allocate(None, write_watch(word), 0.0)[1])
    perf.apply(arbiter.allocate(None, write_watch(word, this_task((0,))), 0.0)[1])
    perf.close()
    assert open_fds() == before
    assert perf.open_events() == {}
