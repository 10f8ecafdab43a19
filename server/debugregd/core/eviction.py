"""Choosing victims: the cheapest set of strictly-lower, evictable holders that makes room.

Only the counts decide whether there is room (juggling indices is free and always comes first), so a
plan is needed only when the admission inequality fails. Cheapest means fewest victims, then the
lowest priorities, then the most recently installed (DESIGN section 4). Equal priority never
evicts; a non-evictable holder is never a victim.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from debugreg.limits import MAX_BLOCKERS
from debugregd.core.admission import PoolBudget
from debugregd.core.model import Watchpoint

# The exact search for the cheapest victim set gives up after visiting this many subsets and falls
# back to a greedy cover (pruned of redundant victims): a bound on the time one decision may take.
SEARCH_BUDGET = 20_000
# Wide CPU holders considered as a group when a CPU-set request is planned (2^6 trial plans).
WIDE_LIMIT = 6


@dataclass(slots=True)
class Plan:
    """What admitting a request takes: nothing, some victims, or it cannot fit (blockers)."""

    fits: bool
    victims: list[Watchpoint] = field(default_factory=list)
    blockers: list[Watchpoint] = field(default_factory=list)


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


def _exact_cover(ranked: list[Watchpoint], needs: dict[int, int]) -> list[Watchpoint] | None:
    """The cheapest cover by iterative deepening on its size, with a capacity bound; None when
    the search budget runs out first."""
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
        if visited > SEARCH_BUDGET:
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


def _cheapest_cover(candidates: list[Watchpoint], needs: dict[int, int]) -> list[Watchpoint]:
    """The cheapest subset of `candidates` freeing `needs[cpu]` registers on each CPU (the caller
    checked that all of them together suffice)."""
    ranked = sorted(candidates, key=_preference)
    exact = _exact_cover(ranked, needs)
    if exact is not None:
        return exact
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


def plan_task(
    budget: PoolBudget,
    tid: int,
    cpus: tuple[int, ...],
    weight: int,
    priority: int,
    exclude: Collection[Watchpoint] = (),
    keep: Collection[Watchpoint] = (),
) -> Plan:
    """Room for `weight` registers of task `tid` on `cpus`, as if `exclude` were gone, never
    evicting `keep` (watchpoints the request joins rather than adds)."""
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
    return Plan(True, victims=_cheapest_cover(pool, needs))


def _take(
    wps: Iterable[Watchpoint], amount: int, priority: int, cpu: int
) -> list[Watchpoint] | None:
    """The cheapest evictable watchpoints freeing `amount` registers on `cpu`, or None."""
    if amount <= 0:
        return []
    eligible = [wp for wp in wps if may_evict(wp, priority)]
    if sum(wp.weight for wp in eligible) < amount:
        return None
    return _cheapest_cover(eligible, {cpu: amount})


def _plan_one_cpu(
    budget: PoolBudget, cpu: int, weight: int, priority: int, taken: dict[Watchpoint, None]
) -> Plan:
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
    for level in range(min(top, room), -1, -1):
        # Bring every task on this CPU down to `level`, and CPU holders to `room - level`.
        victims = (
            []
            if cpu_used + level <= room
            else _take(cpu_wps, cpu_used + level - room, priority, cpu)
        )
        if victims is None:
            continue  # a lower level leaves more room for CPU holders
        trimmed: list[Watchpoint] | None = []
        for tid in budget.tasks_above(cpu, level):
            excess = count(tid) - level
            if excess <= 0:
                continue
            own = [wp for wp in budget.task_holders(tid, cpu) if wp not in taken]
            cut = _take(own, excess, priority, cpu)
            if cut is None:
                trimmed = None
                break
            assert trimmed is not None
            trimmed.extend(cut)
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
    return Plan(True, victims=best)


def _plan_cpus(
    budget: PoolBudget,
    cpus: tuple[int, ...],
    weight: int,
    priority: int,
    taken: dict[Watchpoint, None],
) -> Plan:
    """Plan CPU by CPU, each CPU seeing the victims already chosen (starting with `taken`)."""
    taken = dict(taken)
    for cpu in cpus:
        plan = _plan_one_cpu(budget, cpu, weight, priority, taken)
        if not plan.fits:
            return plan
        for wp in plan.victims:
            taken[wp] = None
    return Plan(True, victims=list(taken))


def plan_cpu(budget: PoolBudget, cpus: tuple[int, ...], weight: int, priority: int) -> Plan:
    """Room for `weight` CPU-held registers on every CPU of `cpus` (all or nothing).

    Exact for one CPU; for a CPU set, CPUs are planned in order (a victim chosen for one CPU also
    frees the others it covers), with small sets of wide holders tried first as well.
    """
    if budget.cpu_fits(cpus, weight):
        return FIT
    plan = _plan_cpus(budget, cpus, weight, priority, {})
    if not plan.fits:
        return plan
    victims = plan.victims
    if len(cpus) > 1:
        # Planning CPU by CPU misses wide holders that free several CPUs at once: try taking
        # each small set of them first and keep the cheapest whole plan.
        wide = [
            wp
            for wp in {w: None for c in cpus for w in budget.cpu_holders(c)}
            if len(wp.cpus) > 1 and may_evict(wp, priority)
        ][:WIDE_LIMIT]
        for size in range(1, len(wide) + 1):
            for first in combinations(wide, size):
                trial = _plan_cpus(budget, cpus, weight, priority, dict.fromkeys(first))
                if trial.fits and _cost(trial.victims) < _cost(victims):
                    victims = trial.victims
        # When CPU holders alone can make room, the cheapest cover over all the CPUs at once
        # may beat both (it sees beyond WIDE_LIMIT wide holders).
        needs = {c: budget.used(c) + weight - budget.slots for c in cpus}
        needs = {c: n for c, n in needs.items() if n > 0}
        held = {wp: None for c in needs for wp in budget.cpu_holders(c) if may_evict(wp, priority)}
        if _covers(held, needs):
            cover = _cheapest_cover(list(held), needs)
            if _cost(cover) < _cost(victims):
                victims = cover
    return Plan(True, victims=victims)
