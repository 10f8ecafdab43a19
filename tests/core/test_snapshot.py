"""Snapshots (DESIGN sections 10 and 11): `snapshot()` is plain data, and `Arbiter.restore()` of it
is the same arbiter: an equal snapshot, and the same events for the same next operation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from debugregd.core import Access, Arbiter, Event, OnEvict, State
from debugregd.core.dr7 import RawSlot, encode
from tests.core.build import (
    BACKGROUND,
    CRITICAL,
    KERNEL,
    NORMAL,
    USER,
    cpu,
    cpus,
    host,
    request,
    task,
)


def busy_host() -> Arbiter:
    """An x86 host with a bit of everything: sessions, shared, waiting, evicted, raw, history.

    a1 and a2 share task 1's DR0; a3 is wide; a4 a kernel CPU register; a5 critical on CPU 1; a6
    and a7 wait; a8 and a9 are task 77's raw DR0 and DR2; a10 was released.
    """
    arb = Arbiter(host().profile, 2, history=3)
    gdb, _ = arb.open_session("gdb", 30, 0, max_priority="critical", allow_kernel=True)
    tracer, _ = arb.open_session("tracer", 10, 0)
    arb.allocate(tracer.id, request(task(1), USER, 8), 1)
    arb.allocate(tracer.id, request(task(1), USER, 8), 1)
    arb.allocate(tracer.id, request(cpus(), 0x2000, priority=BACKGROUND, on_evict=OnEvict.WAIT), 1)
    arb.allocate(gdb.id, request(cpu(0), KERNEL, 8, priority=BACKGROUND), 2)
    arb.allocate(gdb.id, request(cpu(1), 0x3000, priority=CRITICAL), 3)
    arb.allocate(gdb.id, request(task(2, [1]), 0x4000, 32, wait=True), 4)
    arb.allocate(tracer.id, request(cpu(1), 0x4100, 16, priority=BACKGROUND, wait=True), 4)
    slots = [RawSlot(0, 0x5000, 8, Access.WRITE), RawSlot(2, 0x401000, 1, Access.EXEC)]
    arb.set_debugregs(gdb.id, 77, (0x5000, 0, 0x401000, 0), encode(slots), 5)
    released, _ = arb.allocate(None, request(task(9), 0x6000), 6)
    arb.release(released.id, 7)
    arb.keepalive(gdb.id, 8)
    assert [a.id for a in arb.waiting()] == ["a6", "a7"]
    assert released.id == "a10"
    return arb


def events_of(events: list[Event]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


def test_the_busy_host_has_every_kind_of_record() -> None:
    arb = busy_host()
    states = {a.state for a in arb.allocations.values()}
    assert states == {State.INSTALLED, State.WAITING}
    assert arb.history and arb.raw and len(arb.sessions) == 2


def test_restore_of_a_snapshot_gives_an_equal_snapshot() -> None:
    arb = busy_host()
    snap = arb.snapshot()
    assert Arbiter.restore(snap).snapshot() == snap


def test_a_snapshot_holds_each_request_as_the_request_writes_itself() -> None:
    arb = busy_host()
    snap = arb.snapshot()
    every = {**arb.allocations, **arb.history}
    for item in snap["allocations"] + snap["history"]:
        assert item["request"] == every[item["id"]].request().to_dict()


def test_a_snapshot_is_plain_data_that_survives_json() -> None:
    arb = busy_host()
    snap = arb.snapshot()
    through_json = json.loads(json.dumps(snap))
    assert Arbiter.restore(through_json).snapshot() == snap


def test_a_restored_arbiter_keeps_indices_waiting_order_and_views() -> None:
    arb = busy_host()
    twin = Arbiter.restore(arb.snapshot())
    assert [a.id for a in twin.waiting()] == [a.id for a in arb.waiting()]
    for aid, alloc in arb.allocations.items():
        assert twin.allocation(aid).registers() == alloc.registers()
    for n in range(2):
        assert twin.cpu_view(n) == arb.cpu_view(n)
    assert twin.debugregs(77) == arb.debugregs(77)
    assert twin.next_expiry() == arb.next_expiry()


def test_restore_keeps_the_bounded_history() -> None:
    arb = busy_host()
    twin = Arbiter.restore(arb.snapshot())
    assert list(twin.history) == list(arb.history)
    for aid in arb.history:
        assert twin.allocation(aid).to_dict() == arb.allocation(aid).to_dict()


Op = Callable[[Arbiter], list[Event]]

NEXT_OPERATIONS: dict[str, Op] = {
    "allocate-evicting": lambda a: a.allocate(None, request(task(5), 0x7000, 32, priority=950), 9)[
        1
    ],
    "allocate-cpu-wide": lambda a: a.allocate(None, request(cpus(), 0x7000, priority=NORMAL), 9)[1],
    "release-compacting": lambda a: a.release("a4", 9)[1],
    "release-freeing-waiters": lambda a: a.release("a5", 9)[1],
    "admin-evict": lambda a: a.evict("a3", 9, "admin")[1],
    "evict-matching": lambda a: a.evict_matching(9, "drain", cpu=1)[1],
    "tick-expiring": lambda a: a.tick(12),
    "close-session": lambda a: a.close_session("s1", 9),
    "raw-write": lambda a: a.set_debugregs(
        None,
        77,
        (0x5000, 0x5008, 0, 0),
        encode([RawSlot(0, 0x5000, 8, Access.WRITE), RawSlot(1, 0x5008, 8, Access.RW)]),
        9,
    ),
    "open-session": lambda a: a.open_session("new", 5, 9)[1],
}


@pytest.mark.parametrize("name", sorted(NEXT_OPERATIONS))
def test_a_restored_arbiter_returns_the_same_events_for_the_same_next_operation(
    name: str,
) -> None:
    op = NEXT_OPERATIONS[name]
    arb = busy_host()
    twin = Arbiter.restore(arb.snapshot())
    expected = op(arb)
    assert expected, f"{name} should change something"
    assert events_of(op(twin)) == events_of(expected)
    assert twin.snapshot() == arb.snapshot()


def test_the_counters_continue_where_they_stopped() -> None:
    arb = busy_host()
    twin = Arbiter.restore(arb.snapshot())
    a, ea = arb.allocate(None, request(task(8)), 10)
    b, eb = twin.allocate(None, request(task(8)), 10)
    assert (a.id, a.generation, ea[0].id) == (b.id, b.generation, eb[0].id)
    assert a.generation > max(x.generation for x in arb.allocations.values() if x is not a)


def test_a_snapshot_records_the_host() -> None:
    arb = Arbiter(host("arm64", pools={"brp": 2, "wrp": 3}).profile, 3, mode_switching=True)
    snap = arb.snapshot()
    twin = Arbiter.restore(snap)
    assert (twin.profile.name, dict(twin.profile.pools), twin.ncpus, twin.mode_switching) == (
        "arm64",
        {"brp": 2, "wrp": 3},
        3,
        True,
    )
