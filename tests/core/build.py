"""Short constructors for hosts and requests, so each test states only what its rule is about."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from debugregd.core import (
    Access,
    Allocation,
    Arbiter,
    Event,
    OnEvict,
    Priority,
    Request,
    Scope,
    State,
    make_profile,
)

USER = 0x7FFD1000  # an ordinary user-space address
KERNEL = 0xFFFF800000001000  # the first page of canonical x86-64 kernel space
BACKGROUND, NORMAL, PTRACE, CRITICAL = (int(p) for p in Priority)


def host(
    profile: str = "x86_64",
    ncpus: int = 1,
    pools: Mapping[str, int] | None = None,
    *,
    mode_switching: bool = False,
) -> Arbiter:
    """An arbiter for a host with `ncpus` CPUs of one profile."""
    return Arbiter(make_profile(profile, pools), ncpus, mode_switching=mode_switching)


def request(
    scope: Scope,
    address: int = USER,
    length: int = 1,
    access: Access = Access.WRITE,
    *,
    priority: int = NORMAL,
    evictable: bool = True,
    on_evict: OnEvict = OnEvict.RELEASE,
    wait: bool = False,
    label: str = "",
) -> Request:
    return Request(scope, address, length, access, priority, evictable, on_evict, wait, label)


def task(tid: int, cpus: Iterable[int] | None = None) -> Scope:
    return Scope.task(tid, None if cpus is None else tuple(cpus))


def cpu(n: int) -> Scope:
    return Scope.cpu(n)


def cpus(ns: Iterable[int] | None = None) -> Scope:
    return Scope.cpu_set(None if ns is None else tuple(ns))


def types(events: Iterable[Event]) -> list[str]:
    return [e.type for e in events]


def affected(events: Iterable[Event], type_: str) -> list[str]:
    """Ids of the allocations that events of `type_` are about, in order."""
    return [e.allocation["id"] for e in events if e.type == type_ and e.allocation is not None]


def state(alloc: Allocation) -> State | None:
    """An allocation's state now (a call, so a type checker does not carry an earlier check)."""
    return alloc.state


def indices(arb: Arbiter, allocation_id: str, cpu_n: int = 0) -> list[int]:
    """The register indices an allocation holds on one CPU."""
    alloc = arb.allocation(allocation_id)
    return [r["index"] for r in alloc.registers() if r["cpu"] == cpu_n]
