"""The arbiter's whole state as plain data, and back (DESIGN section 9).

`snapshot` captures everything a restored arbiter needs to behave identically, including the next
ids and the install order that fixes register indices; `restore` fills a new arbiter from it. The
daemon's journal writes a snapshot now and then so that a restart replays only what came after.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from debugregd.core import outside, registers
from debugregd.core.model import (
    Allocation,
    OutsideHolder,
    Request,
    ScopeKind,
    Session,
    Watchpoint,
    share_key,
)
from debugregd.core.profiles import Space
from debugregd.core.raw import RawTask
from debugregd.core.states import State

if TYPE_CHECKING:
    from debugregd.core.arbiter import Arbiter

VERSION = 1


def snapshot(arb: Arbiter) -> dict[str, Any]:
    """The whole state as plain data; `restore` rebuilds an identical arbiter from it."""
    wps: dict[Watchpoint, None] = {}
    for alloc in arb.allocations.values():
        if alloc.watchpoint is not None:
            wps[alloc.watchpoint] = None
    return {
        "version": VERSION,
        "profile": {"name": arb.profile.name, "pools": dict(arb.profile.pools)},
        "ncpus": arb.ncpus,
        "mode_switching": arb.mode_switching,
        "history_limit": arb.history_limit,
        "counters": {
            "event_id": arb.event_id,
            "generation": arb.generation,
            "seq": arb.seq,
            "allocation": arb.next_allocation,
            "session": arb.next_session,
        },
        "sessions": [s.to_dict() for s in arb.sessions.values()],
        "allocations": [_alloc_state(a) for a in arb.allocations.values()],
        "history": [_alloc_state(a) for a in arb.history.values()],
        "watchpoints": [
            {"seq": wp.seq, "holders": [a.id for a in wp.holders]}
            for wp in sorted(wps, key=lambda w: w.seq)
        ],
        "raw": [r.to_dict() for r in arb.raw.values()],
        "recheck": sorted(arb.recheck),
        "reserved_for_ptrace": arb.reserved_for_ptrace,
        "max_allocations_per_session": arb.max_allocations_per_session,
        "max_waiting_per_session": arb.max_waiting_per_session,
        "traced": {str(tid): tracer for tid, tracer in arb.traced.items()},
        "outside": [
            {
                "budget": budget,
                "kind": kind,
                "target": n,
                "measured": holder.measured,
                "registers": holder.held,
                "seq": None if holder.wp is None else holder.wp.seq,
                "since": holder.since,
            }
            for (budget, kind, n), holder in arb.outside.items()
        ],
    }


def restore(arb: Arbiter, data: dict[str, Any]) -> None:
    """Fill `arb`, new and made with the snapshot's profile, CPUs and settings, with the state
    `data` captured."""
    counters = data["counters"]
    arb.event_id = counters["event_id"]
    arb.generation = counters["generation"]
    arb.seq = counters["seq"]
    arb.next_allocation = counters["allocation"]
    arb.next_session = counters["session"]
    for s in data["sessions"]:
        session = Session(
            s["id"],
            s["name"],
            s["ttl_s"],
            s["expires_at"],
            s["created_at"],
            s["max_priority"],
            s["allow_non_evictable"],
            s["allow_kernel"],
            dict.fromkeys(s["allocations"]),
        )
        arb.sessions[session.id] = session
        heapq.heappush(arb.expiry, (session.expires_at, session.id))
    for item in data["allocations"]:
        alloc = _alloc_from_state(item)
        arb.allocations[alloc.id] = alloc
        if alloc.state is State.WAITING:
            arb.queue.add(alloc, arb.budget_key(alloc.pool, alloc.space))
    for item in data["history"]:
        alloc = _alloc_from_state(item)
        arb.history[alloc.id] = alloc
    # Watchpoints and outside holders go back in install order, which fixes their indices.
    placed: list[tuple[int, Watchpoint]] = []
    for w in data["watchpoints"]:
        holders = [arb.allocations[aid] for aid in w["holders"]]
        first = holders[0]
        budget = arb.budgets[arb.budget_key(first.pool, first.space)]
        cpus = arb.cpus_of(first.scope)
        tid = first.scope.tid if first.scope.kind is ScopeKind.TASK else None
        key = share_key(budget.name, tid, cpus, first.chunks, first.access, first.arm)
        wp = Watchpoint(
            key, budget.name, tid, cpus, first.weight, first.space is Space.KERNEL, w["seq"]
        )
        wp.holders.extend(holders)
        for alloc in holders:
            alloc.watchpoint = wp
        arb.shared[key] = wp
        placed.append((wp.seq, wp))
    for o in data.get("outside", ()):
        target = (o["kind"], o["target"])
        holder = OutsideHolder(target, o["measured"], o["since"])
        arb.outside[(o["budget"], *target)] = holder
        if o["registers"]:
            wp = holder.wp = outside.outside_watchpoint(arb, o["budget"], target, o["registers"])
            wp.seq = o["seq"]
            placed.append((wp.seq, wp))
    for _, wp in sorted(placed, key=lambda item: item[0]):
        budget = arb.budgets[wp.pool]
        budget.add(wp)
        registers.assign(budget, wp, lambda _wp: None)
    arb.recheck = set(data.get("recheck", ()))
    arb.reserved_for_ptrace = data.get("reserved_for_ptrace", 0)
    arb.max_allocations_per_session = data.get("max_allocations_per_session", 0)
    arb.max_waiting_per_session = data.get("max_waiting_per_session", 0)
    arb.traced = {int(tid): tracer for tid, tracer in data.get("traced", {}).items()}
    for r in data["raw"]:
        arb.raw[r["tid"]] = RawTask(
            r["tid"],
            r["session"],
            tuple(r["addresses"]),
            r["dr7"],
            {int(n): a for n, a in r["allocations"].items()},
        )


def _alloc_state(alloc: Allocation) -> dict[str, Any]:
    # A snapshot holds every history record (10,000 by default), so this builds the request's
    # plain form directly (as `Request.to_dict` writes it), and keeps StrEnum members, which are
    # their values, instead of reading `.value`.
    return {
        "id": alloc.id,
        "session": alloc.session,
        "request": {
            "scope": alloc.scope.to_dict(),
            "address": alloc.address,
            "length": alloc.length,
            "access": alloc.access,
            "priority": alloc.priority,
            "evictable": alloc.evictable,
            "on_evict": alloc.on_evict,
            "wait": alloc.wait,
            "label": alloc.label,
            "arm": alloc.arm,
        },
        "pool": alloc.pool,
        "space": alloc.space,
        "chunks": [list(c) for c in alloc.chunks],
        "seq": alloc.seq,
        "state": alloc.state,
        "generation": alloc.generation,
        "hits": alloc.hits,
        "hits_lost": alloc.hits_lost,
        "created_at": alloc.created_at,
        "updated_at": alloc.updated_at,
        "reason": alloc.reason,
    }


def _alloc_from_state(item: dict[str, Any]) -> Allocation:
    alloc = Allocation(
        item["id"],
        item["session"],
        Request.from_dict(item["request"]),
        item["pool"],
        Space(item["space"]),
        tuple((a, n) for a, n in item["chunks"]),
        item["seq"],
        item["created_at"],
    )
    alloc.state = None if item["state"] is None else State(item["state"])
    alloc.generation = item["generation"]
    alloc.updated_at = item["updated_at"]
    alloc.reason = item["reason"]
    alloc.hits = item.get("hits", 0)
    alloc.hits_lost = item.get("hits_lost", 0)
    return alloc


__all__ = ["restore", "snapshot"]
