"""Differential test against Linux's hw_breakpoint admission (DESIGN section 3).

With all priorities equal and no waiting, debugregd must accept and refuse exactly where the
kernel's perf_event_open does. The reference below is the inequality written out directly over a
flat list of live breakpoints, with no counters, histograms or indices: for every CPU c a request
touches, in its pool,

    cpu_pinned(c) + (task request: that task's own count on c;
                     CPU request: the largest count of any one task on c) + weight <= slots
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debugregd.core import Access, Refused, Request, Scope, State
from tests.core.build import host, request


@dataclass(frozen=True)
class Breakpoint:
    """One admitted request as the kernel would see it: weight registers on each CPU of `cpus`."""

    pool: str
    tid: int | None  # None: CPU-pinned
    cpus: tuple[int, ...]
    weight: int


def linux_admits(live: list[Breakpoint], new: Breakpoint, slots: int) -> bool:
    for c in new.cpus:
        here = [bp for bp in live if bp.pool == new.pool and c in bp.cpus]
        cpu_pinned = sum(bp.weight for bp in here if bp.tid is None)
        if new.tid is not None:
            other = sum(bp.weight for bp in here if bp.tid == new.tid)
        else:
            tids = {bp.tid for bp in here if bp.tid is not None}
            other = max((sum(bp.weight for bp in here if bp.tid == t) for t in tids), default=0)
        if cpu_pinned + other + new.weight > slots:
            return False
    return True


@dataclass(frozen=True)
class Host:
    profile: str
    ncpus: int
    pools: dict[str, int]
    # (offset, length, access, pool, registers it takes), worked out by hand from DESIGN 2 and 7.
    ranges: tuple[tuple[int, int, Access, str, int], ...]


X86_RANGES = (
    (0x0, 1, Access.WRITE, "dr", 1),
    (0x0, 8, Access.RW, "dr", 1),
    (0x1, 2, Access.WRITE, "dr", 2),
    (0x6, 4, Access.RW, "dr", 2),
    (0x3, 9, Access.WRITE, "dr", 3),
    (0x0, 32, Access.WRITE, "dr", 4),
    (0x0, 1, Access.EXEC, "dr", 1),
)
ARM64_RANGES = (
    (0x0, 8, Access.WRITE, "wrp", 1),
    (0x4, 8, Access.RW, "wrp", 2),
    (0x7, 10, Access.WRITE, "wrp", 3),
    (0x0, 4, Access.EXEC, "brp", 1),
    (0x4, 4, Access.EXEC, "brp", 1),
)
HOSTS = {
    "x86_64-1cpu": Host("x86_64", 1, {}, X86_RANGES),
    "x86_64-2cpus": Host("x86_64", 2, {}, X86_RANGES),
    "x86_64-3cpus": Host("x86_64", 3, {}, X86_RANGES),
    "arm64-2cpus": Host("arm64", 2, {"brp": 2, "wrp": 3}, ARM64_RANGES),
}


Range = tuple[int, int, Access, str, int]
Step = tuple[Scope, Range] | int  # a request, or the release of the n-th live allocation


def scopes(ncpus: int) -> st.SearchStrategy[Scope]:
    cpu_sets = st.none() | st.sets(st.integers(0, ncpus - 1), min_size=1).map(tuple)
    return st.one_of(
        st.builds(Scope.task, st.integers(1, 4), cpu_sets),
        st.builds(Scope.cpu, st.integers(0, ncpus - 1)),
        st.builds(Scope.cpu_set, cpu_sets),
    )


def programs(spec: Host) -> st.SearchStrategy[list[Step]]:
    request_step = st.tuples(scopes(spec.ncpus), st.sampled_from(spec.ranges))
    release_step = st.integers(0, 1 << 16)
    return st.lists(
        st.one_of(request_step, request_step, request_step, release_step), min_size=20, max_size=50
    )


PROGRAMS = {name: programs(spec) for name, spec in HOSTS.items()}


@pytest.mark.parametrize("name", sorted(HOSTS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_admission_equals_linux_hw_breakpoint_with_equal_priorities(
    name: str, data: st.DataObject
) -> None:
    spec = HOSTS[name]
    arb = host(spec.profile, spec.ncpus, spec.pools)
    live: dict[str, Breakpoint] = {}
    for step, item in enumerate(data.draw(PROGRAMS[name], label="program")):
        if isinstance(item, int):
            if live:
                aid = sorted(live)[item % len(live)]
                arb.release(aid, float(step))
                del live[aid]
            continue
        scope, (offset, length, access, pool, weight) = item
        # A fresh address every time: identical watchpoints would share, which perf does not.
        req: Request = request(scope, 0x100000 + 0x100 * step + offset, length, access)
        cpus = tuple(range(spec.ncpus)) if scope.cpus is None else scope.cpus
        bp = Breakpoint(pool, scope.tid, cpus, weight)
        expected = linux_admits(list(live.values()), bp, arb.profile.pools[pool])
        try:
            alloc, _ = arb.allocate(None, req, float(step))
        except Refused:
            assert not expected, f"step {step}: refused {req}, which Linux admits"
            continue
        assert expected, f"step {step}: admitted {req}, which Linux refuses"
        assert alloc.state is State.INSTALLED and alloc.weight == weight
        live[alloc.id] = bp
    assert {a.id for a in arb.allocations.values()} == set(live)


def test_the_reference_counts_a_task_only_against_itself() -> None:
    live = [Breakpoint("dr", 1, (0,), 4), Breakpoint("dr", None, (1,), 1)]
    assert linux_admits(live, Breakpoint("dr", 2, (0,), 4), 4)
    assert not linux_admits(live, Breakpoint("dr", 1, (0,), 1), 4)
    assert not linux_admits(live, Breakpoint("dr", None, (0,), 1), 4)
    assert linux_admits(live, Breakpoint("dr", None, (1,), 3), 4)
    assert not linux_admits(live, Breakpoint("dr", 3, (0, 1), 4), 4)


def test_equal_priorities_never_evict() -> None:
    arb = host()
    for i in range(4):
        arb.allocate(None, request(Scope.cpu(0), 0x1000 + 8 * i), 0)
    with pytest.raises(Refused):
        arb.allocate(None, request(Scope.task(1), 0x2000), 1)
