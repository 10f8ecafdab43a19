"""The perf backend is the core's kernel on real hardware: what the core installs is armed within
the operation, hits are counted, a refusal is measured and answered (nothing armed, nothing
changed), and every perf event is closed when its watchpoint goes."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from debugregd.backends import Targets, perf_event
from debugregd.backends.perf import PerfBackend, ProbeError
from debugregd.core import Access, Arbiter, NotFound, Request, Scope
from debugregd.core.errors import KernelRefused
from debugregd.core.profiles import arm64
from tests.backends.conftest import open_fds

pytestmark = pytest.mark.perf

# File descriptors one armed event holds: the event's, and the one its ring's mapping keeps (a
# duplicate: CPython's mmap keeps its own).
FDS = 2


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


@pytest.fixture
def sleeper() -> Iterator[int]:
    """Another process's thread, idle, for breakpoints held on a task that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    yield proc.pid
    proc.kill()
    proc.wait(timeout=10)


def hold(n: int, word: ctypes.c_uint64, pid: int, cpu: int = -1) -> list[int]:
    """`n` breakpoints opened outside the daemon's backend, as gdb or perf would hold them."""
    return [
        perf_event.perf_event_open(
            perf_event.breakpoint_attr(
                perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, exclude_kernel=True
            ),
            pid,
            cpu,
        )
        for _ in range(n)
    ]


def close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_write_to_a_watched_word_is_one_hit(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(0)
    alloc, _ = arbiter.allocate(None, write_watch(word), 0.0)
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
    arbiter.allocate(None, write_watch(word), 0.0)
    assert word.value == 7
    assert perf.poll_hits() == []


def test_rw_watch_counts_reads(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(7)
    request = Request(this_task(), ctypes.addressof(word), 8, Access.RW)
    arbiter.allocate(None, request, 0.0)
    assert word.value == 7
    (hit,) = perf.poll_hits()
    assert hit.data["count"] >= 1


def test_exec_breakpoint_counts_a_call(arbiter: Arbiter, perf: PerfBackend) -> None:
    libc = ctypes.CDLL(None)
    entry = ctypes.cast(libc.getppid, ctypes.c_void_p).value
    assert entry is not None
    request = Request(this_task(), entry, 1, Access.EXEC)
    arbiter.allocate(None, request, 0.0)
    libc.getppid()
    (hit,) = perf.poll_hits()
    assert hit.data["count"] == 1
    assert hit.data["access"] == "exec"


def test_unaligned_range_is_one_event_per_chunk(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 2)()
    start = ctypes.addressof(words) + 4  # 12 bytes from here: chunks of 4 and 8
    request = Request(this_task(), start, 12, Access.WRITE)
    alloc, _ = arbiter.allocate(None, request, 0.0)
    assert perf.open_events() == {alloc.id: 2}
    words[1] = 1
    (hit,) = perf.poll_hits()
    # One report for the whole watch: its count, and where the write came from.
    assert (hit.data["address"], hit.data["length"], hit.data["count"]) == (start, 12, 1)


def test_affinity_set_is_counted_only_on_its_cpus(
    arbiter: Arbiter, perf: PerfBackend, pinned_to_cpu0: int
) -> None:
    if arbiter.ncpus < 2:
        pytest.skip("needs two CPUs: one the task runs on and one it does not")
    here, elsewhere = ctypes.c_uint64(0), ctypes.c_uint64(0)
    on_cpu0, _ = arbiter.allocate(None, write_watch(here, this_task((0,))), 0.0)
    on_cpu1, _ = arbiter.allocate(None, write_watch(elsewhere, this_task((1,))), 0.0)
    assert perf.open_events() == {on_cpu0.id: 1, on_cpu1.id: 1}
    here.value = elsewhere.value = 1
    (hit,) = perf.poll_hits()
    assert hit.allocation == on_cpu0.id
    assert [site["cpus"] for site in hit.data["sites"]] == [[0]]


def test_cpu_wide_watch_is_one_event_per_cpu_and_sees_any_task(
    arbiter: Arbiter, perf: PerfBackend, pinned_to_cpu0: int
) -> None:
    word = ctypes.c_uint64(0)
    alloc, _ = arbiter.allocate(None, write_watch(word, Scope.cpu_set(None)), 0.0)
    assert perf.open_events() == {alloc.id: arbiter.ncpus}
    word.value = 1
    (hit,) = perf.poll_hits()
    assert (hit.allocation, hit.data["tid"]) == (alloc.id, None)
    (site,) = hit.data["sites"]
    assert (site["cpus"], site["tids"]) == ([0], [threading.get_native_id()])


def test_identical_watches_share_their_perf_events(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(0)
    before = open_fds()
    first, _ = arbiter.allocate(None, write_watch(word), 0.0)
    second, _ = arbiter.allocate(None, write_watch(word), 0.0)
    assert open_fds() == before + FDS  # one register in the core, one in the kernel
    word.value = 1
    assert sorted(h.allocation for h in perf.poll_hits()) == sorted([first.id, second.id])
    arbiter.release(first.id, 1.0)
    assert open_fds() == before + FDS
    word.value = 2
    assert [h.allocation for h in perf.poll_hits()] == [second.id]


# Outside users hold their breakpoints on another process's task (`sleeper`): the backend measures
# the room of an idle task on the thread that runs it, which must hold nothing of anyone's.


def test_a_refusal_is_measured_and_changes_nothing(
    arbiter: Arbiter, perf: PerfBackend, sleeper: int
) -> None:
    word = ctypes.c_uint64(0)
    outsider = hold(4, word, sleeper)
    try:
        before = open_fds()
        with pytest.raises(KernelRefused) as refused:
            arbiter.allocate(None, write_watch(word, Scope.task(sleeper)), 0.0)
        measured = refused.value.measured
        assert measured.tasks == {sleeper: 4}
        assert set(measured.cpus.values()) == {0}  # nobody holds registers CPU-wide
        assert arbiter.allocations == {}
        assert perf.open_events() == {}
        assert open_fds() == before
    finally:
        close(outsider)


def test_a_failed_arm_closes_the_events_it_opened(
    arbiter: Arbiter, perf: PerfBackend, sleeper: int
) -> None:
    words = (ctypes.c_uint64 * 2)()
    outsider = hold(3, words, sleeper)  # room for one chunk of two
    try:
        before = open_fds()
        request = Request(Scope.task(sleeper), ctypes.addressof(words) + 4, 12, Access.WRITE)
        with pytest.raises(KernelRefused):
            arbiter.allocate(None, request, 0.0)
        assert open_fds() == before  # the first chunk's event did not stay behind
    finally:
        close(outsider)


def test_a_refused_eviction_arms_the_victims_again(
    arbiter: Arbiter, perf: PerfBackend, sleeper: int
) -> None:
    words = (ctypes.c_uint64 * 8)()
    base = ctypes.addressof(words)
    task = Scope.task(sleeper)
    for n in range(3):
        arbiter.allocate(None, Request(task, base + 8 * n, 8, Access.WRITE, 100), 0.0)
    outsider = hold(1, words, sleeper)
    try:
        # Two registers at ptrace priority: the core evicts one background holder, but with the
        # outside user the kernel has room for one only. The victim's events open again.
        high = Request(task, base + 36, 12, Access.WRITE, priority=700)
        with pytest.raises(KernelRefused) as refused:
            arbiter.allocate(None, high, 1.0)
        assert refused.value.measured.tasks == {sleeper: 1}
        assert len(perf.open_events()) == 3
        assert perf.lost() == []
    finally:
        close(outsider)


def test_users_outside_are_told_apart_by_where_they_hold(perf: PerfBackend, sleeper: int) -> None:
    word = ctypes.c_uint64(0)
    where = {"dr": Targets(cpus={0}, tasks={sleeper}, others={0})}
    # Other programs on this machine may hold breakpoints too: the test counts from them.
    (before,) = perf.measure(where)
    cpu_wide = hold(1, word, -1, 0)  # CPU-wide on CPU 0: perf record -a
    on_task = hold(2, word, sleeper)  # on one task: a debugger's ptrace
    try:
        (measured,) = perf.measure(where)
        assert measured.cpus[0] == before.cpus[0] + 1
        assert measured.tasks == {sleeper: 2}
        assert measured.others[0] >= 2  # a task the daemon does not manage holds 2 there
    finally:
        close(cpu_wide + on_task)
    (after,) = perf.measure(where)
    assert (after.cpus, after.tasks, after.others) == (before.cpus, {sleeper: 0}, before.others)


def test_what_the_daemon_armed_is_not_counted_as_outside(
    arbiter: Arbiter, perf: PerfBackend
) -> None:
    word = ctypes.c_uint64(0)
    arbiter.allocate(None, write_watch(word), 0.0)
    arbiter.allocate(None, write_watch(word, Scope.cpu(0)), 0.0)
    tid = threading.get_native_id()
    (measured,) = perf.measure({"dr": Targets(cpus={0}, tasks={tid}, others={0})})
    assert (measured.cpus[0], measured.tasks[tid], measured.others[0]) == (0, 0, 0)


def test_a_task_that_does_not_exist_is_not_found(arbiter: Arbiter, perf: PerfBackend) -> None:
    # A child that has exited and been reaped leaves a tid nobody holds.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    tid = int(gone.stdout)
    word = ctypes.c_uint64(0)
    with pytest.raises(NotFound, match=f"no such task {tid}"):
        arbiter.allocate(None, write_watch(word, Scope.task(tid)), 0.0)
    assert arbiter.allocations == {}


def test_the_probe_finds_this_machines_registers(perf: PerfBackend) -> None:
    probed = perf.probe()
    assert probed["slots"] == {"dr": 4}
    assert probed["cpus_online"] >= perf.ncpus
    assert len(probed["free_at_start"]["dr"]) == perf.ncpus


def test_the_probe_refuses_a_profile_of_another_machine(perf_permitted: None) -> None:
    with pytest.raises(ProbeError, match="--profile arm64 does not describe this x86_64"):
        PerfBackend(arm64(), 1).probe()


def test_the_probe_refuses_cpus_that_are_not_online(perf_permitted: None) -> None:
    with pytest.raises(ProbeError, match="which are not online"):
        PerfBackend(None, 4096).probe()


def test_release_closes_every_event(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 2)()
    before = open_fds()
    request = Request(this_task(), ctypes.addressof(words) + 4, 12, Access.WRITE)
    alloc, _ = arbiter.allocate(None, request, 0.0)
    assert open_fds() == before + 2 * FDS
    arbiter.release(alloc.id, 1.0)
    assert open_fds() == before
    assert perf.open_events() == {}


def test_eviction_closes_the_victims_events(arbiter: Arbiter, perf: PerfBackend) -> None:
    words = (ctypes.c_uint64 * 5)()
    base = ctypes.addressof(words)
    before = open_fds()
    for n in range(4):
        request = Request(this_task(), base + 8 * n, 8, Access.WRITE, priority=100)
        arbiter.allocate(None, request, 0.0)
    assert open_fds() == before + 4 * FDS
    request = Request(this_task(), base + 32, 8, Access.WRITE, priority=700)
    high, _ = arbiter.allocate(None, request, 1.0)
    # The victim's event closes before the evictor's opens, so the kernel has room.
    assert open_fds() == before + 4 * FDS
    assert high.id in perf.open_events()


def test_close_closes_every_event(arbiter: Arbiter, perf: PerfBackend) -> None:
    word = ctypes.c_uint64(0)
    before = open_fds()
    arbiter.allocate(None, write_watch(word), 0.0)
    arbiter.allocate(None, write_watch(word, this_task((0,))), 0.0)
    perf.close()
    assert open_fds() == before
    assert perf.open_events() == {}
