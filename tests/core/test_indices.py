"""Concrete register indices (DESIGN section 3): a task's allocations compact from DR0, CPU
allocations from the top with kernel space topmost; every change of index is a `moved` event
naming the registers held before, and nothing else moves."""

from __future__ import annotations

from typing import Any

from debugregd.core import Arbiter, Event, Request, State
from tests.core.build import KERNEL, USER, cpu, cpus, host, indices, request, task, types


def install(arb: Arbiter, req: Request) -> str:
    alloc, _ = arb.allocate(None, req, 0)
    assert alloc.state is State.INSTALLED
    return alloc.id


def moves(events: list[Event]) -> dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """For each `moved` event: (cpu, index) pairs before and after."""
    out = {}
    for e in events:
        if e.type == "moved":
            assert e.allocation is not None and e.data is not None
            before = sorted((r["cpu"], r["index"]) for r in e.data["previous"])
            after = sorted((r["cpu"], r["index"]) for r in e.allocation["registers"])
            out[e.allocation["id"]] = (before, after)
    return out


def test_a_tasks_allocations_are_packed_from_dr0_in_install_order() -> None:
    arb = host(ncpus=2)
    ids = [install(arb, request(task(1), USER + 8 * i)) for i in range(4)]
    for n in range(2):
        assert [indices(arb, a, n) for a in ids] == [[0], [1], [2], [3]]


def test_every_task_starts_at_dr0() -> None:
    arb = host()
    assert indices(arb, install(arb, request(task(1))), 0) == [0]
    assert indices(arb, install(arb, request(task(2))), 0) == [0]


def test_cpu_allocations_are_packed_from_the_top() -> None:
    arb = host()
    ids = [install(arb, request(cpu(0), USER + 8 * i)) for i in range(3)]
    assert [indices(arb, a) for a in ids] == [[3], [2], [1]]


def test_task_and_cpu_registers_never_overlap() -> None:
    arb = host()
    t = [install(arb, request(task(1), USER + 8 * i)) for i in range(2)]
    c = [install(arb, request(cpu(0), USER + 0x100 + 8 * i)) for i in range(2)]
    assert sorted(i for a in t + c for i in indices(arb, a)) == [0, 1, 2, 3]
    assert [indices(arb, a) for a in t] == [[0], [1]]


def test_kernel_space_cpu_allocations_are_topmost() -> None:
    arb = host()
    user = install(arb, request(cpu(0), USER))
    kernel, events = arb.allocate(None, request(cpu(0), KERNEL, 8), 1)
    assert indices(arb, kernel.id) == [3]
    assert indices(arb, user) == [2]
    assert types(events) == ["installed", "moved"]
    assert moves(events) == {user: ([(0, 3)], [(0, 2)])}


def test_a_multi_register_allocation_takes_consecutive_indices() -> None:
    arb = host()
    t = install(arb, request(task(1), 0x1004, 8))  # two registers
    c = install(arb, request(cpu(0), 0x2004, 8))
    assert sorted(indices(arb, t)) == [0, 1]
    assert sorted(indices(arb, c)) == [2, 3]


def test_release_compacts_a_task_downwards_and_emits_exactly_the_moved_events() -> None:
    arb = host(ncpus=2)
    a, b, c = (install(arb, request(task(1), USER + 8 * i)) for i in range(3))
    _, events = arb.release(a, 1)
    assert types(events) == ["released", "moved", "moved"]
    assert moves(events) == {
        b: ([(0, 1), (1, 1)], [(0, 0), (1, 0)]),
        c: ([(0, 2), (1, 2)], [(0, 1), (1, 1)]),
    }


def test_releasing_the_topmost_task_register_moves_nothing() -> None:
    arb = host()
    ids = [install(arb, request(task(1), USER + 8 * i)) for i in range(3)]
    _, events = arb.release(ids[-1], 1)
    assert types(events) == ["released"]


def test_release_compacts_cpu_holders_upwards_and_emits_exactly_the_moved_events() -> None:
    arb = host()
    a, b, c = (install(arb, request(cpu(0), USER + 8 * i)) for i in range(3))
    _, events = arb.release(a, 1)
    assert types(events) == ["released", "moved", "moved"]
    assert moves(events) == {b: ([(0, 2)], [(0, 3)]), c: ([(0, 1)], [(0, 2)])}


def test_releasing_a_kernel_cpu_register_moves_the_user_ones_back_up() -> None:
    arb = host()
    user = install(arb, request(cpu(0), USER))
    kernel = install(arb, request(cpu(0), KERNEL, 8))
    _, events = arb.release(kernel, 1)
    assert moves(events) == {user: ([(0, 2)], [(0, 3)])}


def test_indices_are_per_cpu_under_affinity_sets() -> None:
    arb = host(ncpus=2)
    pinned = install(arb, request(task(1, [1]), USER))
    everywhere = install(arb, request(task(1), USER + 8))
    assert indices(arb, pinned, 1) == [0]
    assert (indices(arb, everywhere, 0), indices(arb, everywhere, 1)) == ([0], [1])
    _, events = arb.release(pinned, 1)
    assert moves(events) == {everywhere: ([(0, 0), (1, 1)], [(0, 0), (1, 0)])}


def test_a_wide_allocation_is_placed_on_every_cpu_of_its_set() -> None:
    arb = host(ncpus=3)
    install(arb, request(cpu(1), USER))
    wide = install(arb, request(cpus([0, 1]), USER + 8))
    assert (indices(arb, wide, 0), indices(arb, wide, 1), indices(arb, wide, 2)) == ([3], [2], [])


def test_with_mode_switching_each_space_has_its_own_register_file() -> None:
    arb = host(mode_switching=True)
    user = install(arb, request(task(1), USER))
    kernel = install(arb, request(task(1), KERNEL, 8))
    assert indices(arb, user) == indices(arb, kernel) == [0]


def test_the_cpu_view_shows_every_register_index_by_index() -> None:
    arb = host()
    t = install(arb, request(task(7), USER))
    c = install(arb, request(cpu(0), USER + 8))
    view: dict[str, Any] = arb.cpu_view(0)["pools"]["dr"]
    assert view["slots"] == 4 and view["cpu_held"] == 1 and view["max_task_held"] == 1
    assert view["registers"] == [None, None, None, {"allocations": [c]}]
    assert view["tasks"] == {"7": [{"index": 0, "allocations": [t]}]}


def test_a_sharer_joining_a_moved_register_keeps_the_moved_event() -> None:
    arb = host(pools={"dr": 2})
    blocker = install(arb, request(cpu(0), 0x9001, 2, priority=900, evictable=False))
    first, _ = arb.allocate(None, request(cpu(0), 0x2000, priority=500, wait=True), 1)
    arb.allocate(None, request(cpu(0), KERNEL, 8, priority=400, wait=True), 2)
    arb.allocate(None, request(cpu(0), 0x2000, priority=300, wait=True), 3)  # shares with first
    _, events = arb.release(blocker, 4)
    # `first` is installed at DR1, then the kernel one takes DR1 and pushes it to DR0, then
    # `second` shares DR0 with it.
    announced = {e.allocation["id"]: e.allocation["registers"] for e in events if e.allocation}
    assert indices(arb, first.id) == [0]
    assert [r["index"] for r in announced[first.id]] == [0], "no `moved` event for the move"
