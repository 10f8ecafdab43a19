"""Per-session limits (issue 17, point 2): a session may hold only so many live allocations and
queue only so many waiting ones; past a limit the request is refused with `LimitReached`, which
names the limit, and nothing changes. The limits are part of the arbiter's state, set by
`configure` (a journaled command), so a replay decides as the first run did."""

from __future__ import annotations

import pytest

from debugregd.core import Arbiter, OnEvict, State
from debugregd.core.errors import InvalidRequest, LimitReached
from tests.core.build import CRITICAL, cpu, host, request, task


def full_cpu1(arb: Arbiter) -> None:
    for i in range(4):
        arb.allocate(None, request(cpu(1), 0x9000 + 8 * i, priority=CRITICAL), 0)


def test_a_session_past_its_allocation_limit_is_refused_and_nothing_changes() -> None:
    arb = host(ncpus=2)
    arb.configure(0, max_allocations_per_session=2)
    session, _ = arb.open_session("s", 30, 0)
    for n in range(2):
        arb.allocate(session.id, request(task(1 + n)), 1)
    before = arb.snapshot()
    with pytest.raises(LimitReached) as refused:
        arb.allocate(session.id, request(task(3)), 2)
    assert refused.value.limit == "allocations"
    assert refused.value.maximum == 2
    assert "release" in refused.value.detail
    assert arb.snapshot() == before


def test_the_allocation_limit_counts_waiting_allocations_and_frees_on_release() -> None:
    arb = host(ncpus=2)
    full_cpu1(arb)
    arb.configure(0, max_allocations_per_session=1)
    session, _ = arb.open_session("s", 30, 0)
    waiter, _ = arb.allocate(session.id, request(cpu(1), wait=True), 1)
    assert waiter.state is State.WAITING
    with pytest.raises(LimitReached):
        arb.allocate(session.id, request(task(1, [0])), 2)
    arb.release(waiter.id, 3, session_id=session.id)
    alloc, _ = arb.allocate(session.id, request(task(1, [0])), 4)
    assert alloc.state is State.INSTALLED


def test_a_session_past_its_waiting_limit_may_still_be_installed_but_not_queued() -> None:
    arb = host(ncpus=2)
    full_cpu1(arb)
    arb.configure(0, max_waiting_per_session=2)
    session, _ = arb.open_session("s", 30, 0)
    for n in range(2):
        arb.allocate(session.id, request(cpu(1), 0x1000 + 8 * n, wait=True), 1)
    before = arb.snapshot()
    with pytest.raises(LimitReached) as refused:
        arb.allocate(session.id, request(cpu(1), 0x2000, wait=True), 2)
    assert refused.value.limit == "waiting"
    assert arb.snapshot() == before
    # What fits needs no place in the queue.
    alloc, _ = arb.allocate(session.id, request(cpu(0), wait=True), 3)
    assert alloc.state is State.INSTALLED


def test_limits_bind_each_session_alone_and_never_the_admin() -> None:
    arb = host(ncpus=2)
    full_cpu1(arb)
    arb.configure(0, max_allocations_per_session=1, max_waiting_per_session=1)
    first, _ = arb.open_session("a", 30, 0)
    second, _ = arb.open_session("b", 30, 0)
    arb.allocate(first.id, request(cpu(1), wait=True), 1)
    alloc, _ = arb.allocate(second.id, request(cpu(1), wait=True), 2)
    assert alloc.state is State.WAITING
    for n in range(3):
        admin, _ = arb.allocate(None, request(cpu(1), 0x3000 + 8 * n, wait=True), 3)
        assert admin.state is State.WAITING


def test_zero_means_no_limit_and_a_negative_limit_is_invalid() -> None:
    arb = host(ncpus=2)
    arb.configure(0, max_allocations_per_session=0, max_waiting_per_session=0)
    session, _ = arb.open_session("s", 30, 0)
    for n in range(20):
        arb.allocate(session.id, request(task(1 + n)), 1)
    with pytest.raises(InvalidRequest):
        arb.configure(2, max_waiting_per_session=-1)
    assert arb.max_waiting_per_session == 0


def test_the_limits_survive_a_snapshot() -> None:
    arb = host(ncpus=2)
    arb.configure(0, max_allocations_per_session=5, max_waiting_per_session=3)
    copy = Arbiter.restore(arb.snapshot())
    assert (copy.max_allocations_per_session, copy.max_waiting_per_session) == (5, 3)
    assert copy.snapshot() == arb.snapshot()


def test_an_eviction_to_wait_is_never_refused_by_the_waiting_limit() -> None:
    # The limit bounds what a session asks for; a requeue is the daemon's doing.
    arb = host(ncpus=1)
    arb.configure(0, max_waiting_per_session=1)
    session, _ = arb.open_session("s", 30, 0)
    low = [
        arb.allocate(session.id, request(cpu(0), 0x1000 + 8 * n, on_evict=OnEvict.WAIT), 1)[0]
        for n in range(4)
    ]
    for n in range(4):
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * n, priority=CRITICAL), 2)
    assert all(a.state is State.WAITING for a in low)


def test_a_raw_debug_register_write_counts_toward_the_allocation_limit() -> None:
    arb = host(ncpus=2)
    arb.configure(0, max_allocations_per_session=1)
    session, _ = arb.open_session("s", 30, 0, max_priority="ptrace")
    # DR0 and DR1 enabled (L0, L1), 1-byte write watches.
    dr7 = 0b0101 | (0b01 << 16) | (0b01 << 20)
    with pytest.raises(LimitReached):
        arb.set_debugregs(session.id, 7, (0x1000, 0x2000, 0, 0), dr7, 1)
    arb.set_debugregs(session.id, 7, (0x1000, 0, 0, 0), 0b01 | (0b01 << 16), 2)
    # Replacing DR0 leaves the count where it was.
    arb.set_debugregs(session.id, 7, (0x3000, 0, 0, 0), 0b01 | (0b01 << 16), 3)
