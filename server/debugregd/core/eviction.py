"""Choosing victims: the cheapest set of strictly-lower, evictable holders that makes room.

Only the counts decide whether there is room (juggling indices is free and always comes first), so a
plan is needed only when the admission inequality fails. Cheapest means fewest victims, then the
lowest priorities, then the most recently installed (DESIGN section 4). Equal priority never
evicts; a non-evictable holder is never a victim.

The cheapest set is a weighted set cover, so the search is exact only within bounds, and every plan
that evicts says which `Strategy` chose its victims (and so what is guaranteed of them):

- `exact`: the cheapest set. A task request is one cover of the CPUs that need room; a one-CPU
  request tries each level its fullest tasks could be cut to, each level one cover of the CPU
  holders and one per task above it; a CPU-set request that needs room on one CPU only is that.
- `greedy`: a cover search visited more than `search_budget` subsets (SEARCH_BUDGET) and a greedy
  cover stood in for it (in any part of the plan: this label wins over the others). Still
  strictly-lower evictable victims that make room, none of them redundant within that cover, but
  not necessarily the cheapest.
- `per_cpu`: a CPU-set request that needs room on several CPUs, planned CPU by CPU (each step
  exact given the victims chosen before it), again after first taking each group of the
  WIDE_LIMIT wide CPU holders that free the most of those CPUs (the cheaper first among equals),
  and set against the cheapest cover by CPU holders alone; the cheapest of these plans is kept.
  Valid, but not necessarily the cheapest: a task's watchpoint that would free several of the
  CPUs at once is never taken first, nor a wide holder beyond WIDE_LIMIT.

Refusals are exact whatever the strategy: a request is refused only when evicting every
strictly-lower evictable holder would not make room either.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import combinations

from debugreg.limits import MAX_BLOCKERS
from debugregd.core.admission import PoolBudget
from debugregd.core.model import Watchpoint

# Where exactness is given up for time. One cover search (the victims of a task request, or of one
# part of a CPU request on one CPU) visits at most this many subsets, then a greedy cover stands in
# (`Strategy.GREEDY`). The bound is per search: a CPU request runs one per level and task on each
# CPU, and a CPU-set request repeats that for each group of wide holders.
SEARCH_BUDGET = 20_000
# A CPU-set request is planned CPU by CPU (`Strategy.PER_CPU`), and again after first taking each
# group of up to this many wide CPU holders (63 groups): those that free the most CPUs needing
# room, the cheaper first among equals (`_preference`), whatever their install order. Wide holders
# beyond them are never taken first.
WIDE_LIMIT = 6


class Strategy(StrEnum):
    """How a plan's victims were chosen: what is guaranteed of them (see the module docstring)."""

    EXACT = "exact"  # the cheapest set
    GREEDY = "greedy"  # a search ran out of budget: a valid cover, not necessarily cheapest
    PER_CPU = "per_cpu"  # a CPU set planned CPU by CPU: valid, not necessarily cheapest


_EXACT, _GREEDY, _PER_CPU = Strategy.EXACT, Strategy.GREEDY, Strategy.PER_CPU


@dataclass(slots=True)
class Plan:
    """What admitting a request takes: nothing, some victims, or it cannot fit (blockers).

    `strategy` says how the victims were chosen; None when there are none to choose (the request
    fits, or is refused)."""

    fits: bool
    victims: list[Watchpoint] = field(default_factory=list)
    blockers: list[Watchpoint] = field(default_factory=list)
    strategy: Strategy | None = None


FIT = Plan(True)


def may_evict(wp: Watchpoint, priority: int) -> bool:
    """A holder can be taken only by a strictly higher priority, and only if every allocation
    sharing it is evictable."""
    return wp.evictable and wp.priority < priority


def _preference(wp: Watchpoint) -> tuple[int, int]:
    return (wp.priority, -wp.seq)


def _cost(victims: Sequence[Watchpoint]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    return (
        len(victims),
        tuple(sorted((v.priority for v in victims), reverse=True)),
        tuple(sorted(-v.seq for v in victims)),
    )


def _covers(victims: Iterable[Watchpoint], needs: dict[int, int]) -> bool:
    for cpu, need in needs.items():
        freed = 0
        for v in victims:
            if cpu in v.indices:
                freed += v.weight
        if freed < need:
            return False
    return True


def _exact_cover(
    ranked: list[Watchpoint], needs: dict[int, int], search_budget: int
) -> list[Watchpoint] | None:
    """The cheapest cover by iterative deepening on its size, with a capacity bound; None when
    more than `search_budget` subsets would be visited first."""
    n = len(ranked)
    cpus = list(needs)
    # suffix[i][j]: registers candidates ranked[i:] free on cpus[j] (the pruning bound).
    suffix = [[0] * len(cpus) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        wp = ranked[i]
        for j, c in enumerate(cpus):
            suffix[i][j] = suffix[i + 1][j] + (wp.weight if c in wp.indices else 0)
    visited = 0
    best: list[Watchpoint] | None = None
    best_cost: tuple[int, tuple[int, ...], tuple[int, ...]] | None = None
    chosen: list[Watchpoint] = []

    def search(start: int, left: list[int], size: int) -> bool:
        nonlocal visited, best, best_cost
        visited += 1
        if visited > search_budget:
            return False
        if all(x <= 0 for x in left):
            cost = _cost(chosen)
            if best_cost is None or cost < best_cost:
                best, best_cost = list(chosen), cost
            return True
        if len(chosen) == size or any(x > 0 and suffix[start][j] < x for j, x in enumerate(left)):
            return True
        for i in range(start, n):
            wp = ranked[i]
            helps = [c in wp.indices and left[j] > 0 for j, c in enumerate(cpus)]
            if not any(helps):
                continue  # a victim that frees nothing needed only adds cost
            chosen.append(wp)
            ok = search(
                i + 1, [x - wp.weight if h else x for x, h in zip(left, helps, strict=True)], size
            )
            chosen.pop()
            if not ok:
                return False
        return True

    start = [needs[c] for c in cpus]
    for size in range(1, n + 1):
        if not search(0, start, size):
            return None
        if best is not None:
            return best
    return None


def _greedy_cover(ranked: list[Watchpoint], needs: dict[int, int]) -> list[Watchpoint]:
    """A cover built by taking the candidate that frees the most registers still needed (the
    cheaper first among equals), then pruned of every victim the others make redundant, the
    dearest tried first. Valid and without a redundant victim; not necessarily the cheapest."""
    chosen: list[Watchpoint] = []
    remaining = dict(needs)
    while remaining:
        best_gain, pick = 0, None
        for wp in ranked:
            if wp in chosen:
                continue
            gain = sum(min(wp.weight, n) for c, n in remaining.items() if c in wp.indices)
            if gain > best_gain:
                best_gain, pick = gain, wp
        assert pick is not None, "caller checked that all candidates together suffice"
        chosen.append(pick)
        for c in list(remaining):
            if c in pick.indices:
                remaining[c] -= pick.weight
                if remaining[c] <= 0:
                    del remaining[c]
    for wp in sorted(chosen, key=_preference, reverse=True):
        rest = [v for v in chosen if v is not wp]
        if _covers(rest, needs):
            chosen = rest
    return chosen


def _cheapest_cover(
    candidates: list[Watchpoint], needs: dict[int, int], search_budget: int
) -> tuple[list[Watchpoint], Strategy]:
    """The cheapest subset of `candidates` freeing `needs[cpu]` registers on each CPU (the caller
    checked that all of them together suffice), found exactly or, past `search_budget`, greedily."""
    ranked = sorted(candidates, key=_preference)
    exact = _exact_cover(ranked, needs, search_budget)
    if exact is not None:
        return exact, _EXACT
    return _greedy_cover(ranked, needs), _GREEDY


def plan_task(
    budget: PoolBudget,
    tid: int,
    cpus: tuple[int, ...],
    weight: int,
    priority: int,
    exclude: Collection[Watchpoint] = (),
    keep: Collection[Watchpoint] = (),
    *,
    search_budget: int = SEARCH_BUDGET,
) -> Plan:
    """Room for `weight` registers of task `tid` on `cpus`, as if `exclude` were gone, never
    evicting `keep` (watchpoints the request joins rather than adds). Exact unless the cover
    search visits more than `search_budget` subsets (then `Strategy.GREEDY`)."""
    slots = budget.slots
    needs: dict[int, int] = {}
    for c in cpus:
        used = budget.cpu_count(c) + budget.task_count(tid, c)
        for wp in exclude:
            if c in wp.indices and (wp.tid is None or wp.tid == tid):
                used -= wp.weight
        if used + weight > slots:
            needs[c] = used + weight - slots
    if not needs:
        return FIT
    candidates: dict[Watchpoint, None] = {}
    blockers: dict[Watchpoint, None] = {}
    for c in needs:
        for wp in budget.holders_on(c, tid):
            if wp in exclude or wp in keep:
                continue
            if may_evict(wp, priority):
                candidates[wp] = None
            else:
                blockers[wp] = None
    pool = list(candidates)
    for c, need in needs.items():
        if sum(wp.weight for wp in pool if c in wp.indices) < need:
            in_the_way = [b for b in blockers if c in b.indices]
            return Plan(False, blockers=in_the_way)
    victims, strategy = _cheapest_cover(pool, needs, search_budget)
    return Plan(True, victims=victims, strategy=strategy)


def _take(
    wps: Iterable[Watchpoint], amount: int, priority: int, cpu: int, search_budget: int
) -> tuple[list[Watchpoint], Strategy] | None:
    """The cheapest evictable watchpoints freeing `amount` registers on `cpu`, or None."""
    if amount <= 0:
        return [], _EXACT
    eligible = [wp for wp in wps if may_evict(wp, priority)]
    if sum(wp.weight for wp in eligible) < amount:
        return None
    return _cheapest_cover(eligible, {cpu: amount}, search_budget)


def _plan_one_cpu(
    budget: PoolBudget,
    cpu: int,
    weight: int,
    priority: int,
    taken: dict[Watchpoint, None],
    search_budget: int,
) -> Plan:
    """Exact (but for a cover past `search_budget`): each level is cheapest in its parts, which
    share no victim, and every level the fullest tasks could end at is tried."""
    room = budget.slots - weight
    cpu_wps = [wp for wp in budget.cpu_holders(cpu) if wp not in taken]
    cpu_used = sum(wp.weight for wp in cpu_wps)

    # Task counts on this CPU after the victims already chosen on other CPUs.
    freed: dict[int, int] = {}
    for wp in taken:
        if wp.tid is not None and cpu in wp.indices:
            freed[wp.tid] = freed.get(wp.tid, 0) + wp.weight

    def count(tid: int) -> int:
        return budget.task_count(tid, cpu) - freed.get(tid, 0)

    top = max((count(t) for t in budget.tasks_above(cpu, 0)), default=0)
    if cpu_used + top <= room:
        return FIT
    best: list[Watchpoint] | None = None
    # Any greedy cover, even at a level not kept, leaves the best level unproven.
    strategy = _EXACT
    for level in range(min(top, room), -1, -1):
        # Bring every task on this CPU down to `level`, and CPU holders to `room - level`.
        taken_here = (
            ([], _EXACT)
            if cpu_used + level <= room
            else _take(cpu_wps, cpu_used + level - room, priority, cpu, search_budget)
        )
        if taken_here is None:
            continue  # a lower level leaves more room for CPU holders
        victims = taken_here[0]
        if taken_here[1] is _GREEDY:
            strategy = _GREEDY
        trimmed: list[Watchpoint] | None = []
        for tid in budget.tasks_above(cpu, level):
            excess = count(tid) - level
            if excess <= 0:
                continue
            own = [wp for wp in budget.task_holders(tid, cpu) if wp not in taken]
            cut = _take(own, excess, priority, cpu, search_budget)
            if cut is None:
                trimmed = None
                break
            assert trimmed is not None
            trimmed.extend(cut[0])
            if cut[1] is _GREEDY:
                strategy = _GREEDY
        if trimmed is None:
            break  # this task cannot go lower, so no lower level works either
        victims.extend(trimmed)
        if best is None or _cost(victims) < _cost(best):
            best = victims
    if best is None:
        blockers = [wp for wp in cpu_wps if not may_evict(wp, priority)]
        for tid in budget.tasks_above(cpu, 0):
            blockers.extend(
                wp for wp in budget.task_holders(tid, cpu) if not may_evict(wp, priority)
            )
            if len(blockers) >= MAX_BLOCKERS:
                break
        return Plan(False, blockers=blockers)
    return Plan(True, victims=best, strategy=strategy)


def _plan_cpus(
    budget: PoolBudget,
    cpus: tuple[int, ...],
    weight: int,
    priority: int,
    taken: dict[Watchpoint, None],
    search_budget: int,
) -> Plan:
    """Plan CPU by CPU, each CPU seeing the victims already chosen (starting with `taken`). The
    plan says `Strategy.GREEDY` if any CPU's did, else `Strategy.EXACT`, true of one CPU only
    (`plan_cpu` says what holds for several)."""
    taken = dict(taken)
    strategy = _EXACT
    for cpu in cpus:
        plan = _plan_one_cpu(budget, cpu, weight, priority, taken, search_budget)
        if not plan.fits:
            return plan
        if plan.strategy is _GREEDY:
            strategy = _GREEDY
        for wp in plan.victims:
            taken[wp] = None
    return Plan(True, victims=list(taken), strategy=strategy)


def plan_cpu(
    budget: PoolBudget,
    cpus: tuple[int, ...],
    weight: int,
    priority: int,
    *,
    search_budget: int = SEARCH_BUDGET,
) -> Plan:
    """Room for `weight` CPU-held registers on every CPU of `cpus` (all or nothing).

    Exact when one CPU needs room (unless a cover search visits more than `search_budget` subsets:
    `Strategy.GREEDY`); when several do, planned CPU by CPU (`Strategy.PER_CPU`, see the module
    docstring), a victim chosen for one CPU also freeing the others it covers.
    """
    if budget.cpu_fits(cpus, weight):
        return FIT
    plan = _plan_cpus(budget, cpus, weight, priority, {}, search_budget)
    if not plan.fits or len(cpus) == 1:
        return plan
    slots = budget.slots
    needs = {c: n for c in cpus if (n := budget.used(c) + weight - slots) > 0}
    victims = plan.victims
    greedy = plan.strategy is _GREEDY
    # Planning CPU by CPU misses wide holders that free several CPUs at once: try taking each
    # small set of them first and keep the cheapest whole plan. Those freeing no CPU that needs
    # room would only add a victim; of the rest, those freeing the most such CPUs, then the
    # cheapest, are tried (a deterministic choice, whatever the install order).
    wide: dict[Watchpoint, int] = {}
    for c in needs:
        for wp in budget.cpu_holders(c):
            if len(wp.cpus) > 1 and may_evict(wp, priority):
                wide[wp] = wide.get(wp, 0) + 1
    tried = sorted(wide, key=lambda wp: (-wide[wp], *_preference(wp)))[:WIDE_LIMIT]
    for size in range(1, len(tried) + 1):
        for first in combinations(tried, size):
            trial = _plan_cpus(budget, cpus, weight, priority, dict.fromkeys(first), search_budget)
            greedy = greedy or trial.strategy is _GREEDY
            if trial.fits and _cost(trial.victims) < _cost(victims):
                victims = trial.victims
    # When CPU holders alone can make room, the cheapest cover over all the CPUs at once may
    # beat both (it sees beyond WIDE_LIMIT wide holders).
    held = {wp: None for c in needs for wp in budget.cpu_holders(c) if may_evict(wp, priority)}
    if _covers(held, needs):
        cover, how = _cheapest_cover(list(held), needs, search_budget)
        greedy = greedy or how is _GREEDY
        if _cost(cover) < _cost(victims):
            victims = cover
    # With one CPU needing room, every plan above is that CPU's exact plan or a dearer one.
    strategy = _GREEDY if greedy else _PER_CPU if len(needs) > 1 else _EXACT
    return Plan(True, victims=victims, strategy=strategy)
