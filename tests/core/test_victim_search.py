"""The victim search (DESIGN section 4, `core/eviction.py`): which strategy chose a plan's victims,
and what each one guarantees.

Exactness is given up in two places. A cover search that would visit more than SEARCH_BUDGET
subsets falls back to a greedy cover (`greedy`: valid, none of its victims redundant, not
necessarily the cheapest); a CPU-set request that needs room on several CPUs is planned CPU by CPU
(`per_cpu`: valid, not necessarily the cheapest). Everything else is `exact`. Each test below
forces one strategy and checks its promise against the brute-force oracle; the properties run
generated hosts large enough that the greedy fallback is dearer than the exact search, so they fail
with a search budget of 0.
"""

from __future__ import annotations

from functools import partial
from random import Random

import pytest
from hypothesis import Phase, event, example, find, given, settings, target
from hypothesis import strategies as st

from debugregd.core import Arbiter, Request, eviction
from debugregd.core.eviction import SEARCH_BUDGET, WIDE_LIMIT, Plan, Strategy
from tests.core.build import (
    BACKGROUND,
    CRITICAL,
    NORMAL,
    PTRACE,
    USER,
    cpu,
    cpus,
    host,
    request,
    task,
)
from tests.core.oracle import (
    Holder,
    cheapest_victims,
    demand,
    fits,
    holders,
    may_evict,
    slots_of,
    victim_cost,
)
from tests.core.test_eviction import (
    WIDE_CPUS,
    assert_cheapest,
    fill,
    install,
    overlapping_wide_holders,
    wide_holders,
)

Cost = tuple[int, tuple[int, ...]]


def plan_for(arb: Arbiter, req: Request, search_budget: int = SEARCH_BUDGET) -> Plan:
    """The core's plan for `req` on `arb` as it stands, with the search budget given."""
    d = demand(arb, req)
    assert not any(h.key == d.key for h in holders(arb)), "a request that shares plans nothing"
    budget = arb.budgets[d.budget]
    if d.tid is None:
        return eviction.plan_cpu(budget, d.cpus, d.weight, d.priority, search_budget=search_budget)
    return eviction.plan_task(
        budget, d.tid, d.cpus, d.weight, d.priority, search_budget=search_budget
    )


def victims_of(arb: Arbiter, plan: Plan) -> list[Holder]:
    """The plan's victims as the oracle sees them, from the allocations sharing each."""
    ids = {a.id for wp in plan.victims for a in wp.holders}
    victims = [h for h in holders(arb) if ids & set(h.allocations)]
    assert len(victims) == len(plan.victims), "a victim named twice, or not installed"
    return victims


def cost(arb: Arbiter, plan: Plan) -> Cost:
    return victim_cost(victims_of(arb, plan))


def cheapest(arb: Arbiter, req: Request) -> Cost | None:
    return cheapest_victims(arb, holders(arb), demand(arb, req))


def makes_room(arb: Arbiter, req: Request, gone: list[Holder]) -> bool:
    d = demand(arb, req)
    rest = [h for h in holders(arb) if h not in gone]
    return fits(rest, d.budget, slots_of(arb, d.budget), d.tid, d.cpus, d.weight)


def assert_valid(arb: Arbiter, req: Request, plan: Plan) -> list[Holder]:
    """What every strategy guarantees: the victims make room, and each is evictable and of a
    strictly lower priority than the request."""
    assert plan.fits
    victims = victims_of(arb, plan)
    assert all(may_evict(v, req.priority) for v in victims), "a victim not strictly lower"
    assert makes_room(arb, req, victims), "the victims do not make room"
    return victims


def assert_none_spared(arb: Arbiter, req: Request, victims: list[Holder]) -> None:
    """What a greedy cover adds: it is pruned, so no victim could have been kept."""
    for v in victims:
        assert not makes_room(arb, req, [u for u in victims if u is not v]), f"{v} was spared"


# ------------------------------------------------------------------ one test per strategy


def test_a_plan_that_evicts_nothing_names_no_strategy() -> None:
    arb = host()
    assert plan_for(arb, request(task(1))).strategy is None
    install(arb, request(cpu(0), 0x1000, 32, priority=CRITICAL))
    refused = plan_for(arb, request(task(1), priority=PTRACE))
    assert not refused.fits and refused.strategy is None


def test_a_task_request_is_planned_exactly() -> None:
    arb = fill(WIDE_CPUS, overlapping_wide_holders())
    req = request(task(9), 0x9000, priority=PTRACE)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.EXACT
    assert_valid(arb, req, plan)
    assert cost(arb, plan) == cheapest(arb, req) == (2, (BACKGROUND, BACKGROUND))


def test_past_the_search_budget_a_greedy_cover_is_valid_and_pruned_but_not_the_cheapest() -> None:
    """The holder on CPUs 0-3 frees the most, so greedy takes it, then one-CPU holders on CPUs
    4 and 5; the cheapest is the two holders that free three CPUs each."""
    arb = fill(WIDE_CPUS, overlapping_wide_holders())
    req = request(task(9), 0x9000, priority=PTRACE)
    plan = plan_for(arb, req, search_budget=0)
    assert plan.strategy is Strategy.GREEDY
    victims = assert_valid(arb, req, plan)
    assert_none_spared(arb, req, victims)
    assert cost(arb, plan) == (3, (BACKGROUND,) * 3)
    assert cheapest(arb, req) == (2, (BACKGROUND,) * 2)
    assert (0, 1, 2, 3) in {v.cpus for v in victims}


def test_a_greedy_cover_drops_the_victims_that_later_ones_make_redundant() -> None:
    """As above, but the two holders of three CPUs are the most recent, so greedy takes them
    after the one on CPUs 0-3 (instead of one-CPU holders), which they make redundant: pruned,
    the greedy cover is the cheapest here."""
    held = overlapping_wide_holders()
    arb = fill(WIDE_CPUS, held[:1] + held[3:] + held[1:3])
    req = request(task(9), 0x9000, priority=PTRACE)
    plan = plan_for(arb, req, search_budget=0)
    assert plan.strategy is Strategy.GREEDY
    victims = assert_valid(arb, req, plan)
    assert sorted(v.cpus for v in victims) == [(0, 1, 4), (2, 3, 5)]
    assert cost(arb, plan) == cheapest(arb, req)


def test_the_default_search_budget_gives_up_on_a_host_of_many_full_cpus() -> None:
    """A profiler holding three registers on each of 16 CPUs, and a debugger's task watching
    two: one victim per CPU is needed, and an exact search over 48 candidates would visit
    far more than SEARCH_BUDGET subsets to prove that no 15 of them do."""
    ncpus = 16
    arb = host(ncpus=ncpus)
    for n in range(ncpus):
        for i in range(3):
            install(arb, request(cpu(n), 0x1000 + 8 * i, priority=BACKGROUND + i))
    install(arb, request(task(7), 0x2000, priority=PTRACE))
    req = request(task(7), 0x3000, priority=PTRACE)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.GREEDY
    victims = assert_valid(arb, req, plan)
    assert_none_spared(arb, req, victims)
    # Here greedy is also the cheapest: the lowest priority on each CPU.
    assert cost(arb, plan) == (ncpus, (BACKGROUND,) * ncpus)


def test_a_one_cpu_request_is_planned_exactly() -> None:
    arb = host()
    for i in range(2):
        install(arb, request(task(1), USER + 8 * i, priority=BACKGROUND))
    install(arb, request(cpu(0), 0x1001, 2, priority=NORMAL))  # two registers
    req = request(cpu(0), 0x9001, 2, priority=PTRACE)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.EXACT
    assert_valid(arb, req, plan)
    assert cost(arb, plan) == cheapest(arb, req) == (1, (NORMAL,))
    fallback = plan_for(arb, req, search_budget=0)
    assert fallback.strategy is Strategy.GREEDY
    assert_valid(arb, req, fallback)


def test_a_cpus_request_that_needs_room_on_one_cpu_only_is_planned_exactly() -> None:
    arb = host(ncpus=2, pools={"dr": 2})
    install(arb, request(cpu(0), 0x1000, priority=BACKGROUND))
    install(arb, request(cpu(0), 0x1008, priority=NORMAL))
    req = request(cpus(), 0x9000, priority=PTRACE)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.EXACT
    assert cost(arb, plan) == cheapest(arb, req) == (1, (BACKGROUND,))


def test_a_cpus_request_that_needs_room_on_several_cpus_is_planned_cpu_by_cpu() -> None:
    """Exact here: one wide holder frees both CPUs, and the wide holders are tried first."""
    arb = host(ncpus=2, pools={"dr": 2})
    install(arb, request(cpus(), 0x3000, priority=BACKGROUND))
    install(arb, request(cpu(0), 0x1000, priority=BACKGROUND))
    install(arb, request(cpu(1), 0x2000, priority=BACKGROUND))
    req = request(cpus(), 0x4000, priority=PTRACE)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.PER_CPU
    assert_valid(arb, req, plan)
    assert cost(arb, plan) == cheapest(arb, req) == (1, (BACKGROUND,))


def test_planning_cpu_by_cpu_misses_a_task_watchpoint_that_frees_every_cpu() -> None:
    """Where `per_cpu` is not the cheapest: on each CPU alone, the one-CPU holder at 100 is
    cheaper than cutting the task's watchpoint at 200, but one cut of the task frees both CPUs.
    Only wide CPU holders are tried first, never a task's watchpoints."""
    arb = host(ncpus=2)
    install(arb, request(cpu(0), 0x1000, priority=BACKGROUND))
    install(arb, request(cpu(1), 0x2000, priority=BACKGROUND))
    for i in range(3):
        install(arb, request(task(1), USER + 8 * i, priority=200))
    req = request(cpus(), 0x9000, priority=PTRACE)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.PER_CPU
    assert_valid(arb, req, plan)
    assert cost(arb, plan) == (2, (BACKGROUND, BACKGROUND))
    assert cheapest(arb, req) == (1, (200,))


def test_the_wide_holders_tried_first_free_the_most_cpus_needing_room_whatever_the_order() -> None:
    """Six wide holders each on one CPU that needs room (installed first), then one on both:
    only taking that one first, with one cut of each task, makes room with three victims.
    Install order would try the first six and settle for four (or three dearer ones)."""
    assert WIDE_LIMIT == 6
    arb = host("arm64", ncpus=3, pools={"wrp": 10})
    decoys = [
        install(arb, request(cpus([0, 2]), 0x1000 + 8 * i, 8, priority=300)) for i in range(6)
    ]
    wide = install(arb, request(cpus([0, 1]), 0x2000, 8, priority=200))
    install(arb, request(cpu(0), 0x3000, 8, priority=CRITICAL))
    for i in range(7):
        install(arb, request(cpu(1), 0x3100 + 8 * i, 8, priority=CRITICAL))
    trims = {}
    for tid, n in ((1, 0), (2, 1)):
        for i in range(2):
            trims[tid] = install(arb, request(task(tid, [n]), 0x4000 + 8 * i, 8, priority=100))
    req = request(cpus([0, 1]), 0x9000, 16, priority=PTRACE)  # two registers on each
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.PER_CPU
    victims = assert_valid(arb, req, plan)
    gone = {aid for v in victims for aid in v.allocations}
    assert gone == {wide, trims[1], trims[2]}
    assert not gone & set(decoys)
    assert cost(arb, plan) == cheapest(arb, req) == (3, (200, 100, 100))


def test_a_search_budget_of_0_breaks_the_cheapest_victims_property(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So the property tests can tell: the arbiter, given the greedy fallback at once, evicts a
    dearer set than the oracle's cheapest on a known host, and `assert_cheapest` says so."""
    req = request(task(9), 0x9000, priority=PTRACE)
    assert_cheapest(fill(WIDE_CPUS, overlapping_wide_holders()), req)
    monkeypatch.setattr(eviction, "plan_task", partial(eviction.plan_task, search_budget=0))
    with pytest.raises(AssertionError):
        assert_cheapest(fill(WIDE_CPUS, overlapping_wide_holders()), req)


# ------------------------------------------------------------------ generated hosts


def task_requests() -> st.SearchStrategy[Request]:
    return st.builds(
        lambda tid, length, priority: request(task(tid), 0x9000, length, priority=priority),
        st.integers(1, 4),
        st.sampled_from([1, 2, 16]),
        st.sampled_from([350, 700, 700]),
    )


def cpu_requests(ncpus: int = WIDE_CPUS) -> st.SearchStrategy[Request]:
    scopes = st.one_of(
        st.builds(cpu, st.integers(0, ncpus - 1)),
        st.none().map(cpus),
        st.sets(st.integers(0, ncpus - 1), min_size=2, max_size=4).map(sorted).map(cpus),
    )
    return st.builds(
        lambda scope, length, priority: request(scope, 0x9000, length, priority=priority),
        scopes,
        st.sampled_from([1, 16]),
        st.sampled_from([350, 700, 700]),
    )


Planned = tuple[Arbiter, Cost, Plan, Plan]


def planned(held: list[Request], req: Request) -> Planned | None:
    """The host of `held`, the cheapest cost of `req`'s victims on it, and the core's plan with
    the default search budget and with none; None (checked) when `req` fits or is refused."""
    arb = fill(WIDE_CPUS, held)
    best = cheapest(arb, req)
    plan = plan_for(arb, req)
    fallback = plan_for(arb, req, search_budget=0)
    if best is None:
        assert not plan.fits and not fallback.fits, "admitted, but no set of victims makes room"
        return None
    if best == (0, ()):
        assert plan is fallback is eviction.FIT
        return None
    assert fallback.strategy is Strategy.GREEDY
    return arb, best, plan, fallback


@settings(max_examples=100, deadline=None)
@example(held=overlapping_wide_holders(), req=request(task(9), 0x9000, priority=PTRACE))
@given(held=wide_holders(), req=task_requests())
def test_an_exact_plan_is_the_cheapest_and_the_greedy_fallback_is_valid_and_never_cheaper(
    held: list[Request], req: Request
) -> None:
    if (case := planned(held, req)) is None:
        return
    arb, best, plan, fallback = case
    assert_none_spared(arb, req, assert_valid(arb, req, fallback))
    assert_valid(arb, req, plan)
    if plan.strategy is Strategy.EXACT:
        assert cost(arb, plan) == best <= cost(arb, fallback)
    else:  # a host crowded enough that even the default budget runs out
        assert plan.strategy is Strategy.GREEDY
        assert cost(arb, plan) >= best
        event("the default search budget ran out")
    extra = len(fallback.victims) - len(plan.victims)
    target(float(extra), label="victims the greedy fallback takes beyond the exact search")
    if cost(arb, fallback) > best:
        event("the greedy fallback is dearer than the cheapest")


@settings(max_examples=60, deadline=None)
@given(held=wide_holders(), req=cpu_requests())
def test_a_cpu_request_plan_is_valid_and_the_cheapest_when_it_says_exact(
    held: list[Request], req: Request
) -> None:
    if (case := planned(held, req)) is None:
        return
    arb, best, plan, fallback = case
    assert_valid(arb, req, fallback)
    assert_valid(arb, req, plan)
    assert cost(arb, plan) >= best
    event(f"strategy: {plan.strategy}")
    if plan.strategy is Strategy.EXACT:
        assert cost(arb, plan) == best
        assert cost(arb, fallback) >= best
    else:
        # Several CPUs need room: each step exact given the ones before, not the cheapest.
        assert plan.strategy is Strategy.PER_CPU
        assert req.scope.cpus is None or len(req.scope.cpus) > 1
        if cost(arb, plan) > best:
            event("planned CPU by CPU, dearer than the cheapest")


def test_the_generated_hosts_tell_the_exact_search_from_the_greedy_fallback() -> None:
    """The properties above could not tell a greedy cover from an exact one on hosts of two
    CPUs; among the hosts they now generate is one where the fallback is dearer than the
    cheapest (found within a fixed seed's first examples, so a budget of 0 fails them)."""

    def fallback_is_dearer(case: tuple[list[Request], Request]) -> bool:
        held, req = case
        arb = fill(WIDE_CPUS, held)
        best = cheapest(arb, req)
        fallback = plan_for(arb, req, search_budget=0)
        return best is not None and fallback.fits and cost(arb, fallback) > best

    held, req = find(
        st.tuples(wide_holders(), task_requests()),
        fallback_is_dearer,
        settings=settings(max_examples=500, phases=[Phase.generate], database=None),
        random=Random(0),
    )
    arb = fill(WIDE_CPUS, held)
    plan = plan_for(arb, req)
    assert plan.strategy is Strategy.EXACT
    assert cost(arb, plan) == cheapest(arb, req) < cost(arb, plan_for(arb, req, search_budget=0))
