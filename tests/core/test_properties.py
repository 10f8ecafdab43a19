"""Stateful properties: random operations on several hosts, every invariant after every step.

Each rule runs one core operation on the arbiter and, at the same time, on a twin restored from a
snapshot taken just before: the twin must return the same events and end in the same state
(`snapshot()` -> `Arbiter.restore()` round trips). Every check is recomputed by brute force from the
live allocation records (`tests.core.oracle`), never read from the arbiter's counters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from debugregd.core import (
    Access,
    Arbiter,
    CoreError,
    Event,
    OnEvict,
    Refused,
    Request,
    Scope,
    State,
)
from debugregd.core import dr7 as dr7_abi
from tests.core.build import KERNEL, host
from tests.core.lifecycle import Ledger
from tests.core.oracle import (
    Demand,
    Holder,
    budget_of,
    cheapest_victims,
    demand,
    fits,
    fits_after_evicting_lower,
    holders,
    may_evict,
    slots_of,
    victim_cost,
)
from tests.core.oracle import check_register_files as check_register_files_of

ADMIN_REASON = "property test admin eviction"
PRIORITIES = (100, 300, 300, 700, 900)
TIDS = (1, 2, 3)
TTL = 30.0

Op = Callable[[Arbiter], list[Event]]


class ArbiterMachine(RuleBasedStateMachine):
    """Drives one host; subclasses choose the profile and the ranges worth watching on it."""

    profile: ClassVar[str] = "x86_64"
    pools: ClassVar[dict[str, int]] = {}
    ncpus: ClassVar[int] = 2
    mode_switching: ClassVar[bool] = False
    ranges: ClassVar[tuple[tuple[int, int, Access], ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.arb = host(self.profile, self.ncpus, self.pools, mode_switching=self.mode_switching)
        self.ledger = Ledger(self.arb)
        self.now = 0.0
        self.sessions: list[str] = []
        # Waiters an admin requeued in the last operation that reconsidered waiters: that one
        # must not reinstall them; the next one must.
        self.admin_requeued: set[str] = set()

    # ------------------------------------------------------------------ running one operation

    def run(self, op: Op, *, admin: bool = False, serves: bool = True) -> list[Event] | CoreError:
        """Apply `op` to the arbiter and to a twin restored from a snapshot; check the events.

        `serves`: whether the operation is one that reconsiders waiters (every one but keepalive,
        which by contract causes no event). One that raises has changed nothing at all."""
        before = self.arb.snapshot()
        twin = Arbiter.restore(before)
        assert twin.snapshot() == before, "restore(snapshot()) is not the same state"
        try:
            events = op(self.arb)
        except CoreError as err:
            assert self.arb.snapshot() == before, f"{type(err).__name__} changed the state"
            try:
                op(twin)
            except CoreError as twin_err:
                assert type(twin_err) is type(err)
            else:
                raise AssertionError(f"the restored twin did not raise {err!r}") from None
            return err
        twin_events = op(twin)
        assert [e.to_dict() for e in twin_events] == [e.to_dict() for e in events], (
            "the restored twin returned different events for the same operation"
        )
        assert twin.snapshot() == self.arb.snapshot()
        self.ledger.follow(self.arb, events, ADMIN_REASON if admin else None)
        if not serves:
            return events
        self.admin_requeued = {
            e.allocation["id"]
            for e in events
            if admin
            and e.type == "evicted"
            and e.allocation is not None
            and e.allocation["state"] == "waiting"
            and (e.data or {}).get("reason") == ADMIN_REASON
        }
        return events

    def check_refusal(self, hs: list[Holder], d: Demand, blockers: list[dict[str, Any]]) -> None:
        """A refusal (or a queued request) must be right: no eviction of strictly-lower
        evictable holders would make room, and each holder it names really is in the way."""
        assert not fits_after_evicting_lower(self.arb, hs, d), (
            f"refused {d}, which fits after evicting strictly-lower evictable holders"
        )
        by_alloc = {aid: h for h in hs for aid in h.allocations}
        for blocker in blockers:
            h = by_alloc[blocker["allocation"]]
            assert not may_evict(h, d.priority), f"named {h} could have been evicted"

    def check_victims(self, hs: list[Holder], d: Demand, evicted: set[str]) -> None:
        """The victims of an admission are strictly lower and evictable, and as cheap as the
        cheapest set a search over every subset finds, except for a CPU-set request that needs
        room on several CPUs: planned CPU by CPU, it may be dearer (never cheaper)."""
        victims = [h for h in hs if evicted & set(h.allocations)]
        for v in victims:
            assert may_evict(v, d.priority), f"evicted {v} for priority {d.priority}"
        best = cheapest_victims(self.arb, hs, d)
        assert best is not None, f"evicted for {d}, which no set of victims makes room for"
        slots = slots_of(self.arb, d.budget)
        crowded = [c for c in d.cpus if not fits(hs, d.budget, slots, d.tid, (c,), d.weight)]
        cost = victim_cost(victims)
        if d.tid is not None or len(crowded) == 1:
            assert cost == best, f"evicted a set of cost {cost}, the cheapest costs {best}"
        else:
            assert cost >= best, f"evicted a set of cost {cost}, below the cheapest {best}"
            event("allocate: planned CPU by CPU")

    # ------------------------------------------------------------------ rules

    def open_sessions(self) -> list[str]:
        return sorted(self.arb.sessions)

    @initialize(grants=st.booleans())
    def open_first_session(self, grants: bool) -> None:
        self.open_session(grants)

    @rule(grants=st.sampled_from([True, True, False]))
    def open_session(self, grants: bool) -> None:
        def op(arb: Arbiter) -> list[Event]:
            kw: dict[str, Any] = {}
            if grants:
                kw = {"max_priority": 1000, "allow_non_evictable": True, "allow_kernel": True}
            return arb.open_session("prop", TTL, self.now, **kw)[1]

        events = self.run(op)
        assert not isinstance(events, CoreError)
        self.sessions.append(events[0].session or "")

    ALLOCATE = rule(
        data=st.data(),
        kind=st.sampled_from(["task", "task", "task", "cpu", "cpus"]),
        tid=st.sampled_from(TIDS),
        priority=st.sampled_from(PRIORITIES),
        evictable=st.sampled_from([True, True, True, False]),
        on_evict=st.sampled_from(list(OnEvict)),
        wait=st.booleans(),
    )

    @ALLOCATE
    def allocate_more(
        self,
        data: st.DataObject,
        kind: str,
        tid: int,
        priority: int,
        evictable: bool,
        on_evict: OnEvict,
        wait: bool,
    ) -> None:
        """A second rule with the same body, so that allocation is the most frequent step."""
        self.allocate(data, kind, tid, priority, evictable, on_evict, wait)

    @ALLOCATE
    def allocate(
        self,
        data: st.DataObject,
        kind: str,
        tid: int,
        priority: int,
        evictable: bool,
        on_evict: OnEvict,
        wait: bool,
    ) -> None:
        all_cpus = list(range(self.ncpus))
        if kind == "task":
            affinity = data.draw(st.none() | st.sets(st.sampled_from(all_cpus), min_size=1))
            scope = Scope.task(tid, None if affinity is None else tuple(affinity))
        elif kind == "cpu":
            scope = Scope.cpu(data.draw(st.sampled_from(all_cpus)))
        else:
            chosen = data.draw(st.none() | st.sets(st.sampled_from(all_cpus), min_size=1))
            scope = Scope.cpu_set(None if chosen is None else tuple(chosen))
        address, length, access = data.draw(st.sampled_from(self.ranges))
        session = data.draw(st.sampled_from([None, *self.open_sessions(), *self.open_sessions()]))
        if data.draw(st.integers(0, 9)) == 0 and self.sessions:
            session = data.draw(st.sampled_from(self.sessions))  # maybe closed: NotFound
        req = Request(scope, address, length, access, priority, evictable, on_evict, wait)
        hs = holders(self.arb)
        try:
            d: Demand | None = demand(self.arb, req)
        except CoreError:
            d = None
        result = self.run(lambda arb: arb.allocate(session, req, self.now)[1])
        event(f"allocate: {type(result).__name__ if isinstance(result, CoreError) else 'ok'}")
        if isinstance(result, Refused):
            assert d is not None, "an invalid request was refused instead of rejected"
            assert result.blockers, "a refusal must name the holders in the way"
            self.check_refusal(hs, d, result.blockers)
        elif not isinstance(result, CoreError):
            assert d is not None, "the core accepted a request the profile says is invalid"
            types = {e.type for e in result}
            for t in ("evicted", "moved", "waiting", "reinstalled"):
                if t in types:
                    event(f"allocate caused {t}")
            new = next(e for e in result if e.type in ("installed", "waiting"))
            if new.type == "waiting":
                assert wait
                blockers = (new.data or {}).get("blockers", [])
                self.check_refusal(hs, d, blockers)
            # Only this request's victims: the waiters it lets in may evict for themselves.
            evicted = {
                e.allocation["id"]
                for e in result
                if e.type == "evicted"
                and e.allocation
                and (e.data or {}).get("evictor", {}).get("allocation") == new.allocation["id"]
            }
            if evicted:
                self.check_victims(hs, d, evicted)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        live = sorted(self.arb.allocations)
        if not live:
            return
        aid = data.draw(st.sampled_from(live))
        owner = self.arb.allocations[aid].session
        as_owner = data.draw(st.booleans())
        sid = owner if as_owner else None
        self.run(lambda arb: arb.release(aid, self.now, session_id=sid)[1])

    @rule(data=st.data())
    def admin_evicts_one(self, data: st.DataObject) -> None:
        live = sorted(self.arb.allocations)
        if not live:
            return
        aid = data.draw(st.sampled_from(live))
        self.run(lambda arb: arb.evict(aid, self.now, ADMIN_REASON)[1], admin=True)

    @rule(
        cpu=st.none() | st.integers(0, 3),
        tid=st.none() | st.sampled_from(TIDS),
        below=st.none() | st.sampled_from(PRIORITIES),
    )
    def admin_evicts_matching(self, cpu: int | None, tid: int | None, below: int | None) -> None:
        def op(arb: Arbiter) -> list[Event]:
            return arb.evict_matching(
                self.now, ADMIN_REASON, cpu=cpu, tid=tid, below_priority=below
            )[1]

        self.run(op, admin=True)

    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        if not self.sessions:
            return
        sid = data.draw(st.sampled_from(self.sessions))
        result = self.run(lambda arb: arb.close_session(sid, self.now))
        if not isinstance(result, CoreError):
            assert [e.session for e in result if e.type == "session_closed"] == [sid]
            assert sid not in self.arb.sessions

    @rule(data=st.data())
    def keepalive(self, data: st.DataObject) -> None:
        if not self.sessions:
            return
        sid = data.draw(st.sampled_from(self.sessions))

        def op(arb: Arbiter) -> list[Event]:
            arb.keepalive(sid, self.now)
            return []

        self.run(op, serves=False)

    @rule(dt=st.sampled_from([0.0, 1.0, 5.0, 10.0, 10.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        events = self.run(lambda arb: arb.tick(self.now))
        assert not isinstance(events, CoreError)
        for sid in {e.session for e in events if e.type == "session_closed"}:
            assert sid not in self.arb.sessions

    # ------------------------------------------------------------------ invariants

    @invariant()
    def register_files_are_consistent(self) -> None:
        check_register_files_of(self.arb)

    @invariant()
    def waiting_order_is_priority_then_arrival(self) -> None:
        waiting = self.arb.waiting()
        assert {a.id for a in waiting} == {
            a.id for a in self.arb.allocations.values() if a.state is State.WAITING
        }
        order = [(-a.priority, a.seq) for a in waiting]
        assert order == sorted(order), f"waiting order {[a.id for a in waiting]}"

    @invariant()
    def no_waiting_allocation_fits(self) -> None:
        hs = holders(self.arb)
        for alloc in self.arb.waiting():
            if alloc.id in self.admin_requeued:
                continue  # DESIGN: not reinstalled by the operation that evicted it
            d = demand(self.arb, alloc.request())
            assert not fits_after_evicting_lower(self.arb, hs, d), (
                f"{alloc.id} is waiting although it fits now"
            )

    @invariant()
    def sessions_own_their_live_allocations(self) -> None:
        for alloc in self.arb.allocations.values():
            if alloc.session is not None:
                assert alloc.id in self.arb.sessions[alloc.session].allocations


class X86Machine(ArbiterMachine):
    """x86-64 with 2 CPUs, the raw ptrace ABI included."""

    ranges = (
        (0x1000, 1, Access.WRITE),
        (0x1000, 1, Access.WRITE),
        (0x1000, 8, Access.RW),
        (0x1004, 4, Access.WRITE),
        (0x1001, 3, Access.WRITE),  # two registers: 1 + 2 bytes
        (0x1006, 4, Access.RW),  # two registers: 2 + 2 bytes
        (0x2000, 16, Access.WRITE),  # two registers of 8
        (0x400000, 1, Access.EXEC),
        (KERNEL, 8, Access.WRITE),
        (KERNEL + 1, 2, Access.RW),  # two kernel registers
    )

    @rule(
        data=st.data(),
        tid=st.sampled_from(TIDS),
        as_admin=st.booleans(),
    )
    def write_debugregs(self, data: st.DataObject, tid: int, as_admin: bool) -> None:
        chosen = data.draw(
            st.lists(
                st.tuples(
                    st.sampled_from([0x1000, 0x1008, 0x3000, 0x3010]),
                    st.sampled_from([1, 2, 4, 8]),
                    st.sampled_from([Access.WRITE, Access.RW]),
                ),
                max_size=4,
            )
        )
        numbers = data.draw(st.permutations(range(4)))
        addresses = [0, 0, 0, 0]
        slots = []
        for n, (address, length, access) in zip(numbers, chosen, strict=False):
            addresses[n] = address
            slots.append(dr7_abi.RawSlot(n, address, length, access))
        slots.sort(key=lambda slot: slot.index)
        dr7 = dr7_abi.encode(slots, global_enable=data.draw(st.booleans()))
        regs = (addresses[0], addresses[1], addresses[2], addresses[3])
        session = None if as_admin or not self.sessions else self.sessions[-1]
        hs = holders(self.arb)
        raw = self.arb.raw.get(tid)
        raw_before = None if raw is None else dict(raw.allocations)
        live_before = {a for a in (raw_before or {}).values() if a in self.arb.allocations}
        result = self.run(lambda arb: arb.set_debugregs(session, tid, regs, dr7, self.now))
        event(f"raw write: {type(result).__name__ if isinstance(result, CoreError) else 'ok'}")
        if isinstance(result, Refused):
            self.check_raw_refusal(hs, tid, slots, raw_before or {})
            by_alloc = {aid: h for h in hs for aid in h.allocations}
            for blocker in result.blockers:
                h = by_alloc[blocker["allocation"]]
                assert not may_evict(h, 700), f"named {h} could have been evicted by ptrace"
        elif not isinstance(result, CoreError):
            written = self.arb.debugregs(tid)
            assert written["dr7"] == dr7
            assert [written[f"dr{n}"] for n in range(4)] == list(regs)
            assert sorted(written["allocations"]) == [f"dr{slot.index}" for slot in slots]
            old = raw_before or {}
            for slot in slots:
                before = self.arb.allocation(old[slot.index]) if slot.index in old else None
                if before is not None and before.id in live_before:
                    same = (before.address, before.length, before.access)
                    if same == (slot.address, slot.length, slot.access):
                        assert written["allocations"][f"dr{slot.index}"] == before.id

    def check_raw_refusal(
        self,
        hs: list[Holder],
        tid: int,
        slots: list[dr7_abi.RawSlot],
        old: dict[int, str],
    ) -> None:
        """A refused ptrace write must not fit even with every evictable holder below ptrace
        priority gone and the task's replaced registers released."""
        kept: set[str] = set()
        for slot in slots:
            alloc = self.arb.allocations.get(old.get(slot.index, ""))
            if alloc is not None and (alloc.address, alloc.length, alloc.access) == (
                slot.address,
                slot.length,
                slot.access,
            ):
                kept.add(alloc.id)
        dropped = {aid for aid in old.values() if aid not in kept}
        budget = budget_of(
            self.arb, self.arb.profile.data_pool, self.arb.profile.addresses.space_of(0x1000, 1)
        )
        rest = [
            h
            for h in hs
            if not set(h.allocations) <= dropped and not (h.budget == budget and may_evict(h, 700))
        ]
        keys = {h.key for h in rest}
        all_cpus = tuple(range(self.ncpus))
        new_keys = set()
        for slot in slots:
            if old.get(slot.index) in kept:
                continue
            key = (budget, tid, all_cpus, ((slot.address, slot.length),), slot.access.value)
            if key not in keys:
                new_keys.add(key)
        slots_n = slots_of(self.arb, budget)
        assert not fits(rest, budget, slots_n, tid, all_cpus, len(new_keys)), (
            f"a ptrace write for task {tid} was refused although it fits"
        )


class X86ModeSwitchingMachine(X86Machine):
    mode_switching = True


class Arm64SmallPoolsMachine(ArbiterMachine):
    """arm64 with two breakpoint and two watchpoint registers per CPU."""

    profile = "arm64"
    pools = {"brp": 2, "wrp": 2}
    ranges = (
        (0x1000, 8, Access.WRITE),
        (0x1000, 8, Access.WRITE),
        (0x1002, 4, Access.RW),
        (0x1004, 8, Access.WRITE),  # two doublewords
        (0x400000, 4, Access.EXEC),
        (0x400004, 4, Access.EXEC),
        (0xFFFF000000001000, 8, Access.WRITE),
    )


class Ppc64Machine(ArbiterMachine):
    """POWER10: two DAWRs per CPU, 8-byte granules, up to 512 bytes each."""

    profile = "ppc64"
    pools = {"dawr": 2}
    ranges = (
        (0x1000, 8, Access.WRITE),
        (0x1004, 2, Access.WRITE),  # the same 8-byte granule as the line above
        (0x11F8, 16, Access.RW),  # crosses a 512-byte boundary: allowed on POWER10
        (0x2000, 1024, Access.WRITE),  # two DAWRs of 512
        (0xC000000000001000, 8, Access.WRITE),
    )


class X86CrowdedMachine(X86Machine):
    """A crowded x86-64: three CPUs of two debug registers each, so nearly every request
    contends."""

    ncpus = 3
    pools = {"dr": 2}


# A longer search than `make test` runs: PROPERTY_EXAMPLES=300 PROPERTY_STEPS=80 (about 7 minutes
# here) is how the raw-write oversubscription was found.
SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "100")),
    stateful_step_count=int(os.environ.get("PROPERTY_STEPS", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_invariants_hold_on_x86_64_with_two_cpus() -> None:
    run_state_machine_as_test(X86Machine, settings=SETTINGS)


def test_invariants_hold_on_a_crowded_x86_64_with_three_cpus_of_two_registers() -> None:
    run_state_machine_as_test(X86CrowdedMachine, settings=SETTINGS)


def test_invariants_hold_with_mode_switching() -> None:
    run_state_machine_as_test(X86ModeSwitchingMachine, settings=SETTINGS)


def test_invariants_hold_on_arm64_with_small_pools() -> None:
    run_state_machine_as_test(Arm64SmallPoolsMachine, settings=SETTINGS)


def test_invariants_hold_on_ppc64_power10() -> None:
    run_state_machine_as_test(Ppc64Machine, settings=SETTINGS)
