"""The sim backend is a fake kernel: Linux's count rule, written apart from the core's, with users
outside debugregd injected into it, so every truthfulness rule is tested on any machine."""

from __future__ import annotations

import pytest

from debugregd.backends import SimBackend, Targets, make_backend
from debugregd.backends.sim import NoRoomToInject
from debugregd.core import Access, Arbiter, NotFound, Request, Scope, make_profile
from debugregd.core.errors import KernelRefused

WORD = 0x7F00_0000_1000


def host(ncpus: int = 2) -> tuple[Arbiter, SimBackend]:
    arb, sim = Arbiter(ncpus=ncpus), SimBackend(ncpus=ncpus)
    arb.kernel = sim
    return arb, sim


def watch(scope: Scope, n: int = 0, priority: int = 300) -> Request:
    return Request(scope, WORD + 8 * n, 8, Access.WRITE, priority)


def test_make_backend_builds_the_fake_kernel_for_the_host() -> None:
    sim = make_backend("sim", make_profile("arm64"), 3)
    assert isinstance(sim, SimBackend)
    assert sim.slots == {"brp": 6, "wrp": 4}
    assert sim.probe()["cpus_online"] == 3


def test_what_the_core_installs_is_armed_and_what_it_releases_is_not() -> None:
    arb, sim = host()
    alloc, _ = arb.allocate(None, watch(Scope.task(7)), 0.0)
    assert set(sim.armed_allocations()) == {alloc.id}
    arb.release(alloc.id, 1.0)
    assert sim.armed_allocations() == {}


def test_a_reservation_is_counted_by_the_core_but_never_armed() -> None:
    arb, sim = host()
    request = watch(Scope.task(7))
    request.arm = False
    alloc, _ = arb.allocate(None, request, 0.0)
    assert alloc.watchpoint is not None and not alloc.watchpoint.armed
    assert sim.armed_allocations() == {}


def test_the_fake_kernel_refuses_what_outside_users_hold_and_says_where() -> None:
    arb, sim = host()
    sim.inject("dr", None, (0, 1), 2)  # perf record -a with two watchpoints
    for n in range(2):
        arb.allocate(None, watch(Scope.task(7), n), 0.0)
    with pytest.raises(KernelRefused) as refused:
        arb.allocate(None, watch(Scope.task(7), 2), 0.0)
    assert refused.value.measured.cpus == {0: 2, 1: 2}
    assert refused.value.measured.tasks == {7: 0}
    assert len(arb.allocations) == 2  # the refused one left no trace


def test_an_outside_user_that_does_not_fit_is_refused_by_the_fake_kernel() -> None:
    arb, sim = host()
    for n in range(4):
        arb.allocate(None, watch(Scope.cpu(0), n), 0.0)
    with pytest.raises(NoRoomToInject):
        sim.inject("dr", 9, (0, 1), 1)  # gdb on a task that may run on CPU 0
    sim.inject("dr", 9, (1,), 1)


def test_measuring_tells_cpu_wide_users_from_task_ones() -> None:
    _, sim = host()
    sim.inject("dr", None, (1,), 1)
    sim.inject("dr", 9, (0, 1), 2)
    (m,) = sim.measure({"dr": Targets(cpus={0, 1}, tasks={9}, others={0, 1})})
    assert (m.cpus, m.tasks, m.others) == ({0: 0, 1: 1}, {9: 2}, {0: 2, 1: 2})


def test_an_exited_task_is_not_found() -> None:
    arb, sim = host()
    sim.exit_task(7)
    with pytest.raises(NotFound, match="no such task 7"):
        arb.allocate(None, watch(Scope.task(7)), 0.0)


def test_close_disarms_everything() -> None:
    arb, sim = host()
    arb.allocate(None, watch(Scope.cpu(1)), 0.0)
    sim.close()
    assert sim.armed_allocations() == {}
    assert sim.registers["dr"].cpu == [0, 0]
