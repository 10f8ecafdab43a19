"""A brute-force model of DESIGN sections 3-4, recomputed from the live allocation records.

Nothing here reads the arbiter's counters, histograms or watchpoint objects: holders are regrouped
from the public fields of installed allocations, and every decision is the admission inequality
evaluated directly, CPU by CPU and task by task. Tests compare the core against it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from debugregd.core import Allocation, Arbiter, Request, ScopeKind, Space, State

ShareKey = tuple[Any, ...]


@dataclass(frozen=True)
class Holder:
    """One occupied register set: the installed allocations that share it, seen from outside."""

    key: ShareKey
    budget: str
    tid: int | None  # None: CPU-held (`cpu` or `cpus` scope)
    cpus: tuple[int, ...]
    weight: int
    priority: int  # the highest priority among the sharers
    evictable: bool  # only if every sharer is evictable
    kernel: bool
    allocations: tuple[str, ...]
    generation: int  # the earliest generation among the sharers: install order


@dataclass(frozen=True)
class Demand:
    """What a request needs, worked out from the profile: where, how many registers, which key."""

    key: ShareKey
    budget: str
    tid: int | None
    cpus: tuple[int, ...]
    weight: int
    priority: int


def budget_of(arb: Arbiter, pool: str, space: Space) -> str:
    """The budget a pool and address space count in (separate per space with mode switching)."""
    return f"{pool}/{space.value}" if arb.mode_switching else pool


def cpus_of(arb: Arbiter, cpus: tuple[int, ...] | None) -> tuple[int, ...]:
    return tuple(range(arb.ncpus)) if cpus is None else tuple(sorted(set(cpus)))


def key_of(arb: Arbiter, alloc: Allocation) -> ShareKey:
    """Identical watchpoints of one scope: same budget, task, CPUs, chunks and access."""
    tid = alloc.scope.tid if alloc.scope.kind is ScopeKind.TASK else None
    return (
        budget_of(arb, alloc.pool, alloc.space),
        tid,
        cpus_of(arb, alloc.scope.cpus),
        tuple(alloc.chunks),
        alloc.access.value,
        alloc.arm,
    )


def holders(arb: Arbiter) -> list[Holder]:
    """Every occupied register set, from the installed allocations alone."""
    groups: dict[ShareKey, list[Allocation]] = {}
    for alloc in arb.allocations.values():
        if alloc.state is State.INSTALLED:
            groups.setdefault(key_of(arb, alloc), []).append(alloc)
    out = []
    for key, allocs in groups.items():
        first = allocs[0]
        out.append(
            Holder(
                key=key,
                budget=key[0],
                tid=key[1],
                cpus=key[2],
                weight=first.weight,
                priority=max(a.priority for a in allocs),
                evictable=all(a.evictable for a in allocs),
                kernel=first.space is Space.KERNEL,
                allocations=tuple(a.id for a in allocs),
                generation=min(a.generation for a in allocs),
            )
        )
    return out


def demand(arb: Arbiter, request: Request) -> Demand:
    """The registers `request` needs (raises the core's InvalidRequest for an invalid one)."""
    profile = arb.profile
    pool = profile.pool_for(request.access)
    space = profile.addresses.space_of(request.address, request.length)
    chunks = profile.chunks(request.address, request.length, request.access)
    scope = request.scope
    tid = scope.tid if scope.kind is ScopeKind.TASK else None
    budget = budget_of(arb, pool, space)
    cpus = cpus_of(arb, scope.cpus)
    key = (budget, tid, cpus, tuple(chunks), request.access.value, request.arm)
    return Demand(key, budget, tid, cpus, len(chunks), request.priority)


def usage(hs: Iterable[Holder], budget: str, cpu: int) -> tuple[int, Counter[int]]:
    """Registers held on `cpu` in `budget`: by CPU-scoped holders, and by each task."""
    cpu_held = 0
    tasks: Counter[int] = Counter()
    for h in hs:
        if h.budget != budget or cpu not in h.cpus:
            continue
        if h.tid is None:
            cpu_held += h.weight
        else:
            tasks[h.tid] += h.weight
    return cpu_held, tasks


def fits(
    hs: Sequence[Holder], budget: str, slots: int, tid: int | None, cpus: Iterable[int], weight: int
) -> bool:
    """The admission inequality on every CPU the scope touches: a task competes with its own
    count, a CPU request with the fullest task."""
    for c in cpus:
        cpu_held, tasks = usage(hs, budget, c)
        other = tasks[tid] if tid is not None else max(tasks.values(), default=0)
        if cpu_held + other + weight > slots:
            return False
    return True


def slots_of(arb: Arbiter, budget: str) -> int:
    return arb.profile.pools[budget.split("/")[0]]


def may_evict(h: Holder, priority: int) -> bool:
    return h.evictable and h.priority < priority


def fits_after_evicting_lower(arb: Arbiter, hs: Sequence[Holder], d: Demand) -> bool:
    """Whether `d` could be admitted once every strictly-lower evictable holder were gone (or it
    can share an identical watchpoint that is already installed)."""
    if any(h.key == d.key for h in hs):
        return True
    rest = [h for h in hs if not (h.budget == d.budget and may_evict(h, d.priority))]
    return fits(rest, d.budget, slots_of(arb, d.budget), d.tid, d.cpus, d.weight)


def fits_now(arb: Arbiter, hs: Sequence[Holder], d: Demand) -> bool:
    if any(h.key == d.key for h in hs):
        return True
    return fits(hs, d.budget, slots_of(arb, d.budget), d.tid, d.cpus, d.weight)


def victim_cost(victims: Iterable[Holder]) -> tuple[int, tuple[int, ...]]:
    """DESIGN section 4's order of preference, as far as it is unambiguous: fewest victims, then
    the lowest priorities (the highest priority evicted first, then the next)."""
    vs = list(victims)
    return len(vs), tuple(sorted((v.priority for v in vs), reverse=True))


def cheapest_victims(
    arb: Arbiter, hs: Sequence[Holder], d: Demand
) -> tuple[int, tuple[int, ...]] | None:
    """The cost of the cheapest set of strictly-lower evictable holders whose eviction admits
    `d`, by trying every subset; None when no set does."""
    slots = slots_of(arb, d.budget)
    if fits(hs, d.budget, slots, d.tid, d.cpus, d.weight):
        return (0, ())
    candidates = [h for h in hs if h.budget == d.budget and may_evict(h, d.priority)]
    if not fits([h for h in hs if h not in candidates], d.budget, slots, d.tid, d.cpus, d.weight):
        return None
    best: tuple[int, tuple[int, ...]] | None = None
    for size in range(1, len(candidates) + 1):
        for combo in combinations(candidates, size):
            rest = [h for h in hs if h not in combo]
            if fits(rest, d.budget, slots, d.tid, d.cpus, d.weight):
                cost = victim_cost(combo)
                if best is None or cost < best:
                    best = cost
        if best is not None:
            return best
    return None


def register_map(alloc: Allocation) -> dict[int, tuple[int, ...]]:
    """An allocation's register indices per CPU, from its public record."""
    out: dict[int, list[int]] = {}
    for reg in alloc.registers():
        out.setdefault(reg["cpu"], []).append(reg["index"])
    return {c: tuple(sorted(ix)) for c, ix in out.items()}


def normalise_registers(regs: Iterable[dict[str, Any]]) -> list[tuple[int, str, int]]:
    return sorted((r["cpu"], r["pool"], r["index"]) for r in regs)


def check_register_files(arb: Arbiter) -> None:
    """No CPU oversubscribed in any budget and every index where DESIGN section 3 puts it,
    recomputed from the live allocations."""
    installed = [a for a in arb.allocations.values() if a.state is State.INSTALLED]
    for alloc in arb.allocations.values():
        if alloc.state is State.WAITING:
            assert alloc.registers() == [], f"waiting {alloc.id} holds registers"
    by_key: dict[ShareKey, list[Allocation]] = {}
    for alloc in installed:
        by_key.setdefault(key_of(arb, alloc), []).append(alloc)
    for key, allocs in by_key.items():
        first = register_map(allocs[0])
        for other in allocs[1:]:
            assert register_map(other) == first, f"sharers of {key} hold different registers"
        assert set(first) == set(key[2]), f"{allocs[0].id} is not on exactly its CPUs"
        for ix in first.values():
            assert len(ix) == allocs[0].weight, f"{allocs[0].id} holds the wrong register count"
    hs = holders(arb)
    budgets = {
        budget_of(arb, pool, space)
        for pool in arb.profile.pools
        for space in (Space.USER, Space.KERNEL)
    }
    for budget in budgets:
        slots = slots_of(arb, budget)
        for cpu in range(arb.ncpus):
            cpu_held, tasks = usage(hs, budget, cpu)
            fullest = max(tasks.values(), default=0)
            assert cpu_held + fullest <= slots, (
                f"CPU {cpu} oversubscribed in {budget}: {cpu_held} CPU-held + {fullest} > {slots}"
            )
            cpu_ix: list[tuple[int, bool]] = []
            task_ix: dict[int, list[int]] = {}
            for h in hs:
                if h.budget != budget or cpu not in h.cpus:
                    continue
                ix = register_map(arb.allocations[h.allocations[0]])[cpu]
                if h.tid is None:
                    cpu_ix.extend((i, h.kernel) for i in ix)
                else:
                    task_ix.setdefault(h.tid, []).extend(ix)
            cpu_only = sorted(i for i, _ in cpu_ix)
            assert cpu_only == list(range(slots - cpu_held, slots)), (
                f"CPU {cpu} {budget}: CPU-held indices {cpu_only} are not the top {cpu_held}"
            )
            kernel = [i for i, k in cpu_ix if k]
            user = [i for i, k in cpu_ix if not k]
            assert not kernel or not user or min(kernel) > max(user), (
                f"CPU {cpu} {budget}: kernel-space CPU registers {kernel} are not above {user}"
            )
            for tid, held in task_ix.items():
                assert sorted(held) == list(range(tasks[tid])), (
                    f"CPU {cpu} {budget}: task {tid} indices {sorted(held)} are not compact from 0"
                )
                assert not set(held) & set(cpu_only), f"task {tid} overlaps CPU-held registers"
