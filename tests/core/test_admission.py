"""The count rule (DESIGN section 3), per pool, on every CPU a scope touches:

    cpu_held(c) + max over tasks T that may run on c of task_held(T, c) <= slots

Tasks never compete with one another; a CPU request competes with the fullest task. Requests that
could never be satisfied on this host are InvalidRequest (HTTP 422), not refusals.
"""

from __future__ import annotations

import pytest

from debugregd.core import Access, Arbiter, InvalidRequest, NotFound, Refused, Request, Scope, State
from tests.core.build import KERNEL, USER, cpu, cpus, host, request, task


def fill(arb: Arbiter, requests: list[Request]) -> None:
    """Install every request (each must be admitted)."""
    for n, req in enumerate(requests):
        alloc, _ = arb.allocate(None, req, float(n))
        assert alloc.state is State.INSTALLED


def watches(scope: Scope, count: int, base: int = USER) -> list[Request]:
    """`count` distinct one-register watches in one scope."""
    return [request(scope, base + 8 * i) for i in range(count)]


def assert_refused_and_unchanged(arb: Arbiter, req: Request) -> None:
    before = arb.snapshot()
    with pytest.raises(Refused):
        arb.allocate(None, req, 100.0)
    assert arb.snapshot() == before


# ------------------------------------------------------------------ the count rule


def test_tasks_never_compete_with_each_other() -> None:
    arb = host(ncpus=1)
    for tid in (1, 2, 3, 4, 5):
        for i in range(4):
            alloc, _ = arb.allocate(None, request(task(tid), USER + 8 * i), 0)
            assert alloc.state is State.INSTALLED


def test_a_task_gets_at_most_slots_registers() -> None:
    arb = host(ncpus=2)
    fill(arb, watches(task(1), 4))
    assert_refused_and_unchanged(arb, request(task(1), USER + 0x100))


def test_a_task_request_counts_the_cpu_held_registers_and_its_own_only() -> None:
    arb = host(ncpus=1)
    fill(arb, watches(cpu(0), 2, base=USER + 0x800))
    fill(arb, watches(task(1), 2))
    fill(arb, watches(task(2), 2))  # task 2 does not see task 1's two
    assert_refused_and_unchanged(arb, request(task(1), USER + 0x100))
    assert_refused_and_unchanged(arb, request(task(2), USER + 0x100))
    arb.allocate(None, request(task(3), USER + 0x100), 0)
    arb.allocate(None, request(task(3), USER + 0x108), 0)


def test_a_cpu_request_competes_with_the_fullest_task() -> None:
    arb = host(ncpus=1)
    fill(arb, watches(task(1), 3))
    fill(arb, watches(task(2), 1))
    arb.allocate(None, request(cpu(0), USER + 0x800), 0)  # 1 + 3 = 4
    assert_refused_and_unchanged(arb, request(cpu(0), USER + 0x808))


def test_a_cpu_request_fits_beside_tasks_that_are_not_full() -> None:
    arb = host(ncpus=1)
    for tid in (1, 2, 3):
        fill(arb, watches(task(tid), 2))
    fill(arb, watches(cpu(0), 2, base=USER + 0x800))
    assert_refused_and_unchanged(arb, request(cpu(0), USER + 0x900))
    assert_refused_and_unchanged(arb, request(task(2), USER + 0x900))


def test_a_task_pinned_to_one_cpu_counts_only_there() -> None:
    arb = host(ncpus=2)
    fill(arb, watches(task(1, [1]), 4))
    fill(arb, watches(cpu(0), 4, base=USER + 0x800))  # CPU 0 does not see task 1
    assert_refused_and_unchanged(arb, request(cpu(1), USER + 0x900))


def test_a_task_without_affinity_is_checked_on_every_cpu() -> None:
    arb = host(ncpus=2)
    fill(arb, watches(cpu(1), 4, base=USER + 0x800))
    assert_refused_and_unchanged(arb, request(task(1), USER))
    alloc, _ = arb.allocate(None, request(task(1, [0]), USER), 0)
    assert alloc.state is State.INSTALLED


def test_a_task_counts_per_cpu_across_affinity_sets() -> None:
    arb = host(ncpus=2)
    fill(arb, watches(task(1, [0]), 3))
    fill(arb, watches(task(1, [1]), 3, base=USER + 0x100))
    arb.allocate(None, request(task(1), USER + 0x200), 0)  # 4 on each CPU now
    assert_refused_and_unchanged(arb, request(task(1, [0]), USER + 0x300))
    assert_refused_and_unchanged(arb, request(task(1, [1]), USER + 0x300))


def test_a_cpus_request_is_all_or_nothing() -> None:
    arb = host(ncpus=3)
    fill(arb, watches(cpu(2), 4, base=USER + 0x800))
    assert_refused_and_unchanged(arb, request(cpus(), USER))
    assert_refused_and_unchanged(arb, request(cpus([0, 2]), USER))
    alloc, _ = arb.allocate(None, request(cpus([0, 1]), USER), 0)
    assert sorted(r["cpu"] for r in alloc.registers()) == [0, 1]


def test_a_wide_cpus_allocation_competes_with_the_fullest_task_on_each_cpu() -> None:
    arb = host(ncpus=2)
    fill(arb, watches(task(1, [0]), 4))
    assert_refused_and_unchanged(arb, request(cpus(), USER + 0x800))
    arb.allocate(None, request(cpus([1]), USER + 0x800), 0)


def test_a_multi_register_range_needs_room_for_all_its_registers() -> None:
    arb = host(ncpus=1)
    fill(arb, watches(task(1), 3))
    assert_refused_and_unchanged(arb, request(task(1), 0x1004, 8))  # two registers
    alloc, _ = arb.allocate(None, request(task(1), 0x1008, 8), 0)
    assert alloc.weight == 1


def test_pools_are_counted_separately_on_arm64() -> None:
    arb = host("arm64", ncpus=1, pools={"brp": 2, "wrp": 2})
    for i in range(2):
        arb.allocate(None, request(task(1), 0x400000 + 4 * i, 4, Access.EXEC), 0)
        arb.allocate(None, request(cpu(0), 0x2000 + 8 * i, 8), 0)
    assert_refused_and_unchanged(arb, request(task(1), 0x400100, 4, Access.EXEC))
    assert_refused_and_unchanged(arb, request(cpu(0), 0x3000, 8))


def test_arm64_a_full_data_pool_does_not_stop_instruction_breakpoints() -> None:
    arb = host("arm64", ncpus=1, pools={"brp": 2, "wrp": 2})
    fill(arb, [request(cpu(0), 0x2000 + 8 * i, 8) for i in range(2)])
    for i in range(2):
        alloc, _ = arb.allocate(None, request(cpu(0), 0x400000 + 4 * i, 4, Access.EXEC), 0)
        assert alloc.pool == "brp"


def test_x86_exec_and_data_share_dr0_to_dr3() -> None:
    arb = host(ncpus=1)
    fill(arb, [request(task(1), 0x400000 + i, 1, Access.EXEC) for i in range(2)])
    fill(arb, watches(task(1), 2))
    assert_refused_and_unchanged(arb, request(task(1), 0x400100, 1, Access.EXEC))


def test_without_mode_switching_kernel_and_user_share_one_budget() -> None:
    arb = host(ncpus=1)
    fill(arb, watches(task(1), 2))
    fill(arb, [request(cpu(0), KERNEL + 8 * i, 8) for i in range(2)])
    assert_refused_and_unchanged(arb, request(cpu(0), KERNEL + 0x100, 8))
    assert_refused_and_unchanged(arb, request(task(1), USER + 0x100))


def test_mode_switching_gives_kernel_and_user_separate_budgets() -> None:
    arb = host(ncpus=1, mode_switching=True)
    fill(arb, watches(cpu(0), 4))
    fill(arb, [request(cpu(0), KERNEL + 8 * i, 8) for i in range(4)])
    assert_refused_and_unchanged(arb, request(cpu(0), USER + 0x100))
    assert_refused_and_unchanged(arb, request(cpu(0), KERNEL + 0x100, 8))
    assert_refused_and_unchanged(arb, request(task(1), KERNEL + 0x200, 8))


def test_mode_switching_a_task_gets_the_full_file_in_each_space() -> None:
    arb = host(ncpus=1, mode_switching=True)
    fill(arb, watches(task(1), 4))
    fill(arb, [request(task(1), KERNEL + 8 * i, 8) for i in range(4)])
    assert_refused_and_unchanged(arb, request(task(1), USER + 0x100))
    assert_refused_and_unchanged(arb, request(task(1), KERNEL + 0x100, 8))


# ------------------------------------------------------------------ invalid requests (422)


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(request(task(1), 0x1001, 32), id="needs-more-registers-than-the-pool"),
        pytest.param(request(task(1), 0x0000800000000000, 8), id="non-canonical"),
        pytest.param(request(task(1), 0x7FFFFFFFEFFC, 8), id="crosses-user-into-kernel"),
        pytest.param(request(task(1, [])), id="empty-affinity"),
        pytest.param(request(cpus([])), id="empty-cpu-set"),
        pytest.param(request(task(1), 0x401000, 4, Access.EXEC), id="exec-length-not-1"),
        pytest.param(request(task(1), USER, 0), id="length-0"),
        pytest.param(request(task(0)), id="tid-0"),
        pytest.param(request(task(1 << 31)), id="tid-beyond-32-bits"),
        pytest.param(request(task(1), -8, 8), id="negative-address"),
    ],
)
def test_a_request_that_can_never_be_satisfied_is_invalid_and_stores_nothing(
    req: Request,
) -> None:
    arb = host(ncpus=2)
    before = arb.snapshot()
    with pytest.raises(InvalidRequest):
        arb.allocate(None, req, 0)
    assert arb.snapshot() == before


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(request(cpu(2)), id="unknown-cpu"),
        pytest.param(request(task(1, [0, 5])), id="unknown-cpu-in-affinity"),
        pytest.param(request(cpus([1, 2])), id="unknown-cpu-in-cpu-set"),
    ],
)
def test_a_cpu_the_host_does_not_have_is_not_found_and_stores_nothing(req: Request) -> None:
    # Like a task that does not exist: well formed, and valid on a host with more CPUs.
    arb = host(ncpus=2)
    before = arb.snapshot()
    with pytest.raises(NotFound, match=r"CPU [25] does not exist"):
        arb.allocate(None, req, 0)
    assert arb.snapshot() == before


def test_exec_on_a_profile_without_instruction_breakpoints_is_invalid() -> None:
    arb = host("ppc64")
    with pytest.raises(InvalidRequest, match="no instruction breakpoints"):
        arb.allocate(None, request(task(1), 0x401000, 4, Access.EXEC), 0)


def test_an_invalid_request_is_invalid_even_when_it_asks_to_wait() -> None:
    arb = host()
    with pytest.raises(InvalidRequest):
        arb.allocate(None, request(task(1), 0x1001, 32, wait=True), 0)
    assert arb.waiting() == []


def test_a_host_has_at_least_one_cpu() -> None:
    with pytest.raises(InvalidRequest):
        Arbiter(None, 0)
