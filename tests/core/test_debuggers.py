"""Room for debuggers that do not ask (DESIGN section 12): registers kept out of reach of requests
below ptrace, and a traced task's holders below ptrace yielding to its tracer."""

from __future__ import annotations

import pytest

from debugregd.core import Arbiter, InvalidRequest, OnEvict, Refused, State
from tests.core.build import (
    BACKGROUND,
    PTRACE,
    USER,
    affected,
    cpu,
    host,
    request,
    task,
    types,
)


def fill(arb: Arbiter, scope_of: object, count: int, **kw: object) -> list[str]:
    ids = []
    for n in range(count):
        alloc, _ = arb.allocate(None, request(scope_of, USER + 8 * n, **kw), 0)  # type: ignore[arg-type]
        if alloc.state is State.INSTALLED:
            ids.append(alloc.id)
    return ids


def test_reserved_registers_stay_out_of_reach_below_ptrace() -> None:
    arb = host(ncpus=2)
    arb.configure(0, reserved_for_ptrace=1)
    assert len(fill(arb, task(7), 3)) == 3
    with pytest.raises(Refused):
        arb.allocate(None, request(task(7), USER + 64), 1)
    with pytest.raises(Refused):
        arb.allocate(None, request(cpu(0), USER + 72), 1)  # CPU-wide ones leave it free too
    alloc, _ = arb.allocate(None, request(task(7), USER + 80, priority=PTRACE), 1)
    assert alloc.state is State.INSTALLED  # a debugger that asks gets it


def test_keeping_fewer_back_serves_the_waiters() -> None:
    arb = host(ncpus=1)
    arb.configure(0, reserved_for_ptrace=2)
    fill(arb, task(7), 2)
    waiter, _ = arb.allocate(None, request(task(7), USER + 64, wait=True), 1)
    assert waiter.state is State.WAITING
    events = arb.configure(2, reserved_for_ptrace=1)
    assert types(events) == ["reinstalled"]


def test_reserving_every_register_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="from 0 to 3"):
        host().configure(0, reserved_for_ptrace=4)


def test_a_tracer_displaces_the_tasks_holders_below_ptrace_and_says_who() -> None:
    arb = host(ncpus=2)
    low = fill(arb, task(7), 3, priority=BACKGROUND, on_evict=OnEvict.WAIT)
    kept, _ = arb.allocate(None, request(task(7), USER + 64, priority=PTRACE), 0)
    other = fill(arb, task(8), 1)
    events = arb.trace(7, "PID 4242 (gdb)", 1)
    assert sorted(affected(events, "evicted")) == sorted(low)
    reasons = {e.to_dict()["reason"] for e in events if e.type == "evicted"}
    assert reasons == {"task 7 is being debugged by PID 4242 (gdb)"}
    assert all(arb.allocation(a).state is State.WAITING for a in low)
    assert kept.state is State.INSTALLED and arb.allocation(other[0]).state is State.INSTALLED
    with pytest.raises(Refused, match="task 7 is being debugged by PID 4242 \\(gdb\\)"):
        arb.allocate(None, request(task(7), USER + 128), 2)


def test_when_the_tracer_detaches_its_task_gets_its_holders_back() -> None:
    arb = host(ncpus=2)
    low = fill(arb, task(7), 2, on_evict=OnEvict.WAIT)
    arb.trace(7, "PID 4242 (gdb)", 1)
    events = arb.untrace(7, 2)
    assert sorted(affected(events, "reinstalled")) == sorted(low)
    assert arb.untrace(7, 3) == []  # no tracer, nothing to do


def test_tracing_and_what_is_kept_back_survive_a_snapshot() -> None:
    arb = host(ncpus=2)
    arb.configure(0, reserved_for_ptrace=1)
    arb.trace(7, "PID 4242 (gdb)", 1)
    twin = Arbiter.restore(arb.snapshot())
    assert (twin.reserved_for_ptrace, twin.traced) == (1, {7: "PID 4242 (gdb)"})
    assert twin.snapshot() == arb.snapshot()


def test_a_task_that_exits_is_no_longer_traced() -> None:
    arb = host(ncpus=2)
    arb.trace(7, "PID 4242 (gdb)", 1)
    arb.task_exited(7, 2)
    assert arb.traced == {}
