"""The raw x86 ABI: DR0-DR3 and DR7 written as a ptrace user writes them (DESIGN section 8).

`dr7.py` decodes the registers; this module turns one write into allocations at ptrace priority,
all or nothing: registers the write leaves unchanged keep their allocations, identical registers
share one watchpoint, and what no longer appears is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from debugreg.priorities import Priority
from debugregd.core import dr7 as dr7_abi
from debugregd.core import eviction, views
from debugregd.core.errors import Forbidden, InvalidRequest, Refused
from debugregd.core.model import Event, OnEvict, Request, Scope, Session, Watchpoint, share_key
from debugregd.core.profiles import Space
from debugregd.core.states import Trigger

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter


@dataclass(slots=True)
class RawTask:
    """A task's debug registers as its ptrace user last wrote them (DESIGN section 8)."""

    tid: int
    session: str | None
    addresses: tuple[int, int, int, int] = (0, 0, 0, 0)
    dr7: int = 0
    allocations: dict[int, str] = field(default_factory=dict)  # DRn -> allocation id

    def to_dict(self) -> dict[str, Any]:
        return {
            "tid": self.tid,
            "session": self.session,
            "addresses": list(self.addresses),
            "dr7": self.dr7,
            "allocations": {str(n): a for n, a in self.allocations.items()},
        }


def set_debugregs(
    arb: Arbiter,
    session_id: str | None,
    tid: int,
    addresses: tuple[int, int, int, int],
    dr7: int,
    now: float,
) -> list[Event]:
    """Apply a ptrace-style write of DR0-DR3 and DR7 for task `tid` at ptrace
    priority, all or nothing. Unchanged registers keep their allocations."""
    if arb.profile.name != "x86_64":
        raise InvalidRequest("the raw DR0-DR7 ABI exists only on the x86_64 profile")
    arb.check_tid(tid)
    session = None if session_id is None else arb.session(session_id)
    _check_grant(session, "writing")
    slots = dr7_abi.decode(dr7, addresses)
    raw = arb.raw.get(tid)
    if raw is not None and raw.session != session_id and session_id is not None:
        raise Forbidden(f"task {tid}'s debug registers belong to another session")
    old = dict(raw.allocations) if raw else {}
    keep: dict[int, str] = {}
    wanted: list[dr7_abi.RawSlot] = []
    for slot in slots:
        aid = old.get(slot.index)
        current = arb.allocations.get(aid) if aid else None
        if current is not None and (current.address, current.length, current.access) == (
            slot.address,
            slot.length,
            slot.access,
        ):
            keep[slot.index] = current.id
        else:
            wanted.append(slot)
    dropped = [
        arb.allocations[aid] for n, aid in old.items() if n not in keep and aid in arb.allocations
    ]
    if session is not None and len(wanted) > len(dropped):
        arb.check_allocation_limit(session, len(wanted) - len(dropped))
    key = arb.budget_key(arb.profile.data_pool, Space.USER)
    budget = arb.budgets[key]
    everywhere = arb.all_cpus
    # A register goes away only when every allocation sharing it is being replaced.
    leaving = {a.id for a in dropped}
    exclude = list(
        {
            a.watchpoint: None
            for a in dropped
            if a.watchpoint is not None and all(h.id in leaving for h in a.watchpoint.holders)
        }
    )
    going = set(exclude)
    # Identical DRs share one register: the new ones, in DR order (the kernel is asked in that
    # order, so a replay asks the same).
    needed: dict[tuple[Any, ...], Watchpoint] = {}
    joined: dict[Watchpoint, None] = {}  # registers already there that a DR shares
    for s in wanted:
        chunks = ((s.address, s.length),)
        share = share_key(key, tid, everywhere, chunks, s.access, True)
        existing = arb.shared.get(share)
        if existing is not None and existing not in going:
            joined[existing] = None
        elif share not in needed:
            needed[share] = arb.new_watchpoint(share, budget, tid, everywhere, 1, Space.USER)
    weight = len(needed)
    kept = {
        share_key(key, tid, everywhere, a.chunks, a.access, True)
        for a in (arb.allocations[i] for i in keep.values())
    }
    if len(needed.keys() | kept) > budget.slots:
        raise InvalidRequest(
            f"dr7 enables {len(needed.keys() | kept)} different watchpoints but this host "
            f"has {budget.slots} debug registers"
        )
    # A register the write shares is counted as staying: evicting it would take the register
    # the write was promised.
    plan = eviction.plan_task(
        budget, tid, everywhere, weight, Priority.PTRACE, exclude, keep=joined
    )
    if not plan.fits:
        raise Refused(
            f"the debug registers written for task {tid} do not fit at ptrace priority",
            views.name_blockers(plan.blockers),
        )
    if needed or plan.victims or exclude:
        arb.raise_unless_armed(arb.kernel.arm(tuple(needed.values()), [*exclude, *plan.victims]))
    op = arb.begin(now)
    for alloc in dropped:
        op.finish(alloc, Trigger.RELEASE, "replaced by a debug register write")
    op.evict_all(
        plan.victims,
        f"evicted to make room for a debug register write at priority {int(Priority.PTRACE)}",
        {"allocation": None, "session": session_id, "tid": tid},
    )
    if raw is None:
        raw = arb.raw[tid] = RawTask(tid, session_id)
    raw.session, raw.addresses, raw.dr7, raw.allocations = session_id, addresses, dr7, keep
    for slot in wanted:
        request = Request(
            Scope.task(tid),
            slot.address,
            slot.length,
            slot.access,
            int(Priority.PTRACE),
            True,
            OnEvict.WAIT,
            False,
            f"ptrace DR{slot.index}",
        )
        chunks = ((slot.address, slot.length),)
        alloc = arb.new_allocation(session, request, arb.profile.data_pool, Space.USER, chunks, now)
        share = share_key(key, tid, everywhere, chunks, slot.access, True)
        wp = needed.get(share) or arb.shared[share]
        op.install(alloc, wp, budget, Trigger.ADMIT)
        raw.allocations[slot.index] = alloc.id
    raw.allocations = dict(sorted(raw.allocations.items()))
    return op.end()


def debugregs(arb: Arbiter, tid: int, session_id: str | None = None) -> dict[str, Any]:
    """DR0-DR3 and DR7 as last written, with the allocation behind each enabled register, read
    by session `session_id` (None: the admin)."""
    if session_id is not None:
        _check_grant(arb.session(session_id), "reading")
    raw = arb.raw.get(tid) or RawTask(tid, None)
    out: dict[str, Any] = {f"dr{n}": raw.addresses[n] for n in range(4)}
    out["dr7"] = raw.dr7
    out["tid"] = tid
    out["session"] = raw.session
    out["allocations"] = {f"dr{n}": aid for n, aid in raw.allocations.items()}
    return out


def _check_grant(session: Session | None, doing: str) -> None:
    """Forbidden unless `session` (None: the admin) holds the ptrace grant the raw ABI needs."""
    if session is not None and session.max_priority < Priority.PTRACE:
        raise Forbidden(
            f"{doing} raw debug registers needs a session with max_priority ptrace (700) or "
            "more; open the session with the admin key to get that grant"
        )


__all__ = ["RawTask", "debugregs", "set_debugregs"]
