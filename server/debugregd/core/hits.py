"""Hits: a watchpoint's reports of the accesses it caught (DESIGN section 16).

A hardware backend reports what it sampled (`report_hit`); the simulated one asks which installed
watchpoints a memory access would fire (`access`). Either way each report is one `hit` event on the
allocation, carrying the allocation's running totals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from debugregd.core.errors import InvalidRequest
from debugregd.core.model import Allocation, Event
from debugregd.core.profiles import Access
from debugregd.core.states import EventType

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter
    from debugregd.core.operation import Operation

ACCESSES = ("exec", "read", "write")


def access(
    arb: Arbiter,
    cpu: int,
    tid: int | None,
    address: int,
    length: int,
    kind: str,
    now: float,
    ip: int | None = None,
) -> tuple[list[str], list[Event]]:
    """A simulated memory access on `cpu` by task `tid` (from instruction `ip`): which installed
    watchpoints fire. Each reports it as the hardware's do (`report_hit`): one hit, from one
    call site."""
    arb.check_cpu(cpu)
    if kind not in ACCESSES:
        raise InvalidRequest(f"access must be one of {', '.join(ACCESSES)}, got {kind!r}")
    if length < 1:
        raise InvalidRequest(f"length must be at least 1, got {length}")
    end = address + length
    hits: list[Allocation] = []
    for budget in arb.budgets.values():
        for wp in budget.holders_on(cpu, tid):
            for alloc in wp.holders:
                if _triggers(alloc.access, kind) and any(
                    a < end and address < a + n for a, n in alloc.chunks
                ):
                    hits.append(alloc)
    hits.sort(key=lambda a: a.seq)
    site = {
        "ip": None if ip is None else f"0x{ip:x}",
        "pid": tid,
        "symbol": None,
        "mapping": None,
        "first": now,
        "last": now,
        "count": 1,
        "tids": [] if tid is None else [tid],
        "threads": 0 if tid is None else 1,
        "cpus": [cpu],
    }
    data = {
        "count": 1,
        "sampled": 1,
        "lost": 0,
        "interval_s": 0.0,
        "sites": [site],
        "other_sites": 0,
        "other_count": 0,
        "cpu": cpu,
        "tid": tid,
        "address": address,
        "length": length,
        "access": kind,
        "backend": "sim",
    }
    op = arb.begin(now)
    for alloc in hits:
        _hit(op, alloc, data)
    return [a.id for a in hits], op.end()


def report_hit(arb: Arbiter, allocation_id: str, now: float, data: dict[str, Any]) -> list[Event]:
    """Hits a hardware backend observed on an allocation (`data["count"]` of them, with
    `data["lost"]` samples lost): a `hit` event carrying them and the allocation's totals. The
    last report of a watch may come after it ended."""
    alloc = arb.allocation(allocation_id)
    op = arb.begin(now)
    _hit(op, alloc, data)
    return op.end()


def _hit(op: Operation, alloc: Allocation, data: dict[str, Any]) -> None:
    alloc.hits += int(data.get("count") or 0)
    alloc.hits_lost += int(data.get("lost") or 0)
    op.emit(EventType.HIT, alloc.session, alloc, {**data, "total": alloc.hits})


def _triggers(watched: Access, kind: str) -> bool:
    if watched is Access.EXEC:
        return kind == "exec"
    if watched is Access.WRITE:
        return kind == "write"
    return kind in ("read", "write")


__all__ = ["access", "report_hit"]
