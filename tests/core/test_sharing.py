"""Sharing (DESIGN section 7): identical watchpoints of one scope (same address, length and access)
share one register, counted once, with a reference count: the register is freed with the last."""

from __future__ import annotations

import pytest

from debugregd.core import Access, Arbiter, Refused, Request, Scope, State
from tests.core.build import (
    BACKGROUND,
    CRITICAL,
    PTRACE,
    USER,
    cpu,
    cpus,
    host,
    indices,
    request,
    task,
    types,
)


def install(arb: Arbiter, req: Request) -> str:
    alloc, _ = arb.allocate(None, req, 0)
    assert alloc.state is State.INSTALLED
    return alloc.id


@pytest.mark.parametrize(
    "scope", [task(1), task(1, [0]), cpu(0), cpus()], ids=["task", "pinned-task", "cpu", "cpus"]
)
def test_identical_watchpoints_of_one_scope_share_one_register(scope: Scope) -> None:
    arb = host()
    a = install(arb, request(scope, USER, 8, Access.RW))
    b = install(arb, request(scope, USER, 8, Access.RW))
    assert indices(arb, a) == indices(arb, b)
    # The shared register is counted once: three more fit beside it.
    for i in range(3):
        install(arb, request(scope, USER + 0x100 + 8 * i))


def test_a_shared_register_counts_once_even_when_the_file_is_full() -> None:
    arb = host()
    ids = [install(arb, request(task(1), USER + 8 * i)) for i in range(4)]
    again = install(arb, request(task(1), USER + 8))
    assert indices(arb, again) == indices(arb, ids[1])


def test_each_sharer_gets_its_own_allocation_event_and_generation() -> None:
    arb = host()
    a, first = arb.allocate(None, request(task(1)), 0)
    b, second = arb.allocate(None, request(task(1)), 1)
    assert a.id != b.id
    assert types(first) == types(second) == ["installed"]
    assert b.generation > a.generation


def test_releasing_one_sharer_keeps_the_register_for_the_others() -> None:
    arb = host()
    a = install(arb, request(task(1), USER))
    b = install(arb, request(task(1), USER))
    later = install(arb, request(task(1), USER + 8))
    _, events = arb.release(a, 1)
    assert types(events) == ["released"]  # nothing moved
    assert indices(arb, b) == [0] and indices(arb, later) == [1]


def test_releasing_the_last_sharer_frees_the_register() -> None:
    arb = host()
    a = install(arb, request(task(1), USER))
    b = install(arb, request(task(1), USER))
    later = install(arb, request(task(1), USER + 8))
    arb.release(a, 1)
    _, events = arb.release(b, 2)
    assert types(events) == ["released", "moved"]
    assert indices(arb, later) == [0]


@pytest.mark.parametrize(
    "other",
    [
        request(task(1), USER, 8, Access.WRITE),  # other access
        request(task(1), USER, 4, Access.RW),  # other length
        request(task(1), USER + 8, 8, Access.RW),  # other address
        request(task(2), USER, 8, Access.RW),  # other task
        request(task(1, [0]), USER, 8, Access.RW),  # other CPUs
        request(cpu(0), USER, 8, Access.RW),  # CPU scope, not the task's
    ],
    ids=["access", "length", "address", "task", "affinity", "scope"],
)
def test_watchpoints_that_differ_in_anything_do_not_share(other: Request) -> None:
    arb = host(ncpus=2)
    a = install(arb, request(task(1), USER, 8, Access.RW))
    b = install(arb, other)
    assert arb.allocation(a).watchpoint is not arb.allocation(b).watchpoint


def test_a_shared_register_is_held_at_the_highest_priority_of_its_sharers() -> None:
    arb = host()
    low = install(arb, request(cpu(0), USER, priority=BACKGROUND))
    install(arb, request(cpu(0), USER, priority=CRITICAL))
    for i in range(3):
        install(arb, request(cpu(0), USER + 8 + 8 * i, priority=CRITICAL))
    with pytest.raises(Refused):
        arb.allocate(None, request(task(1), 0x1000, priority=PTRACE), 1)
    assert arb.allocation(low).state is State.INSTALLED


def test_an_admin_evicting_one_sharer_leaves_the_register_to_the_others() -> None:
    arb = host()
    a = install(arb, request(task(1), USER))
    b = install(arb, request(task(1), USER))
    _, events = arb.evict(a, 1, "admin")
    assert types(events) == ["evicted"]
    assert indices(arb, b) == [0]


def test_a_sharer_that_is_released_while_others_hold_the_register_frees_nothing_for_waiters() -> (
    None
):
    arb = host(pools={"dr": 1})
    a = install(arb, request(cpu(0), USER))
    install(arb, request(cpu(0), USER))
    waiter, _ = arb.allocate(None, request(task(1), USER + 8, wait=True), 1)
    arb.release(a, 2)
    assert waiter.state is State.WAITING
