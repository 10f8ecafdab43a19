"""Waiting (DESIGN sections 4 and 5): `wait: true` queues a request that does not fit, `on_evict:
wait` requeues an evicted allocation, and waiting allocations are (re)installed as soon as they
fit, by priority and then first come first served, each time with a new, higher generation."""

from __future__ import annotations

import pytest

from debugregd.core import Arbiter, InvalidTransition, OnEvict, Refused, Request, State
from tests.core.build import (
    BACKGROUND,
    CRITICAL,
    NORMAL,
    PTRACE,
    USER,
    affected,
    cpu,
    host,
    request,
    state,
    task,
    types,
)


def install(arb: Arbiter, req: Request) -> str:
    alloc, _ = arb.allocate(None, req, 0)
    assert alloc.state is State.INSTALLED
    return alloc.id


def full_cpu0(arb: Arbiter, priority: int = CRITICAL, count: int = 4) -> list[str]:
    return [install(arb, request(cpu(0), 0x9000 + 8 * i, priority=priority)) for i in range(count)]


def test_wait_true_queues_a_request_that_does_not_fit() -> None:
    arb = host()
    blockers = full_cpu0(arb)
    alloc, events = arb.allocate(None, request(task(1), wait=True), 1)
    assert alloc.state is State.WAITING
    assert alloc.registers() == []
    assert types(events) == ["waiting"]
    assert events[0].data is not None
    assert sorted(b["allocation"] for b in events[0].data["blockers"]) == sorted(blockers)
    assert arb.waiting() == [alloc]


def test_without_wait_a_request_that_does_not_fit_is_refused_and_nothing_is_stored() -> None:
    arb = host()
    full_cpu0(arb)
    before = arb.snapshot()
    with pytest.raises(Refused):
        arb.allocate(None, request(task(1)), 1)
    assert arb.snapshot() == before


def test_a_request_that_fits_is_installed_even_if_it_may_wait() -> None:
    arb = host()
    alloc, events = arb.allocate(None, request(task(1), wait=True), 1)
    assert alloc.state is State.INSTALLED
    assert types(events) == ["installed"]


def test_a_waiting_request_is_installed_as_soon_as_it_fits() -> None:
    arb = host()
    blockers = full_cpu0(arb)
    alloc, _ = arb.allocate(None, request(task(1), wait=True), 1)
    _, events = arb.release(blockers[0], 2)
    assert types(events)[:2] == ["released", "reinstalled"]
    assert affected(events, "reinstalled") == [alloc.id]
    assert alloc.state is State.INSTALLED
    assert alloc.generation > 0 and alloc.registers()


def test_a_waiting_request_may_evict_lower_holders_once_the_blocker_leaves() -> None:
    arb = host()
    high = full_cpu0(arb, CRITICAL, count=2)
    low = [install(arb, request(cpu(0), 0x8000 + 8 * i, priority=BACKGROUND)) for i in range(2)]
    alloc, _ = arb.allocate(None, request(task(1), 0x1000, 32, priority=NORMAL, wait=True), 1)
    assert alloc.state is State.WAITING  # needs all four; two are critical
    arb.release(high[0], 2)
    assert alloc.state is State.WAITING
    _, events = arb.release(high[1], 3)
    assert sorted(affected(events, "evicted")) == sorted(low)
    assert state(alloc) is State.INSTALLED


def test_on_evict_wait_requeues_then_reinstalls_with_a_new_higher_generation() -> None:
    arb = host()
    victim, _ = arb.allocate(None, request(cpu(0), priority=BACKGROUND, on_evict=OnEvict.WAIT), 0)
    first_generation = victim.generation
    full_cpu0(arb, CRITICAL, count=3)
    evictor, events = arb.allocate(None, request(task(1), 0x2000, priority=NORMAL), 1)
    (evicted,) = [e for e in events if e.type == "evicted"]
    assert evicted.allocation is not None and evicted.allocation["state"] == "waiting"
    assert victim.state is State.WAITING and victim.registers() == []
    assert victim in arb.waiting()
    _, events = arb.release(evictor.id, 2)
    assert affected(events, "reinstalled") == [victim.id]
    assert state(victim) is State.INSTALLED
    assert victim.generation > evictor.generation > first_generation


def test_on_evict_release_ends_the_allocation() -> None:
    arb = host()
    victim, _ = arb.allocate(None, request(cpu(0), priority=BACKGROUND), 0)
    full_cpu0(arb, CRITICAL, count=3)
    evictor, _ = arb.allocate(None, request(task(1), 0x2000, priority=NORMAL), 1)
    assert victim.state is State.EVICTED
    _, events = arb.release(evictor.id, 2)
    assert types(events) == ["released"]
    assert victim.state is State.EVICTED


def test_every_installation_gets_a_new_strictly_higher_generation() -> None:
    arb = host()
    seen = []
    for i in range(6):
        alloc, _ = arb.allocate(None, request(task(1 + i), USER + 8 * i), 0)
        seen.append(alloc.generation)
    assert seen == sorted(set(seen))


def test_waiters_are_served_by_priority_then_first_come_first_served() -> None:
    arb = host()
    blockers = full_cpu0(arb)
    # CPU requests compete with each other for the same registers (task requests would not).
    first, _ = arb.allocate(None, request(cpu(0), 0x1000, priority=NORMAL, wait=True), 1)
    urgent, _ = arb.allocate(None, request(cpu(0), 0x1008, priority=PTRACE, wait=True), 2)
    second, _ = arb.allocate(None, request(cpu(0), 0x1010, priority=NORMAL, wait=True), 3)
    assert arb.waiting() == [urgent, first, second]
    served = []
    for n, blocker in enumerate(blockers[:3]):
        _, events = arb.release(blocker, 10 + n)
        served.extend(affected(events, "reinstalled"))
    assert served == [urgent.id, first.id, second.id]


def test_a_waiter_that_fits_is_not_held_up_by_an_earlier_one_that_does_not() -> None:
    arb = host()
    blockers = full_cpu0(arb)
    big, _ = arb.allocate(None, request(task(1), 0x1000, 16, priority=PTRACE, wait=True), 1)
    small, _ = arb.allocate(None, request(task(2), 0x1000, 1, priority=NORMAL, wait=True), 2)
    arb.release(blockers[0], 3)
    assert big.state is State.WAITING  # needs two registers
    assert small.state is State.INSTALLED


def test_a_waiting_allocation_can_be_released_by_its_owner() -> None:
    arb = host()
    session, _ = arb.open_session("w", 30, 0)
    full_cpu0(arb)
    alloc, _ = arb.allocate(session.id, request(task(1), wait=True), 1)
    _, events = arb.release(alloc.id, 2, session_id=session.id)
    assert types(events) == ["released"]
    assert alloc.state is State.RELEASED
    assert arb.waiting() == []


def test_only_an_installed_allocation_can_be_evicted() -> None:
    arb = host()
    full_cpu0(arb)
    alloc, _ = arb.allocate(None, request(task(1), wait=True), 1)
    with pytest.raises(InvalidTransition):
        arb.evict(alloc.id, 2, "admin")


def test_an_admin_evicted_waiter_is_not_reinstalled_by_the_same_operation() -> None:
    arb = host()
    alloc, _ = arb.allocate(None, request(task(1), on_evict=OnEvict.WAIT), 0)
    _, events = arb.evict(alloc.id, 1, "maintenance")
    assert types(events) == ["evicted"]
    assert alloc.state is State.WAITING
    assert alloc.reason == "maintenance"


def test_evict_matching_requeues_waiters_and_reports_the_ids() -> None:
    arb = host(ncpus=2)
    a, _ = arb.allocate(None, request(task(1), on_evict=OnEvict.WAIT, priority=BACKGROUND), 0)
    b, _ = arb.allocate(None, request(cpu(1), priority=BACKGROUND), 0)
    c, _ = arb.allocate(None, request(cpu(0), priority=CRITICAL), 0)
    ids, events = arb.evict_matching(1, "drain", below_priority=NORMAL)
    assert sorted(ids) == sorted([a.id, b.id])
    assert sorted(affected(events, "evicted")) == sorted([a.id, b.id])
    assert (a.state, b.state, c.state) == (State.WAITING, State.EVICTED, State.INSTALLED)


def test_an_admin_evicted_waiter_is_reinstalled_by_the_next_operation() -> None:
    arb = host()
    alloc, _ = arb.allocate(None, request(task(1), on_evict=OnEvict.WAIT), 0)
    arb.evict(alloc.id, 1, "maintenance")
    events = arb.tick(2)
    assert affected(events, "reinstalled") == [alloc.id]
    assert alloc.state is State.INSTALLED


def test_a_waiter_is_reinstalled_when_a_higher_priority_sharer_leaves_its_blocker() -> None:
    arb = host(pools={"dr": 1})
    high = install(arb, request(cpu(0), 0x1000, priority=PTRACE))
    low = install(arb, request(cpu(0), 0x1000, priority=BACKGROUND))  # shares high's register
    waiter, _ = arb.allocate(None, request(task(1), 0x2000, priority=NORMAL, wait=True), 1)
    assert waiter.state is State.WAITING
    _, events = arb.release(high, 2)
    assert affected(events, "evicted") == [low]
    assert state(waiter) is State.INSTALLED


def test_a_release_looks_only_at_the_waiters_it_can_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 17: one session queued 20,000 waiters on one CPU and every release on another CPU
    # walked them all. A waiter is looked at (its share key computed) only when the registers
    # freed are on one of its CPUs.
    import debugregd.core.waiting as waiting

    arb = host(ncpus=2)
    for i in range(4):
        install(arb, request(cpu(1), 0x9000 + 8 * i, priority=CRITICAL))
    for i in range(50):
        arb.allocate(None, request(cpu(1), 0x1000 + 8 * i, wait=True), 1)
        arb.allocate(None, request(task(100 + i, [1]), 0x4000 + 8 * i, wait=True), 1)
    mine = install(arb, request(cpu(0), 0x8000))
    looked: list[object] = []
    real = waiting.share_key

    def counting(*args: object) -> object:
        looked.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(waiting, "share_key", counting)
    _, events = arb.release(mine, 2)
    assert types(events) == ["released"]
    assert looked == []
    assert len(arb.waiting()) == 100
